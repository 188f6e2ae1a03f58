"""Face replacement on the pedestrian clip, measured on the written file.

Runs ``deid.pipeline.run`` with ``--attack replace`` on the first ``--frames`` frames of the
shared pedestrian clip (the 720p or 1080p copy ``bench/pipeline.py`` makes), written at H.264
crf 23, and prints from the run's report and the two files:

* the independent judge (when ``deid[judge]`` is installed): faces unlinkable, faces left
  natural (replaced, not obscured) and unlinkable;
* deid's classifier on the written file: the share of verified faces read as their target;
* the judge's ceiling at these faces' sizes (:func:`judge_ceiling`): how often it does not
  link two different real people at each size, beside how often it did not link this run's
  faces of that size;
* flicker: per track, the mean absolute change of the face region from one frame to the
  next (crops resized to 64x64) in the output, against the same in the input; the ratio
  out/in, over all tracks (1.0: the new face changes as much as the old one did);
* seconds per face of the protection step.

The judge's figures are given over every detection and over the detections on faces: the
detector, tuned for recall, also keeps a few boxes on things that are no face (a shop sign's
lettering, a poster, hands), labelled by eye in ``bench/pedestrians_nonfaces.json``; whether
the judge "links" a replaced sign to the sign says nothing about anyone's privacy.
``--seeds 0,1,2`` runs once per seed of the tracks' latents (the judge's rate moves by
several points with the latents: one run is one draw) and prints each run and the mean.

Nothing it writes leaves ``bench/out/``.

    .venv/bin/python bench/replace_clip.py --frames 10 --clip 720p [--seeds 0,1,2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from deid.pipeline.report import JudgeTotals

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline as bench  # bench/pipeline.py: clips, output folder


def flicker(src: Path, out: Path, faces: list[dict[str, Any]]) -> dict[str, Any]:
    """Frame-to-frame change of each track's face region, output vs input."""
    import cv2

    from deid.io import read_frames

    by_frame: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in faces:
        by_frame[int(f["frame"])].append(f)
    crops: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for i, (a, b) in enumerate(zip(read_frames(src), read_frames(out), strict=True)):
        for f in by_frame.get(i, []):
            x1, y1, x2, y2 = f["region"]
            ca = cv2.resize(a[y1:y2, x1:x2], (64, 64), interpolation=cv2.INTER_AREA)
            cb = cv2.resize(b[y1:y2, x1:x2], (64, 64), interpolation=cv2.INTER_AREA)
            crops[int(f["track"])].append((i, ca.astype(np.float32), cb.astype(np.float32)))
    d_in, d_out = [], []
    for seq in crops.values():
        for (i, a0, b0), (j, a1, b1) in pairwise(seq):
            if j == i + 1:
                d_in.append(float(np.abs(a1 - a0).mean()))
                d_out.append(float(np.abs(b1 - b0).mean()))
    if not d_in:
        return {"pairs": 0}
    return {
        "pairs": len(d_in),
        "tracks": len(crops),
        "input_mean_change": round(float(np.mean(d_in)), 2),
        "output_mean_change": round(float(np.mean(d_out)), 2),
        "ratio": round(float(np.mean(d_out) / max(np.mean(d_in), 1e-6)), 3),
    }


#: Crop sizes (px) the judge's ceiling is measured at; each face counts at the nearest.
CEILING_SIZES = (24, 32, 48, 64, 96, 128)
NON_FACES = Path(__file__).resolve().parent / "pedestrians_nonfaces.json"


@cache
def non_face_regions() -> tuple[dict[str, Any], ...]:
    """The regions :data:`NON_FACES` labels as no face (read once)."""
    return tuple(json.loads(NON_FACES.read_text())["regions"])


def non_face(face: dict[str, Any], clip_size: tuple[int, int], start: int) -> bool:
    """Whether a detection of the clip (``start`` its first frame, ``clip_size`` its (w, h))
    lies in a region labelled as no face in :data:`NON_FACES`."""
    k = 1920 / clip_size[0]  # the labels are in the 1920x1080 source's pixels
    x1, y1, x2, y2 = (v * k for v in face["region"])
    cx, cy, frame = (x1 + x2) / 2, (y1 + y2) / 2, int(face["frame"]) + start
    return any(
        r["frames"][0] <= frame <= r["frames"][1]
        and r["box"][0] <= cx <= r["box"][2]
        and r["box"][1] <= cy <= r["box"][3]
        for r in non_face_regions()
    )


def judge_on(faces: list[dict[str, Any]]) -> JudgeTotals:
    """The judge's totals (the report's own :func:`~deid.pipeline.report.judge_totals`) over
    ``faces`` of a report's ``faces_detail``."""
    from deid.pipeline.report import FaceJudge, judge_totals

    return judge_totals([FaceJudge(**f["judge"]) if f.get("judge") else None for f in faces])


def judge_ceiling(faces: list[dict[str, Any]], pairs: int = 200) -> dict[str, Any]:
    """The judge's own limit at the faces' sizes: the share of pairs of *two different real
    people* (held-out CelebA faces, resized to the size) it does not link, per size, beside
    the share of this run's written faces it did not link at that size. No replacement can
    be unlinked more often than two different people are."""
    import cv2

    from deid import judge
    from deid.data import load_celeba

    if not judge.available():
        return {"status": "judge not installed"}
    ds = load_celeba()
    rng = np.random.default_rng(0)
    test = np.asarray(ds.test)
    a, b = rng.choice(test, pairs), rng.choice(test, pairs)
    a, b = a[ds.labels[a] != ds.labels[b]], b[ds.labels[a] != ds.labels[b]]
    j = judge.load_judge()
    by_size: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for f in faces:
        x1, y1, x2, y2 = f["region"]
        if (f.get("judge") or {}).get("distance") is not None:
            size = min(CEILING_SIZES, key=lambda s: abs(s - min(x2 - x1, y2 - y1)))
            by_size[size].append(f)
    rows = []
    for size in sorted(by_size):

        def small(ims: np.ndarray, s: int = size) -> np.ndarray:
            return np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA) for im in ims])

        d = np.linalg.norm(
            j.descriptors(small(ds.images[a])) - j.descriptors(small(ds.images[b])), axis=1
        )
        fs = by_size[size]
        rows.append(
            {
                "size": size,
                "faces": len(fs),
                "unlinkable": judge_on(fs).unlinkable,
                "two_people_unlinkable": round(float(np.mean(d[np.isfinite(d)] >= j.threshold)), 4),
            }
        )
    n = sum(r["faces"] for r in rows)
    expected = sum(r["two_people_unlinkable"] * r["faces"] for r in rows) / max(n, 1)
    return {
        "pairs": len(a),
        "by_size": rows,
        "two_people_unlinkable_at_these_sizes": round(expected, 4),
    }


def paste_real_faces() -> None:
    """``--paste-real``: the face generator's forward pass returns a *real* held-out CelebA
    face (one per identity of the test split, chosen by the track's latent) instead of a
    generated one; everything else (alignment, the same soft mask, colour match, the
    targeted steps) is replace's own. A perfect replacement with the same mask: the
    reference issue 13 asks the generated faces to match on the clip. A bench-only patch
    of this process."""
    import torch

    from deid.data import load_celeba
    from deid.generators.facegan import FaceGenerator

    ds = load_celeba()
    first: dict[int, int] = {}
    for i in np.asarray(ds.test).tolist():
        first.setdefault(int(ds.labels[i]), int(i))
    pool = torch.from_numpy(ds.images[list(first.values())]).permute(0, 3, 1, 2).float() / 255

    def forward(self: FaceGenerator, x: torch.Tensor, mask: torch.Tensor, z: torch.Tensor):
        idx = (z[:, 0].abs() * 1e6).long().cpu() % len(pool)
        return pool[idx].to(x.device)

    FaceGenerator.forward = forward  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--start", type=int, default=0, help="the clip's first frame (default 0)")
    ap.add_argument("--clip", choices=list(bench.SIZES), default="720p")
    ap.add_argument(
        "--then", help="the attack after the generator (default: deid's), auto, or none"
    )
    ap.add_argument("--then-params", type=json.loads, help="JSON over the `then` attack's defaults")
    ap.add_argument("--crf", type=int, default=23)
    ap.add_argument(
        "--region-scale", type=float, help="attack.region_scale (default: the config's)"
    )
    ap.add_argument(
        "--target", help="attack.target (default: replace's own, lookalike; e.g. least-likely)"
    )
    ap.add_argument(
        "--seeds",
        default="0",
        help="attack.seed of each run, comma-separated (default 0: one run, the default seed)",
    )
    ap.add_argument(
        "--paste-real",
        action="store_true",
        help="paste a real held-out CelebA face (one identity per track) through replace's "
        "mask instead of a generated one: the perfect-replacement reference",
    )
    ap.add_argument(
        "--generator", type=Path, help="attack.generator (default: the shipped face generator)"
    )
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.paste_real:
        paste_real_faces()

    from deid.config import load_settings
    from deid.pipeline import run

    bench.OUT_DIR.mkdir(parents=True, exist_ok=True)
    clip = bench.build_clips(args.frames, args.start)[args.clip]
    attack: dict[str, Any] = {"name": "replace"}
    if args.region_scale is not None:
        attack["region_scale"] = args.region_scale
    if args.target:
        attack["target"] = args.target
    if args.generator:
        attack["generator"] = str(args.generator)
    if args.then is not None:  # else deid's default
        attack["then"] = None if args.then.lower() in ("none", "null") else args.then
    if args.then_params and attack.get("then", "") is not None:
        from deid.generators.replace import ReplaceConfig

        attack["then_params"] = {**ReplaceConfig().then_params, **args.then_params}
    pipeline: dict[str, Any] = {"device": "cpu", "crf": args.crf}
    if args.threads:
        pipeline["threads"] = args.threads
    tag = f"{args.start}+{args.frames}f" if args.start else f"{args.frames}f"
    kind = "pasted_real" if args.paste_real else "replace"
    out = bench.OUT_DIR / f"{kind}_{args.clip}_{tag}.mp4"
    runs, on_faces = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        settings = load_settings(
            overrides={"attack": {**attack, "seed": seed}, "pipeline": pipeline}
        )
        bench.say(f"deid --attack replace ({attack}, seed {seed}) on {clip.name} -> {out.name}")
        rep = run(clip, out, settings, progress=False)
        faces = rep["faces_detail"]
        on_faces = [f for f in faces if not non_face(f, bench.SIZES[args.clip], args.start)]
        verified = [f["verified"] for f in faces if f.get("verified")]
        judge = rep.get("judge") or {}
        runs.append(
            {
                "seed": seed,
                "detections": len(faces),
                "no_face": len(faces) - len(on_faces),
                "replaced_and_kept": sum(f["action"] == "attacked" for f in faces),
                "verified_as_target": round(
                    sum(bool(v.get("is_target")) for v in verified) / max(len(verified), 1), 4
                ),
                "verified_as_original": round(
                    sum(bool(v.get("is_original")) for v in verified) / max(len(verified), 1), 4
                ),
                "judge": judge.get("totals") if judge.get("status") == "judged" else judge,
                "judge_on_faces": judge_on(on_faces).model_dump(),
                "flicker": flicker(clip, out, faces),
                "seconds": rep["seconds"],
                "protect_s_per_face": round(
                    rep["seconds"].get("attack", 0.0) / max(len(faces), 1), 4
                ),
            }
        )
        bench.say(f"seed {seed}: judge-unlinkable on faces {runs[-1]['judge_on_faces']}")
    judged = [r for r in runs if r["judge_on_faces"]["unlinkable"] is not None]
    result = {
        "clip": args.clip,
        "frames": args.frames,
        "start": args.start,
        "attack": attack,
        "crf": args.crf,
        "faces_pasted": "real held-out CelebA faces" if args.paste_real else "generated",
        "runs": runs,
        "mean_over_seeds": {
            "unlinkable_on_faces": round(
                float(np.mean([r["judge_on_faces"]["unlinkable"] for r in judged])), 4
            )
            if judged
            else None,
            "unlinkable_all_detections": round(
                float(np.mean([r["judge"]["unlinkable"] for r in judged])), 4
            )
            if judged
            else None,
            "verified_as_target": round(float(np.mean([r["verified_as_target"] for r in runs])), 4),
            "protect_s_per_face": round(float(np.mean([r["protect_s_per_face"] for r in runs])), 4),
        },
        # the last run's faces (on faces only) beside two different people of their sizes
        "judge_ceiling": judge_ceiling(on_faces) if judged else None,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
