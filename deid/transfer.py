"""Transferability report (``deid eval transfer``): do adversarial examples made on one
classifier fool the others?

Adversarial examples are crafted on each *source* classifier (white-box) from the same
held-out faces, rounded to 8-bit pixels, and shown to each *target* classifier, as in the
seed's cross-model and cross training-set tables (the same architecture trained on
disjoint training subsets: ``deid train yaleb-mlp --subset 0/2`` and ``--subset 1/2``).

Two views:

- **untargeted**: the share of the adversarial examples each target misclassifies;
- **de-identification**: targeted examples (default: each face's least-likely identity
  under the source); the share each target classifies as the chosen identity, and the share
  it no longer recognises as the true one.

Only classifiers of the same dataset and identities can be compared (a Yale B class means
nothing to a CelebA model); mixed sets are refused. The faces are drawn from the held-out
split of *every* model (the intersection of their test sets) and kept only where every
model classifies the clean face correctly, so each cell counts the same faces.

Outputs (``-o DIR``): ``transfer.csv`` (long form), ``transfer_untargeted.csv``,
``transfer_targeted.csv`` and ``transfer_deid.csv`` (source x target matrices, percent),
``transfer.md`` (printed), ``transfer.json`` and ``transfer.png`` (heatmaps).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid.argtypes import add_report_flags, print_report, set_threads
from deid.errors import ConfigError
from deid.robustness import LABELS, STYLE, checkpoint_label, parse_fraction, write_csv

log = logging.getLogger(__name__)

VIEWS = {
    "untargeted": "untargeted: share misclassified",
    "targeted": "targeted: share classified as the target",
    "deid": "targeted: share not recognised as the true identity",
}
SHORT = {
    "untargeted": "untargeted examples:\nmisclassified",
    "targeted": "targeted examples:\nclassified as the target",
    "deid": "targeted examples:\nnot the true identity",
}


def _labels(names: list[str]) -> list[str]:
    out: list[str] = []
    for s in names:
        lab = checkpoint_label(s)
        while lab in out:
            lab += "'"
        out.append(lab)
    return out


def check_compatible(models: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless all models share dataset and identities."""
    first_name, first = next(iter(models.items()))
    for name, m in models.items():
        if m.meta.dataset != first.meta.dataset or m.meta.class_names != first.meta.class_names:
            raise ConfigError(
                "transfer compares classifiers of the same dataset and identities; got "
                f"{first_name} ({first.meta.dataset or '?'}, {first.meta.num_classes} identities)"
                f" and {name} ({m.meta.dataset or '?'}, {m.meta.num_classes} identities)"
            )


def shared_test_faces(
    models: dict[str, Any], n: int, seed: int, data: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` faces held out from every model (seeded sample), (N, C, H, W) in [0, 1]."""
    from deid.evaluate import dataset_of

    datasets = {name: dataset_of(m, data) for name, m in models.items()}
    ds = next(iter(datasets.values()))
    files = {d.split.get("file") for d in datasets.values()}
    if len(files) > 1:
        raise ConfigError(
            f"transfer needs the models' held-out faces from one dataset file; got {sorted(files)}"
        )
    pool = ds.test
    for d in datasets.values():
        pool = np.intersect1d(pool, d.test)
    if len(pool) == 0:
        raise ConfigError("no face is held out from every model (their test splits do not overlap)")
    idx = np.sort(np.random.default_rng(seed).permutation(pool)[: min(n, len(pool))])
    x = ds.images[idx]
    x = x[:, None] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
    return (
        torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0),
        torch.from_numpy(ds.labels[idx].astype(np.int64)),
    )


def _attack(
    name: str, eps: float, steps: int, alpha: float, targeted: bool, early_stop: bool
) -> Any:
    from deid.attacks.registry import ATTACKS, attack_config, build_attack

    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    fields = ATTACKS[name][1].model_fields
    p: dict[str, Any] = {"targeted": targeted}
    for key, val in (("eps", eps), ("steps", steps), ("alpha", min(alpha, eps))):
        if key in fields:
            p[key] = val
    if "early_stop" in fields:
        p["early_stop"] = early_stop
    return build_attack(attack_config(name, **p)), p


def transfer_table(
    sources: list[str],
    targets: list[str],
    attack: str = "ifgsm",
    eps: float = 16 / 255,
    steps: int = 20,
    alpha: float = 2 / 255,
    target_mode: str = "least-likely",
    early_stop: bool = False,
    n: int = 200,
    data: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    batch: int = 250,
) -> dict[str, Any]:
    """Source x target matrices of the untargeted and targeted transfer rates.

    Args:
        sources, targets: shipped names or checkpoint paths (the same model may be both).
        attack: a registry name; eps/steps/alpha go to the fields its config has.
        target_mode: how the targeted view picks each face's identity on the source
            (``least-likely``, ``nearest``, ``random``; see :func:`deid.targets.choose_targets`).
        early_stop: stop each face as soon as the source is fooled. Off by default: examples
            that barely cross the source's boundary transfer poorly.
        n: held-out faces to draw (before keeping those every model gets right).

    Raises:
        ConfigError: mixed datasets or identities, unknown attack, no shared held-out faces.
    """
    from deid.attacks.base import predict, quantize8
    from deid.models import load_classifier
    from deid.pipeline import resolve_device
    from deid.targets import choose_targets

    if not sources or not targets:
        raise ConfigError("transfer needs at least one source and one target classifier")
    dev = resolve_device(device)
    src_labels, tgt_labels = _labels(sources), _labels(targets)
    names = dict(zip(src_labels, sources, strict=True))
    names.update(zip(tgt_labels, targets, strict=True))
    by_path: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for lab, path in names.items():
        if path not in by_path:
            by_path[path] = load_classifier(path, dev)
        models[lab] = by_path[path]
    check_compatible(models)
    untargeted_atk, params = _attack(attack, eps, steps, alpha, False, early_stop)
    targeted_atk, _ = _attack(attack, eps, steps, alpha, True, early_stop)

    x_all, y_all = shared_test_faces(models, n, seed, data)
    x_all, y_all = x_all.to(dev), y_all.to(dev)
    ok = torch.ones(len(x_all), dtype=torch.bool, device=dev)
    clean: dict[str, float] = {}
    for lab, m in models.items():
        right = predict(m, x_all).argmax(1) == y_all
        clean[lab] = float(right.float().mean())
        ok &= right
    x, y = x_all[ok], y_all[ok]
    if len(x) == 0:
        raise ConfigError("no held-out face is classified correctly by every model")
    log.info("%d of %d held-out faces are classified correctly by every model", len(x), len(ok))

    def run(atk: Any, model: Any, labels: torch.Tensor) -> torch.Tensor:
        out = [
            quantize8(atk(model, x[i : i + batch], labels[i : i + batch]).images)
            for i in range(0, len(x), batch)
        ]
        return torch.cat(out)

    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    for s in src_labels:
        src = models[s]
        t0 = time.perf_counter()
        adv_u = run(untargeted_atk, src, y)
        goal = choose_targets(predict(src, x), target_mode, g).to(dev)  # type: ignore[arg-type]
        adv_t = run(targeted_atk, src, goal)
        secs = time.perf_counter() - t0
        log.info(
            "%s: crafted %d untargeted + %d targeted examples (%.1f s)", s, len(x), len(x), secs
        )
        for t in tgt_labels:
            pu = predict(models[t], adv_u).argmax(1)
            pt = predict(models[t], adv_t).argmax(1)
            rows.append(
                {
                    "source": s,
                    "target": t,
                    "n": len(x),
                    "untargeted": round(float((pu != y).float().mean()), 4),
                    "targeted": round(float((pt == goal).float().mean()), 4),
                    "deid": round(float((pt != y).float().mean()), 4),
                    "white_box": s == t or names[s] == names[t],
                }
            )
    return {
        "sources": src_labels,
        "targets": tgt_labels,
        "checkpoints": {lab: str(p) for lab, p in names.items()},
        "dataset": next(iter(models.values())).meta.dataset,
        "attack": attack,
        "params": {k: v for k, v in params.items() if k != "targeted"},
        "target_mode": target_mode,
        "n_drawn": len(ok),
        "n": len(x),
        "clean_top1": clean,
        "seed": seed,
        "device": str(dev),
        "rows": rows,
    }


def matrix(table: dict[str, Any], view: str) -> list[list[float]]:
    """Rows = sources, columns = targets, values in [0, 1]."""
    cell = {(r["source"], r["target"]): r[view] for r in table["rows"]}
    return [[cell[(s, t)] for t in table["targets"]] for s in table["sources"]]


def _describe(table: dict[str, Any]) -> str:
    p = table["params"]
    bits = [f"{k}={v * 255:g}/255" if k in ("eps", "alpha") else f"{k}={v}" for k, v in p.items()]
    return (
        f"{table['attack']} ({', '.join(bits)}); {table['n']} held-out {table['dataset']} faces "
        f"(of {table['n_drawn']} drawn) that every model classifies correctly; targeted view: "
        f"{table['target_mode']} identity under the source; pixels rounded to 8 bits"
    )


def format_markdown(table: dict[str, Any]) -> str:
    """The three matrices as Markdown tables (percent; rows = source, columns = target)."""
    out = [f"Transfer: {_describe(table)}.", ""]
    for view, title in VIEWS.items():
        out.append(f"**{title}** (rows: source, columns: target)\n")
        out.append("| source \\ target | " + " | ".join(table["targets"]) + " |")
        out.append("|---|" + "--:|" * len(table["targets"]))
        for s, vals in zip(table["sources"], matrix(table, view), strict=True):
            out.append(f"| {s} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
        out.append("")
    return "\n".join(out)


def plot_transfer(table: dict[str, Any], path: Path) -> Path:
    """Heatmaps of the three views side by side (percent in each cell)."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    ns, nt = len(table["sources"]), len(table["targets"])
    w = 1.0 + 3 * max(2.4, 0.62 * nt + 1.0)
    h = 1.6 + max(1.6, 0.5 * ns)
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        fig = Figure(figsize=(w, h), layout="constrained")
        axes = fig.subplots(1, 3, sharey=True)
        for k, (ax, (view, title)) in enumerate(zip(axes, SHORT.items(), strict=True)):
            m = 100 * np.array(matrix(table, view))
            im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis", aspect="auto")
            for i in range(ns):
                for j in range(nt):
                    ax.text(
                        j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > 60 else "white",
                    )  # fmt: skip
            white = {(r["source"], r["target"]) for r in table["rows"] if r["white_box"]}
            for i, src in enumerate(table["sources"]):
                for j, tgt in enumerate(table["targets"]):
                    if (src, tgt) in white:  # white-box cells: the source attacking itself
                        ax.add_patch(
                            mpl.patches.Rectangle(
                                (j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=1.5
                            )
                        )
            ax.set_xticks(range(nt), table["targets"], rotation=30, ha="right")
            ax.set_yticks(range(ns), table["sources"])
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("target (evaluated on)")
            if k == 0:
                ax.set_ylabel("source (crafted on)")
            for spine in ax.spines.values():
                spine.set_visible(False)
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="% of the adversarial examples")
        p = table["params"]
        eps = f"eps {p['eps'] * 255:g}/255" if "eps" in p else ""
        fig.suptitle(
            f"Transferability of {LABELS.get(table['attack'], table['attack'])} examples "
            "made on the source "
            f"({eps}, {table['target_mode']} targets, n = {table['n']} faces)",
            fontsize=10,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return path


def write_report(table: dict[str, Any], out: Path) -> dict[str, Path]:
    """transfer.csv, transfer_{untargeted,targeted,deid}.csv, .md, .json and .png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "transfer.csv"}
    write_csv(table["rows"], paths["csv"])
    for view in VIEWS:
        p = out / f"transfer_{view}.csv"
        rows = [
            {
                "source": s,
                **{t: round(100 * v, 2) for t, v in zip(table["targets"], vals, strict=True)},
            }
            for s, vals in zip(table["sources"], matrix(table, view), strict=True)
        ]
        write_csv(rows, p)
        paths[view] = p
    paths["md"] = out / "transfer.md"
    paths["md"].write_text(format_markdown(table))
    paths["json"] = out / "transfer.json"
    paths["json"].write_text(json.dumps(table, indent=1) + "\n")
    paths["png"] = plot_transfer(table, out / "transfer.png")
    return paths


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_parser(esub: argparse._SubParsersAction) -> None:
    """``deid eval transfer``."""
    p = esub.add_parser(
        "transfer", help="share of adversarial examples made on each source that fool each target"
    )
    p.add_argument("--sources", required=True, help="comma-separated shipped names or paths")
    p.add_argument("--targets", help="comma-separated (default: the sources)")
    p.add_argument("--attack", default="ifgsm", help="a registry name (default ifgsm)")
    p.add_argument("--eps", default="16/255", help="L-inf budget, e.g. 8/255")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--alpha", default="2/255", help="step size (capped at eps)")
    p.add_argument(
        "--target-mode",
        default="least-likely",
        choices=["least-likely", "nearest", "random"],
        help="targeted view: which identity each face is pushed to on the source",
    )
    p.add_argument(
        "--early-stop",
        action="store_true",
        help="stop each face once the source is fooled (weaker transfer)",
    )
    p.add_argument("-n", type=int, default=200, help="held-out faces to draw")
    add_report_flags(p)
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args: argparse.Namespace) -> int:
    from deid.evaluate import check_eval_writes
    from deid.io import Artefact

    set_threads(args)
    eps = parse_fraction(args.eps)
    if not 0 < eps <= 1:
        raise ConfigError(f"--eps: expected a value in (0, 1] such as 8/255, got {args.eps!r}")
    sources = _names(args.sources)
    targets = _names(args.targets) if args.targets else sources
    check_eval_writes(
        [Artefact("report", args.output, folder=True)], args.data, [*sources, *targets]
    )
    table = transfer_table(
        sources,
        targets,
        attack=args.attack,
        eps=eps,
        steps=args.steps,
        alpha=parse_fraction(args.alpha),
        target_mode=args.target_mode,
        early_stop=args.early_stop,
        n=args.n,
        data=args.data,
        device=args.device,
        seed=args.seed,
    )
    print_report(write_report(table, args.output))
    return 0
