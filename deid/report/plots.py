"""Figures of evaluation and run reports (matplotlib, Agg backend, written as PNG)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# One colour per eps row (colour-blind safe, Okabe-Ito), and fixed meanings elsewhere.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
GOOD, BAD, NEUTRAL = "#009E73", "#D55E00", "#7F7F7F"

# Figures are built as matplotlib.figure.Figure (Agg canvas when saved as PNG), without
# pyplot: no global backend or style is changed for the rest of the process.
STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
}


def _styled(fn: Callable[..., Path]) -> Callable[..., Path]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


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


@_styled
def success_vs_eps(rep: dict[str, Any], path: Path) -> Path:
    """Protection (targeted success, original identity still recognised, MTCNN still finds
    the face) and image quality (PSNR, SSIM) against the L-inf budget."""
    rows = rep["rows"]
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(9.2, 4.0))
    fig.suptitle(
        f"{rep['attack']} ({rep['target_mode']}) vs {rep['classifier']}, "
        f"{rep['dataset']} held-out, n={rep['n']}",
        fontsize=10,
    )
    series = [
        ("targeted success", "success", GOOD, "o"),
        ("original identity recognised", "original_recognised", BAD, "s"),
        ("MTCNN still finds the face", "detection_kept", PALETTE[0], "^"),
    ]
    bounded = [r for r in rows if r.get("eps") is not None]
    if len(bounded) < 2:  # a single row (one eps, or an unbounded attack): bars
        bounded = []
    if bounded:
        x = np.array([r["eps_255"] for r in bounded])
        clean = rep.get("clean", {})
        if clean.get("top1") is not None:
            ax1.axhline(100 * clean["top1"], color=BAD, ls=":", lw=1.2, label="recognised before")
        for label, key, colour, marker in series:
            y = [_pct(r.get(key)) for r in bounded]
            ax1.plot(x, y, marker=marker, color=colour, label=label, lw=2, ms=6)
            if key == "detection_kept":
                continue  # its figures are in the table; labels here would collide
            for xi, yi in zip(x, y, strict=True):
                if np.isfinite(yi):
                    ax1.annotate(
                        f"{yi:.0f}%",
                        (xi, yi),
                        textcoords="offset points",
                        # high success labels go below: the detection line runs near 100%
                        xytext=(0, -14) if key == "success" and yi > 50 else (0, 6),
                        ha="center",
                        fontsize=7,
                        color=colour,
                    )
        ax1.set_xscale("log", base=2)
        ax1.set_xticks(x, [f"{v:g}/255" for v in x])
        ax1.minorticks_off()
        ax1.set_xlabel("L-inf budget eps")
        ps = [r["psnr"]["mean"] for r in bounded]
        ss = [r["ssim"]["mean"] for r in bounded]
        lo = [r["psnr"]["min"] for r in bounded]
        hi = [r["psnr"]["max"] for r in bounded]
        ax2.fill_between(x, lo, hi, color=PALETTE[0], alpha=0.12, lw=0, label="PSNR min-max")
        ax2.plot(x, ps, marker="o", color=PALETTE[0], lw=2, label="PSNR mean")
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(x, [f"{v:g}/255" for v in x])
        ax2.minorticks_off()
        ax2.set_xlabel("L-inf budget eps")
        ax2.set_ylabel("PSNR (dB)", color=PALETTE[0])
        ax3 = ax2.twinx()
        ax3.plot(x, ss, marker="s", color=PALETTE[1], lw=2, label="SSIM mean")
        ax3.set_ylabel("SSIM", color=PALETTE[1])
        ax3.set_ylim(min(0.5, *[v for v in ss if v is not None]) - 0.02, 1.0)
        ax3.grid(False)
        ax3.spines["right"].set_visible(True)
        h1, l1 = ax2.get_legend_handles_labels()
        h2, l2 = ax3.get_legend_handles_labels()
        ax2.legend(
            h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8
        )
    else:  # one row: bars
        r = rows[0]
        shown = [s for s in series if r.get(s[1]) is not None]  # no detection: no bar
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
    ax1.set_ylim(-3, 108)
    ax1.set_ylabel("% of faces")
    ax1.set_title("protection" if bounded else f"protection ({eps_label(rows[0])})")
    ax2.set_title("image quality" if bounded else ax2.get_title())
    if bounded:
        ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    return _save(fig, path)


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
