"""Contact sheets: each face before and after, with the classifier's verdicts.

A sheet holds no face clearer than deid's output unless asked for: the *before* tiles are the
original crops pixelated the way deid obscures a face whose attack failed. With
``show_originals`` they are the clear originals, and the sheet says so in a red line under its
title and in its PNG metadata (``deid:originals``: ``clear`` or ``pixelated``), and a warning
is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from deid.align import pixelate
from deid.io import tmp_beside

log = logging.getLogger(__name__)

CELL = 128
PAD = 8
TEXT_H = 44
RED = (200, 30, 30)
#: The PNG text key that says whether a sheet's originals are ``clear`` or ``pixelated``.
ORIGINALS_KEY = "deid:originals"
#: The line a sheet with clear originals carries under its title.
CLEAR_WARNING = "CLEAR ORIGINAL FACES: not de-identified, do not share"


def originals(rgb: np.ndarray, show: bool) -> np.ndarray:
    """An original face crop as a sheet shows it: clear only when ``show``."""
    return rgb if show else pixelate(rgb)


def _save(sheet: Image.Image, path: Path, show_originals: bool) -> Path:
    """Write the PNG atomically, with the ``deid:originals`` text; warn for clear faces."""
    info = PngImagePlugin.PngInfo()
    info.add_text(ORIGINALS_KEY, "clear" if show_originals else "pixelated")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_beside(path)
    try:
        sheet.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    if show_originals:
        log.warning("%s holds clear original faces (not de-identified): do not share it", path)
    return path


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _thumb(rgb: np.ndarray) -> Image.Image:
    """The crop scaled to fit the cell (small drone faces are enlarged, so they can be seen)."""
    img = Image.fromarray(rgb)
    if img.width and img.height:
        k = CELL / max(img.width, img.height)
        size = (max(1, round(img.width * k)), max(1, round(img.height * k)))
        img = img.resize(size, Image.Resampling.LANCZOS if k < 1 else Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (CELL, CELL), (24, 24, 24))
    canvas.paste(img, ((CELL - img.width) // 2, (CELL - img.height) // 2))
    return canvas


def contact_sheet(
    faces: Sequence[dict[str, Any]],
    path: Path | str,
    title: str = "",
    columns: int = 4,
    show_originals: bool = False,
) -> Path:
    """Write a PNG grid of face pairs: the original crop (with its predicted identity and
    confidence) beside the de-identified one (with the identity the classifier now sees).

    Args:
        faces: records with ``before`` and ``after`` (h, w, 3) uint8 crops and the report's
            ``pred``, ``pred_conf``, ``final``, ``final_conf``, ``target``, ``action``, ``psnr``.
        path: output PNG.
        show_originals: show the clear original crops; by default they are pixelated (the
            sheet then holds no face clearer than the de-identified output).
    """
    path = Path(path)
    f_small, f_title = _font(12), _font(16)
    n = max(1, len(faces))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    pair_w = 2 * CELL + PAD
    top = (32 if title else PAD) + (22 if show_originals else 0)
    W = cols * pair_w + (cols + 1) * 2 * PAD
    H = top + rows * (CELL + TEXT_H + 2 * PAD) + PAD
    sheet = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((2 * PAD, 8), title, fill=(20, 20, 20), font=f_title)
    if show_originals:
        draw.text((2 * PAD, top - 26), CLEAR_WARNING, fill=RED, font=f_title)
    if not faces:
        draw.text((2 * PAD, top + 10), "no faces detected", fill=(120, 120, 120), font=f_title)
    for i, f in enumerate(faces):
        r, c = divmod(i, cols)
        x = 2 * PAD + c * (pair_w + 2 * PAD)
        y = top + r * (CELL + TEXT_H + 2 * PAD)
        sheet.paste(_thumb(originals(f["before"], show_originals)), (x, y))
        sheet.paste(_thumb(f["after"]), (x + CELL + PAD, y))
        ok = f["action"] == "attacked"
        colour = (20, 120, 40) if ok else (190, 60, 20)
        draw.rectangle(
            [x + CELL + PAD - 1, y - 1, x + 2 * CELL + PAD, y + CELL], outline=colour, width=2
        )
        draw.text(
            (x, y + CELL + 3), f"{f['pred']} {f['pred_conf']:.2f}", fill=(30, 30, 30), font=f_small
        )
        where = Path(f["file"]).name if f.get("file") else f"frame {f['frame']}"
        draw.text((x, y + CELL + 17), where[:22], fill=(110, 110, 110), font=f_small)
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
                "recognised in the file"
                if str(f["action"]).startswith("repaired")
                else "attack failed: fail closed",
                fill=(110, 110, 110),
                font=f_small,
            )
    return _save(sheet, path, show_originals)


def _decode_png(b64: str) -> np.ndarray:
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        return np.asarray(img.convert("RGB"))


def _upscale(rgb: np.ndarray, cell: int) -> Image.Image:
    """Integer nearest-neighbour upscale (pixels and perturbations stay crisp), centred."""
    img = Image.fromarray(rgb)
    k = max(1, cell // max(img.width, img.height))
    img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    if max(img.size) > cell:
        img.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (cell, cell), (24, 24, 24))
    canvas.paste(img, ((cell - img.width) // 2, (cell - img.height) // 2))
    return canvas


#: Frame colours of an eval sheet's de-identified faces, by whom the classifier sees there.
SEES = {"target": (20, 140, 60), "self": (200, 60, 20), "other": (220, 140, 0)}


def eval_sheet(
    rep: dict[str, Any], path: Path | str, cell: int = 128, show_originals: bool = False
) -> Path:
    """Contact sheet of a ``deid eval dataset`` report: one column per example face; the
    first row is the clean crop (true identity, what the classifier sees and how sure it
    is; pixelated unless ``show_originals``), each further row the de-identified crop at one
    eps (what it sees now, PSNR, SSIM). Frame colour: green = the attack's target, red =
    still the true identity, orange = someone else."""
    path = Path(path)
    ex = rep["examples"]
    rows = rep["rows"]
    f_small, f_head = _font(12), _font(14)
    text_h, head, left = 36, 34 + (22 if show_originals else 0), 92
    col_w, row_h = cell + 2 * PAD, cell + text_h + PAD
    W = left + col_w * len(ex["samples"]) + PAD
    H = head + row_h * (1 + len(rows)) + 22
    sheet = Image.new("RGB", (W, H), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    title = (
        f"{rep['attack']} ({rep['target_mode']}) vs {rep['classifier']}, {rep['dataset']} held-out"
    )
    draw.text((PAD, 8), title, fill=(20, 20, 20), font=_font(16))
    if show_originals:
        draw.text((PAD, 30), CLEAR_WARNING, fill=RED, font=_font(16))
    heads = ["clean" if show_originals else "clean\n(pixelated)"] + [
        f"eps\n{r['eps_255']:g}/255" if r.get("eps") is not None else "de-\nidentified"
        for r in rows
    ]
    for k, h in enumerate(heads):
        draw.multiline_text(
            (PAD, head + k * row_h + cell // 2 - 16), h, fill=(60, 60, 60), font=f_head
        )
    for i, s in enumerate(ex["samples"]):
        x = left + i * col_w
        clean = originals(_decode_png(ex["clean"][i]), show_originals)
        _clean_cell(sheet, draw, rep, s, clean, (x, head), cell, f_small)
        for k, r in enumerate(rows, start=1):
            _attacked_cell(sheet, draw, rep, r, i, s, (x, head + k * row_h), cell, f_small)
    legend = [
        ("frame:", (60, 60, 60)),
        ("the attack's target", SEES["target"]),
        ("still the true identity", SEES["self"]),
        ("someone else", SEES["other"]),
    ]
    x = PAD
    for text, colour in legend:
        draw.text((x, H - 20), text, fill=colour, font=f_small)
        x += int(draw.textlength(text, font=f_small)) + 14
    return _save(sheet, path, show_originals)


def _clean_cell(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    rep: dict[str, Any],
    s: int,
    clean: np.ndarray,
    xy: tuple[int, int],
    cell: int,
    font: ImageFont.ImageFont,
) -> None:
    """Sample ``s``'s clean crop (as shown), its true identity and what the classifier sees."""
    (x, y), names, ps = xy, rep["class_names"], rep["per_sample"]
    label, pred = ps["label"][s], ps["pred"][s]
    sheet.paste(_upscale(clean, cell), (x, y))
    right = pred == label
    draw.text((x, y + cell + 3), f"id {names[label]}", fill=(30, 30, 30), font=font)
    draw.text(
        (x, y + cell + 18),
        f"sees {names[pred]} {ps['conf'][s]:.2f}" + ("" if right else " (wrong)"),
        fill=(30, 30, 30) if right else (120, 120, 120),
        font=font,
    )


def _attacked_cell(
    sheet: Image.Image,
    draw: ImageDraw.ImageDraw,
    rep: dict[str, Any],
    row: dict[str, Any],
    i: int,
    s: int,
    xy: tuple[int, int],
    cell: int,
    font: ImageFont.ImageFont,
) -> None:
    """Sample ``s``'s de-identified crop at one eps ``row`` (its ``i``-th example), framed in
    the colour of whom the classifier sees, with PSNR and SSIM."""
    (x, y), names, ps = xy, rep["class_names"], rep["per_sample"]
    q = row["per_sample"]
    pred = q["pred"][s]
    if pred == ps["label"][s]:
        kind = "self"
    elif pred == ps["target"][s]:
        kind = "target"
    else:
        kind = "other"
    colour = SEES[kind]
    sheet.paste(_upscale(_decode_png(row["examples"][i]), cell), (x, y))
    draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=colour, width=3)
    draw.text((x, y + cell + 3), f"-> {names[pred]} {q['conf'][s]:.2f}", fill=colour, font=font)
    p, ss = q["psnr"][s], q["ssim"][s]
    quality = f"{p:.1f} dB" if p is not None else "identical"
    draw.text(
        (x, y + cell + 18),
        f"{quality}  SSIM {ss:.2f}" if ss is not None else quality,
        fill=(110, 110, 110),
        font=font,
    )
