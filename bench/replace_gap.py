"""Replace's gap to a real face, outside the pipeline: the judge on the crops themselves.

Captures the crops ``deid.pipeline.run`` hands replace's generator on the three face sets of
``bench/replace_clip.py`` (1080p frames 0-9, 720p frames 0-9, 720p frames 30-54; ``then:
null``, verification and the judge off), drops the detections ``bench/pedestrians_nonfaces.json``
marks as no face, replaces each face again here (the generator alone, or with ``--real`` a
real held-out CelebA face through the same mask, as ``replace_clip.py --paste-real`` does) and
prints the judge's unlinkable share on the crop, before and after a round trip through H.264
crf 23 (libx264, each crop one frame of a 256x256 video), per latent seed. ``--alpha a``
moves each new face from the generator's face at z = 0 for its context (``G(0) + a (G(z) -
G(0))``), ``--sharp s`` adds an unsharp mask, ``--colour-match`` overrides replace's. The
judge only measures; nothing here feeds it back.

    .venv/bin/python bench/replace_gap.py [--real] [--seeds 0,1,2] [--alpha A] [--sharp S]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline as bench  # bench/pipeline.py: clips, output folder
from replace_clip import non_face, paste_real_faces

SETS = (("1080p", 0, 10), ("720p", 0, 10), ("720p", 30, 25))


def capture(threads: int) -> list[tuple[str, Any]]:
    """(set, FaceCrop) of every face the generator is handed on the three sets."""
    from deid.config import load_settings
    from deid.pipeline import protect, run

    got: list[tuple[str, Any]] = []
    here: dict[str, str] = {}
    original = protect.GeneratorProtector._generate

    def spy(self: Any, crops: Any, ctx: Any) -> Any:
        got.extend((here["set"], c) for c in crops)
        return original(self, crops, ctx)

    protect.GeneratorProtector._generate = spy  # type: ignore[method-assign]
    faces: list[tuple[str, Any]] = []
    try:
        for clip_name, start, frames in SETS:
            here["set"] = f"{clip_name}:{start}+{frames}"
            clip = bench.build_clips(frames, start)[clip_name]
            s = load_settings(
                overrides={
                    "attack": {"name": "replace", "then": None},
                    "pipeline": {
                        "device": "cpu",
                        "threads": threads,
                        "judge": "off",
                        "verify": False,
                    },
                }
            )
            n = len(got)
            rep = run(clip, bench.OUT_DIR / "replace_gap.mp4", s, progress=False)
            nope = {
                (tuple(f["region"]), f["track"])
                for f in rep["faces_detail"]
                if non_face(f, bench.SIZES[clip_name], start)
            }
            faces += [(k, c) for k, c in got[n:] if (tuple(c.region), c.track) not in nope]
    finally:
        protect.GeneratorProtector._generate = original  # type: ignore[method-assign]
    return faces


def h264(ims: list[np.ndarray], crf: int = 23, side: int = 256) -> list[np.ndarray]:
    import av

    from deid.io.video import frame_rgb

    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    st = out.add_stream("libx264", rate=25)
    st.width = st.height = side
    st.pix_fmt = "yuv420p"
    st.options = {"crf": str(crf)}
    for im in ims:
        canvas = np.full((side, side, 3), 128, np.uint8)
        canvas[: im.shape[0], : im.shape[1]] = im
        for p in st.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
            out.mux(p)
    for p in st.encode():
        out.mux(p)
    out.close()
    buf.seek(0)
    back = [frame_rgb(f) for f in av.open(buf).decode(video=0)]
    return [b[: im.shape[0], : im.shape[1]].copy() for b, im in zip(back, ims, strict=True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="paste real held-out CelebA faces")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--sharp", type=float, default=0.0)
    ap.add_argument("--colour-match", choices=["luma", "rgb", "none"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from deid.attacks.base import quantize8
    from deid.generators.facegan import FaceGenerator
    from deid.generators.replace import ReplaceConfig, ReplaceFaces
    from deid.judge import load_judge
    from deid.pipeline.protect import _crop_landmarks
    from deid.pipeline.stages import to_batch

    torch.set_num_threads(args.threads)
    bench.OUT_DIR.mkdir(parents=True, exist_ok=True)
    faces = capture(args.threads)
    crops = [c for _, c in faces]
    tracks = {k: i for i, k in enumerate(dict.fromkeys((s, c.track) for s, c in faces))}
    tid = torch.tensor([tracks[(s, c.track)] for s, c in faces])
    bench.say(f"{len(crops)} faces, {len(tracks)} tracks")
    if args.real:
        paste_real_faces()
    cfg = {"colour_match": args.colour_match} if args.colour_match else {}
    rf = ReplaceFaces(ReplaceConfig(**cfg))
    if args.alpha != 1.0 or args.sharp:
        forward = FaceGenerator.forward

        def moved(self: FaceGenerator, x: Any, mask: Any, z: Any) -> Any:
            y = forward(self, x, mask, z)
            if args.alpha != 1.0:
                y0 = forward(self, x, mask, torch.zeros_like(z))
                y = y0 + args.alpha * (y - y0)
            if args.sharp:
                y = y + args.sharp * (y - F.avg_pool2d(F.pad(y, (1, 1, 1, 1), "replicate"), 3, 1))
            return y.clamp(0, 1)

        FaceGenerator.forward = moved  # type: ignore[method-assign]
    judge = load_judge()
    before = judge.descriptors([c.pixels for c in crops], workers=args.threads)
    for seed in (int(s) for s in args.seeds.split(",")):
        rf.cfg.seed = seed
        new: list[np.ndarray] = []
        for i in range(0, len(crops), 32):
            sub = crops[i : i + 32]
            x, _ = to_batch(sub, torch.device("cpu"))
            lm = torch.tensor(np.stack([_crop_landmarks(c) for c in sub]))
            y = quantize8(rf.generate(x, lm, tid[i : i + 32]))
            px = (y.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            new += [
                p[: c.pixels.shape[0], : c.pixels.shape[1]] for p, c in zip(px, sub, strict=True)
            ]
        line = f"seed {seed}:"
        for tag, ims in (("crop", new), ("after H.264 crf 23", h264(new))):
            d = np.linalg.norm(judge.descriptors(ims, workers=args.threads) - before, axis=1)
            linked = int((d < judge.threshold).sum())
            line += (
                f" {tag} {1 - linked / len(d):.1%} unlinkable ({linked} linked of {len(d)}, "
                f"median distance {np.median(d):.3f});"
            )
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
