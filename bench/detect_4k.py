"""How each way of detecting faces on a 4K frame does: faces found and seconds.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/detect_4k.py [--threads 1] [--repeat 2]

The frame is built by ``tests/test_hard_frames.py``'s helper: the first frame of
``$DEID_DATA_DIR/scenes/pedestrians_walking_1080p.mp4`` upscaled to 3840x2160 with 40
held-out CelebA faces planted in its upper part, 5 each of face widths 20, 24, 28, 32, 40,
48, 64 and 80 px. Each configuration of :class:`deid.detect.MTCNNDetector` (min face 20 px)
detects on it ``--repeat`` times; the table gives the fastest time, the planted faces found
(a detection whose box centre lies in the planted crop) by face width, and all detections
(the scene's own pedestrians included). A 1080p frame of the clip is timed too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deid.detect import MTCNNDetector  # noqa: E402
from tests.test_hard_frames import celeba_faces, clip_frame, planted_frame  # noqa: E402

WIDTHS = [20, 24, 28, 32, 40, 48, 64, 80]
CONFIGS: list[tuple[str, dict]] = [
    ("full resolution", {}),
    ("downscaled, max_side 1920", {"max_side": 1920}),
    ("downscaled, max_side 1280", {"max_side": 1280}),
    ("tiled, tile 2048 (default)", {"tile": 2048}),
    ("tiled, tile 1280", {"tile": 1280}),
]


def found(boxes: np.ndarray, planted: list[tuple[int, ...]]) -> np.ndarray:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    return np.array(
        [
            bool(((c[:, 0] > x1) & (c[:, 0] < x2) & (c[:, 1] > y1) & (c[:, 1] < y2)).any())
            for x1, y1, x2, y2, _ in planted
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frame, planted = planted_frame(
        (3840, 2160), celeba_faces(), WIDTHS, rows=[60, 300, 540, 780], cols=10, seed=0
    )
    hd = clip_frame()
    widths = np.array([p[4] for p in planted])
    head = " | ".join(f"{w} px" for w in WIDTHS)
    print(f"| 4K frame: detection | s (best of {args.repeat}) | planted found | {head} | all |")
    print("|---|--:|--:|" + "--:|" * len(WIDTHS) + "--:|")
    for name, kw in CONFIGS:
        det = MTCNNDetector(min_face_size=20, **kw)
        det.detect([frame[:256, :256]])  # warm-up
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            d = det.detect([frame])[0]
            times.append(time.perf_counter() - t)
        hit = found(d.boxes, planted)
        by_w = " | ".join(f"{int(hit[widths == w].sum())}/5" for w in WIDTHS)
        print(
            f"| {name} | {min(times):.2f} | **{hit.sum()}/{len(hit)}** | {by_w} | {len(d)} |",
            flush=True,
        )
    print()
    print(f"| 1080p clip frame: detection | s (best of {args.repeat}) | faces |")
    print("|---|--:|--:|")
    for name, kw in [("full resolution", {}), ("tile 2048 (default): full", {"tile": 2048})]:
        det = MTCNNDetector(min_face_size=20, **kw)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            d = det.detect([hd])[0]
            times.append(time.perf_counter() - t)
        print(f"| {name} | {min(times):.2f} | {len(d)} |", flush=True)


if __name__ == "__main__":
    main()
