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

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deid.errors import ConfigError
from deid.eval.common import checkpoint_label, dataset_of, sample_index, write_csv

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
    return ds.tensors_at(pool[sample_index(len(pool), n, seed)])  # pool is sorted


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
    from deid.pipeline import resolve_device
    from deid.targets import choose_targets

    if not sources or not targets:
        raise ConfigError("transfer needs at least one source and one target classifier")
    dev = resolve_device(device)
    src_labels, tgt_labels = _labels(sources), _labels(targets)
    names = dict(zip(src_labels, sources, strict=True))
    names.update(zip(tgt_labels, targets, strict=True))
    models = _load_models(names, dev)
    check_compatible(models)
    untargeted_atk, params = _attack(attack, eps, steps, alpha, False, early_stop)
    targeted_atk, _ = _attack(attack, eps, steps, alpha, True, early_stop)
    x, y, clean, n_drawn = _faces_all_get_right(models, n, seed, data, dev)

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
        "n_drawn": n_drawn,
        "n": len(x),
        "clean_top1": clean,
        "seed": seed,
        "device": str(dev),
        "rows": rows,
    }


def _load_models(names: dict[str, str], dev: torch.device) -> dict[str, Any]:
    """Label -> classifier; a checkpoint named twice (as source and target) is loaded once."""
    from deid.models import load_classifier

    by_path: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for lab, path in names.items():
        if path not in by_path:
            by_path[path] = load_classifier(path, dev)
        models[lab] = by_path[path]
    return models


def _faces_all_get_right(
    models: dict[str, Any], n: int, seed: int, data: Path | None, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float], int]:
    """The shared held-out faces every model classifies correctly: images, labels, each
    model's clean top-1 on all the faces drawn, and how many were drawn.

    Raises:
        ConfigError: no face is classified correctly by every model.
    """
    from deid.attacks.base import predict

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
    return x, y, clean, len(ok)


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
    from deid.report.plots import transfer_heatmaps

    paths["png"] = transfer_heatmaps(table, out / "transfer.png", SHORT)
    return paths
