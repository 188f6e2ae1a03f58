"""Keyframe detection against detection on every frame (issue 14, part 1).

    .venv/bin/python bench/keyframes.py [--intervals 1 5 10] [--clip-frames 30] [--threads 1]
        [--pedestrians N] [--json OUT]

On the drone-like clip of ``deid eval detection`` (:func:`deid.eval.drone.drone_clip`,
1920x1080, faces of 10-60 px, the ground panning): for each ``detector.keyframe_interval``
(1 = every frame in full, today's behaviour) the recall per face-size bucket, false positives
per frame and seconds of detection per frame, scored as ``deid eval detection`` scores
(:func:`deid.eval.detection.score`), with how many frames were detected in full (keyframes
and fallbacks). With ``--pedestrians N``, also detection frames/s on the first N frames of
the shared pedestrian clip at 1080p and 720p (bench/pipeline.py's clips) and the faces found.

Seconds are wall seconds and CPU seconds of this process (on a shared machine, CPU seconds
are the steadier figure), on ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_keyframes(detector: Any, frames: list, interval: int) -> dict[str, Any]:
    from deid.pipeline.keyframes import KeyframeDetector

    kd = KeyframeDetector(detector, interval)
    detector.detect([frames[0]])  # warm-up, not timed
    t, c = time.perf_counter(), time.process_time()
    dets = kd.detect_chunk(frames)  # as `analyse` detects a chunk
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {
        "dets": dets,
        "wall_s_per_frame": wall / len(frames),
        "cpu_s_per_frame": cpu / len(frames),
        "stats": kd.stats.as_dict(),
    }


def drone(args: argparse.Namespace, detector: Any) -> list[dict[str, Any]]:
    from deid.eval.detection import score
    from deid.eval.drone import drone_clip

    ds = drone_clip(args.seed, frames=args.clip_frames)
    rows = []
    for k in args.intervals:
        r = run_keyframes(detector, ds.frames, k)
        s = score(ds, [d.boxes for d in r["dets"]], [r["wall_s_per_frame"]])
        row = {"set": "drone clip", "interval": k, **s, **{x: r[x] for x in r if x != "dets"}}
        rows.append(row)
        print(line(row), flush=True)
    return rows


def pedestrians(args: argparse.Namespace, detector: Any) -> list[dict[str, Any]]:
    from bench.pipeline import build_clips
    from deid.io import read_frames

    clips = build_clips(args.pedestrians)
    rows = []
    for label, path in clips.items():
        frames = list(read_frames(path))
        full = None
        for k in args.intervals:
            r = run_keyframes(detector, frames, k)
            faces = sum(len(d) for d in r["dets"])
            row = {
                "set": f"pedestrians {label}",
                "interval": k,
                "frames": len(frames),
                "faces": faces,
                "detect_fps_wall": 1 / r["wall_s_per_frame"],
                "detect_fps_cpu": 1 / r["cpu_s_per_frame"],
                **{x: r[x] for x in r if x != "dets"},
            }
            if full is None:
                full = r["dets"]
            else:
                row["same_as_every_frame"] = agreement(full, r["dets"])
            rows.append(row)
            print(
                f"{row['set']:<18} k={k:<3} faces {faces:4d}  "
                f"{row['detect_fps_wall']:.2f} f/s wall  {row['detect_fps_cpu']:.2f} f/s cpu  "
                f"full {r['stats']['full']}/{len(frames)} {r['stats']['reasons']}  "
                f"{row.get('same_as_every_frame', '')}",
                flush=True,
            )
    return rows


def agreement(full: list, key: list) -> dict[str, int]:
    """Faces of every-frame detection that keyframe detection also found (box IoU >= 0.5),
    and keyframe faces that every-frame detection did not find."""
    from deid.pipeline.tracking import iou_matrix as box_iou

    found = extra = total = 0
    for a, b in zip(full, key, strict=True):
        total += len(a)
        if len(a) and len(b):
            m = box_iou(a.boxes, b.boxes) >= 0.5
            found += int(m.any(1).sum())
            extra += int((~m.any(0)).sum())
        else:
            extra += len(b)
    return {"every_frame_faces": total, "also_found": found, "extra": extra}


def line(r: dict[str, Any]) -> str:
    cells = "  ".join(
        f"{100 * c['found'] / max(1, c['total']):5.1f}% ({c['found']}/{c['total']})"
        for c in r["buckets"].values()
    )
    st = r["stats"]
    return (
        f"k={r['interval']:<3} {cells}  >=16 {r['16+']['found']}/{r['16+']['total']}  "
        f"FP/fr {r['fp_per_frame']:.2f}  {r['wall_s_per_frame']:.2f} s/fr wall  "
        f"{r['cpu_s_per_frame']:.2f} s/fr cpu  full {st['full']}/{st['frames']} {st['reasons']}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--clip-frames", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pedestrians", type=int, default=0, help="frames of the pedestrian clip")
    p.add_argument("--skip-drone", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from deid.config import load_settings
    from deid.detect import build_detector
    from deid.io import Artefact, check_writes

    check_writes([], [Artefact("JSON report", args.json) if args.json else None])
    torch.set_num_threads(args.threads)
    settings = load_settings()
    detector = build_detector(settings.detector, "cpu")
    out: dict[str, Any] = {"detector": settings.detector.model_dump(), "threads": args.threads}
    if not args.skip_drone:
        print(f"drone clip, {args.clip_frames} frames; buckets 10-12 12-16 16-24 24-40 40+ px")
        out["drone"] = drone(args, detector)
    if args.pedestrians:
        out["pedestrians"] = pedestrians(args, detector)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
