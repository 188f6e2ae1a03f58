"""Where adversarial training stops helping: accuracy under I-FGSM by the faces' contrast.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/robustness_contrast.py yaleb-mlp yaleb-mlp-adv [--eps 4/255]

For each checkpoint (shipped name or path), its held-out faces (the same seeded sample as
``deid eval robustness``, needs ``$DEID_DATA_DIR``) are attacked with untargeted I-FGSM
(20 steps of max(eps/4, 1/255), 8-bit iterates), and clean and adversarial top-1 accuracy
are printed per quintile of the faces' pixel standard deviation (their contrast). A
classifier that standardises each image divides a pixel change by that std, so the same
eps weighs most on the darkest, flattest faces.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from deid.argtypes import fraction
from deid.attacks.base import predict
from deid.attacks.registry import attack_config, build_attack
from deid.eval.common import dataset_of, sample_test
from deid.eval.robustness import attack_all, attack_params
from deid.models import load_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--eps", type=fraction, default=4 / 255)
    ap.add_argument("-n", type=int, default=500, help="held-out faces")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    atk = build_attack(attack_config("ifgsm", **attack_params("ifgsm", args.eps, 20, None)))
    print(f"| checkpoint | pixel std | faces | clean | I-FGSM {args.eps * 255:g}/255 |")
    print("|---|---|--:|--:|--:|")
    for ck in args.checkpoints:
        model = load_classifier(ck, torch.device("cpu"))
        x, y = sample_test(dataset_of(model, None), args.n, 0)
        _, pred = attack_all(atk, model, x, y, 250)
        clean = predict(model, x).argmax(1) == y
        robust = pred == y
        std = x.flatten(1).std(1).numpy()
        edges = np.quantile(std, np.linspace(0, 1, 6))
        bucket = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, 4)
        for b in range(5):
            m = torch.from_numpy(bucket == b)
            print(
                f"| {ck} | {edges[b]:.3f}-{edges[b + 1]:.3f} | {int(m.sum())} "
                f"| {float(clean[m].float().mean()):.1%} | {float(robust[m].float().mean()):.1%} |"
            )
        print(
            f"| {ck} | all | {len(x)} | {float(clean.float().mean()):.1%} "
            f"| {float(robust.float().mean()):.1%} |"
        )


if __name__ == "__main__":
    main()
