"""Figures for classifiers and attacks on the held-out splits (``deid eval``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid.attacks import IFGSM, IFGSMConfig, Realistic, RealisticConfig
from deid.attacks.base import predict, quantize8
from deid.data import FaceDataset, load_dataset
from deid.models import FaceClassifier, load_classifier
from deid.models.train import evaluate as accuracy
from deid.targets import choose_targets


def dataset_of(model: FaceClassifier, data: Path | None = None) -> FaceDataset:
    """The dataset and split a checkpoint was trained on (rebuilt from its metadata)."""
    return load_dataset(model.meta.dataset, data, model.meta.split)


def classifier_accuracy(checkpoint: str | Path, data: Path | None = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy of a checkpoint on the held-out split recorded in it."""
    model = load_classifier(checkpoint)
    ds = dataset_of(model, data)
    x, y = ds.tensors("test")
    with torch.no_grad():
        res = accuracy(model, x, y)
    return {
        "checkpoint": str(checkpoint),
        "dataset": ds.name,
        "split": ds.split,
        **res,
        "recorded": {k: model.meta.accuracy.get(k) for k in ("top1", "top5", "n")},
    }


def sample_test(ds: FaceDataset, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out faces drawn at random (seeded) from the test split."""
    x, y = ds.tensors("test")
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))])
    return x[idx], y[idx]


def psnr(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of [0, 1] images (inf where identical)."""
    mse = (x_adv - x).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def attack_table(
    classifier: str | Path,
    data: Path | None = None,
    n: int = 200,
    eps_list: list[float] | None = None,
    target_modes: list[str] | None = None,
    steps: int = 20,
    alpha: float = 2 / 255,
    realistic: bool = True,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Targeted success of I-FGSM per eps and target mode, and of the realistic attack.

    Success is counted *after rounding to 8-bit pixels*: the adversarial images are
    quantised and classified again.
    """
    from deid.pipeline import resolve_device

    dev = resolve_device(device)
    model = load_classifier(classifier, dev)
    ds = dataset_of(model, data)
    x, y = sample_test(ds, n, seed)
    x = x.to(dev)
    logits = predict(model, x)
    clean_acc = float((logits.argmax(1).cpu() == y).float().mean())
    eps_list = eps_list or [2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255]
    target_modes = target_modes or ["least-likely", "nearest"]
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    for mode in target_modes:
        t = choose_targets(logits, mode, g).to(dev)  # type: ignore[arg-type]
        for eps in eps_list:
            t0 = time.perf_counter()
            r = IFGSM(IFGSMConfig(eps=eps, alpha=min(alpha, eps), steps=steps))(model, x, t)
            ok = predict(model, quantize8(r.images)).argmax(1) == t
            rows.append(
                {
                    "attack": "ifgsm",
                    "target": mode,
                    "eps": eps,
                    "eps_255": round(eps * 255, 2),
                    "success": float(ok.float().mean()),
                    "mean_steps": float(r.steps.float().mean()),
                    "mean_psnr": _finite_mean(psnr(x, quantize8(r.images))),
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
        if realistic:
            t0 = time.perf_counter()
            r = Realistic(RealisticConfig())(model, x, t)
            adv = quantize8(r.images)
            ok = predict(model, adv).argmax(1) == t
            p = psnr(x, adv)
            rows.append(
                {
                    "attack": "realistic",
                    "target": mode,
                    "eps": None,
                    "eps_255": None,
                    "success": float(ok.float().mean()),
                    "mean_steps": float(r.steps.float().mean()),
                    "mean_psnr": _finite_mean(p[ok]),
                    "mean_l2": float(r.norms["l2"][ok].mean()) if ok.any() else None,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    return {
        "classifier": str(classifier),
        "dataset": ds.name,
        "n": len(x),
        "clean_top1": clean_acc,
        "steps": steps,
        "alpha_255": round(alpha * 255, 2),
        "device": str(dev),
        "rows": rows,
    }


def _finite_mean(v: torch.Tensor) -> float | None:
    v = v[torch.isfinite(v)]
    return round(float(v.mean()), 2) if len(v) else None


def format_table(table: dict[str, Any]) -> str:
    """Markdown table of :func:`attack_table`'s rows."""
    head = (
        f"{table['classifier']} on {table['dataset']} held-out, n={table['n']}, clean top-1 "
        f"{table['clean_top1']:.3f}; success after 8-bit rounding\n\n"
        "| attack | target | eps | success | mean steps | mean PSNR (dB) |\n"
        "|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in table["rows"]:
        eps = f"{r['eps_255']:g}/255" if r["eps"] is not None else "-"
        ps = (
            f"{r['mean_psnr']:.1f}"
            if r["mean_psnr"] is not None and math.isfinite(r["mean_psnr"])
            else "-"
        )
        lines.append(
            f"| {r['attack']} | {r['target']} | {eps} | {100 * r['success']:.1f}% "
            f"| {r['mean_steps']:.1f} | {ps} |"
        )
    return "\n".join(lines)
