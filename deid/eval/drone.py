"""A drone-like face detection set, built from the shared photos (``deid eval detection``).

No drone footage with resolvable faces is available, so the set is composited: real faces
(the CelebA test split's aligned crops, and the faces of the shared group photos) are pasted
at 10-60 px onto ground textures shipped with scikit-image (grass, gravel, brick), as a
drone at some tens of metres sees people on a field, a path or a square:

* :func:`drone_still`: one 1920x1080 frame with many faces, sizes spread evenly over the
  buckets of :data:`SIZE_BUCKETS`;
* :func:`drone_clip`: a short clip in which the ground pans (the drone moves) and each face
  also drifts on its own (the people walk); faces leave and enter through the frame edges.

Every face is pasted with a feathered elliptical mask (no hard crop edge to find), a little
brighter or darker than its photo, and the frame gets mild sensor noise. Its truth box is
the box MTCNN draws around that face at full resolution (measured on the photos), scaled and
moved with it; a face's *size* is its truth box's longer side (the height, for these boxes).
Faces cut by the frame edge (truth box not wholly inside) are marked ``ignore``: neither a
miss nor a false positive when found. The same seed gives the same pixels and boxes.

Nothing is downloaded and nothing from the photos is stored in the repository: the faces are
read from ``$DEID_DATA_DIR`` each time (:func:`face_bank`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from deid.data.datasets import CELEBA_FILE, data_dir, load_npz
from deid.errors import DataError

#: Face-size buckets (truth box's longer side, px): [lo, hi); ``None``: no upper bound.
SIZE_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (10, 12),
    (12, 16),
    (16, 24),
    (24, 40),
    (40, None),
)
#: Largest face pasted, px.
MAX_FACE = 60
#: The shared group photos whose faces are pasted (besides CelebA's): every face in them is
#: a real person, at 100-840 px, found by MTCNN with p > 0.99.
SCENE_PHOTOS = (
    "group_friends_stoop.jpg",
    "group_friends_table.jpg",
    "group_selfie_elevator.jpg",
    "couple_two_faces.jpg",
    "astronaut_single_face.png",
)
#: MTCNN's box around the face of a CelebA aligned crop, as fractions of the crop (median
#: over 120 test crops upscaled to 192 px; spread 0.02-0.05): x1, y1, x2, y2.
CELEBA_BOX = (0.218, 0.172, 0.778, 0.926)
#: Ground textures (scikit-image's bundled images) and the colour each is tinted with.
TEXTURES = {
    "grass": (0.55, 0.78, 0.38),
    "gravel": (0.92, 0.86, 0.76),
    "brick": (0.88, 0.60, 0.48),
}


def size_bucket(size: float) -> int:
    """Index in :data:`SIZE_BUCKETS` of a face of ``size`` px (-1: below the smallest)."""
    for i, (lo, hi) in enumerate(SIZE_BUCKETS):
        if size >= lo and (hi is None or size < hi):
            return i
    return -1


def bucket_label(i: int) -> str:
    lo, hi = SIZE_BUCKETS[i]
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


@dataclass(frozen=True)
class FaceSource:
    """One real face to paste: an RGB crop, its MTCNN box in crop pixels, where it is from."""

    image: np.ndarray
    box: np.ndarray
    origin: str


@dataclass
class DroneSet:
    """Frames with their truth.

    Attributes:
        name: ``still`` or ``clip``.
        frames: (H, W, 3) uint8 RGB.
        boxes: per frame, (K, 4) float32 truth boxes x1, y1, x2, y2 in frame pixels.
        ignore: per frame, (K,) bool: the face is cut by the frame edge (not scored).
        face_ids: per frame, (K,) int: which pasted face (the same id across a clip's frames).
        origins: per face id, the photo it came from.
    """

    name: str
    frames: list[np.ndarray]
    boxes: list[np.ndarray]
    ignore: list[np.ndarray]
    face_ids: list[np.ndarray]
    origins: list[str] = field(default_factory=list)

    def sizes(self, i: int) -> np.ndarray:
        """Face sizes (truth box's longer side, px) in frame ``i``."""
        b = self.boxes[i]
        return np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


# --------------------------------------------------------------------------------------------
# faces
# --------------------------------------------------------------------------------------------
def face_bank(data: Path | str | None = None) -> list[FaceSource]:
    """The faces the set is made of: CelebA's test-split crops, then the group photos' faces.

    The photos' faces are located by MTCNN at full resolution (faces of 100 px and more,
    where it is sure) and cut out with a generous margin.

    Raises:
        DataError: the shared data is missing.
    """
    return list(_face_bank(str(Path(data) if data else data_dir())))


@lru_cache(maxsize=2)
def _face_bank(root: str) -> tuple[FaceSource, ...]:
    d = load_npz(Path(root) / CELEBA_FILE)
    test = np.flatnonzero(d["split"] == 1)
    crop = d["images"].shape[1]
    cbox = np.array(CELEBA_BOX, np.float32) * crop
    faces = [FaceSource(d["images"][i], cbox, f"celeba:{d['celeba_image'][i]}") for i in test]
    return tuple(faces + _scene_faces(Path(root) / "scenes"))


def _scene_faces(folder: Path) -> list[FaceSource]:
    import torch

    from deid.detect.mtcnn import MTCNNDetector
    from deid.io import read_image

    missing = [n for n in SCENE_PHOTOS if not (folder / n).is_file()]
    if missing:
        raise DataError(f"shared photos missing in {folder}: {missing} (set DEID_DATA_DIR)")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        det = MTCNNDetector(min_face_size=60)
    out = []
    for name in SCENE_PHOTOS:
        img = read_image(folder / name)
        for k, b in enumerate(det.detect([img])[0].boxes):
            side = 1.6 * float(max(b[2] - b[0], b[3] - b[1]))
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            x0, y0 = round(cx - side / 2), round(cy - side / 2)
            x1, y1 = round(cx + side / 2), round(cy + side / 2)
            pad = max(0, -x0, -y0, x1 - img.shape[1], y1 - img.shape[0])
            src = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT) if pad else img
            patch = src[y0 + pad : y1 + pad, x0 + pad : x1 + pad].copy()
            box = (b - np.array([x0, y0, x0, y0], np.float32)).astype(np.float32)
            out.append(FaceSource(patch, box, f"{name}#{k}"))
    return out


def _mask(shape: tuple[int, int], box: np.ndarray, feather: float) -> np.ndarray:
    """Soft elliptical alpha (float32, 0-1) over a crop: 1 over the face box's ellipse
    (a little wider than the box, to take in the cheeks and hair), fading out over
    ``feather`` px."""
    h, w = shape
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ax, ay = 0.62 * (box[2] - box[0]), 0.58 * (box[3] - box[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    edge = feather / max(min(ax, ay), 1e-3)
    return np.clip((1.0 - r) / max(edge, 1e-3) + 0.5, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Sprite:
    """A face scaled to its size in the frame: RGB float, alpha, truth box (sprite px)."""

    rgb: np.ndarray
    alpha: np.ndarray
    box: np.ndarray


def _sprite(src: FaceSource, size: float, gain: float) -> _Sprite:
    """``src`` resized so that its box's longer side is ``size`` px, brightness times ``gain``."""
    bw, bh = src.box[2] - src.box[0], src.box[3] - src.box[1]
    scale = size / float(max(bw, bh))
    h, w = src.image.shape[:2]
    # area-average to the next whole size (no aliasing), then the exact scale (sub-pixel)
    nw, nh = max(2, math.ceil(w * scale)), max(2, math.ceil(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    rgb = cv2.resize(src.image, (nw, nh), interpolation=interp).astype(np.float32)
    m = np.float32([[scale * w / nw, 0, 0], [0, scale * h / nh, 0]])
    rgb = cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    box = (src.box * scale).astype(np.float32)
    alpha = _mask((nh, nw), box, feather=max(1.0, 0.12 * size))
    return _Sprite(np.clip(rgb * gain, 0, 255), alpha, box)


def _paste(canvas: np.ndarray, sp: _Sprite, x: float, y: float) -> np.ndarray:
    """Blend ``sp`` into ``canvas`` (float32, in place) with its top-left corner at (x, y),
    sub-pixel; returns its truth box in canvas pixels."""
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    h, w = sp.alpha.shape
    m = np.float32([[1, 0, fx], [0, 1, fy]])
    rgb = cv2.warpAffine(sp.rgb, m, (w + 1, h + 1), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(sp.alpha, m, (w + 1, h + 1), flags=cv2.INTER_LINEAR)
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(ix, 0), max(iy, 0), min(ix + w + 1, W), min(iy + h + 1, H)
    if x1 > x0 and y1 > y0:
        a = alpha[y0 - iy : y1 - iy, x0 - ix : x1 - ix, None]
        region = canvas[y0:y1, x0:x1]
        region *= 1 - a
        region += a * rgb[y0 - iy : y1 - iy, x0 - ix : x1 - ix]
    return sp.box + np.array([x, y, x, y], np.float32)


# --------------------------------------------------------------------------------------------
# ground
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _textures() -> dict[str, np.ndarray]:
    import skimage.data

    return {name: getattr(skimage.data, name)() for name in TEXTURES}


def ground(rng: np.random.Generator, width: int, height: int, tiling: str = "wrap") -> np.ndarray:
    """A (height, width, 3) float32 ground: patches of grass, gravel and brick, each
    scikit-image texture tinted, scaled 0.4-1.2x (a gravel stone of 5-15 px, as a drone sees
    it over 20-40 px faces) and tiled, blended along smooth random borders.

    ``tiling`` is :func:`numpy.pad`'s mode. ``"wrap"`` (since 2026-12-05) repeats each
    texture as it is; ``"symmetric"`` (before) mirrors it at every tile border, and those
    borders are lines of exact left-right or up-down symmetry that no ground has: in the
    gravel they drew kaleidoscope patterns that MTCNN took for faces: most of the false
    positives measured before (README "Detection at drone altitude")."""
    tex = _textures()
    layers, weights = [], []
    for name, tint in TEXTURES.items():
        t = tex[name].astype(np.float32)
        zoom = rng.uniform(0.4, 1.2)
        t = cv2.resize(t, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
        tiled = np.pad(t, ((0, height), (0, width)), mode=tiling)
        oy, ox = rng.integers(0, t.shape[0]), rng.integers(0, t.shape[1])
        g = tiled[oy : oy + height, ox : ox + width]
        layers.append(np.clip(g[..., None] * np.float32(tint) * rng.uniform(0.9, 1.1), 0, 255))
        coarse = rng.normal(size=(4, 7)).astype(np.float32)
        weights.append(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC))
    w = np.stack(weights)
    w = np.exp(4.0 * (w - w.max(0, keepdims=True)))
    w /= w.sum(0, keepdims=True)
    return np.einsum("khw,khwc->hwc", w, np.stack(layers)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the set
# --------------------------------------------------------------------------------------------
def _sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` face sizes spread evenly over the buckets (largest first, for packing)."""
    out = []
    for i in range(n):
        lo, hi = SIZE_BUCKETS[i % len(SIZE_BUCKETS)]
        out.append(rng.uniform(lo, hi if hi is not None else MAX_FACE))
    return np.sort(np.array(out, np.float32))[::-1]


def _pick(rng: np.random.Generator, bank: Sequence[FaceSource]) -> int:
    """A face of the bank: a group photo's one time in four, else a CelebA crop."""
    scene = [i for i, f in enumerate(bank) if not f.origin.startswith("celeba:")]
    celeba = len(bank) - len(scene)
    if scene and rng.random() < 0.25:
        return int(scene[rng.integers(len(scene))])
    return int(rng.integers(celeba))


def _place(
    rng: np.random.Generator,
    taken: list[np.ndarray],
    w: int,
    h: int,
    area: tuple[float, float, float, float],
    sweep: tuple[float, float],
    gap: float = 8.0,
) -> tuple[float, float] | None:
    """Top-left corner for a w x h sprite inside ``area`` (x0, y0, x1, y1) whose rectangle,
    swept by ``sweep`` (dx, dy over the clip), clears every taken rectangle by ``gap``."""
    for _ in range(400):
        x = rng.uniform(area[0], area[2] - w)
        y = rng.uniform(area[1], area[3] - h)
        r = np.array(
            [
                x + min(0.0, sweep[0]) - gap,
                y + min(0.0, sweep[1]) - gap,
                x + w + max(0.0, sweep[0]) + gap,
                y + h + max(0.0, sweep[1]) + gap,
            ]
        )
        if all(r[0] >= t[2] or r[2] <= t[0] or r[1] >= t[3] or r[3] <= t[1] for t in taken):
            taken.append(r)
            return x, y
    return None


def _finish(canvas: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    canvas += rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def drone_still(
    seed: int = 0,
    size: tuple[int, int] = (1920, 1080),
    faces: int = 80,
    data: Path | str | None = None,
    noise: float = 2.0,
) -> DroneSet:
    """One frame of ``size`` (width, height) with ``faces`` faces of 10-60 px on the ground.

    Sizes are spread evenly over :data:`SIZE_BUCKETS` (``faces`` / 5 in each); every face
    lies whole in the frame. Deterministic under ``seed``.

    Raises:
        DataError: the shared data is missing.
        ValueError: the faces do not fit the frame.
    """
    bank = face_bank(data)
    rng = np.random.default_rng(seed)
    width, height = size
    canvas = ground(rng, width, height)
    taken: list[np.ndarray] = []
    boxes, origins = [], []
    for s in _sizes(rng, faces):
        src = bank[_pick(rng, bank)]
        sp = _sprite(src, float(s), gain=rng.uniform(0.75, 1.15))
        h, w = sp.alpha.shape
        at = _place(rng, taken, w + 1, h + 1, (2, 2, width - 2, height - 2), (0.0, 0.0))
        if at is None:
            raise ValueError(f"{faces} faces do not fit a {width}x{height} frame")
        boxes.append(_paste(canvas, sp, *at))
        origins.append(src.origin)
    k = len(boxes)
    return DroneSet(
        "still",
        [_finish(canvas, rng, noise)],
        [np.array(boxes, np.float32).reshape(-1, 4)],
        [np.zeros(k, bool)],
        [np.arange(k)],
        origins,
    )


def drone_clip(
    seed: int = 0,
    frames: int = 30,
    size: tuple[int, int] = (1920, 1080),
    faces: int = 60,
    data: Path | str | None = None,
    noise: float = 2.0,
) -> DroneSet:
    """A clip of ``frames`` frames of ``size`` (width, height): the ground pans by 3-6 px a
    frame in a random direction (the drone flies) and each of ``faces`` faces also drifts by
    up to 0.7 px a frame (the person walks), sub-pixel. Faces are placed on a ground larger
    than the frame, so some enter or leave through its edges: while cut by an edge a face is
    ``ignore``; while wholly outside it is not listed. Deterministic under ``seed``.

    Raises:
        DataError: the shared data is missing.
        ValueError: the faces do not fit the ground.
    """
    bank = face_bank(data)
    rng = np.random.default_rng(seed)
    width, height = size
    speed, angle = rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi)
    pan = np.array([np.cos(angle), np.sin(angle)]) * speed
    span = np.abs(pan) * (frames - 1)
    gw, gh = int(np.ceil(width + span[0])) + 2, int(np.ceil(height + span[1])) + 2
    start = np.array([span[0] if pan[0] < 0 else 0.0, span[1] if pan[1] < 0 else 0.0])
    world = ground(rng, gw, gh)
    sprites, pos, vel = [], [], []
    taken: list[np.ndarray] = []
    origins = []
    for s in _sizes(rng, faces):
        src = bank[_pick(rng, bank)]
        sp = _sprite(src, float(s), gain=rng.uniform(0.75, 1.15))
        v = rng.uniform(-0.7, 0.7, 2)
        h, w = sp.alpha.shape
        at = _place(
            rng,
            taken,
            w + 1,
            h + 1,
            (-w / 2, -h / 2, gw + w / 2, gh + h / 2),
            tuple(v * (frames - 1)),
        )
        if at is None:
            raise ValueError(f"{faces} faces do not fit a {gw}x{gh} ground")
        sprites.append(sp)
        pos.append(at)
        vel.append(v)
        origins.append(src.origin)
    out = DroneSet("clip", [], [], [], [], origins)
    for t in range(frames):
        off = start + pan * t  # frame's top-left corner on the ground
        m = np.float32([[1, 0, -off[0]], [0, 1, -off[1]]])
        canvas = cv2.warpAffine(world, m, (width, height), flags=cv2.INTER_LINEAR)
        boxes, ids = [], []
        for i, sp in enumerate(sprites):
            x, y = np.array(pos[i]) + vel[i] * t - off
            h, w = sp.alpha.shape
            if x + w + 1 <= 0 or y + h + 1 <= 0 or x >= width or y >= height:
                continue
            b = _paste(canvas, sp, float(x), float(y))
            if b[2] <= 0 or b[3] <= 0 or b[0] >= width or b[1] >= height:
                continue
            boxes.append(b)
            ids.append(i)
        b = np.array(boxes, np.float32).reshape(-1, 4)
        inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= width) & (b[:, 3] <= height)
        out.frames.append(_finish(canvas, rng, noise))
        out.boxes.append(b)
        out.ignore.append(~inside)
        out.face_ids.append(np.array(ids, int))
    return out
