"""A sheet of the faces ``--attack replace`` generates for the faces of one picture: each
detected face with ``--latents`` different latents (as ``--latents`` different tracks would
get), so one can see that they look like faces and like different people.

The sheet holds only generated faces in their context (the ring of hair and background the
generator keeps), never a clear original face. Default picture: scikit-image's astronaut
(public domain), as the demo uses.

    .venv/bin/python bench/replace_sheet.py -o docs/replace.faces.png [--image PHOTO] [--latents 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--image", type=Path, help="a photo (default: the astronaut)")
    ap.add_argument("--latents", type=int, default=6)
    ap.add_argument("--size", type=int, default=128, help="px per face on the sheet")
    ap.add_argument("--max-faces", type=int, default=6)
    args = ap.parse_args(argv)

    from deid.align import crop_faces, paste_back
    from deid.config import load_settings
    from deid.generators.replace import ReplaceConfig, ReplaceFaces
    from deid.io import Artefact, check_writes, read_image, write_image
    from deid.pipeline import Resources
    from deid.pipeline.stages import detect

    check_writes([("image", args.image)] if args.image else [], [Artefact("sheet", args.output)])
    if args.image:
        frame = read_image(args.image)
    else:
        from skimage import data

        frame = data.astronaut()
    res = Resources.load(load_settings(overrides={"pipeline": {"device": "cpu"}}))
    meta = res.classifier.meta
    det = detect(res.detector, [frame])
    crops = crop_faces([frame], det, np.asarray(meta.template), tuple(meta.input_size))
    crops = sorted(crops, key=lambda c: -(c.region[2] - c.region[0]))[: args.max_faces]
    rep = ReplaceFaces(ReplaceConfig(then=None))
    rows = []
    for c in crops:
        x = torch.from_numpy(c.pixels).permute(2, 0, 1)[None].float().div(255)
        lm = torch.from_numpy(np.asarray(c.extra["landmarks"], np.float32) - c.region[:2])
        tiles = []
        for k in range(args.latents):
            y = rep.generate(x, lm[None], torch.tensor([k]))[0]
            px = (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out = frame.copy()
            paste_back(out, c, px)
            x1, y1, x2, y2 = c.region
            tiles.append(cv2.resize(out[y1:y2, x1:x2], (args.size, args.size)))
        rows.append(np.concatenate(tiles, 1))
    sheet = np.concatenate(rows, 0) if rows else np.zeros((8, 8, 3), np.uint8)
    write_image(args.output, sheet)
    print(f"{len(crops)} faces x {args.latents} latents -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
