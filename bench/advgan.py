"""AdvGAN against 10-step I-FGSM on held-out faces: targeted success after 8-bit rounding
and after H.264 crf 23, PSNR, and time per face, in one run.

Run from the repository root with the project's virtualenv (needs ``$DEID_DATA_DIR``)::

    .venv/bin/python bench/advgan.py [--classifier yaleb-mlp] [--n 200] [--threads 1]

On ``--n`` held-out faces of the classifier's own split (``deid.eval.common.sample_test``,
seed 0), every attack aims at the same targets (``--targets``: by default drawn uniformly
among the classes other than the clean prediction, what the generators were trained on;
``nearest``: the likeliest other class; ``least-likely``), in batches of 64, on the
CPU with ``--threads`` torch threads; each row's time is the fastest of ``--repeat`` (1)
passes over all the faces, and of more passes of a fast row until a second has been timed
(a pass of the generator over 490 Yale B faces takes about 10 ms, which one pass measures
poorly):

* ``advgan, no refinement``: the generator's forward pass alone (``steps=0``);
* ``advgan + refine``: then up to 5 I-FGSM steps with EOT for the faces not yet their
  target by a logit margin of 2 (the default until 2026-12-07);
* ``advgan + 3 plain steps``: the default: then up to 3 I-FGSM steps without EOT for the
  faces not yet their target by a logit margin of 5 (``refine_margin``), stopping there;
* ``ifgsm 10``: targeted I-FGSM, eps 16/255, alpha 2/255, 10 steps, early stop, no EOT;
* ``ifgsm 10 + EOT``: the same with the pipeline's default EOT (``configs/default.yaml``);
* where the pipeline's ``precision: auto`` resolves to bfloat16 on this CPU, the generator's
  row and both I-FGSM rows again that way, as ``deid run`` runs them: I-FGSM's gradient
  passes in bfloat16 with every success confirmed in float32; the generator's success
  check screened in bfloat16, float32 deciding every face within
  ``deid.attacks.base.DECISION_BAND`` of a threshold. The speed-up columns stay against the
  float32 rows.

Success is counted after rounding to 8-bit pixels and classifying again (in float32); the
last column counts the faces whose own verdict from the attack (its ``success``) differs from
that count's; "original still in the top 5" is the share of faces whose clean prediction
is among the five classes the classifier ranks highest after the attack (a target next to
the original is easy to reach, and leaves it close). The H.264 column (the generator's rows
and plain I-FGSM's) is ``deid eval survival``'s measurement
(``deid.eval.survival.survival_table``): the faces attacked in 2 frames each, pasted into
1280x720 frames, written by deid's H.264 writer at crf 23, decoded, cut out and classified
again. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from deid.attacks import ATTACKS
from deid.attacks.base import predict, quantize8
from deid.eval.common import dataset_of, psnr, sample_test
from deid.eval.survival import survival_table
from deid.models import load_classifier
from deid.models.precision import resolve_precision
from deid.targets import choose_targets

EPS, ALPHA, STEPS = 16 / 255, 2 / 255, 10
ROWS = {
    "advgan, no refinement": ("advgan", {"steps": 0}),
    "advgan + refine (5 steps, EOT)": (
        "advgan",
        {"steps": 5, "eot": {"enabled": True}, "refine_margin": None},
    ),
    "advgan + 3 plain steps (margin 5)": ("advgan", {}),  # the default
    "ifgsm 10": ("ifgsm", {"eps": EPS, "alpha": ALPHA, "steps": STEPS}),
    "ifgsm 10 + EOT": (
        "ifgsm",
        {"eps": EPS, "alpha": ALPHA, "steps": STEPS, "eot": {"enabled": True}},
    ),
}
# the same rows with the pipeline's `precision: auto` (bfloat16 gradient passes and a
# bfloat16 first look at each success check where the CPU has them natively; float32 decides
# near a threshold), when it resolves to bfloat16 here
AUTO = {
    "advgan, no refinement": "advgan, no refinement, bfloat16 screen",
    "advgan + 3 plain steps (margin 5)": "advgan + 3 plain steps, bfloat16 passes",
    "ifgsm 10": "ifgsm 10, bfloat16 passes",
    "ifgsm 10 + EOT": "ifgsm 10 + EOT, bfloat16",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifier", default="yaleb-mlp")
    ap.add_argument("--n", type=int, default=200, help="held-out faces")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--repeat", type=int, default=1, help="timed passes over the faces per row (fastest kept)"
    )
    ap.add_argument("--no-h264", action="store_true", help="skip the H.264 round trip")
    ap.add_argument("--weights", help="a generator checkpoint (default: the shipped one)")
    ap.add_argument(
        "--targets",
        choices=["random", "nearest", "least-likely"],
        default="random",
        help="which identity every attack aims each face at",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = load_classifier(args.classifier, "cpu").eval()
    lowp = resolve_precision("auto", torch.device("cpu"))
    rows = dict(ROWS)
    if lowp is not None:
        model_lowp = load_classifier(args.classifier, "cpu").eval()
        model_lowp.set_gradient_precision(lowp)
        rows = {
            label: row for k, row in ROWS.items() for label in ([k, AUTO[k]] if k in AUTO else [k])
        }
    x, _ = sample_test(dataset_of(model), args.n, seed=0)
    logits = predict(model, x)
    t = choose_targets(logits, args.targets, torch.Generator().manual_seed(0))
    n = len(x)
    print(
        f"# bench/advgan.py: {n} held-out faces of {args.classifier} "
        f"({tuple(x.shape[1:])}, {logits.shape[1]} identities), {args.targets} targets, CPU, "
        f"{args.threads} torch thread(s), batch {args.batch}, fastest pass of >= {args.repeat}, "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f}"
    )
    results = {}
    for label, (name, kw) in rows.items():
        if name == "advgan" and args.weights:
            kw = {**kw, "weights": args.weights}
        cls, cfg = ATTACKS[name]
        attack = cls(cfg(**kw))
        m = model_lowp if label in AUTO.values() else model
        attack(m, x[:2], t[:2])  # load the generator, warm up
        sec, spent, passes = float("inf"), 0.0, 0
        # the fastest of the passes, as timeit reports: --repeat of them, and more of a
        # fast row until a second has been timed
        while passes < args.repeat or (spent < 1.0 and passes < 100):
            passes += 1
            t0 = time.perf_counter()
            res = [
                attack(m, x[i : i + args.batch], t[i : i + args.batch])
                for i in range(0, n, args.batch)
            ]
            dt = time.perf_counter() - t0
            spent, sec = spent + dt, min(sec, dt)
        out = torch.cat([r.images for r in res])
        after = predict(model, quantize8(out))
        hit = after.argmax(1) == t
        # how many classes still beat the face's own (the clean prediction) after the attack
        above = (after > after.gather(1, logits.argmax(1, keepdim=True))).sum(1)
        ok = float(hit.float().mean())
        # the attack's own verdict (margin 0) against float32's on the returned pixels
        said = torch.cat([r.success for r in res])
        p = psnr(x, quantize8(out))
        results[label] = {
            "ms_per_face": 1000 * sec / n,
            "success_8bit": ok,
            "psnr": float(p[torch.isfinite(p)].mean()),
            "linf_255": float((out - x).abs().amax() * 255),
            "verdicts_unlike_float32": int((said != hit).sum()),
            "original_top5": float((above < 5).float().mean()),
        }
        # H.264 for the generator's rows and plain I-FGSM's (with EOT it takes minutes)
        eot = bool(kw.get("eot", {}).get("enabled"))  # advgan: its refinement's EOT
        if (name == "advgan" or not eot) and not args.no_h264 and label not in AUTO.values():
            table = survival_table(
                args.classifier, n=n, crfs=[23], jpeg=[], eot=[eot], attack=name,
                overrides={**kw, "target": args.targets},
            )  # fmt: skip
            row = next(r for r in table["rows"] if r["output"] == "h264 crf 23")
            results[label]["h264_crf23"] = row["target_rate"]
        r = results[label]
        print(
            f"  {label:<32} {r['ms_per_face']:8.3f} ms/face  success {r['success_8bit']:6.1%}"
            f"  PSNR {r['psnr']:5.2f}  crf23 {r.get('h264_crf23', float('nan')):.1%}"
            f"  original in top 5 {r['original_top5']:.1%}"
            f"  verdicts unlike float32's: {r['verdicts_unlike_float32']}",
            flush=True,
        )
    print()
    print(
        "| attack | ms per face | success, 8-bit | success, H.264 crf 23 | PSNR (dB) | "
        "speed-up vs ifgsm 10 | vs ifgsm 10 + EOT | original still in the top 5 | "
        "verdicts unlike float32's |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    base, base_eot = results["ifgsm 10"]["ms_per_face"], results["ifgsm 10 + EOT"]["ms_per_face"]
    for label, r in results.items():
        h = f"{r['h264_crf23']:.1%}" if "h264_crf23" in r else "-"
        print(
            f"| {label} | {r['ms_per_face']:.3f} | {r['success_8bit']:.1%} | {h} | "
            f"{r['psnr']:.2f} | {base / r['ms_per_face']:.1f}x | "
            f"{base_eot / r['ms_per_face']:.1f}x | {r['original_top5']:.1%} | "
            f"{r['verdicts_unlike_float32']} |"
        )


if __name__ == "__main__":
    main()
