"""How deid's figures and tables look: one matplotlib style, one palette, the display names
of attacks and how a budget is written. No matplotlib import here: tables use it too."""

from __future__ import annotations

# Colour-blind safe (Okabe-Ito): one colour per series, and fixed meanings elsewhere.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
GOOD, BAD, NEUTRAL = "#009E73", "#D55E00", "#7F7F7F"

# matplotlib rc parameters of every figure (applied with ``matplotlib.rc_context``; no global
# backend or style is changed for the rest of the process).
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

# Display names of attacks (the seed's figure says "fast", "basic iter.", "iter. l.l.").
ATTACK_LABELS = {
    "fgsm": "FGSM",
    "ifgsm": "I-FGSM",
    "pgd": "PGD",
    "mifgsm": "MI-FGSM",
    "illc": "iter. l.l.",
    "cw": "C&W-L2",
    "realistic": "C&W-L2",
    "deepfool": "DeepFool",
}


def eps_text(eps: float | None) -> str:
    """An L-inf budget as people write it: ``8/255`` on the 8-bit grid, else ``0.0123``;
    ``-`` for none."""
    if eps is None:
        return "-"
    v = eps * 255
    return f"{v:g}/255" if abs(v - round(v, 3)) < 1e-6 else f"{eps:.4g}"
