"""Make the demo clip: ``python -m deid.demo OUT.mp4``.

The clip is built from scikit-image's astronaut photograph (public domain, shipped inside the
scikit-image wheel), so the demo needs no dataset: two copies of the face drift and shrink
across a 1280x720 frame for 2 seconds at 12 fps, the way a face does as a drone climbs away.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from deid.errors import DeidError
from deid.io import Artefact, check_output_kind, check_writes, write_video, writing

W, H, FPS, SECONDS = 1280, 720, 12, 2


def demo_frames() -> list[np.ndarray]:
    """24 RGB frames (720, 1280, 3) uint8."""
    from skimage import data

    astro = data.astronaut()  # (512, 512, 3), one frontal face
    face = astro[20:300, 100:330]  # head and shoulders
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(
        rng.integers(60, 140, (H // 8, W // 8, 3), dtype=np.uint8), (5, 5), 0
    )
    background = cv2.resize(background, (W, H), interpolation=cv2.INTER_CUBIC)
    frames = []
    n = FPS * SECONDS
    for i in range(n):
        t = i / (n - 1)
        frame = background.copy()
        for k, (x0, y0, dx, scale0) in enumerate(((140, 120, 420, 1.0), (760, 260, -260, 0.7))):
            s = scale0 * (1.0 - 0.45 * t)
            img = face if k == 0 else face[:, ::-1]
            h, w = round(img.shape[0] * s), round(img.shape[1] * s)
            small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            x, y = round(x0 + dx * t), round(y0 + 40 * t)
            frame[y : y + h, x : x + w] = small
        frames.append(frame)
    return frames


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "out/demo_input.mp4")
    try:
        check_output_kind("video", out)
        check_writes([], [Artefact("demo clip", out)])
        with writing(out, "demo clip"):
            n = write_video(out, demo_frames(), FPS, crf=16)
    except DeidError as e:
        sys.stderr.write(f"deid: error: {e}\n")
        return e.exit_code
    sys.stdout.write(f"wrote {out} ({n} frames, {W}x{H}, {FPS} fps)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
