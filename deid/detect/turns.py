"""Faces turned in the image plane: the frame searched again turned by a few angles.

MTCNN (like most face detectors) is trained on upright faces. Turned in the image plane it
loses them fast: on four shared photos (40 faces) turned as a whole it found 36 at 20
degrees, 31 at 45, 19 at 60, 5 at 90 and 12 upside down (README "Hard frames", "Faces
turned in the image"). From a drone, people lying on a beach or a lawn
show their faces at every angle. :class:`TurnedDetector` searches each frame as it is and
turned by each of ``turns`` (quarter turns exactly, other angles on a larger canvas), maps
the detections back (boxes: the upright rectangle around the turned box; landmarks
exactly, so the alignment turns the face upright for the classifier) and merges them with
the upright view's: a detection of a turned view is kept only where no kept detection
already covers it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from deid.detect.base import Detector
from deid.detect.tiling import box_intersection
from deid.types import Detections

_FILL = (128, 128, 128)  # the canvas around a frame turned by an angle that is not a quarter


def turn_frame(frame: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``frame`` turned counter-clockwise by ``angle`` degrees on a canvas that holds all
    of it, and the (2, 3) affine map from turned to frame pixels."""
    h, w = frame.shape[:2]
    q = angle / 90
    if q == round(q):  # a quarter turn: exact, no resampling
        k = round(q) % 4
        turned = np.ascontiguousarray(np.rot90(frame, k))
        # np.rot90 (counter-clockwise) maps frame (x, y) to: k=1 (y, w-1-x), k=2
        # (w-1-x, h-1-y), k=3 (h-1-y, x); the inverses, as affine maps of pixel centres
        back = {
            0: [[1, 0, 0], [0, 1, 0]],
            1: [[0, -1, w - 1], [1, 0, 0]],
            2: [[-1, 0, w - 1], [0, -1, h - 1]],
            3: [[0, 1, 0], [-1, 0, h - 1]],
        }[k]
        return turned, _to_edges(np.array(back, np.float64))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    tw, th = int(np.ceil(h * s + w * c)), int(np.ceil(h * c + w * s))
    m[0, 2] += tw / 2 - w / 2
    m[1, 2] += th / 2 - h / 2
    turned = cv2.warpAffine(
        frame,
        m,
        (tw, th),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_FILL,
    )
    return turned, _to_edges(cv2.invertAffineTransform(m))


def _to_edges(back: np.ndarray) -> np.ndarray:
    """A map of pixel centres as a map of pixel edges (box coordinates): x_e = x_c + 0.5."""
    lin, t = back[:, :2], back[:, 2]
    return np.concatenate([lin, (t + 0.5 - lin @ np.array([0.5, 0.5]))[:, None]], axis=1)


def map_back(det: Detections, back: np.ndarray, shape: tuple[int, ...]) -> Detections:
    """Detections of a turned frame in the frame's pixels: each box becomes the upright
    rectangle around its turned corners (clipped to the frame), landmarks map exactly;
    detections whose centre falls outside the frame (the canvas) are dropped."""
    if not len(det):
        return det
    b = det.boxes.astype(np.float64)
    corners = np.stack(
        [b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1
    )  # (K, 4, 2)
    pts = corners @ back[:, :2].T + back[:, 2]
    lm = det.landmarks.astype(np.float64) @ back[:, :2].T + back[:, 2]
    h, w = shape[:2]
    centre = pts.mean(1)
    keep = (centre[:, 0] >= 0) & (centre[:, 0] < w) & (centre[:, 1] >= 0) & (centre[:, 1] < h)
    boxes = np.concatenate([pts.min(1), pts.max(1)], axis=1)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    return Detections(
        boxes[keep].astype(np.float32),
        det.scores[keep].astype(np.float32),
        lm[keep].astype(np.float32),
    )


def merge_views(views: Sequence[Detections], iou: float = 0.3) -> Detections:
    """The first view's detections, then the others' by score where no kept detection
    already covers them (box IoU above ``iou``, or its centre inside a kept box)."""
    boxes, scores = list(views[0].boxes), list(views[0].scores)
    landmarks = list(views[0].landmarks)
    rest = [
        (p, b, lm)
        for v in views[1:]
        for b, p, lm in zip(v.boxes, v.scores, v.landmarks, strict=True)
    ]
    for p, b, lm in sorted(rest, key=lambda t: -float(t[0])):
        if boxes and _covered(np.asarray(boxes), b, iou):
            continue
        boxes.append(b)
        scores.append(p)
        landmarks.append(lm)
    if not boxes:
        return Detections.empty()
    return Detections(
        np.asarray(boxes, np.float32),
        np.asarray(scores, np.float32),
        np.asarray(landmarks, np.float32),
    )


def _covered(kept: np.ndarray, b: np.ndarray, iou: float) -> bool:
    """Whether a kept box holds ``b``'s centre or overlaps it by more than ``iou``."""
    c = (b[:2] + b[2:]) / 2
    if ((kept[:, :2] <= c) & (c <= kept[:, 2:])).all(1).any():
        return True
    inter = box_intersection(kept, b[None])[:, 0]
    union = np.prod(kept[:, 2:] - kept[:, :2], 1) + np.prod(b[2:] - b[:2]) - inter
    return bool((inter > iou * np.maximum(union, 1e-9)).any())


class TurnedDetector:
    """A :class:`deid.detect.Detector` that searches each frame as it is and turned by each
    of ``turns`` (degrees counter-clockwise) and merges the views.

    Each view costs a full detection: ``turns: [0, 90, 180, 270]`` is four times the time.
    """

    def __init__(self, inner: Detector, turns: Sequence[float]) -> None:
        self.inner = inner
        self.turns = [float(t) for t in turns if float(t) % 360 != 0]

    def detect(self, frames: Sequence[np.ndarray], edge_pad: int | None = None) -> list[Detections]:
        if not frames:
            return []
        views = [self.inner.detect(frames, edge_pad)]
        for angle in self.turns:
            turned, backs = zip(*(turn_frame(f, angle) for f in frames), strict=True)
            found = self.inner.detect(list(turned), edge_pad)
            views.append(
                [map_back(d, m, f.shape) for d, m, f in zip(found, backs, frames, strict=True)]
            )
        return [merge_views([v[i] for v in views]) for i in range(len(frames))]

    def too_small(self, shape: Sequence[int]) -> bool:
        return self.inner.too_small(shape)
