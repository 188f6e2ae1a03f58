"""The detector seam: what deid asks of a face detector."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from deid.types import Detections


class DetectorSettings(Protocol):
    """What a detector's factory reads of the ``detector`` settings
    (:class:`deid.config.DetectorConfig`; a protocol, so that detect/ does not import the
    settings, which import the detector registry to check ``detector.name``)."""

    name: str
    thresholds: tuple[float, float, float]
    min_face_size: int
    min_score: float
    max_side: int | None
    tile: int | None
    tile_overlap: int
    edge_pad: int
    upscale: float
    recheck_score: float | None
    confirm_score: float | None


@runtime_checkable
class Detector(Protocol):
    """A face detector: frames in, one :class:`Detections` per frame out, batched.

    The pipeline detects whole frames (``detect(frames)``) and, to verify the written file,
    windows cut around faces it already knows (``detect(windows, edge_pad=0)``); a video job
    asks :meth:`too_small` once per clip. :class:`deid.detect.tiling.TiledDetector` gives
    all of it to a detector that can search one batch of same-size images at one scale.
    Built by :func:`deid.detect.build_detector` from the ``detector`` settings.
    """

    def detect(self, frames: Sequence[np.ndarray], edge_pad: int | None = None) -> list[Detections]:
        """Faces in each frame.

        Args:
            frames: (H, W, 3) uint8 RGB, of any (mixed) sizes.
            edge_pad: mirror padding in px for this call (``None``: the detector's own;
                0: none, for windows cut around known faces). A detector without padding
                ignores it.

        Returns:
            one :class:`Detections` per frame, in frame pixels (K may be 0; never None).

        Raises:
            ValueError: a frame is not (H, W, 3) uint8.
        """
        ...

    def too_small(self, shape: Sequence[int]) -> bool:
        """Whether a frame of ``shape`` (H, W, ...) is too small to hold a face the detector
        looks for (it passes through without detections and is counted as such)."""
        ...
