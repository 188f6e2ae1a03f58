"""Any single-scale face detector on frames of any size: mirror padding, downscaling, tiling.

A detector that can search one batch of same-size images (:meth:`TiledDetector.detect_single`)
gets the rest of :class:`deid.detect.Detector` from :class:`TiledDetector`. Large frames (4K
drone footage) are detected one of three ways:

* at full resolution (the default): every face from ``min_face_size`` up is found, at the
  cost of searching the whole frame;
* on a copy downscaled to ``max_side`` (cheap, but a face shrinks with the frame, so faces
  smaller than ``min_face_size * side / max_side`` are lost);
* tile by tile (``tile``): overlapping full-resolution windows of at most ``tile`` px, plus
  one *overview* pass over the frame downscaled for faces too large for a window. Boxes and
  landmarks are mapped back to frame pixels, detections cut by an inner window edge are
  dropped (the face lies whole in a neighbouring window or in the overview) and duplicates
  are merged by non-maximum suppression.

Whichever way faces are found, crops and attacks use the full-resolution frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torchvision.ops import nms

from deid.detect.light import stretched
from deid.types import Detections

if TYPE_CHECKING:
    from deid.detect.base import DetectorSettings

#: What a single-scale detector returns for one image, unfiltered, in that image's pixels:
#: boxes (K, 4) x1, y1, x2, y2, scores (K,) and landmarks (K, 5, 2), all float32.
RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]
# px: a window detection whose box comes this close to an inner window edge may be cut
_EDGE = 2.0
#: px: the second look enlarges an unsure detection's box to this side (MTCNN's O-Net input)
LOOK_FACE = 48
#: the second looks' views: the box's surroundings this many times its side ...
LOOK_CONTEXT = (3, 4)
#: ... enlarged to views of this side
LOOK_SIDES = tuple(c * LOOK_FACE for c in LOOK_CONTEXT)
_LOOK_BATCH = 32  # views per detect_look call (bounds memory)


def tile_grid(length: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets and size of the windows covering ``length`` px along one axis.

    Windows are as few as a maximum size of ``tile`` allows with neighbours overlapping by at
    least ``overlap`` px, all of one size (so they batch), spread evenly, the last ending at
    ``length``. Any interval of at most ``overlap`` px lies whole inside one window.

    Example:
        >>> tile_grid(3840, 1280, 128)
        ([0, 928, 1856, 2784], 1056)
        >>> tile_grid(600, 1280, 128)
        ([0], 600)
    """
    if length <= tile:
        return [0], length
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    return [round(i * (length - size) / (n - 1)) for i in range(n)], size


def tiling_options(cfg: DetectorSettings) -> dict[str, Any]:
    """:class:`TiledDetector`'s keyword arguments from the detector settings every detector
    shares (``min_face_size``, ``min_score``, ``max_side``, ``tile``, ``tile_overlap``,
    ``edge_pad``, ``upscale``, ``recheck_score``, ``confirm_score``, ``stretch_range``)."""
    return {
        "min_face_size": cfg.min_face_size,
        "min_score": cfg.min_score,
        "max_side": cfg.max_side,
        "tile": cfg.tile,
        "tile_overlap": cfg.tile_overlap,
        "edge_pad": cfg.edge_pad,
        "upscale": cfg.upscale,
        "recheck_score": cfg.recheck_score,
        "confirm_score": cfg.confirm_score,
        "stretch_range": getattr(cfg, "stretch_range", None),
    }


class TiledDetector:
    """Base of detectors that search same-size images at one scale: frames of any size in,
    :class:`Detections` out (a :class:`deid.detect.Detector`).

    A subclass implements :meth:`detect_single` (and, where its smallest searchable image is
    not ``min_face_size``, :meth:`searchable`); this class validates frames, batches frames
    of one size, pads, downscales or tiles them, maps detections back to frame pixels and
    keeps those scoring ``min_score`` or more.

    Args:
        min_face_size: smallest face side in pixels to look for (drone faces are small).
        min_score: drop faces whose final score is below this.
        max_side: frames whose longer side exceeds this are detected on a downscaled copy
            and the boxes scaled back (``None``: always full resolution).
        tile: frames whose longer side exceeds this are detected in overlapping
            full-resolution windows of at most ``tile`` px plus one overview pass on a copy
            downscaled to at most ``tile`` px (``None``: no tiling). Takes precedence over
            ``max_side`` for such frames.
        tile_overlap: overlap of neighbouring windows in px; faces up to this size are
            always whole in some window, larger ones are left to the overview pass.
        tile_batch: windows per :meth:`detect_single` call (bounds memory).
        nms_iou: box IoU above which two detections of a tiled frame are the same face.
        edge_pad: px of mirror padding around each frame before detection, so that faces
            cut by the frame edge (up to about two thirds outside) are still found; mirror
            images of faces near the edge are dropped again (0: no padding).
        upscale: frames detected at full resolution (neither tiled nor downscaled) are
            searched on a copy enlarged by this factor (bicubic), so that a small face
            reaches the detector's networks with more, smooth pixels; boxes come back in
            frame pixels and ``min_face_size`` stays in frame pixels (1: no enlarging).
        recheck_score: a detection scoring from this up to ``confirm_score`` is looked at
            again (:meth:`second_look`): its surroundings are enlarged so that the face is
            :data:`LOOK_FACE` px (the size of MTCNN's last stage), at two amounts of context,
            and searched again; its score becomes the better of the looks' when higher
            (``None``: no second look). A small face the first pass is unsure of (its boxes
            come from a 12-px window) is then seen at the size the detector knows best.
        confirm_score: the score a second look must lift a detection to (``None``:
            ``min_score``); video analysis, which keeps detections down to the hysteresis'
            ``track_score``, keeps confirming at the pipeline's ``min_score``.
        stretch_range: a frame whose 1st-99th percentile grey levels span less than this
            (dusk, haze, fog) is searched on a copy stretched to the full range
            (:func:`deid.detect.light.stretched`); ``None``: never.

    Raises:
        ValueError: ``tile_overlap`` is not in ``[0, tile)``.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        min_score: float = 0.9,
        max_side: int | None = None,
        tile: int | None = None,
        tile_overlap: int = 128,
        tile_batch: int = 4,
        nms_iou: float = 0.4,
        edge_pad: int = 0,
        upscale: float = 1.0,
        recheck_score: float | None = None,
        confirm_score: float | None = None,
        stretch_range: float | None = None,
    ) -> None:
        if upscale < 1:
            raise ValueError(f"upscale: expected a factor >= 1, got {upscale}")
        if tile is not None and not 0 <= tile_overlap < tile:
            raise ValueError(
                f"tile_overlap: expected 0 <= overlap < tile ({tile}), got {tile_overlap}"
            )
        self.min_face_size = int(min_face_size)
        self.min_score = float(min_score)
        self.max_side = max_side
        self.tile = tile
        self.tile_overlap = int(tile_overlap)
        self.tile_batch = max(1, int(tile_batch))
        self.nms_iou = float(nms_iou)
        self.edge_pad = max(0, int(edge_pad))
        self.upscale = float(upscale)
        self.confirm_score = float(min_score if confirm_score is None else confirm_score)
        self.stretch_range = None if stretch_range is None else float(stretch_range)
        self.recheck_score = (
            None
            if recheck_score is None or recheck_score >= self.confirm_score
            else float(recheck_score)
        )
        # detections kept until the second look has seen them
        unsure = self.min_score if self.recheck_score is None else self.recheck_score
        self.keep_score = min(self.min_score, unsure)

    # -- what a subclass provides ----------------------------------------------------------
    def detect_single(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """Faces in same-size (H, W, 3) uint8 RGB images at their own scale, unfiltered.

        Only called with images :meth:`searchable` accepts.

        Returns:
            per image: boxes (K, 4), scores (K,), landmarks (K, 5, 2), float32, in the
            image's pixels (:data:`RawDetections`; :func:`no_detections` for none).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement detect_single")

    def detect_enlarged(
        self, images: Sequence[np.ndarray], originals: Sequence[np.ndarray] | None = None
    ) -> list[RawDetections]:
        """:meth:`detect_single` on frames enlarged by ``upscale``, in which faces are
        ``upscale`` times ``min_face_size`` and larger (a detector with a minimum face
        size of its own overrides this to look for those). Only called for frames
        :meth:`searchable` accepts at their own size. ``originals``: the same frames before
        enlarging (a detector may search them in a first stage; here unused)."""
        return self.detect_single(images)

    def detect_look(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """The second look (:meth:`second_look`): faces of about :data:`LOOK_FACE` px in
        same-size images (:data:`LOOK_SIDES`), unfiltered; by default :meth:`detect_single`."""
        return self.detect_single(images)

    def searchable(self, height: int, width: int) -> bool:
        """Whether an image of this size can hold a face the detector looks for."""
        return min(height, width) >= self.min_face_size

    # -- the Detector protocol -------------------------------------------------------------
    def too_small(self, shape: Sequence[int]) -> bool:
        """Whether a frame of ``shape`` (H, W, ...) is too small to hold a face the detector
        looks for, even with its mirror padding: such a frame gets no detections."""
        pad = self._pad(shape)
        return not self.searchable(shape[0] + 2 * pad, shape[1] + 2 * pad)

    def detect(self, frames: Sequence[np.ndarray], edge_pad: int | None = None) -> list[Detections]:
        """Detect faces in RGB uint8 frames (H, W, 3).

        Frames of the same size are searched as one batch (tiled frames: their windows,
        ``tile_batch`` at a time).

        Args:
            frames: (H, W, 3) uint8 RGB.
            edge_pad: mirror padding in px for this call (``None``: the detector's
                ``edge_pad``); at most 1/8 of a frame's shorter side. Windows cut out of a
                frame around known faces need none.

        Raises:
            ValueError: a frame is not (H, W, 3) uint8 (grayscale frames are converted by
                :func:`deid.align.as_rgb` first).
        """
        out: list[Detections | None] = [None] * len(frames)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(frames):
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError(
                    f"frame {i}: expected (H, W, 3) uint8 RGB, got {f.shape} {f.dtype}"
                )
            groups.setdefault(f.shape, []).append(i)
        if self.stretch_range is not None:  # dim or hazy frames: a stretched copy
            frames = [f if (s := stretched(f, self.stretch_range)) is None else s for f in frames]
        for shape, idx in groups.items():
            batch = [frames[i] for i in idx]
            pad = self._pad(shape, edge_pad)
            if pad:
                batch = [
                    cv2.copyMakeBorder(f, pad, pad, pad, pad, cv2.BORDER_REFLECT) for f in batch
                ]
            mode = self.mode(shape)
            if mode == "tiled":
                raws = self._detect_tiled(batch)
            elif mode == "downscaled":
                raws = self._detect_scaled(batch, self.max_side or 0)
            elif self.upscale > 1:
                raws = self._detect_upscaled(batch)
            else:
                raws = self._run(batch)
            raws = [self._unpad(raw, shape, pad) if pad else raw for raw in raws]
            raws = self.second_look([frames[i] for i in idx], raws)
            for i, raw in zip(idx, raws, strict=True):
                out[i] = self._finish(raw)
        return [d if d is not None else Detections.empty() for d in out]

    # -- how a frame is searched -----------------------------------------------------------
    def mode(self, shape: Sequence[int]) -> str:
        """How a frame of ``shape`` (H, W, ...) is detected: full, downscaled or tiled."""
        side = max(shape[:2])
        if self.tile and side > self.tile:
            return "tiled"
        if self.max_side and side > self.max_side:
            return "downscaled"
        return "full"

    def overview_side(self, h: int, w: int) -> int:
        """Longer side of a tiled frame's overview copy: small enough to be cheap, large
        enough that a face of half ``tile_overlap`` (and larger) still shows at
        ``min_face_size`` in it; at most ``tile``."""
        side = max(h, w)
        tile = min(int(self.tile or side), side)
        if self.tile_overlap == 0:
            return tile
        return min(tile, math.ceil(side * self.min_face_size / (0.5 * self.tile_overlap)))

    # -- internals -------------------------------------------------------------------------
    def _pad(self, shape: Sequence[int], edge_pad: int | None = None) -> int:
        """Mirror padding of a frame: ``edge_pad`` (default: the detector's), at most 1/8 of
        the frame's shorter side."""
        return min(self.edge_pad if edge_pad is None else edge_pad, min(shape[:2]) // 8)

    def _unpad(self, raw: RawDetections, shape: tuple[int, ...], pad: int) -> RawDetections:
        """Detections on a reflection-padded frame -> frame coordinates.

        The padding mirrors the frame's edges, so a face cut by the edge shows whole (its
        visible part and its mirror image) and the detector finds it; but a face near the
        edge also shows a second time, mirrored, in the padding. Detections mostly (> 75 %)
        in the padding are such mirror images and are dropped; of overlapping ones the one
        most inside the frame is kept (its box covers the visible face). Where two mirrored
        edges meet, a corner can look like a small face: detections showing less than half
        of ``min_face_size`` inside the frame, across or down, are dropped too.
        """
        off = np.array([pad, pad], np.float32)
        b, p, lm = raw
        b = b - np.tile(off, 2)
        h, w = shape[:2]
        area = np.prod(np.clip(b[:, 2:] - b[:, :2], 1e-6, None), axis=1)
        inside = box_intersection(b, np.array([[0, 0, w, h]], np.float32))[:, 0] / area
        vis = np.minimum(b[:, 2:], [w, h]) - np.maximum(b[:, :2], 0)
        keep = (inside >= 0.25) & (vis.min(1) >= 0.5 * self.min_face_size) & (p >= self.keep_score)
        b, p, lm, inside = b[keep], p[keep], lm[keep] - off, inside[keep]
        if len(b) > 1:
            rank = np.minimum(inside, 0.9) + 0.01 * p  # inside first, then confidence
            order = nms(torch.from_numpy(b), torch.from_numpy(rank.astype(np.float32)), 0.3)
            keep_idx = np.sort(order.numpy())
            b, p, lm = b[keep_idx], p[keep_idx], lm[keep_idx]
        return b, p, lm

    def _run(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """:meth:`detect_single` on same-size images (no detections for images too small to
        search: a tiny frame, or a thin frame's downscaled or overview copy)."""
        if not images:
            return []
        if not self.searchable(*images[0].shape[:2]):
            return [no_detections() for _ in images]
        return self.detect_single(images)

    def _detect_scaled(self, images: Sequence[np.ndarray], side: int) -> list[RawDetections]:
        """Detection on copies whose longer side is ``side``; coordinates in the originals."""
        h, w = images[0].shape[:2]
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in images]
        sx, sy = w / size[0], h / size[1]
        return [(b * [sx, sy, sx, sy], p, lm * [sx, sy]) for b, p, lm in self._run(small)]

    def _detect_upscaled(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """Detection on copies enlarged by ``upscale`` (bicubic), ``tile_batch`` at a time
        (an enlarged 1080p frame is a 4K one); coordinates in the originals."""
        h, w = images[0].shape[:2]
        if not self.searchable(h, w):
            return [no_detections() for _ in images]
        size = (round(w * self.upscale), round(h * self.upscale))
        sx, sy = w / size[0], h / size[1]
        out: list[RawDetections] = []
        for s in range(0, len(images), self.tile_batch):
            chunk = images[s : s + self.tile_batch]
            big = [cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in chunk]
            for b, p, lm in self.detect_enlarged(big, chunk):
                out.append(_select((b * [sx, sy, sx, sy], p, lm * [sx, sy]), slice(None)))
        return out

    def _detect_tiled(self, frames: Sequence[np.ndarray]) -> list[RawDetections]:
        h, w = frames[0].shape[:2]
        tile = int(self.tile or max(h, w))
        xs, tw = tile_grid(w, tile, self.tile_overlap)
        ys, th = tile_grid(h, tile, self.tile_overlap)
        windows = [(x, y) for y in ys for x in xs]
        whole: list[list[RawDetections]] = [[] for _ in frames]
        cut: list[list[RawDetections]] = [[] for _ in frames]
        jobs = [(fi, x, y) for fi in range(len(frames)) for x, y in windows]
        for s in range(0, len(jobs), self.tile_batch):
            chunk = jobs[s : s + self.tile_batch]
            crops = [frames[fi][y : y + th, x : x + tw] for fi, x, y in chunk]
            for (fi, x, y), (b, p, lm) in zip(chunk, self._run(crops), strict=True):
                # a box reaching an inner window edge may be a face cut by the window: the
                # face lies whole in the neighbouring window (if <= overlap) or shows in the
                # overview; such boxes are only used when nothing else covers them
                edge = np.zeros(len(b), bool)
                if x > 0:
                    edge |= b[:, 0] < _EDGE
                if x + tw < w:
                    edge |= b[:, 2] > tw - _EDGE
                if y > 0:
                    edge |= b[:, 1] < _EDGE
                if y + th < h:
                    edge |= b[:, 3] > th - _EDGE
                off = np.array([x, y], np.float32)
                moved = (b + np.tile(off, 2), p, lm + off)
                whole[fi].append(_select(moved, ~edge))
                cut[fi].append(_select(moved, edge))
        overview = self._detect_scaled(frames, self.overview_side(h, w))
        out = []
        for fi in range(len(frames)):
            kept = self._merge(_concat([*whole[fi], overview[fi]]))
            rest = self._merge(_concat(cut[fi]))
            if len(rest[0]) and len(kept[0]):
                inter = box_intersection(rest[0], kept[0])
                area = np.prod(np.clip(rest[0][:, 2:] - rest[0][:, :2], 1e-6, None), axis=1)
                rest = _select(rest, (inter / area[:, None]).max(1) < 0.3)
            out.append(self._merge(_concat([kept, rest])))
        return out

    def second_look(
        self, frames: Sequence[np.ndarray], raws: Sequence[RawDetections]
    ) -> list[RawDetections]:
        """Detections scoring ``recheck_score`` up to ``confirm_score`` looked at again.

        Each such box's surroundings, :data:`LOOK_CONTEXT` times its side, are cut out of
        the frame (edges replicated) and enlarged (bicubic) so that the box is
        :data:`LOOK_FACE` px, and searched (:meth:`detect_look`, all boxes of the call in one
        batch per context). The best look whose box centre lies in the first box replaces
        the detection (box, score, landmarks) when it scores higher; a box so moved onto a
        face another box already holds is merged with it (the stronger stays), and no other
        boxes are merged here. On the drone set (seeds
        0-15, 16 stills) the faces the first pass scored 0.5-0.85 mostly score over 0.9 in
        a look, the ground it mistook for faces mostly under 0.85 or not at all (README
        "Detection at drone altitude").
        """
        if self.recheck_score is None:
            return list(raws)
        todo = [
            (fi, j)
            for fi, (_, p, _) in enumerate(raws)
            for j in np.flatnonzero((p >= self.recheck_score) & (p < self.confirm_score))
        ]
        if not todo:
            return list(raws)
        out = [(b.copy(), p.copy(), lm.copy()) for b, p, lm in raws]
        moved = [np.zeros(len(p), bool) for _, p, _ in raws]
        for side in LOOK_SIDES:
            views, maps = [], []
            for fi, j in todo:
                b = raws[fi][0][j]
                centre = (b[:2] + b[2:]) / 2
                k = LOOK_FACE / max(float(max(b[2] - b[0], b[3] - b[1])), 1.0)
                # frame -> view: x' = k (x - centre) + side / 2
                m = np.array(
                    [[k, 0, side / 2 - k * centre[0]], [0, k, side / 2 - k * centre[1]]],
                    np.float32,
                )
                views.append(
                    cv2.warpAffine(
                        frames[fi],
                        m,
                        (side, side),
                        flags=cv2.INTER_CUBIC if k > 1 else cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE,
                    )
                )
                maps.append((k, centre))
            found: list[RawDetections] = []
            for s in range(0, len(views), _LOOK_BATCH):
                found += self.detect_look(views[s : s + _LOOK_BATCH])
            for (fi, j), (k, centre), (lb, lp, llm) in zip(todo, maps, found, strict=True):
                if not len(lp):
                    continue
                off = centre - side / (2 * k)
                lb = lb / k + np.tile(off, 2)
                llm = llm / k + off
                b = raws[fi][0][j]
                c = (lb[:, :2] + lb[:, 2:]) / 2
                inside = (c >= b[:2]).all(1) & (c <= b[2:]).all(1)
                if not inside.any():
                    continue
                best = np.flatnonzero(inside)[np.argmax(lp[inside])]
                if lp[best] > out[fi][1][j]:
                    out[fi][0][j], out[fi][1][j], out[fi][2][j] = lb[best], lp[best], llm[best]
                    moved[fi][j] = True
        pairs = zip(out, moved, strict=True)
        return [_drop_moved_duplicates(raw, m, self.nms_iou) for raw, m in pairs]

    def _merge(self, raw: RawDetections) -> RawDetections:
        """Confident detections only, duplicates (box IoU > ``nms_iou``) merged."""
        raw = _select(raw, raw[1] >= self.keep_score)
        if len(raw[0]) < 2:
            return raw
        keep = nms(torch.from_numpy(raw[0]), torch.from_numpy(raw[1]), self.nms_iou).numpy()
        return _select(raw, np.sort(keep))

    def _finish(self, raw: RawDetections) -> Detections:
        b, p, lm = _select(raw, raw[1] >= self.min_score)
        return Detections(b, p, lm)


def no_detections() -> RawDetections:
    """:data:`RawDetections` of an image without faces."""
    return (
        np.zeros((0, 4), np.float32),
        np.zeros((0,), np.float32),
        np.zeros((0, 5, 2), np.float32),
    )


def _concat(parts: Sequence[RawDetections]) -> RawDetections:
    return (
        np.concatenate([q[0] for q in parts]).astype(np.float32),
        np.concatenate([q[1] for q in parts]).astype(np.float32),
        np.concatenate([q[2] for q in parts]).astype(np.float32),
    )


def _select(raw: RawDetections, keep: np.ndarray) -> RawDetections:
    return (
        np.ascontiguousarray(raw[0][keep], np.float32),
        np.ascontiguousarray(raw[1][keep], np.float32),
        np.ascontiguousarray(raw[2][keep], np.float32),
    )


def _drop_moved_duplicates(raw: RawDetections, moved: np.ndarray, iou: float) -> RawDetections:
    """Non-maximum suppression over the pairs that hold a box a second look moved
    (``moved``): of two boxes overlapping by more than ``iou``, one of them moved, the weaker
    goes (the same face found twice). Two boxes the look left alone are never merged here, so
    two faces close together stay two, as MTCNN gave them."""
    b, p = raw[0], raw[1]
    if not moved.any() or len(b) < 2:
        return raw
    inter = box_intersection(b, b)
    area = np.prod(np.clip(b[:, 2:] - b[:, :2], 1e-6, None), axis=1)
    overlap = inter / (area[:, None] + area[None, :] - inter)
    keep = np.zeros(len(b), bool)
    for i in np.argsort(-p, kind="stable"):
        clash = keep & (overlap[i] > iou) & (moved | moved[i])
        keep[i] = not clash.any()
    return _select(raw, keep)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection areas of x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(rb - lt, 0, None), axis=2)
