"""Offline face tracking: link detections across a whole video, fill the gaps, one target each.

The video path analyses every frame first (detections and the classifier's logits, chunk by
chunk), then tracks over the whole sequence at once. Knowing the future makes tracking easy to
get right where it matters for privacy:

* **association** SORT-style: each live track predicts its box with a constant-velocity model,
  and the frame's detections are assigned by the Hungarian algorithm on ``1 - IoU``; small,
  fast faces whose boxes no longer overlap are still matched when their centres are close
  relative to their size;
* **gaps**: a face the detector misses for up to ``max_gap`` frames between two detections is
  interpolated (box and landmarks), so it stays protected;
* **ends**: ``extend`` frames before a track's first and after its last detection are covered
  at the extrapolated box (a face is usually visible a little before MTCNN locks on);
* **one target per track**: the target identity is chosen once, from the track's mean logits,
  so it never flickers from frame to frame;
* **hysteresis** (``min_score``): detections come down to the detector's lower
  ``track_score``, and a track is kept only when one of its detections scores ``min_score``
  or more, as ByteTrack keeps low-score boxes only where they continue a track. A small face
  the detector is sure of in some frames and unsure of in others stays detected in all of
  them; a patch of ground it is never sure of is dropped.

Everything here is plain numpy/scipy over JSON-able dicts: the plan is computed once per job
and shipped to every render chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from deid.targets import choose_targets


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x1, y1, x2, y2 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Centre distance divided by the mean side of the two boxes, (len(a), len(b))."""
    ca = (a[:, None, :2] + a[:, None, 2:]) / 2
    cb = (b[None, :, :2] + b[None, :, 2:]) / 2
    side = (
        (a[:, None, 2:] - a[:, None, :2]).mean(-1) + (b[None, :, 2:] - b[None, :, :2]).mean(-1)
    ) / 2
    return np.linalg.norm(ca - cb, axis=-1) / np.maximum(side, 1e-6)


@dataclass
class _Track:
    id: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)

    def predict(self, frame: int) -> np.ndarray:
        """Constant-velocity box at ``frame`` from the last two observations (damped)."""
        last = self.boxes[-1]
        if len(self.boxes) < 2:
            return last
        dt = self.frames[-1] - self.frames[-2]
        v = (last - self.boxes[-2]) / max(dt, 1)
        return last + 0.8 * v * (frame - self.frames[-1])


class OnlineTracker:
    """SORT-style association one frame at a time: what :func:`associate` runs over a whole
    video and ``deid stream`` runs live (:class:`deid.pipeline.stream.FaceTracks`).

    Each live track predicts its box (:meth:`_Track.predict`); a frame's boxes are assigned
    by the Hungarian algorithm on ``1 - IoU`` (plus a little centre distance), a pair being
    allowed when the IoU reaches ``iou_threshold`` or, for small fast faces, when the centres
    are within ``max_centre_distance`` mean box sides and the sizes agree within 2x. With
    scores, the boxes of ``min_score`` and more are assigned first, the weaker ones then to
    the tracks left (ByteTrack's two rounds), and only the former start tracks.
    """

    def __init__(
        self, iou_threshold: float = 0.3, max_gap: int = 5, max_centre_distance: float = 1.0
    ) -> None:
        self.iou_threshold = iou_threshold
        self.max_gap = max_gap
        self.max_centre_distance = max_centre_distance
        self.live: list[_Track] = []
        self.next_id = 0

    def _match(self, f: int, tracks: list[_Track], boxes: np.ndarray) -> list[tuple[int, int]]:
        """(track index, box index) pairs for ``boxes`` among ``tracks`` at frame ``f``."""
        if not tracks or not len(boxes):
            return []
        pred = np.stack([t.predict(f) for t in tracks])
        iou = iou_matrix(pred, boxes)
        dist = _centre_distance(pred, boxes)
        side_p = (pred[:, 2:] - pred[:, :2]).mean(1)[:, None]
        side_b = (boxes[:, 2:] - boxes[:, :2]).mean(1)[None]
        ratio = np.maximum(side_p, side_b) / np.maximum(np.minimum(side_p, side_b), 1e-6)
        ok = (iou >= self.iou_threshold) | ((dist <= self.max_centre_distance) & (ratio <= 2.0))
        cost = np.where(ok, 1.0 - iou + 0.1 * dist, 1e6)
        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if ok[r, c]]

    def step(
        self,
        f: int,
        boxes: np.ndarray,
        scores: np.ndarray | None = None,
        min_score: float = 0.0,
    ) -> list[int]:
        """Link frame ``f``'s boxes ((K, 4), K may be 0); frames come in increasing order.

        Returns:
            per box its track id, or -1 for a weak box (under ``min_score``) that continues
            no track.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.live = [t for t in self.live if f - t.frames[-1] <= self.max_gap + 1]
        strong = (
            np.ones(len(boxes), bool)
            if scores is None
            else np.asarray(scores, np.float64) >= min_score
        )
        ids = [-1] * len(boxes)
        free = list(range(len(self.live)))
        for group in (np.flatnonzero(strong), np.flatnonzero(~strong)):
            tracks = [self.live[k] for k in free]
            taken = set()
            for r, c in self._match(f, tracks, boxes[group]):
                t, i = tracks[r], int(group[c])
                # the last two observations are all a prediction needs (a stream runs for hours)
                t.frames[:] = [*t.frames[-1:], f]
                t.boxes[:] = [*t.boxes[-1:], boxes[i]]
                ids[i] = t.id
                taken.add(free[r])
            free = [k for k in free if k not in taken]
        for i in np.flatnonzero(strong):
            if ids[i] < 0:
                t = _Track(self.next_id, [f], [boxes[i]])
                self.next_id += 1
                self.live.append(t)
                ids[i] = t.id
        return ids

    def missing(self, f: int, max_gap: int, min_hits: int = 1) -> list[np.ndarray]:
        """Predicted boxes at frame ``f`` of the live tracks not seen in it, last seen at
        most ``max_gap`` frames before, and seen in at least ``min_hits`` (1 or 2) frames."""
        return [
            t.predict(f)
            for t in self.live
            if 0 < f - t.frames[-1] <= max_gap and len(t.frames) >= min_hits
        ]


def associate(
    boxes_per_frame: Sequence[np.ndarray],
    iou_threshold: float = 0.3,
    max_gap: int = 5,
    max_centre_distance: float = 1.0,
) -> list[list[int]]:
    """Track ids for every detection of every frame (:class:`OnlineTracker` over them all).

    Args:
        boxes_per_frame: per frame a (K, 4) array of boxes (K may be 0).
        iou_threshold: minimum IoU between a track's predicted box and a detection.
        max_gap: a track unmatched for more than this many frames ends.
        max_centre_distance: also match below ``iou_threshold`` when the centres are closer
            than this many mean box sides and the sizes agree within 2x (small fast faces).

    Returns:
        per frame, the track id of each detection (ids are dense, in order of appearance).
    """
    tracker = OnlineTracker(iou_threshold, max_gap, max_centre_distance)
    return [tracker.step(f, boxes) for f, boxes in enumerate(boxes_per_frame)]


def _clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray | None:
    x1, y1, x2, y2 = box
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    return np.array([x1, y1, x2, y2])


def _fill(
    seq: Sequence[tuple[int, dict[str, Any]]], n: int, width: int, height: int, extend: int
) -> Iterator[tuple[int, str, np.ndarray, np.ndarray, float]]:
    """(frame, kind, box, landmarks, score) of one track: its detections, the frames between
    them (linear interpolation) and ``extend`` frames past each end (constant velocity)."""
    box = [np.asarray(f["box"], np.float64) for _, f in seq]
    lms = [np.asarray(f["landmarks"], np.float64) for _, f in seq]
    for k, (fi, face) in enumerate(seq):
        yield fi, "detected", box[k], lms[k], float(face["score"])
        if k + 1 < len(seq):
            fj = seq[k + 1][0]
            for g in range(fi + 1, fj):
                w = (g - fi) / (fj - fi)
                yield (
                    g,
                    "interpolated",
                    (1 - w) * box[k] + w * box[k + 1],
                    (1 - w) * lms[k] + w * lms[k + 1],
                    0.0,
                )
    for k, nb, step in ((0, 1, -1), (len(seq) - 1, len(seq) - 2, 1)):
        fi = seq[k][0]
        if len(seq) > 1:
            dt = fi - seq[nb][0]
            vb, vl = (box[k] - box[nb]) / dt, (lms[k] - lms[nb]) / dt
        else:
            vb, vl = np.zeros(4), np.zeros((5, 2))
        for s in range(1, extend + 1):
            g = fi + step * s
            b = _clip_box(box[k] + vb * step * s, width, height) if 0 <= g < n else None
            if b is None:
                break
            yield g, "extrapolated", b, lms[k] + vl * step * s, 0.0


def plan_tracks(
    faces: Sequence[Sequence[dict[str, Any]]],
    width: int,
    height: int,
    target_mode: str | int,
    class_count: int,
    seed: int = 0,
    iou_threshold: float = 0.3,
    max_gap: int = 5,
    extend: int = 2,
    min_score: float = 0.0,
) -> dict[str, Any]:
    """Tracks, filled gaps and one target per track, for a whole video.

    Args:
        faces: per frame, the analysed faces: dicts with ``box`` (4,), ``landmarks`` (5, 2),
            ``score`` and ``logits`` (class_count,).
        width, height: frame size (extrapolated boxes are clipped to it).
        target_mode: ``least-likely``, ``nearest``, ``random`` or a fixed class id.
        class_count: number of identities of the classifier.
        seed: seeds ``random`` targets (per track, so chunking does not change them).
        iou_threshold, max_gap, extend: see :func:`associate` and the module docstring.
        min_score: a track none of whose detections scores this much is dropped (its
            detections are counted in ``unconfirmed``); 0 keeps every track.

    Returns:
        ``{"frames": [[face, ...] per frame], "tracks": [summary, ...]}`` where each face is
        ``{"track", "kind": detected|interpolated|extrapolated, "box", "landmarks", "score",
        "pred", "target"}`` and each summary has ``id, first, last, detected, interpolated,
        extrapolated, pred, target, best_score``; and ``"unconfirmed"``, the number of
        detections dropped by ``min_score``. Track ids are dense, in order of appearance.
        JSON-able.
    """
    n = len(faces)
    ids = associate(
        [np.array([f["box"] for f in fr], np.float64).reshape(-1, 4) for fr in faces],
        iou_threshold,
        max_gap,
    )
    found: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for fi, (fr, fids) in enumerate(zip(faces, ids, strict=True)):
        for face, tid in zip(fr, fids, strict=True):
            found.setdefault(tid, []).append((fi, face))
    confirmed = [
        seq for _, seq in sorted(found.items()) if max(f["score"] for _, f in seq) >= min_score
    ]
    unconfirmed = sum(len(seq) for seq in found.values()) - sum(len(seq) for seq in confirmed)
    out_frames: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    tracks: list[dict[str, Any]] = []
    for tid, seq in enumerate(confirmed):
        logits = torch.tensor(np.mean([f["logits"] for _, f in seq], axis=0))[None]
        pred = int(logits.argmax())
        track_conf = float(torch.softmax(logits[0], 0)[pred])
        conf = {fi: float(torch.softmax(torch.tensor(f["logits"]), 0)[pred]) for fi, f in seq}
        if isinstance(target_mode, int):
            target = int(target_mode)
        else:
            g = torch.Generator().manual_seed(seed * 1_000_003 + tid)
            target = int(choose_targets(logits, target_mode, g)[0])  # type: ignore[arg-type]
        counts = {"detected": 0, "interpolated": 0, "extrapolated": 0}
        span = [n, -1]
        for fi, kind, box, lm, score in _fill(seq, n, width, height, extend):
            out_frames[fi].append(
                {
                    "track": tid,
                    "kind": kind,
                    "box": [round(float(v), 2) for v in box],
                    "landmarks": np.round(np.asarray(lm, np.float64), 2).tolist(),
                    "score": round(float(score), 4),
                    "pred": pred,
                    "pred_conf": round(
                        conf.get(fi, track_conf) if kind == "detected" else track_conf, 4
                    ),
                    "target": target,
                }
            )
            counts[kind] += 1
            span[0], span[1] = min(span[0], fi), max(span[1], fi)
        tracks.append(
            {
                "id": tid,
                "first": span[0],
                "last": span[1],
                **counts,
                "pred": pred,
                "target": target,
                "best_score": round(max(float(f["score"]) for _, f in seq), 4),
            }
        )
    for fr in out_frames:
        fr.sort(key=lambda f: f["track"])
    return {"frames": out_frames, "tracks": tracks, "unconfirmed": unconfirmed}
