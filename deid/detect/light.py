"""Faces in the dark: a dim frame is detected on a copy stretched to the full range.

At dusk a drone's frames use a few dozen grey levels, and MTCNN, trained on well-lit faces,
finds fewer of them: 4 frames of the pedestrian clip (28 faces) darkened to a 99th
percentile of 65 and 43 grey levels (linear light times 0.05 and 0.02, plus sensor noise)
gave 26 and 22 faces, and the same frames stretched from their 1st to their 99th percentile
27-28 (README "Hard frames", "Dim frames"). :class:`deid.detect.tiling.TiledDetector`
(``stretch_below``) searches a frame whose 99th percentile lies under that on a stretched
copy; other frames pass as they are, so well-lit footage is detected exactly as before.
"""

from __future__ import annotations

import numpy as np

MIN_RANGE = 16  # grey levels: a frame flatter than this (black, fog) is left alone


def stretched(frame: np.ndarray, below: float) -> np.ndarray | None:
    """``frame`` with its 1st-99th percentile levels stretched to 0-255 where its 99th
    percentile is under ``below`` (and it has at least :data:`MIN_RANGE` levels between
    the two), else None. Percentiles from every 4th pixel of every 4th row."""
    counts = np.bincount(frame[::4, ::4].ravel(), minlength=256)
    cum = np.cumsum(counts) / max(int(counts.sum()), 1)
    lo, hi = int(np.searchsorted(cum, 0.01)), int(np.searchsorted(cum, 0.99))
    if hi >= below or hi - lo < MIN_RANGE:
        return None
    lut = np.clip((np.arange(256) - lo) * 255.0 / (hi - lo), 0, 255).round().astype(np.uint8)
    return lut[frame]
