"""Contact sheet: each face before and after, with the classifier's verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 128
PAD = 8
TEXT_H = 44


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _thumb(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray(rgb)
    img.thumbnail((CELL, CELL), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (CELL, CELL), (24, 24, 24))
    canvas.paste(img, ((CELL - img.width) // 2, (CELL - img.height) // 2))
    return canvas


def contact_sheet(
    faces: Sequence[dict[str, Any]], path: Path | str, title: str = "", columns: int = 4
) -> Path:
    """Write a PNG grid of face pairs: the original crop (with its predicted identity and
    confidence) beside the de-identified one (with the identity the classifier now sees).

    Args:
        faces: records with ``before`` and ``after`` (h, w, 3) uint8 crops and the report's
            ``pred``, ``pred_conf``, ``final``, ``final_conf``, ``target``, ``action``, ``psnr``.
        path: output PNG.
    """
    path = Path(path)
    f_small, f_title = _font(12), _font(16)
    n = max(1, len(faces))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    pair_w = 2 * CELL + PAD
    top = 32 if title else PAD
    W = cols * pair_w + (cols + 1) * 2 * PAD
    H = top + rows * (CELL + TEXT_H + 2 * PAD) + PAD
    sheet = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((2 * PAD, 8), title, fill=(20, 20, 20), font=f_title)
    if not faces:
        draw.text((2 * PAD, top + 10), "no faces detected", fill=(120, 120, 120), font=f_title)
    for i, f in enumerate(faces):
        r, c = divmod(i, cols)
        x = 2 * PAD + c * (pair_w + 2 * PAD)
        y = top + r * (CELL + TEXT_H + 2 * PAD)
        sheet.paste(_thumb(f["before"]), (x, y))
        sheet.paste(_thumb(f["after"]), (x + CELL + PAD, y))
        ok = f["action"] == "attacked"
        colour = (20, 120, 40) if ok else (190, 60, 20)
        draw.rectangle(
            [x + CELL + PAD - 1, y - 1, x + 2 * CELL + PAD, y + CELL], outline=colour, width=2
        )
        draw.text(
            (x, y + CELL + 3), f"{f['pred']} {f['pred_conf']:.2f}", fill=(30, 30, 30), font=f_small
        )
        draw.text((x, y + CELL + 17), f"frame {f['frame']}", fill=(110, 110, 110), font=f_small)
        if ok:
            psnr = f"{f['psnr']:.1f} dB" if f.get("psnr") else ""
            draw.text(
                (x + CELL + PAD, y + CELL + 3),
                f"-> {f['final']} {f['final_conf']:.2f}",
                fill=colour,
                font=f_small,
            )
            draw.text(
                (x + CELL + PAD, y + CELL + 17),
                f"target {f['target']} {psnr}",
                fill=(110, 110, 110),
                font=f_small,
            )
        else:
            draw.text((x + CELL + PAD, y + CELL + 3), f"{f['action']}", fill=colour, font=f_small)
            draw.text(
                (x + CELL + PAD, y + CELL + 17),
                "attack failed: fail closed",
                fill=(110, 110, 110),
                font=f_small,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    sheet.save(tmp)
    tmp.replace(path)
    return path
