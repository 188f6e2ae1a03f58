"""Faces in dim or hazy frames: a frame of little contrast is detected on a copy stretched
to the full range.

At dusk a drone's frames use a few dozen grey levels, and in haze or fog a narrow band of
bright ones; MTCNN, trained on well-lit faces, finds fewer faces in both. 4 frames of the
pedestrian clip (28 faces): darkened to a 99th percentile of 65 and 43 grey levels (linear
light times 0.05 and 0.02, plus sensor noise) it found 26 and 22 of them, under fog (the
frame blended 80% and 90% into a grey of 210) 8 and 0; the same frames stretched from their
1st to their 99th percentile 27-28 and 27 / 24 (README "Hard frames", "Dim and hazy
frames"). :class:`deid.detect.tiling.TiledDetector` (``stretch_range``) searches a frame
whose 1st-99th percentile span is under that many grey levels on the stretched copy; other
frames pass as they are, so footage of ordinary contrast is detected exactly as before.
"""

from __future__ import annotations

import numpy as np

MIN_RANGE = 16  # grey levels: a frame flatter than this (black, a white-out) is left alone


def stretched(frame: np.ndarray, span: float) -> np.ndarray | None:
    """``frame`` with its 1st-99th percentile levels stretched to 0-255 where they span less
    than ``span`` grey levels (and at least :data:`MIN_RANGE`), else None. Percentiles from
    every 4th pixel of every 4th row."""
    counts = np.bincount(frame[::4, ::4].ravel(), minlength=256)
    cum = np.cumsum(counts) / max(int(counts.sum()), 1)
    lo, hi = int(np.searchsorted(cum, 0.01)), int(np.searchsorted(cum, 0.99))
    if hi - lo >= span or hi - lo < MIN_RANGE:
        return None
    lut = np.clip((np.arange(256) - lo) * 255.0 / (hi - lo), 0, 255).round().astype(np.uint8)
    return lut[frame]
