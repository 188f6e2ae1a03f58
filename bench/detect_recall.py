"""Face recall at drone altitude: deid's detector beside deface 1.5.0, and a sweep of
detector settings (issue 12, part 5).

    .venv/bin/python bench/detect_recall.py [--stills N] [--clip-frames N] [--threads N]
    .venv/bin/python bench/detect_recall.py --sweep [--stills N]

Without ``--sweep``: the figures of ``deid eval detection`` (recall per face-size bucket,
false positives per frame, seconds per frame) on the composited drone-like stills and clip
(:mod:`deid.eval.drone`), for deid's detector with the current settings and for deface's
CenterFace in the same run (deface's Python: ``bench/.venv-deface``, as bench/pipeline.py
installs it), printed as a table.

With ``--sweep``: deid's MTCNN under each of a list of settings (minimum face size, MTCNN's
thresholds, final score, pyramid factor, tiling) on the stills only, one row each: how the
defaults were chosen. Timings are per 1080p frame on ``--threads`` threads; on a shared
machine compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The detector settings every sweep row starts from: deid's defaults before issue 12.
BASE: dict[str, Any] = {
    "min_face_size": 20,
    "thresholds": (0.6, 0.7, 0.7),
    "min_score": 0.9,
    "factor": 0.709,
    "upscale": 1.0,
    "tile": 2048,
    "tile_overlap": 128,
}
#: (label, MTCNNDetector keyword arguments over :data:`BASE`) of the sweep.
SWEEP: list[tuple[str, dict[str, Any]]] = [
    ("min 20 (old default)", {"min_face_size": 20}),
    ("min 16", {"min_face_size": 16}),
    ("min 12", {"min_face_size": 12}),
    ("min 12, score 0.8", {"min_face_size": 12, "min_score": 0.8}),
    ("min 12, score 0.6", {"min_face_size": 12, "min_score": 0.6}),
    ("min 12, thr .5/.6/.7", {"min_face_size": 12, "thresholds": (0.5, 0.6, 0.7)}),
    ("min 12, factor 0.8", {"min_face_size": 12, "factor": 0.8}),
    ("min 10 (MTCNN's own x1.2)", {"min_face_size": 10}),
    ("min 12, tiles 1024", {"min_face_size": 12, "tile": 1024}),
    ("min 12, up 1.5", {"min_face_size": 12, "upscale": 1.5}),
    ("min 14, up 2", {"min_face_size": 14, "upscale": 2.0}),
    ("min 12, up 2", {"min_face_size": 12, "upscale": 2.0}),
    ("min 12, up 2, score 0.8", {"min_face_size": 12, "upscale": 2.0, "min_score": 0.8}),
    ("min 12, up 2, score 0.7", {"min_face_size": 12, "upscale": 2.0, "min_score": 0.7}),
    ("min 12, up 2, score 0.6", {"min_face_size": 12, "upscale": 2.0, "min_score": 0.6}),
    ("min 12, up 2, factor 0.8", {"min_face_size": 12, "upscale": 2.0, "factor": 0.8}),
    (
        "min 12, up 2, thr .6/.6/.7",
        {"min_face_size": 12, "upscale": 2.0, "thresholds": (0.6, 0.6, 0.7)},
    ),
]


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from deid.detect import MTCNNDetector
    from deid.eval.detection import drone_sets, score, timed

    torch.set_num_threads(args.threads)
    (ds,) = drone_sets(args.stills, 0, args.seed)
    rows = []
    for label, kw in SWEEP:
        det = MTCNNDetector(**{**BASE, **kw})
        boxes, secs = timed(det)(ds.frames)
        rows.append({"setting": label, **kw, **score(ds, boxes, secs)})
        print(_sweep_line(rows[-1]), flush=True)
    return rows


def _pct(c: dict[str, int]) -> str:
    return f"{100 * c['found'] / max(1, c['total']):5.1f}%"


def _sweep_line(r: dict[str, Any]) -> str:
    cells = "  ".join(_pct(c) for c in r["buckets"].values())
    return (
        f"{r['setting']:<32} {cells}  {_pct(r['16+'])}  {r['fp_per_frame']:6.2f}  "
        f"{r['s_per_frame']:6.2f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stills", type=int, default=8, help="1920x1080 stills of 80 faces (default 8)")
    p.add_argument("--clip-frames", type=int, default=30, help="frames of the panning clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each detector")
    p.add_argument("--config", help="settings YAML (default: deid's defaults)")
    p.add_argument("--skip-deface", action="store_true")
    p.add_argument(
        "--sweep", action="store_true", help="MTCNN settings sweep on the stills (deid only)"
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from deid.io import Artefact, check_writes

    check_writes([], [Artefact("JSON report", args.json) if args.json else None])
    if args.sweep:
        from deid.eval.drone import SIZE_BUCKETS, bucket_label

        heads = "  ".join(f"{bucket_label(i):>6}" for i in range(len(SIZE_BUCKETS)))
        print(f"{'setting':<32} {heads}  {'>=16':>6}  FP/fr  s/frame")
        out: Any = sweep(args)
    else:
        from deid.eval.detection import detection_table, format_detection

        out = detection_table(
            args.config,
            stills=args.stills,
            clip_frames=args.clip_frames,
            seed=args.seed,
            deface=not args.skip_deface,
            threads=args.threads,
        )
        print(format_detection(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
