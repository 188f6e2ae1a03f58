"""MTCNN as facenet-pytorch ships it, for deid's own data work.

Not imported by :mod:`deid.detect` itself: it reads :mod:`deid.config`, which imports the
detector registry.
"""

from __future__ import annotations

from typing import Any

import torch

from deid.config import MTCNN_THRESHOLDS, DetectorConfig
from deid.detect.base import Detector
from deid.detect.registry import build_detector


def plain_mtcnn(
    min_face_size: int, min_score: float, device: torch.device | str = "cpu", **options: Any
) -> Detector:
    """MTCNN with its own thresholds (:data:`deid.config.MTCNN_THRESHOLDS`), no enlarging, no
    tiling, no second look, no stretching of dim frames, no video hysteresis (``options``:
    other ``detector`` settings). deid's data preparation, template and utility check use
    it, so their crops and figures do not move with the pipeline's drone defaults."""
    cfg = DetectorConfig(
        name="mtcnn",
        min_face_size=min_face_size,
        min_score=min_score,
        thresholds=MTCNN_THRESHOLDS,
        tile=None,
        upscale=1,
        track_score=None,
        recheck_score=None,
        stretch_range=None,
        **options,
    )
    return build_detector(cfg, device)
