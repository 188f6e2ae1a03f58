"""Benchmark deid's attacks against torchattacks 3.5.1 and ART 1.20.1 on the shipped CelebA CNN.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/attacks.py [--n 64] [--threads 1] [--repeat 1] [--skip-art-cw]

On ``--n`` held-out CelebA faces (``deid.eval.common.sample_test``, seed 0; needs
``$DEID_DATA_DIR``), in one batch, on the CPU, every tool attacks the same images towards
the same least-likely targets with the same parameters, and is timed in the same run:

* targeted I-FGSM (BIM): eps 16/255, alpha 2/255, at most 20 steps;
* targeted PGD with a random start: the same budget;
* targeted C&W-L2: one fixed c = 1 (deid: one binary-search round), Adam, 100 steps, lr 0.01.

Success is counted after rounding every output to 8-bit pixels and classifying it again
(what a written file holds). deid runs as it ships: per-sample early stop (a face leaves
the batch the step it is classified as its target, and the check reuses that step's
logits) and 8-bit iterates. The peers run their fixed number of steps. Torch runs with
``--threads`` threads (default 1, so that other processes on the machine disturb the
timings less). Prints a Markdown table and the deid/peer speed ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

from deid.attacks import ATTACKS
from deid.attacks.base import predict, quantize8
from deid.eval.common import dataset_of, sample_test
from deid.models import load_classifier
from deid.targets import choose_targets

EPS, ALPHA, STEPS = 16 / 255, 2 / 255, 20
CW = {"c": 1.0, "steps": 100, "lr": 0.01}


def timed(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[torch.Tensor, float]:
    """The output of ``fn`` and its best wall time over ``repeat`` runs (seconds)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    assert out is not None
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="faces in the batch")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool (the best is kept)")
    ap.add_argument("--skip-art-cw", action="store_true", help="ART's C&W is the slowest row")
    ap.add_argument("--only", help="comma-separated attacks to run: ifgsm,pgd,cw (default all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import numpy as np
    import torchattacks
    from art.attacks import evasion
    from art.estimators.classification import PyTorchClassifier

    model = load_classifier("celeba-cnn", "cpu").eval()
    x, _ = sample_test(dataset_of(model), args.n, seed=0)
    x = x.float()
    logits = predict(model, x)
    t = choose_targets(logits, "least-likely")
    k = logits.shape[1]
    art = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=k,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )

    def success(xa: torch.Tensor) -> float:
        return float((predict(model, quantize8(xa.float())).argmax(1) == t).float().mean())

    def deid(name: str, **kw: object) -> Callable[[], torch.Tensor]:
        cls, cfg = ATTACKS[name]
        attack = cls(cfg(**kw))
        return lambda: attack(model, x, t).images

    def ta(attack: torchattacks.Attack) -> Callable[[], torch.Tensor]:
        attack.set_mode_targeted_by_label(quiet=True)
        return lambda: attack(x, t)

    def art_run(attack: object) -> Callable[[], torch.Tensor]:
        return lambda: torch.from_numpy(attack.generate(x.numpy(), y=t.numpy()))  # type: ignore[attr-defined]

    np.random.seed(0)
    rows: list[tuple[str, str, Callable[[], torch.Tensor]]] = [
        ("I-FGSM", "deid", deid("ifgsm", eps=EPS, alpha=ALPHA, steps=STEPS)),
        ("I-FGSM", "torchattacks BIM", ta(torchattacks.BIM(
            model, eps=EPS, alpha=ALPHA, steps=STEPS))),
        ("I-FGSM", "ART BasicIterativeMethod", art_run(evasion.BasicIterativeMethod(
            art, eps=EPS, eps_step=ALPHA, max_iter=STEPS, targeted=True, batch_size=args.n,
            verbose=False))),
        ("PGD (random start)", "deid", deid("pgd", eps=EPS, alpha=ALPHA, steps=STEPS)),
        ("PGD (random start)", "torchattacks PGD", ta(torchattacks.PGD(
            model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True))),
        ("PGD (random start)", "ART ProjectedGradientDescentPyTorch", art_run(
            evasion.ProjectedGradientDescentPyTorch(
                art, eps=EPS, eps_step=ALPHA, max_iter=STEPS, targeted=True, num_random_init=1,
                batch_size=args.n, verbose=False))),
        ("C&W-L2", "deid", deid(
            "cw", c_init=CW["c"], binary_steps=1, steps=CW["steps"], lr=CW["lr"])),
        ("C&W-L2", "torchattacks CW", ta(torchattacks.CW(
            model, c=CW["c"], kappa=0, steps=CW["steps"], lr=CW["lr"]))),
    ]  # fmt: skip
    if not args.skip_art_cw:
        rows.append(
            ("C&W-L2", "ART CarliniL2Method", art_run(evasion.CarliniL2Method(
                art, confidence=0.0, targeted=True, learning_rate=CW["lr"], binary_search_steps=1,
                max_iter=CW["steps"], initial_const=CW["c"], batch_size=args.n, verbose=False)))
        )  # fmt: skip

    keys = {"ifgsm": "I-FGSM", "pgd": "PGD (random start)", "cw": "C&W-L2"}
    if args.only:
        keep = {keys[a.strip()] for a in args.only.split(",")}
        rows = [r for r in rows if r[0] in keep]
    print(
        f"# bench/attacks.py: {args.n} held-out CelebA faces (64x64 RGB), celeba-cnn "
        f"({k} identities), least-likely targets, CPU, {args.threads} torch thread(s), "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}"
    )
    results: dict[tuple[str, str], tuple[float, float]] = {}
    for attack, tool, fn in rows:
        out, sec = timed(fn, args.repeat)
        results[(attack, tool)] = (sec, success(out))
        print(f"  {attack:<20} {tool:<38} {sec:8.2f} s  success {success(out):6.1%}", flush=True)

    print()
    print("| attack | tool | wall time (s) | success after 8-bit rounding | deid speed-up |")
    print("|---|---|--:|--:|--:|")
    for attack, tool, _ in rows:
        sec, ok = results[(attack, tool)]
        ours = results[(attack, "deid")][0]
        ratio = "1.00x" if tool == "deid" else f"{sec / ours:.2f}x"
        print(f"| {attack} | {tool} | {sec:.2f} | {ok:.1%} | {ratio} |")
    print()
    for attack in dict.fromkeys(a for a, _, _ in rows):
        ours = results[(attack, "deid")]
        for (a, tool), (sec, ok) in results.items():
            if a == attack and tool != "deid":
                print(
                    f"{attack}: deid is {sec / ours[0]:.2f}x faster than {tool} "
                    f"(success {ours[1]:.1%} vs {ok:.1%})"
                )


if __name__ == "__main__":
    main()
