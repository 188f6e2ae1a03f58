"""What ``--attack replace``'s targeted step does to the written faces: one row per ``then``
setting, the same faces of one photo, cut from the written image around each face's box.

Each row is a ``deid run`` of the photo (``attack: {name: replace, then: ...}``, the same
seed, so the same generated faces) written to ``bench/out/``; the tiles are the written
faces (generated ones, or obscured where a face failed closed), never a clear original.
It also prints, per row, the protection step's seconds, the faces read as their target on
the written file and the judge's links, from the run's report.

    .venv/bin/python bench/replace_then_sheet.py -o docs/replace.then.jpg \
        [--image PHOTO] [--rows null ifgsm advgan16 auto auto-half auto-quarter]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline as bench  # bench/pipeline.py: the output folder

#: row name -> (the ``attack`` settings over ``{name: replace}``, the row's label)
ROWS: dict[str, tuple[dict[str, Any], str]] = {
    "null": ({"then": None}, "generator alone (then: null)"),
    "ifgsm": ({"then": "ifgsm"}, "+ I-FGSM steps with EOT (then: ifgsm)"),
    "advgan16": (
        {"then": "auto", "then_params": {"grades": None}},
        "+ AdvGAN, its whole 16/255 (then: auto before grades)",
    ),
    "auto": ({"then": "auto"}, "+ AdvGAN, graded 1/4, 1/2, all (then: auto)"),
    "auto-half": (
        {"then": "auto", "then_params": {"grades": [0.125, 0.25, 0.5]}},
        "+ AdvGAN, graded 1/8, 1/4, 1/2, then I-FGSM steps",
    ),
    "auto-quarter": (
        {"then": "auto", "then_params": {"grades": [0.125, 0.25]}},
        "+ AdvGAN, graded 1/8, 1/4, then I-FGSM steps",
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--image", type=Path, help="default: the shared group photo")
    ap.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=["null", "ifgsm", "advgan16", "auto"]
    )
    ap.add_argument("--tile", type=int, default=160, help="px per face on the sheet")
    ap.add_argument("--max-faces", type=int, default=8)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)

    import torch
    from PIL import Image, ImageDraw, ImageFont

    from deid.config import load_settings
    from deid.data.datasets import data_dir
    from deid.io import Artefact, check_writes, read_image, write_image
    from deid.pipeline import run

    image = args.image or data_dir() / "scenes" / "group_friends_table.jpg"
    check_writes([("image", image)], [Artefact("sheet", args.output)])
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.OUT_DIR.mkdir(parents=True, exist_ok=True)
    blocks = []
    for name in args.rows:
        attack, label = ROWS[name]
        out = bench.OUT_DIR / f"replace_then_{name}{image.suffix}"
        settings = load_settings(
            overrides={"attack": {"name": "replace", **attack}, "pipeline": {"device": "cpu"}}
        )
        report = run(image, out, settings, progress=False)
        faces = sorted(report["faces_detail"], key=lambda f: f["box"][0])[: args.max_faces]
        img = read_image(out)
        tiles = [_tile(img, f["box"], args.tile) for f in faces]
        kept = [f for f in faces if not f["action"].startswith("obscured")]
        verified = [f for f in faces if (f.get("verified") or {}).get("is_target") is not None]
        summary = {
            "row": name,
            "faces": len(faces),
            "obscured": len(faces) - len(kept),
            "target_on_file": sum(f["verified"]["is_target"] for f in verified),
            "judge_linked": sum(bool((f.get("judge") or {}).get("linked")) for f in faces),
            "steps": [f.get("steps") for f in faces],
            "protect_s": (report.get("seconds") or {}).get("attack"),
        }
        print(json.dumps(summary))
        head = Image.new("RGB", (args.tile * max(1, len(tiles)), 26), (255, 255, 255))
        obscured = f"; {summary['obscured']} face(s) fail-closed" if summary["obscured"] else ""
        ImageDraw.Draw(head).text(
            (4, 4), label + obscured, fill=(0, 0, 0), font=ImageFont.load_default(size=16)
        )
        blocks += [np.asarray(head), np.concatenate(tiles, 1)]
    width = max(b.shape[1] for b in blocks)
    sheet = np.concatenate(
        [np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    )
    write_image(args.output, sheet)
    print(f"{len(args.rows)} rows -> {args.output}")
    return 0


def _tile(img: np.ndarray, box: list[float], side: int) -> np.ndarray:
    """The square around a face's box (1.5x its larger side), resized to ``side``."""
    import cv2

    x1, y1, x2, y2 = box
    half = 0.75 * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    h, w = img.shape[:2]
    a, b = max(0, round(cx - half)), max(0, round(cy - half))
    c, d = min(w, round(cx + half)), min(h, round(cy + half))
    return cv2.resize(
        np.ascontiguousarray(img[b:d, a:c]), (side, side), interpolation=cv2.INTER_AREA
    )


if __name__ == "__main__":
    raise SystemExit(main())
