"""Adapter over facenet-pytorch's MTCNN (its P/R/O-Net weights ship in the wheel)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from deid.types import Detections

log = logging.getLogger(__name__)


class MTCNNDetector:
    """Batched MTCNN face detection returning :class:`Detections`.

    Args:
        min_face_size: smallest face side in pixels to look for (drone faces are small).
        thresholds: P-, R- and O-Net score thresholds.
        min_score: drop faces whose final probability is below this.
        device: torch device.
        max_side: frames whose longer side exceeds this are detected on a downscaled copy
            and the boxes scaled back (``None``: always full resolution).

    Example:
        >>> det = MTCNNDetector(min_face_size=20)
        >>> d = det.detect([np.zeros((64, 64, 3), np.uint8)])[0]
        >>> len(d), d.boxes.shape
        (0, (0, 4))
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        device: torch.device | str = "cpu",
        max_side: int | None = None,
        factor: float = 0.709,
    ) -> None:
        from facenet_pytorch import MTCNN

        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.max_side = max_side
        self.device = torch.device(device)
        self._mtcnn = MTCNN(
            min_face_size=self.min_face_size,
            thresholds=list(thresholds),
            factor=factor,
            keep_all=True,
            post_process=False,
            select_largest=False,
            device=self.device,
        )

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces in RGB uint8 frames (H, W, 3).

        Frames of the same size go through MTCNN as one batch.
        """
        out: list[Detections | None] = [None] * len(frames)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError(
                    f"frame {i}: expected (H, W, 3) uint8 RGB, got {f.shape} {f.dtype}"
                )
            groups.setdefault(f.shape, []).append(i)
        for shape, idx in groups.items():
            scale = 1.0
            batch = np.stack([frames[i] for i in idx])
            if self.max_side and max(shape[:2]) > self.max_side:
                import cv2

                scale = self.max_side / max(shape[:2])
                size = (round(shape[1] * scale), round(shape[0] * scale))
                batch = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in batch])
            with torch.inference_mode():
                boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(idx):
                out[i] = self._normalise(boxes[j], probs[j], points[j], 1.0 / scale)
        return [d if d is not None else Detections.empty() for d in out]

    def _normalise(
        self, boxes: object, probs: object, points: object, inv_scale: float
    ) -> Detections:
        # facenet-pytorch returns None for no face and object arrays under NumPy 2
        if boxes is None or len(boxes) == 0:  # type: ignore[arg-type]
            return Detections.empty()
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * inv_scale
        p = np.asarray(probs, dtype=np.float32).reshape(-1)
        lm = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2) * inv_scale
        keep = p >= self.min_score
        return Detections(b[keep], p[keep], lm[keep])
