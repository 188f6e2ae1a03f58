"""Crop faces the way the classifier was trained, and paste the results back.

A classifier's metadata records its crop convention as a landmark *template*: where the five
MTCNN landmarks sit in a training crop. A detected face is mapped onto it by a similarity
transform. The crop handed to attacks is the axis-aligned frame rectangle that covers the
aligned square, at native resolution; the alignment itself is an affine ``theta`` applied
inside the classifier (differentiably), so adversarial pixels paste back one to one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from deid.geometry import similarity
from deid.types import Detections, FaceCrop

if TYPE_CHECKING:
    from deid.detect import Detector


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """A frame as (H, W, 3) uint8: a 2-D grey frame (or (H, W, 1)) becomes 3 equal channels.

    Raises:
        ValueError: not (H, W), (H, W, 1) or (H, W, 3) uint8.
    """
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        raise ValueError(
            f"frame: expected (H, W) or (H, W, 3) uint8, got {frame.shape} {frame.dtype}"
        )
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if frame.shape[2] != 3:
        raise ValueError(f"frame: expected 1 or 3 channels, got {frame.shape}")
    return frame


def is_gray(pixels: np.ndarray) -> bool:
    """Whether (H, W, 3) pixels are grey: three equal channels (a monochrome or thermal
    camera's frame, or a grey image read as RGB). Such faces must get a grey perturbation:
    coloured noise on a grey frame would give the attack away."""
    return bool(
        pixels.ndim == 2
        or pixels.shape[2] == 1
        or (
            np.array_equal(pixels[..., 0], pixels[..., 1])
            and np.array_equal(pixels[..., 1], pixels[..., 2])
        )
    )


def gray_like(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> its luma (ITU-R BT.601, as the classifiers use) in 3 equal channels.

    The last step for a face of a grey frame: whatever colour an attack put into it goes.
    """
    luma = np.asarray(pixels, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = np.clip(np.round(luma), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def face_crop(
    frame_shape: tuple[int, ...],
    landmarks: np.ndarray,
    template: np.ndarray,
    out_hw: tuple[int, int],
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """Where to cut one face and how to align it.

    Args:
        frame_shape: (H, W, ...) of the frame.
        landmarks: (5, 2) landmark pixels in the frame.
        template: (5, 2) landmark positions as fractions of the aligned crop's (W, H).
        out_hw: (h, w) of the aligned crop the classifier sees.

    Returns:
        region (x1, y1, x2, y2) clipped to the frame, theta (2, 3) float32 mapping aligned
        output normalised coords to region normalised coords, and the (4, 2) corners of the
        aligned square in frame pixels.
    """
    oh, ow = out_hw
    dst = np.asarray(template, np.float64) * np.array([ow, oh])
    m = similarity(landmarks, dst)  # frame px -> aligned px
    minv = np.linalg.inv(m)
    corners = (minv @ np.array([[0, 0, 1], [ow, 0, 1], [0, oh, 1], [ow, oh, 1]], np.float64).T).T[
        :, :2
    ]
    fh, fw = frame_shape[:2]
    x1 = int(np.clip(np.floor(corners[:, 0].min()) - 1, 0, fw - 1))
    y1 = int(np.clip(np.floor(corners[:, 1].min()) - 1, 0, fh - 1))
    x2 = int(np.clip(np.ceil(corners[:, 0].max()) + 1, x1 + 1, fw))
    y2 = int(np.clip(np.ceil(corners[:, 1].max()) + 1, y1 + 1, fh))
    w, h = x2 - x1, y2 - y1
    # output normalised -> aligned px -> frame px -> region px -> region normalised
    d_out = np.array([[ow / 2, 0, ow / 2], [0, oh / 2, oh / 2], [0, 0, 1]])
    shift = np.array([[1, 0, -x1], [0, 1, -y1], [0, 0, 1]], np.float64)
    n_in = np.array([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
    theta = (n_in @ shift @ minv @ d_out)[:2].astype(np.float32)
    return (x1, y1, x2, y2), theta, corners.astype(np.float32)


# Where MTCNN puts the five landmarks inside its own box on a frontal face, as fractions of
# the box's (width, height): medians over 200 held-out CelebA faces (deid's detector),
# mirrored to be symmetric. Used to align a face whose landmarks are unusable.
BOX_LANDMARKS = np.array(
    [[0.262, 0.394], [0.738, 0.394], [0.5, 0.607], [0.287, 0.759], [0.713, 0.759]]
)


def box_landmarks(box: np.ndarray) -> np.ndarray:
    """(5, 2) float32 landmarks of a frontal face filling ``box`` (x1, y1, x2, y2)."""
    b = np.asarray(box, np.float64)
    return (b[:2] + BOX_LANDMARKS * (b[2:] - b[:2])).astype(np.float32)


def box_coverage(corners: np.ndarray, box: np.ndarray, frame_shape: tuple[int, ...]) -> float:
    """Share of ``box``'s visible part (inside the frame) that the aligned square covers.

    Args:
        corners: (4, 2) corners of the aligned square (as :func:`face_crop` returns them).
        box: (4,) x1, y1, x2, y2 detector box.
        frame_shape: (H, W, ...).
    """
    fh, fw = frame_shape[:2]
    x1, y1 = max(float(box[0]), 0.0), max(float(box[1]), 0.0)
    x2, y2 = min(float(box[2]), float(fw)), min(float(box[3]), float(fh))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return 0.0
    rect = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    square = np.asarray(corners, np.float32)[[0, 1, 3, 2]]
    area, _ = cv2.intersectConvexConvex(square, rect)
    return float(area) / ((x2 - x1) * (y2 - y1))


def _square_area(corners: np.ndarray) -> float:
    d = corners - corners[0]
    return abs(float(d[1, 0] * d[2, 1] - d[1, 1] * d[2, 0]))


def square_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two aligned squares given by their (4, 2) corners (:func:`face_crop` order)."""
    pa = np.asarray(a, np.float32)[[0, 1, 3, 2]]
    pb = np.asarray(b, np.float32)[[0, 1, 3, 2]]
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = _square_area(pa[[0, 1, 3]]) + _square_area(pb[[0, 1, 3]]) - float(inter)
    return float(inter) / union if union > 0 else 0.0


def checked_landmarks(
    frame_shape: tuple[int, ...],
    landmarks: np.ndarray,
    box: np.ndarray,
    template: np.ndarray,
    out_hw: tuple[int, int],
    min_iou: float = 0.3,
    min_cover: float = 0.85,
) -> tuple[np.ndarray, bool]:
    """The landmarks to align a face with: the detector's, or :func:`box_landmarks`.

    MTCNN's landmarks are unreliable on profiles and on faces cut by the frame edge (they
    may collapse onto a line, bunch up on one side or be extrapolated outside the frame).
    The detector's landmarks are kept when they are finite and the aligned square they give
    overlaps the square that a frontal face filling the box would give (IoU >= ``min_iou``)
    and covers at least ``min_cover`` as much of the box's visible part as that square
    does; otherwise the face is aligned as a frontal face filling its box, so the crop, the
    perturbation and a fallback that obscures the face still cover the detected face.

    Returns:
        (5, 2) float32 landmarks and whether they were placed from the box.
    """
    lm = np.asarray(landmarks, np.float32)
    by_box = box_landmarks(box)
    if np.isfinite(lm).all() and np.ptp(lm, axis=0).max() >= 1.0:
        try:
            _, _, corners = face_crop(frame_shape, lm, template, out_hw)
            _, _, expected = face_crop(frame_shape, by_box, template, out_hw)
        except np.linalg.LinAlgError:
            return by_box, True
        if (
            np.isfinite(corners).all()
            and square_iou(corners, expected) >= min_iou
            and box_coverage(corners, box, frame_shape)
            >= min_cover * box_coverage(expected, box, frame_shape)
        ):
            return lm, False
    return by_box, True


def crop_faces(
    frames: Sequence[np.ndarray],
    detections: Sequence[Detections],
    template: np.ndarray,
    out_hw: tuple[int, int],
) -> list[FaceCrop]:
    """Cut every detected face of every frame as :class:`FaceCrop` (RGB uint8, native size).

    Faces whose landmarks are unusable (see :func:`checked_landmarks`) are aligned by their
    box; their crop's ``extra["aligned_by"]`` says ``box`` (else ``landmarks``).
    """
    crops: list[FaceCrop] = []
    for fi, (frame, det) in enumerate(zip(frames, detections, strict=True)):
        for k in range(len(det)):
            lm, by_box = checked_landmarks(
                frame.shape, det.landmarks[k], det.boxes[k], template, out_hw
            )
            region, theta, corners = face_crop(frame.shape, lm, template, out_hw)
            x1, y1, x2, y2 = region
            crops.append(
                FaceCrop(
                    frame=fi,
                    face=k,
                    region=region,
                    pixels=frame[y1:y2, x1:x2].copy(),
                    theta=theta,
                    box=det.boxes[k].copy(),
                    score=float(det.scores[k]),
                    extra={
                        "corners": corners,
                        "aligned_by": "box" if by_box else "landmarks",
                        "landmarks": lm,
                    },
                )
            )
    return crops


def footprint_mask(crop: FaceCrop) -> np.ndarray:
    """(h, w) bool: the pixels of the crop that lie inside the aligned square (+1 px)."""
    x1, y1, x2, y2 = crop.region
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    pts = crop.extra["corners"][[0, 1, 3, 2]] - np.array([x1, y1], np.float32)
    cv2.fillConvexPoly(mask, np.round(pts * 4).astype(np.int32), 1, lineType=cv2.LINE_8, shift=2)
    return cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)


def _box_distance(box: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) over ``region``: each pixel centre's distance to ``box``'s centre in units of
    the box's half sides (Chebyshev): <= 1 inside the box."""
    x1, y1, x2, y2 = region
    b = np.asarray(box, np.float64)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    hx, hy = max((b[2] - b[0]) / 2, 0.5), max((b[3] - b[1]) / 2, 0.5)
    dx = np.abs(np.arange(x1, x2, dtype=np.float64) + 0.5 - cx) / hx
    dy = np.abs(np.arange(y1, y2, dtype=np.float64) + 0.5 - cy) / hy
    return np.maximum(dx[None, :], dy[:, None])


def owned_masks(crops: Sequence[FaceCrop]) -> list[np.ndarray]:
    """Each crop's footprint (:func:`footprint_mask`) less the pixels that belong to another
    face of the same frame: where footprints overlap, a pixel goes to the face whose box
    centre is nearest (in units of the box's size; the earlier face on a tie).

    A crop is the square the classifier sees, larger than the face, so two people side by
    side have overlapping crops; pasting whole footprints one after another would write the
    first face's pixels (its original ones, with a perturbation) over part of the second's
    new face, or undo part of a face obscured before it. Pasted through these masks, every
    face keeps its own protected pixels.
    """
    feet = [footprint_mask(c) for c in crops]
    masks = [f.copy() for f in feet]
    near, of = np.zeros((0, 0)), -1  # crop i's distances (the pairs come i by i)
    for i, j, mine, theirs in _overlaps(crops):
        ci, cj = crops[i], crops[j]
        if of != i:
            near, of = _box_distance(ci.box, ci.region), i
        rows, cols = theirs
        bx1, by1 = cj.region[:2]
        inter = (bx1 + cols.start, by1 + rows.start, bx1 + cols.stop, by1 + rows.stop)
        dj = _box_distance(cj.box, inter)
        lost = feet[j][theirs] & ((dj <= near[mine]) if j < i else (dj < near[mine]))
        masks[i][mine] &= ~lost
    return masks


Window = tuple[slice, slice]


def _overlaps(crops: Sequence[FaceCrop]) -> Iterator[tuple[int, int, Window, Window]]:
    """Every ordered pair ``(i, j)`` of crops of one frame whose regions overlap, with the
    overlap as (rows, columns) slices of crop ``i``'s pixels and of crop ``j``'s."""
    for i, ci in enumerate(crops):
        ax1, ay1, ax2, ay2 = ci.region
        for j, cj in enumerate(crops):
            if j == i or cj.frame != ci.frame:
                continue
            bx1, by1, bx2, by2 = cj.region
            x1, y1, x2, y2 = max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)
            if x1 < x2 and y1 < y2:
                yield (
                    i,
                    j,
                    (slice(y1 - ay1, y2 - ay1), slice(x1 - ax1, x2 - ax1)),
                    (slice(y1 - by1, y2 - by1), slice(x1 - bx1, x2 - bx1)),
                )


def paste_back(
    frame: np.ndarray, crop: FaceCrop, pixels: np.ndarray, mask: np.ndarray | None = None
) -> None:
    """Write ``pixels`` (h, w, 3) uint8 into ``frame`` (in place) inside the crop's footprint,
    or inside ``mask`` (the crop's part of it: :func:`owned_masks`)."""
    x1, y1, x2, y2 = crop.region
    if mask is None:
        mask = footprint_mask(crop)
    region = frame[y1:y2, x1:x2]
    region[mask] = pixels[mask]


def paste_owned(
    frames: Sequence[np.ndarray], crops: Sequence[FaceCrop], pixels: Sequence[np.ndarray]
) -> None:
    """Paste each crop's ``pixels`` into ``frames[crop.frame]`` (in place) through its part
    of the footprints (:func:`owned_masks`): overlapping crops never write over each other's
    faces. Obscure faces after this, so that no paste undoes it."""
    for c, px, m in zip(crops, pixels, owned_masks(crops), strict=True):
        paste_back(frames[c.frame], c, px, m)


def compose_owned(crops: Sequence[FaceCrop], pixels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each crop as it will read once every crop of its frame is pasted through its owned
    mask (:func:`paste_owned`): ``pixels[i]`` with the parts of it that other faces own
    taken from those faces' ``pixels``. An attack run on these crops steers what the written
    frame will hold, not a crop whose neighbour is about to be replaced under it."""
    masks = owned_masks(crops)
    out = [np.array(px, copy=True) for px in pixels]
    for i, j, mine, theirs in _overlaps(crops):
        owned = masks[j][theirs]
        out[i][mine][owned] = pixels[j][theirs][owned]
    return out


def pixelate(rgb: np.ndarray, blocks: int = 8) -> np.ndarray:
    """``rgb`` (h, w, 3) as ``blocks`` area-averaged blocks across (as many down as keep them
    square), at its own size: no recognisable detail is left."""
    h, w = rgb.shape[:2]
    if not h or not w:
        return rgb.copy()
    small = cv2.resize(
        rgb, (max(1, blocks), max(1, round(blocks * h / w))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def obscure(frame: np.ndarray, crop: FaceCrop, mode: str = "pixelate", strength: int = 8) -> None:
    """Fail-closed fallback: blur or pixelate the crop's footprint in ``frame`` (in place).

    ``strength`` is the number of blocks across the face for ``pixelate`` and the number of
    blur kernels across it for ``blur``; both leave no recognisable detail.
    """
    x1, y1, x2, y2 = crop.region
    region = frame[y1:y2, x1:x2]
    h, w = region.shape[:2]
    if mode == "pixelate":
        out = pixelate(region, strength)
    elif mode == "blur":
        k = max(3, (max(h, w) // max(1, strength)) | 1)
        out = cv2.GaussianBlur(region, (k * 2 + 1, k * 2 + 1), 0)
    elif mode == "black":
        out = np.zeros_like(region)
    else:
        raise ValueError(f"unknown fallback {mode!r}; available: ['black', 'blur', 'pixelate']")
    mask = footprint_mask(crop)
    region[mask] = out[mask]


def template_detector() -> Detector:
    """The detector of :func:`estimate_template`: MTCNN (the template is a crop convention of
    MTCNN's landmarks) for faces from 40 px with p >= 0.8 (crops are upscaled to 160 px)."""
    from deid.detect.plain import plain_mtcnn

    return plain_mtcnn(min_face_size=40, min_score=0.8)


def estimate_template(images: np.ndarray, min_found: int = 10) -> np.ndarray:
    """Mean MTCNN landmarks on training crops, as fractions of (W, H): a crop convention.

    Each crop is upscaled to at least 160 px and padded by reflection (MTCNN wants context),
    the most central face is kept, and its landmarks are mapped back.

    Args:
        images: (N, H, W) or (N, H, W, 3) uint8 training crops.

    Returns:
        (5, 2) float64.
    """
    det = template_detector()
    h, w = images.shape[1:3]
    s = max(1.0, 160 / min(h, w))
    pad = int(0.3 * max(h, w) * s)
    found = []
    for img in images:
        rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
        big = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        d = det.detect([big])[0]
        if not len(d):
            continue
        centre = np.array([pad + w * s / 2, pad + h * s / 2])
        k = int(np.argmin(np.linalg.norm(d.landmarks.mean(1) - centre, axis=1)))
        found.append((d.landmarks[k] - pad) / s / np.array([w, h]))
    if len(found) < min_found:
        raise RuntimeError(
            f"MTCNN found landmarks on only {len(found)} of {len(images)} crops (need {min_found})"
        )
    return np.median(np.stack(found), 0)
