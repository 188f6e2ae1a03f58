"""Detection on keyframes with tracking in between (``detector.keyframe_interval``).

Every ``interval``-th frame of a chunk (counted from the chunk's first frame, so chunks stay
independent) is detected in full. On the frames in between the detector searches only
*windows*:

* around every face of the frames before (its box grown by :data:`CONTEXT` of its side on
  each side, moved by the pan), for up to :data:`KEEP` frames after it was last found, so
  that a face the detector finds only now and then (a small one) is looked for where it was;
* around regions that changed: the previous frame is moved by the global shift between the
  two (phase correlation on a grey copy at 1/:data:`CHANGE_SCALE`, the drone's pan), and
  blocks whose difference exceeds :data:`CHANGE_LEVEL` grey levels outside the faces'
  windows are searched (a person walking in, a head turning);
* the band along each frame edge the scene enters from (the pan's direction), where faces
  come into view.

A frame falls back to a full detection when the tracker's confidence drops: a steady face
(found in :data:`STEADY` frames in a row) is not found again, or the changed area exceeds
:data:`FULL_AREA` of the frame (a cut, a fast turn). Windows are padded to a few sizes so
that the detector searches them in a handful of batched calls. With ``interval`` 1 every
frame is detected in full, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torchvision.ops import nms

from deid.detect import Detector
from deid.pipeline.tracking import iou_matrix as box_iou
from deid.types import Detections

#: A face's window: its box grown by this much of its longer side on every side.
CONTEXT = 0.5
#: Smallest window side, px (a face of 12 px still gets some context).
MIN_WINDOW = 48
#: A face not found is still searched for in its window for this many frames.
KEEP = 10
#: A face found in this many frames in a row is steady: losing it means a full detection
#: (faces the detector finds only now and then, small ones, do not trigger one).
STEADY = 3
#: Grey copy of a frame for the change measure: 1/CHANGE_SCALE of its size.
CHANGE_SCALE = 4
#: Grey levels (0-255) of mean absolute difference over a block that count as a change.
CHANGE_LEVEL = 12.0
#: Block side for the change measure, px of the grey copy (x CHANGE_SCALE in the frame).
CHANGE_BLOCK = 8
#: Band along an entering frame edge that is searched, px.
EDGE_BAND = 96
#: Fraction of the frame in change windows above which the frame is detected in full.
FULL_AREA = 0.35
#: Window sides are padded up to one of these (fewer shapes: fewer detector calls).
BUCKETS = (32, 48, 64, 96, 128, 192, 256, 384, 512)
#: Windows longer than the largest bucket are cut into pieces overlapping this much.
PIECE_OVERLAP = 96
#: px: a window's detection this close to a window edge inside the frame is dropped.
EDGE = 2.0
#: Two detections of one frame whose boxes overlap more than this are one face.
SAME_FACE_IOU = 0.4


@dataclass
class KeyframeStats:
    """How a chunk was detected: frames, those detected in full (keyframes and fallbacks),
    fallbacks, and windows searched."""

    frames: int = 0
    full: int = 0
    fallbacks: int = 0
    windows: int = 0
    back: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "full": self.full,
            "fallbacks": self.fallbacks,
            "windows": self.windows,
            "back": self.back,
            "reasons": dict(self.reasons),
        }


@dataclass
class _Track:
    box: np.ndarray  # last box found, frame px
    missed: int = 0  # frames since it was last found
    hits: int = 1  # frames in a row it was found, up to the last


Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (int, clipped)


class KeyframeDetector:
    """Detects the frames of one chunk in order: in full on keyframes, in windows between.

    Args:
        detector: the full detector (:class:`deid.detect.Detector`).
        interval: every ``interval``-th frame (from the first) is a keyframe; 1: all.
        follow_score: only faces scoring this much are followed (windows around them,
            steady faces, the backward search); the weaker ones the detector returns (down to
            ``detector.track_score``, for the plan's tracks to confirm) are reported, not
            followed, so they neither add windows nor force full detections.
    """

    def __init__(self, detector: Detector, interval: int, follow_score: float = 0.0) -> None:
        if interval < 1:
            raise ValueError(f"interval: expected >= 1, got {interval}")
        self.detector = detector
        self.interval = int(interval)
        self.follow_score = float(follow_score)
        self.stats = KeyframeStats()
        self._index = 0
        self._tracks: list[_Track] = []
        self._prev_grey: np.ndarray | None = None
        self._shifts: list[tuple[float, float]] = []  # pan from the frame before, grey px

    def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Faces of the next frames of the chunk, in order (forward only: a face first found
        in a frame is not looked for in the frames before; :meth:`detect_chunk` does)."""
        self.stats.frames += len(frames)
        if self.interval == 1:  # every frame in full, in one batched call (as before)
            self.stats.full += len(frames)
            self._index += len(frames)
            return self.detector.detect(frames)
        out = []
        for frame in frames:
            if self._index % self.interval == 0 or self._prev_grey is None:
                d = self.detector.detect([frame])[0]
                self.stats.full += 1
                grey = _grey(frame)
                self._shifts.append(
                    (0.0, 0.0) if self._prev_grey is None else _change(self._prev_grey, grey)[0]
                )
                self._prev_grey = grey
            else:
                d = self._between(frame)
            self._follow(d)
            out.append(d)
            self._index += 1
        return out

    def detect_chunk(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Faces of all the frames of a chunk: :meth:`detect`, then backwards, each face of a
        frame that the frame before lacks is looked for in a window there, and further back
        for up to :data:`KEEP` frames in which it is not found, so that a face the keyframe
        missed is found before the frame it was first found in, as a full detection of
        every frame would."""
        out = self.detect(frames)
        if self.interval == 1:
            return out
        pending: list[tuple[np.ndarray, int]] = []  # (box in frame t, frames missed)
        for t in range(len(frames) - 1, 0, -1):
            dx, dy = (CHANGE_SCALE * v for v in self._shifts[t])
            move = np.array([dx, dy, dx, dy], np.float32)
            sure = out[t].boxes[out[t].scores >= self.follow_score]
            seeds = [(b, 0) for b in sure] + pending
            prev = out[t - 1]
            boxes = np.array([b for b, _ in seeds], np.float32).reshape(-1, 4) - move
            todo = np.ones(len(seeds), bool)
            if len(prev) and len(seeds):
                todo = box_iou(boxes, prev.boxes).max(1) < 0.3
            if not todo.any():
                pending = []
                continue
            h, w = frames[t - 1].shape[:2]
            idx = np.flatnonzero(todo)
            rects = [_grow(boxes[i], w, h, 0.0, 0.0, seeds[i][1]) for i in idx]
            found = self._windows(frames[t - 1], rects)
            hit = np.zeros(len(idx), bool)
            if len(found):
                m = box_iou(found.boxes, boxes[idx]) >= 0.3
                if len(prev):
                    m &= (box_iou(found.boxes, prev.boxes) < 0.3).all(1)[:, None]
                add = m.any(1)
                hit = m.any(0)
                if add.any():
                    self.stats.back += int(add.sum())
                    out[t - 1] = _merge(prev, found.select(add))
            pending = [
                (boxes[i], seeds[i][1] + 1)
                for i, h_ in zip(idx, hit, strict=True)
                if not h_ and seeds[i][1] + 1 < KEEP
            ]
        return out

    # -- the frames in between ---------------------------------------------------------------
    def _between(self, frame: np.ndarray) -> Detections:
        h, w = frame.shape[:2]
        grey = _grey(frame)
        assert self._prev_grey is not None
        shift, changed = _change(self._prev_grey, grey)
        self._prev_grey = grey
        self._shifts.append(shift)
        dx, dy = shift[0] * CHANGE_SCALE, shift[1] * CHANGE_SCALE
        face_rects = [_grow(t.box, w, h, dx, dy, t.missed) for t in self._tracks]
        rects = list(face_rects)
        # changed blocks outside every face window
        change_rects = []
        if changed.any():
            cover = np.zeros_like(changed)
            b = CHANGE_SCALE * CHANGE_BLOCK
            for x1, y1, x2, y2 in face_rects:
                cover[y1 // b : -(-y2 // b), x1 // b : -(-x2 // b)] = True
            n, _, boxes, _ = cv2.connectedComponentsWithStats(
                (changed & ~cover).astype(np.uint8), connectivity=8
            )
            for k in range(1, n):
                x, y, bw, bh = boxes[k][:4]
                change_rects.append(
                    _clip((x * b - b, y * b - b, (x + bw) * b + b, (y + bh) * b + b), w, h)
                )
        change_area = sum((r[2] - r[0]) * (r[3] - r[1]) for r in change_rects)
        if change_area > FULL_AREA * w * h:
            return self._fallback(frame, "change")
        rects += change_rects
        rects += _entering_bands(w, h, dx, dy)
        found = self._windows(frame, rects)
        # confidence: every steady face of the frame before is found again
        live = [t for t in self._tracks if t.missed == 0 and t.hits >= STEADY]
        if live:
            if len(found) == 0:
                return self._fallback(frame, "lost")
            moved = np.array([t.box + np.array([dx, dy, dx, dy]) for t in live], np.float32)
            best = box_iou(moved, found.boxes).max(1)
            if (best < 0.3).any():
                return self._fallback(frame, "lost")
        return found

    def _fallback(self, frame: np.ndarray, reason: str) -> Detections:
        self.stats.full += 1
        self.stats.fallbacks += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        return self.detector.detect([frame])[0]

    def _windows(self, frame: np.ndarray, rects: Sequence[Rect]) -> Detections:
        """Faces in ``rects`` of ``frame``: each padded to a bucket size, searched by shape
        in one call, mapped back, duplicates merged."""
        h, w = frame.shape[:2]
        pieces = [p for r in rects for p in _pieces(r)]
        self.stats.windows += len(pieces)
        if not pieces:
            return Detections.empty()
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (x1, y1, x2, y2) in enumerate(pieces):
            groups.setdefault((bucket(y2 - y1), bucket(x2 - x1)), []).append(k)
        boxes, scores, marks = [], [], []
        for idx in groups.values():
            crops = [
                pad_to_bucket(frame[y1:y2, x1:x2]) for x1, y1, x2, y2 in (pieces[k] for k in idx)
            ]
            for k, d in zip(idx, self.detector.detect(crops, edge_pad=0), strict=True):
                x1, y1, x2, y2 = pieces[k]
                off = np.array([x1, y1], np.float32)
                b = d.boxes + np.tile(off, 2)
                # a box reaching a window edge inside the frame may be a face cut by the
                # window (a part of a face, or of a face's window, looks like a face): the
                # face lies whole in its own window
                cut = np.zeros(len(b), bool)
                if x1 > 0:
                    cut |= b[:, 0] < x1 + EDGE
                if x2 < w:
                    cut |= b[:, 2] > x2 - EDGE
                if y1 > 0:
                    cut |= b[:, 1] < y1 + EDGE
                if y2 < h:
                    cut |= b[:, 3] > y2 - EDGE
                boxes.append(b[~cut])
                scores.append(d.scores[~cut])
                marks.append(d.landmarks[~cut] + off)
        b = np.concatenate(boxes).astype(np.float32)
        if not len(b):
            return Detections.empty()
        s = np.concatenate(scores).astype(np.float32)
        lm = np.concatenate(marks).astype(np.float32)
        keep = np.sort(nms(torch.from_numpy(b), torch.from_numpy(s), SAME_FACE_IOU).numpy())
        # frame order: top to bottom, left to right (as a full detection lists them, roughly)
        keep = keep[np.lexsort((b[keep, 0], b[keep, 1]))]
        return Detections(b[keep], s[keep], lm[keep])

    # -- state -------------------------------------------------------------------------------
    def _follow(self, d: Detections) -> None:
        """Tracks: faces found now (each continuing the track it overlaps, if any), and
        those lost for at most :data:`KEEP` frames."""
        d = d.select(d.scores >= self.follow_score)
        if len(d) and self._tracks:
            m = box_iou(d.boxes, np.array([t.box for t in self._tracks], np.float32)) >= 0.3
        else:
            m = np.zeros((len(d), len(self._tracks)), bool)
        found = [
            _Track(
                b.copy(),
                0,
                1
                + max(
                    (
                        t.hits
                        for t, hit in zip(self._tracks, row, strict=True)
                        if hit and t.missed == 0
                    ),
                    default=0,
                ),
            )
            for b, row in zip(d.boxes, m, strict=True)
        ]
        kept = [
            _Track(t.box, t.missed + 1, 0)
            for t, hit in zip(self._tracks, m.any(0), strict=True)
            if not hit and t.missed < KEEP
        ]
        self._tracks = found + kept


def _merge(a: Detections, b: Detections) -> Detections:
    """The faces of ``a`` and ``b`` of one frame, top to bottom, left to right."""
    boxes = np.concatenate([a.boxes, b.boxes])
    order = np.lexsort((boxes[:, 0], boxes[:, 1]))
    return Detections(
        boxes[order],
        np.concatenate([a.scores, b.scores])[order],
        np.concatenate([a.landmarks, b.landmarks])[order],
    )


def _grey(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    small = cv2.resize(
        frame, (max(1, w // CHANGE_SCALE), max(1, h // CHANGE_SCALE)), interpolation=cv2.INTER_AREA
    )
    return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _change(prev: np.ndarray, cur: np.ndarray) -> tuple[tuple[float, float], np.ndarray]:
    """The global shift (dx, dy) from ``prev`` to ``cur`` (grey copies) and which blocks of
    :data:`CHANGE_BLOCK` px changed beyond it ((rows, cols) bool; newly exposed border
    excluded: the entering bands cover it)."""
    h, w = cur.shape
    if min(h, w) < 2 * CHANGE_BLOCK:
        return (0.0, 0.0), np.zeros((max(1, h // CHANGE_BLOCK), max(1, w // CHANGE_BLOCK)), bool)
    (dx, dy), _ = cv2.phaseCorrelate(prev, cur)
    if abs(dx) > w / 4 or abs(dy) > h / 4:  # not a pan: compare as is (a cut shows as change)
        dx = dy = 0.0
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(prev, m, (w, h), flags=cv2.INTER_LINEAR)
    seen = cv2.warpAffine(np.ones_like(prev), m, (w, h), flags=cv2.INTER_LINEAR)
    diff = np.abs(cur - moved)
    diff[seen < 0.999] = 0.0  # ground not in the previous frame
    rows, cols = h // CHANGE_BLOCK, w // CHANGE_BLOCK
    blocks = (
        diff[: rows * CHANGE_BLOCK, : cols * CHANGE_BLOCK]
        .reshape(rows, CHANGE_BLOCK, cols, CHANGE_BLOCK)
        .mean((1, 3))
    )
    return (float(dx), float(dy)), blocks > CHANGE_LEVEL


def _clip(r: tuple[float, float, float, float], w: int, h: int) -> Rect:
    x1, y1 = max(0, math.floor(r[0])), max(0, math.floor(r[1]))
    x2, y2 = min(w, math.ceil(r[2])), min(h, math.ceil(r[3]))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def _grow(box: np.ndarray, w: int, h: int, dx: float, dy: float, missed: int) -> Rect:
    """A face's window: its box moved by the pan, grown by :data:`CONTEXT` (more for each
    frame it was missed), at least :data:`MIN_WINDOW` px a side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    m = CONTEXT * side * (1 + 0.5 * missed) + (1 + missed) * max(abs(dx), abs(dy))
    cx, cy = (x1 + x2) / 2 + dx * (1 + missed), (y1 + y2) / 2 + dy * (1 + missed)
    half = max(side / 2 + m, MIN_WINDOW / 2)
    return _clip((cx - half, cy - half, cx + half, cy + half), w, h)


def _entering_bands(w: int, h: int, dx: float, dy: float) -> list[Rect]:
    """Bands along the edges new ground comes in through (content moves by dx, dy)."""
    out = []
    if dx > 0.5:
        out.append((0, 0, min(w, EDGE_BAND), h))
    elif dx < -0.5:
        out.append((max(0, w - EDGE_BAND), 0, w, h))
    if dy > 0.5:
        out.append((0, 0, w, min(h, EDGE_BAND)))
    elif dy < -0.5:
        out.append((0, max(0, h - EDGE_BAND), w, h))
    return out


def _pieces(r: Rect) -> list[Rect]:
    """``r`` cut into pieces of at most the largest bucket a side, overlapping."""
    top = BUCKETS[-1]
    x1, y1, x2, y2 = r

    def starts(a: int, b: int) -> list[int]:
        if b - a <= top:
            return [a]
        step = top - PIECE_OVERLAP
        s = list(range(a, b - top, step))
        return [*s, b - top]

    return [
        (x, y, min(x + top, x2), min(y + top, y2)) for y in starts(y1, y2) for x in starts(x1, x2)
    ]


def pad_to_bucket(window: np.ndarray) -> np.ndarray:
    """``window`` on black, right and bottom, up to the next bucket side on each axis (one
    larger than the largest bucket: as it is; an empty one: all black), so windows of
    similar sizes share a shape and are searched in one detector call."""
    h, w = window.shape[:2]
    if max(h, w) > BUCKETS[-1]:
        return window
    out = np.zeros((bucket(h), bucket(w), 3), np.uint8)
    out[:h, :w] = window
    return out


def bucket(n: int) -> int:
    """The smallest of :data:`BUCKETS` that holds ``n`` px."""
    return next(b for b in BUCKETS if n <= b)
