"""Figures of evaluation and run reports (matplotlib, Agg backend, written as PNG): ``deid
report``'s eval and run pages, and the ``deid eval robustness|transfer`` reports."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from deid.report.style import ATTACK_LABELS, BAD, GOOD, NEUTRAL, PALETTE, STYLE, eps_text

# Figures are built as matplotlib.figure.Figure (Agg canvas when saved as PNG), without
# pyplot, in the one style of deid/report/style.py.


def _styled(fn: Callable[..., Path]) -> Callable[..., Path]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _subplots(
    nrows: int, ncols: int, figsize: tuple[float, float], **kwargs: Any
) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png", bbox_inches="tight", facecolor="white")
    tmp.replace(path)
    return path


def eps_label(row: dict[str, Any]) -> str:
    return f"eps {row['eps_255']:g}/255" if row.get("eps") is not None else "unbounded"


def _pct(v: float | None) -> float:
    return float("nan") if v is None else 100.0 * v


#: The protection lines of success_vs_eps: (label, row key, colour, marker).
PROTECTION = [
    ("targeted success", "success", GOOD, "o"),
    ("original identity recognised", "original_recognised", BAD, "s"),
    ("MTCNN still finds the face", "detection_kept", PALETTE[0], "^"),
]


@_styled
def success_vs_eps(rep: dict[str, Any], path: Path) -> Path:
    """Protection (targeted success, original identity still recognised, MTCNN still finds
    the face) and image quality (PSNR, SSIM) against the L-inf budget; a report with one row
    (one eps, or an unbounded attack) as bars and a PSNR histogram."""
    rows = rep["rows"]
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(9.2, 4.0))
    fig.suptitle(
        f"{rep['attack']} ({rep['target_mode']}) vs {rep['classifier']}, "
        f"{rep['dataset']} held-out, n={rep['n']}",
        fontsize=10,
    )
    bounded = [r for r in rows if r.get("eps") is not None]
    if len(bounded) < 2:  # a single row (one eps, or an unbounded attack): bars
        bounded = []
    if bounded:
        _protection_lines(ax1, bounded, rep.get("clean", {}))
        _quality_lines(ax2, bounded)
    else:
        _one_row(ax1, ax2, rows[0])
    ax1.set_ylim(-3, 108)
    ax1.set_ylabel("% of faces")
    ax1.set_title("protection" if bounded else f"protection ({eps_label(rows[0])})")
    ax2.set_title("image quality" if bounded else ax2.get_title())
    if bounded:
        ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    return _save(fig, path)


def _eps_axis(ax: Any, x: np.ndarray) -> None:
    """A log2 x axis with a tick at each budget, labelled in /255."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}/255" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("L-inf budget eps")


def _protection_lines(ax: Any, rows: list[dict[str, Any]], clean: dict[str, Any]) -> None:
    """The PROTECTION shares against eps, labelled in % (but detection, which the table has)."""
    x = np.array([r["eps_255"] for r in rows])
    if clean.get("top1") is not None:
        ax.axhline(100 * clean["top1"], color=BAD, ls=":", lw=1.2, label="recognised before")
    for label, key, colour, marker in PROTECTION:
        y = [_pct(r.get(key)) for r in rows]
        ax.plot(x, y, marker=marker, color=colour, label=label, lw=2, ms=6)
        if key == "detection_kept":
            continue  # its figures are in the table; labels here would collide
        for xi, yi in zip(x, y, strict=True):
            if np.isfinite(yi):
                ax.annotate(
                    f"{yi:.0f}%",
                    (xi, yi),
                    textcoords="offset points",
                    # high success labels go below: the detection line runs near 100%
                    xytext=(0, -14) if key == "success" and yi > 50 else (0, 6),
                    ha="center",
                    fontsize=7,
                    color=colour,
                )
    _eps_axis(ax, x)


def _quality_lines(ax: Any, rows: list[dict[str, Any]]) -> None:
    """PSNR (mean, min-max band) and, on a twin axis, mean SSIM against eps."""
    x = np.array([r["eps_255"] for r in rows])
    ps = [r["psnr"]["mean"] for r in rows]
    ss = [r["ssim"]["mean"] for r in rows]
    lo = [r["psnr"]["min"] for r in rows]
    hi = [r["psnr"]["max"] for r in rows]
    ax.fill_between(x, lo, hi, color=PALETTE[0], alpha=0.12, lw=0, label="PSNR min-max")
    ax.plot(x, ps, marker="o", color=PALETTE[0], lw=2, label="PSNR mean")
    _eps_axis(ax, x)
    ax.set_ylabel("PSNR (dB)", color=PALETTE[0])
    twin = ax.twinx()
    twin.plot(x, ss, marker="s", color=PALETTE[1], lw=2, label="SSIM mean")
    twin.set_ylabel("SSIM", color=PALETTE[1])
    twin.set_ylim(min(0.5, *[v for v in ss if v is not None]) - 0.02, 1.0)
    twin.grid(False)
    twin.spines["right"].set_visible(True)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8)


def _one_row(ax1: Any, ax2: Any, r: dict[str, Any]) -> None:
    """One row: its protection shares as bars, its per-face PSNR as a histogram."""
    shown = [s for s in PROTECTION if r.get(s[1]) is not None]  # no detection: no bar
    labels = [s[0].replace(" the face", "").replace(" identity", "") for s in shown]
    vals = [_pct(r.get(s[1])) for s in shown]
    bars = ax1.bar(labels, vals, color=[s[2] for s in shown], width=0.6)
    ax1.bar_label(bars, fmt="%.0f%%", fontsize=8)
    ax1.tick_params(axis="x", labelsize=8)
    v = np.array([np.nan if a is None else a for a in r["per_sample"]["psnr"]], float)
    ax2.hist(v[np.isfinite(v)], bins=20, color=PALETTE[0], alpha=0.8)
    ax2.set_xlabel("PSNR (dB)")
    ax2.set_ylabel("faces")
    ax2.set_title(
        f"PSNR per face: mean {r['psnr']['mean']:.1f} dB, mean SSIM {r['ssim']['mean']:.3f}"
    )


NORM_PANELS = [
    ("l0", "changed values L0 (% of pixels x channels)", 100.0, "l0_fraction"),
    ("l1", "L1 (pixel units, [0,1])", 1.0, None),
    ("l2", "L2 (pixel units, [0,1])", 1.0, None),
    ("linf", "L-inf (/255)", 255.0, None),
    ("psnr", "PSNR (dB)", 1.0, None),
    ("ssim", "SSIM", 1.0, None),
]


@_styled
def norm_histograms(rep: dict[str, Any], path: Path) -> Path:
    """Per-face distributions of the perturbation's L0/L1/L2/L-inf, PSNR and SSIM, one colour
    per eps."""
    rows = rep["rows"]
    numel = None
    fig, axes = _subplots(2, 3, figsize=(10, 5.4))
    for ax, (key, title, scale, _) in zip(axes.flat, NORM_PANELS, strict=True):
        data = []
        for r in rows:
            v = np.array([np.nan if a is None else a for a in r["per_sample"][key]], float)
            if key == "l0":
                # per-sample counts -> share of values (the row's summary has the divisor)
                if numel is None:
                    m, f = r["norms"]["l0"]["mean"], r["l0_fraction"]["mean"]
                    numel = m / f if f else 1.0
                v = v / numel
            data.append(v[np.isfinite(v)] * scale)
        allv = np.concatenate(data) if data else np.zeros(0)
        if not len(allv):
            ax.set_visible(False)
            continue
        lo, hi = float(allv.min()), float(allv.max())
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 25)
        for i, (r, v) in enumerate(zip(rows, data, strict=True)):
            c = PALETTE[i % len(PALETTE)]
            ax.hist(v, bins=bins, color=c, alpha=0.35, label=eps_label(r))
            ax.hist(v, bins=bins, color=c, histtype="step", lw=1.5)
            if len(v):
                ax.axvline(float(np.median(v)), color=c, ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("faces")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(
        f"per-face perturbation and quality ({rep['attack']} vs {rep['classifier']}, "
        f"n={rep['n']}; dashed: median)",
        fontsize=10,
    )
    return _save(fig, path)


@_styled
def confusion(rep: dict[str, Any], path: Path, max_panels: int = 4) -> Path:
    """True identity vs predicted identity, before de-identification and after each eps.

    Each dot is a nonzero cell (area ~ count). Red: the true identity (recognised), green:
    the attack's target, grey: someone else.
    """
    k = len(rep["class_names"])
    ps = rep["per_sample"]
    labels, targets = np.array(ps["label"]), np.array(ps["target"])
    panels: list[tuple[str, np.ndarray]] = [("before (clean)", np.array(ps["pred"]))]
    rows = rep["rows"][-(max_panels - 1) :] if max_panels > 1 else []
    panels += [(f"after, {eps_label(r)}", np.array(r["per_sample"]["pred"])) for r in rows]
    fig, axes = _subplots(1, len(panels), figsize=(3.4 * len(panels), 4.2))
    axes = np.atleast_1d(axes)
    for ax, (title, pred) in zip(axes, panels, strict=True):
        cat = np.where(pred == labels, 0, np.where(pred == targets, 1, 2))
        keys, counts = np.unique(np.stack([labels, pred, cat], 1), axis=0, return_counts=True)
        colours = np.array([BAD, GOOD, NEUTRAL])[keys[:, 2]]
        base = max(8.0, 4000.0 / k)  # dot area (points^2) of a count-1 cell
        ax.scatter(
            keys[:, 1], keys[:, 0], s=base * np.sqrt(counts), c=colours, alpha=0.8, linewidths=0
        )
        ax.plot([0, k - 1], [0, k - 1], color=BAD, lw=0.5, alpha=0.3)
        ax.set_xlim(-1, k)
        ax.set_ylim(k, -1)
        ax.set_xlabel("predicted identity")
        share = 100.0 * float((pred == labels).mean())
        hit = 100.0 * float((pred == targets).mean())
        ax.set_title(f"{title}\nas self {share:.0f}%, as target {hit:.0f}%", fontsize=9)
    axes[0].set_ylabel("true identity")
    handles = [
        Line2D([], [], ls="", marker="o", color=c, label=t)
        for c, t in [(BAD, "true identity"), (GOOD, "attack's target"), (NEUTRAL, "another")]
    ]
    fig.suptitle(f"identity confusion, {rep['dataset']} ({k} identities, n={rep['n']})")
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# run reports
# --------------------------------------------------------------------------------------------
@_styled
def coverage(
    frames: Sequence[int],
    series: dict[str, Sequence[float]],
    path: Path,
    title: str,
    stacked: Sequence[str] = (),
) -> Path:
    """Per-frame counts. Top: ``stacked`` series as stacked areas (what happened to each
    face) with the ``faces``/``protected`` totals as lines; bottom: everything else (faces
    the tracker filled in where the detector missed them, unprotected faces), on its own
    scale so that small counts and zeros can be read."""
    top_names = [n for n in series if n in stacked or n in ("faces", "protected")]
    low_names = [n for n in series if n not in top_names]
    x = np.asarray(frames)
    edges = np.arange(len(x) + 1) - 0.5 + (x[0] if len(x) else 0)
    fig = Figure(figsize=(10, 4.2 if low_names else 3.2), layout="constrained")
    if low_names:
        ax, low = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    else:
        ax, low = fig.subplots(1, 1), None
    colours = {"de-identified": GOOD, "obscured": BAD, "repaired": PALETTE[1]}
    base = np.zeros(len(x))
    for i, name in enumerate(stacked):
        top = base + np.asarray(series[name], float)
        colour = colours.get(name, PALETTE[i])
        ax.stairs(top, edges, baseline=base, fill=True, color=colour, alpha=0.8, label=name)
        base = top
    styles = {  # the pipeline's coverage columns and the tracker's fills get fixed styles
        "faces": {"color": "#222222", "lw": 1.0},
        "protected": {"color": "#005A32", "lw": 1.2, "ls": "--"},
        "unprotected": {"color": "#C00000", "lw": 2.4},
        "interpolated (not detected)": {"color": PALETTE[0], "lw": 1.6},
        "extrapolated (not detected)": {"color": PALETTE[3], "lw": 1.6},
    }
    for i, name in enumerate(n for n in top_names if n not in stacked):
        style = styles.get(name, {"color": PALETTE[(i + 4) % len(PALETTE)], "lw": 1.4})
        ax.stairs(np.asarray(series[name], float), edges, label=name, **style)
    ax.set_ylabel("faces")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    if low is not None:
        peak = 1.0
        for i, name in enumerate(low_names):
            ys = np.asarray(series[name], float)
            peak = max(peak, float(ys.max()) if len(ys) else 0.0)
            style = styles.get(name, {"color": PALETTE[(i + 5) % len(PALETTE)], "lw": 1.4})
            label = name
            if name == "unprotected":
                label = f"unprotected ({int((ys > 0).sum())} frames)"
            low.stairs(ys, edges, label=label, **style)
        low.set_ylim(-0.15 * peak, peak * 1.25)
        low.set_ylabel("faces")
        low.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        low.set_xlabel("frame")
    else:
        ax.set_xlabel("frame")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# deid eval robustness and deid eval transfer
# --------------------------------------------------------------------------------------------
DASHES = ["-", "--", ":", "-."]  # one line style per checkpoint
MARKERS = ["o", "s", "^", "D"]


@_styled
def accuracy_vs_eps(table: dict[str, Any], path: Path) -> Path:
    """Accuracy under attack vs eps (``deid eval robustness``): one colour per attack, one
    line style per checkpoint; attacks without an eps as points at the right, past a divider."""
    labels = [c["label"] for c in table["checkpoints"]]
    eps_list = sorted(table["eps"])
    # attacks without an L-inf budget have one row each, at eps None
    no_eps = {r["attack"] for r in table["rows"] if r["eps"] is None}
    bounded = [a for a in table["attacks"] if a not in no_eps]
    unbounded = [a for a in table["attacks"] if a in no_eps]
    xs_b = list(range(len(eps_list) + 1))  # 0 = clean
    ticks = ["clean"] + [eps_text(e).replace("/255", "") for e in eps_list]
    x_u = [len(eps_list) + 1.5 + 1.6 * i for i in range(len(unbounded))]
    color = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(table["attacks"])}
    acc = {(r["checkpoint"], r["attack"], r["eps"]): r for r in table["rows"]}
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
    ax.set_xticks(xs_b + x_u, ticks + [ATTACK_LABELS.get(a, a) + "\n(no eps)" for a in unbounded])
    ax.set_xlim(-0.3, (x_u[-1] + 0.8) if unbounded else xs_b[-1] + 0.3)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("eps (L-inf, in 1/255 of the pixel range)")
    ax.set_ylabel("held-out top-1 accuracy under attack (%)")
    ns = sorted({c["n"] for c in table["checkpoints"]})
    sets = ", ".join(sorted({c["dataset"] for c in table["checkpoints"]}))
    ax.set_title(
        f"Accuracy under untargeted attacks ({sets} held-out faces, n = {', '.join(map(str, ns))})"
    )
    h_att = [
        Line2D([], [], color=color[a], lw=2, label=ATTACK_LABELS.get(a, a))
        for a in table["attacks"]
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
    return _save(fig, path)


@_styled
def transfer_heatmaps(table: dict[str, Any], path: Path, views: dict[str, str]) -> Path:
    """Source x target heatmaps of a ``deid eval transfer`` table, one per view (percent in
    each cell; white-box cells outlined).

    Args:
        views: row key -> panel title, in panel order.
    """
    ns, nt = len(table["sources"]), len(table["targets"])
    cell = {(r["source"], r["target"]): r for r in table["rows"]}
    w = 1.0 + len(views) * max(2.4, 0.62 * nt + 1.0)
    h = 1.6 + max(1.6, 0.5 * ns)
    fig, axes = _subplots(1, len(views), figsize=(w, h), sharey=True)
    axes = np.atleast_1d(axes)
    for k, (ax, (view, title)) in enumerate(zip(axes, views.items(), strict=True)):
        m = 100 * np.array(
            [[cell[(s, t)][view] for t in table["targets"]] for s in table["sources"]]
        )
        ax.grid(False)
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i in range(ns):
            for j in range(nt):
                ax.text(
                    j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=8,
                    color="black" if m[i, j] > 60 else "white",
                )  # fmt: skip
        for i, src in enumerate(table["sources"]):
            for j, tgt in enumerate(table["targets"]):
                if cell[(src, tgt)]["white_box"]:  # the source attacking itself
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
        f"Transferability of {ATTACK_LABELS.get(table['attack'], table['attack'])} examples "
        f"made on the source ({eps}, {table['target_mode']} targets, n = {table['n']} faces)",
        fontsize=10,
    )
    return _save(fig, path)
