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

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deid.argtypes import add_report_flags, fraction, print_report, set_threads
from deid.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_ATTACKS = "fgsm,ifgsm,pgd,cw"
DEFAULT_EPS = "1/255,2/255,4/255,8/255,16/255"
# Display names (the seed's figure says "fast", "basic iter.", "iter. l.l.").
LABELS = {
    "fgsm": "FGSM",
    "ifgsm": "I-FGSM",
    "pgd": "PGD",
    "mifgsm": "MI-FGSM",
    "illc": "iter. l.l.",
    "cw": "C&W-L2",
    "realistic": "C&W-L2",
    "deepfool": "DeepFool",
}


def parse_fraction(text: str) -> float:
    """``0.031`` or ``8/255`` -> float."""
    try:
        return fraction(text)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(str(e)) from None


def checkpoint_label(name: str | Path) -> str:
    """A short name for a checkpoint: a shipped name as is, a path by its file stem."""
    s = str(name)
    return Path(s).stem if s.endswith((".pt", ".pth")) else s


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


def _attack_all(
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
    from deid.evaluate import dataset_of, sample_test
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
                adv, pred = _attack_all(atk, model, x, y, batch)
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


def _eps_text(eps: float | None) -> str:
    if eps is None:
        return "-"
    v = eps * 255
    return f"{v:g}/255" if abs(v - round(v, 3)) < 1e-6 else f"{eps:.4g}"


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
        name = LABELS.get(attack, attack)
        lines.append(f"| {name} | {_eps_text(eps)} | " + " | ".join(vals) + " |")
    ns = ", ".join(
        f"{c['label']}: {c['n']} held-out {c['dataset']} faces" for c in table["checkpoints"]
    )
    note = (
        f"\nAccuracy on adversarial images rounded to 8 bits (untargeted; {ns}; iterative "
        f"attacks: {table['steps']} steps of "
        + ("max(eps/4, 1/255)" if table["alpha"] is None else _eps_text(table["alpha"]))
        + "). Attacks without an eps: accuracy, and in brackets the mean L2 of the "
        "perturbations that fooled the classifier."
    )
    return "\n".join(lines) + "\n" + note


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows (dicts with the same keys) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})


STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
# Okabe-Ito, colour-blind safe: one colour per attack.
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
DASHES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]


def plot_robustness(table: dict[str, Any], path: Path) -> Path:
    """Accuracy vs eps: one colour per attack, one line style per checkpoint; attacks
    without an eps as points at the right, past a divider."""
    import matplotlib as mpl
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels = [c["label"] for c in table["checkpoints"]]
    eps_list = sorted(table["eps"])
    bounded = [a for a in table["attacks"] if is_bounded(a)]
    unbounded = [a for a in table["attacks"] if not is_bounded(a)]
    xs_b = list(range(len(eps_list) + 1))  # 0 = clean
    ticks = ["clean"] + [_eps_text(e).replace("/255", "") for e in eps_list]
    x_u = [len(eps_list) + 1.5 + 1.6 * i for i in range(len(unbounded))]
    color = {a: COLORS[i % len(COLORS)] for i, a in enumerate(table["attacks"])}
    acc = {(r["checkpoint"], r["attack"], r["eps"]): r for r in table["rows"]}
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.4 + 1.0 * len(unbounded), 4.2))
        ax = fig.add_subplot(1, 1, 1)
        for j, lab in enumerate(labels):
            clean = acc[(lab, "clean", None)]["accuracy"]
            for i, a in enumerate(bounded):
                ys = [clean] + [acc[(lab, a, e)]["accuracy"] for e in eps_list]
                ax.plot(
                    xs_b,
                    [100 * v for v in ys],
                    DASHES[j % len(DASHES)],
                    marker=MARKERS[j % len(MARKERS)],
                    ms=4,
                    # later lines thinner: where attacks agree (I-FGSM and PGD) both show
                    lw=max(1.2, 2.8 - 0.45 * i),
                    color=color[a],
                )
            for a, xu in zip(unbounded, x_u, strict=True):
                r = acc[(lab, a, None)]
                ax.plot(
                    [xu + 0.2 * (j - (len(labels) - 1) / 2)],
                    [100 * r["accuracy"]],
                    MARKERS[j % len(MARKERS)],
                    ms=6,
                    color=color[a],
                )
        for a, xu in zip(unbounded, x_u, strict=True):
            # the attack always succeeds in the end; what differs is how far it had to go
            l2 = [acc[(lab, a, None)]["mean_l2_fooled"] for lab in labels]
            text = "mean L2 of\nsuccesses:\n" + "\n".join(
                f"{lab}: {v:.2f}" if v is not None else f"{lab}: -"
                for lab, v in zip(labels, l2, strict=True)
            )
            ax.text(xu, 55, text, ha="center", va="center", fontsize=7, color="#333333")
        if unbounded:
            ax.axvline(len(eps_list) + 0.5, color="#999999", lw=0.8)
        ax.set_xticks(xs_b + x_u, ticks + [LABELS.get(a, a) + "\n(no eps)" for a in unbounded])
        ax.set_xlim(-0.3, (x_u[-1] + 0.8) if unbounded else xs_b[-1] + 0.3)
        ax.set_ylim(-2, 102)
        ax.set_xlabel("eps (L-inf, in 1/255 of the pixel range)")
        ax.set_ylabel("held-out top-1 accuracy under attack (%)")
        ns = sorted({c["n"] for c in table["checkpoints"]})
        sets = ", ".join(sorted({c["dataset"] for c in table["checkpoints"]}))
        ax.set_title(
            f"Accuracy under untargeted attacks ({sets} held-out faces, "
            f"n = {', '.join(map(str, ns))})"
        )
        h_att = [
            Line2D([], [], color=color[a], lw=2, label=LABELS.get(a, a)) for a in table["attacks"]
        ]
        h_ck = [
            Line2D(
                [], [], color="#333333", ls=DASHES[j % len(DASHES)],
                marker=MARKERS[j % len(MARKERS)], ms=4, label=lab,
            )
            for j, lab in enumerate(labels)
        ]  # fmt: skip
        leg = ax.legend(handles=h_att, title="attack", loc="lower left", fontsize=8)
        ax.add_artist(leg)
        ax.legend(handles=h_ck, title="classifier", loc="lower center", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return path


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
    plot_robustness(table, paths["png"])
    return paths


def add_parser(esub: argparse._SubParsersAction) -> None:
    """``deid eval robustness``."""
    p = esub.add_parser("robustness", help="accuracy under untargeted attacks vs eps (table + PNG)")
    p.add_argument("checkpoints", nargs="+", help="shipped names or checkpoint paths")
    p.add_argument("--attacks", default=DEFAULT_ATTACKS, help="comma-separated registry names")
    p.add_argument("--eps", default=DEFAULT_EPS, help="comma-separated, e.g. 2/255,8/255")
    p.add_argument("-n", type=int, default=500, help="held-out faces per checkpoint")
    p.add_argument("--steps", type=int, default=20, help="iterative attacks' steps")
    p.add_argument("--alpha", help="iterative step size (default max(eps/4, 1/255))")
    add_report_flags(p)
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from deid.evaluate import check_eval_writes
    from deid.io import Artefact

    check_eval_writes([Artefact("report", args.output, folder=True)], args.data, args.checkpoints)
    set_threads(args)
    eps = [parse_fraction(e) for e in args.eps.split(",") if e.strip()]
    if not eps or any(not 0 < e <= 1 for e in eps):
        raise ConfigError(f"--eps: expected values in (0, 1] such as 4/255, got {args.eps!r}")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if args.n < 1:
        raise ConfigError(f"-n: expected at least 1 face, got {args.n}")
    table = robustness_table(
        args.checkpoints,
        attacks,
        eps,
        n=args.n,
        steps=args.steps,
        alpha=parse_fraction(args.alpha) if args.alpha else None,
        data=args.data,
        device=args.device,
        seed=args.seed,
    )
    print_report(write_report(table, args.output))
    return 0
