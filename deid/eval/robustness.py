"""Robustness report (``deid eval robustness``): accuracy under attack vs eps.

For each checkpoint, the held-out faces of the split recorded in it are attacked
(untargeted) by each attack of the registry at each eps, and the accuracy on the adversarial
images, rounded to 8-bit pixels, is reported, as in the seed's figure of Inception v3's
accuracy under FGSM, I-FGSM and the iterative least-likely class method. Attacks without an
L-inf budget (C&W-L2, DeepFool, ...) get one row each: their accuracy (what they failed to
fool) and the mean L2 of their successful perturbations.

Outputs (in ``-o DIR``): ``robustness.csv`` (one row per checkpoint x attack x eps),
``robustness.md`` (the same, pivoted: one column per checkpoint; also printed),
``robustness.json`` and ``robustness.png`` (accuracy vs eps, one line per attack, one line
style per checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deid.errors import ConfigError
from deid.eval.common import checkpoint_label, dataset_of, sample_test, write_csv
from deid.report.style import ATTACK_LABELS, eps_text

log = logging.getLogger(__name__)


def is_bounded(attack: str) -> bool:
    """Whether an attack of the registry takes an L-inf budget ``eps`` (C&W's optional cap
    does not count: it defaults to none)."""
    from deid.attacks.registry import ATTACKS

    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; available: {sorted(ATTACKS)}")
    field = ATTACKS[attack][1].model_fields.get("eps")
    return field is not None and field.default is not None


def attack_params(
    attack: str, eps: float | None, steps: int, alpha: float | None
) -> dict[str, Any]:
    """The untargeted config of ``attack`` at ``eps``: only the fields its config has.

    Iterative L-inf attacks get ``steps`` steps of ``alpha`` (default ``max(eps/4, 1/255)``:
    the ball's edge in 4 steps, then room to move along it, on the 8-bit grid).
    """
    from deid.attacks.registry import ATTACKS

    fields = ATTACKS[attack][1].model_fields
    p: dict[str, Any] = {"targeted": False}
    if eps is not None:
        p["eps"] = eps
        if "alpha" in fields:
            p["alpha"] = alpha if alpha is not None else max(eps / 4, 1 / 255)
        if "steps" in fields:
            p["steps"] = steps
    return p


def attack_all(
    atk: Any, model: torch.nn.Module, x: Tensor, y: Tensor, batch: int
) -> tuple[Tensor, Tensor]:
    """Adversarial images (rounded to 8 bits) and the model's predictions on them."""
    from deid.attacks.base import predict, quantize8

    advs, preds = [], []
    for i in range(0, len(x), batch):
        adv = quantize8(atk(model, x[i : i + batch], y[i : i + batch]).images)
        advs.append(adv)
        preds.append(predict(model, adv).argmax(1))
    return torch.cat(advs), torch.cat(preds)


def robustness_table(
    checkpoints: list[str],
    attacks: list[str],
    eps_list: list[float],
    n: int = 500,
    steps: int = 20,
    alpha: float | None = None,
    data: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    batch: int = 250,
) -> dict[str, Any]:
    """Accuracy of each checkpoint under each (untargeted) attack at each eps.

    Args:
        checkpoints: shipped names or checkpoint paths.
        attacks: registry names; those with an L-inf budget are run at every eps, the
            others (C&W, DeepFool, ...) once.
        eps_list: L-inf budgets in [0, 1] pixel units.
        n: held-out faces (a seeded sample of the checkpoint's own test split).
        steps, alpha: iterative attacks' steps and step size (default ``max(eps/4, 1/255)``).

    Returns:
        ``{"rows": [...], "checkpoints": [...], ...}``; each row gives checkpoint, attack,
        eps (None for the unbounded ones), accuracy on the 8-bit-rounded adversarial images,
        the number of faces, and the mean L2/L-inf of the perturbations that fooled it.
    """
    from deid.attacks.base import predict
    from deid.attacks.registry import attack_config, build_attack
    from deid.models import load_classifier
    from deid.pipeline import resolve_device

    for a in attacks:
        is_bounded(a)  # unknown names fail before any work
    dev = resolve_device(device)
    rows: list[dict[str, Any]] = []
    info: list[dict[str, Any]] = []
    for ck in checkpoints:
        model = load_classifier(ck, dev)
        ds = dataset_of(model, data)
        x, y = sample_test(ds, n, seed)
        x, y = x.to(dev), y.to(dev)
        label = checkpoint_label(ck)
        clean_pred = predict(model, x).argmax(1)
        clean = float((clean_pred == y).float().mean())
        info.append(
            {
                "checkpoint": str(ck),
                "label": label,
                "dataset": ds.name,
                "n": len(x),
                "adversarial": model.meta.training.get("adversarial"),
            }
        )
        rows.append(_row(label, "clean", None, clean, len(x), None, None, 0.0, {}))
        log.info("%s: clean top-1 %.3f on %d held-out %s faces", label, clean, len(x), ds.name)
        for a in attacks:
            for eps in eps_list if is_bounded(a) else [None]:
                params = attack_params(a, eps, steps, alpha)
                atk = build_attack(attack_config(a, **params))
                t0 = time.perf_counter()
                adv, pred = attack_all(atk, model, x, y, batch)
                secs = time.perf_counter() - t0
                right = pred == y
                fooled = ~right & (clean_pred == y)
                d = (adv - x).flatten(1)
                l2 = float(d.norm(dim=1)[fooled].mean()) if fooled.any() else None
                linf = float(d.abs().amax(1)[fooled].mean()) if fooled.any() else None
                acc = float(right.float().mean())
                rows.append(_row(label, a, eps, acc, len(x), l2, linf, secs, params))
                log.info(
                    "%s %s eps=%s: accuracy %.3f (%.1f s)",
                    label,
                    a,
                    "-" if eps is None else f"{eps * 255:g}/255",
                    acc,
                    secs,
                )
    return {
        "checkpoints": info,
        "attacks": attacks,
        "eps": eps_list,
        "steps": steps,
        "alpha": alpha,
        "seed": seed,
        "device": str(dev),
        "rows": rows,
    }


def _row(
    label: str,
    attack: str,
    eps: float | None,
    acc: float,
    n: int,
    l2: float | None,
    linf: float | None,
    secs: float,
    params: dict[str, Any],
) -> dict[str, Any]:
    return {
        "checkpoint": label,
        "attack": attack,
        "eps": eps,
        "eps_255": None if eps is None else round(eps * 255, 3),
        "accuracy": round(acc, 4),
        "n": n,
        "mean_l2_fooled": None if l2 is None else round(l2, 4),
        "mean_linf_fooled": None if linf is None else round(linf, 4),
        "seconds": round(secs, 2),
        "params": json.dumps({k: v for k, v in params.items() if k != "targeted"}),
    }


def format_markdown(table: dict[str, Any]) -> str:
    """The rows pivoted: one line per attack and eps, one column per checkpoint."""
    labels = [c["label"] for c in table["checkpoints"]]
    by: dict[tuple[str, float | None], dict[str, dict[str, Any]]] = {}
    for r in table["rows"]:
        by.setdefault((r["attack"], r["eps"]), {})[r["checkpoint"]] = r
    head = "| attack | eps | " + " | ".join(labels) + " |"
    lines = [head, "|---|---|" + "--:|" * len(labels)]
    for (attack, eps), cells in by.items():
        vals = []
        for lab in labels:
            r = cells.get(lab)
            if r is None:
                vals.append("")
                continue
            v = f"{100 * r['accuracy']:.1f}%"
            if eps is None and attack != "clean" and r["mean_l2_fooled"] is not None:
                v += f" (L2 {r['mean_l2_fooled']:.2f})"
            vals.append(v)
        name = ATTACK_LABELS.get(attack, attack)
        lines.append(f"| {name} | {eps_text(eps)} | " + " | ".join(vals) + " |")
    ns = ", ".join(
        f"{c['label']}: {c['n']} held-out {c['dataset']} faces" for c in table["checkpoints"]
    )
    note = (
        f"\nAccuracy on adversarial images rounded to 8 bits (untargeted; {ns}; iterative "
        f"attacks: {table['steps']} steps of "
        + ("max(eps/4, 1/255)" if table["alpha"] is None else eps_text(table["alpha"]))
        + "). Attacks without an eps: accuracy, and in brackets the mean L2 of the "
        "perturbations that fooled the classifier."
    )
    return "\n".join(lines) + "\n" + note


def write_report(table: dict[str, Any], out: Path) -> dict[str, Path]:
    """robustness.csv, .md, .json and .png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "robustness.csv",
        "md": out / "robustness.md",
        "json": out / "robustness.json",
        "png": out / "robustness.png",
    }
    write_csv(table["rows"], paths["csv"])
    paths["md"].write_text(format_markdown(table) + "\n")
    paths["json"].write_text(json.dumps(table, indent=1) + "\n")
    from deid.report.plots import accuracy_vs_eps

    accuracy_vs_eps(table, paths["png"])
    return paths
