"""Shared vocabulary of the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame. K may be 0; arrays are never None.

    Attributes:
        boxes: (K, 4) float32 x1, y1, x2, y2 in pixels.
        scores: (K,) float32 face probability.
        landmarks: (K, 5, 2) float32 x, y of left eye, right eye, nose, left and right
            mouth corner (MTCNN order).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.boxes)
        if (
            self.boxes.shape != (k, 4)
            or self.scores.shape != (k,)
            or self.landmarks.shape != (k, 5, 2)
        ):
            raise ValueError(
                f"Detections: expected boxes (K,4), scores (K,), landmarks (K,5,2); got "
                f"{self.boxes.shape}, {self.scores.shape}, {self.landmarks.shape}"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )

    def select(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.landmarks[keep])


@dataclass
class FaceCrop:
    """One face cut out of a frame at native resolution, with the warp that aligns it.

    Attributes:
        frame: index of the frame (within the batch of frames being processed).
        face: index of the face within its frame's detections.
        region: (x1, y1, x2, y2) int pixel rectangle of the frame the crop covers, clipped
            to the frame.
        pixels: (h, w, 3) uint8 RGB copy of that region.
        theta: (2, 3) float32 affine from aligned-output to crop normalised coordinates
            (``torch.nn.functional.affine_grid`` convention, align_corners=False).
        box: (4,) float32 the detector's box.
        track: id linking this face to the same face in neighbouring frames.
    """

    frame: int
    face: int
    region: tuple[int, int, int, int]
    pixels: np.ndarray
    theta: np.ndarray
    box: np.ndarray
    score: float = 1.0
    track: int = -1
    extra: dict = field(default_factory=dict)
