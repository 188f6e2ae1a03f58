"""Cropping by the crop convention, differentiable alignment, paste-back and fallback."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from deid.align import (
    estimate_template,
    face_crop,
    footprint_mask,
    obscure,
    owned_masks,
    paste_back,
    similarity,
)
from deid.detect import DETECTORS, Detector
from deid.detect.mtcnn import build_mtcnn
from deid.models.classifier import warp
from deid.pipeline import classify, crop, stages, to_batch
from deid.pipeline.stages import batches
from deid.types import Detections, FaceCrop

from .conftest import DATA

TEMPLATE = np.array([[0.37, 0.47], [0.63, 0.47], [0.5, 0.61], [0.40, 0.76], [0.60, 0.76]])


def _sim(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array(
        [
            [scale * np.cos(a), -scale * np.sin(a), tx],
            [scale * np.sin(a), scale * np.cos(a), ty],
            [0, 0, 1],
        ]
    )


def _smooth_frame(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_similarity_recovers_a_known_transform() -> None:
    m = _sim(1.7, 23.0, 12.0, -5.0)
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = (m @ np.c_[src, np.ones(5)].T).T[:, :2]
    assert np.allclose(similarity(src, dst), m, atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 15.0, -30.0])
def test_alignment_matches_a_direct_warp(angle: float) -> None:
    """theta applied to the native crop gives what warping the frame directly gives."""
    frame = _smooth_frame()
    out_hw = (64, 64)
    # frame -> aligned similarity; the landmarks are the template mapped back into the frame
    m = _sim(64 / 120, angle, 0, 0)
    m[:2, 2] = np.array([32, 32]) - m[:2, :2] @ np.array([160, 120])
    lm = (np.linalg.inv(m) @ np.c_[TEMPLATE * 64, np.ones(5)].T).T[:, :2]
    region, theta, _ = face_crop(frame.shape, lm, TEMPLATE, out_hw)
    x1, y1, x2, y2 = region
    crop_t = torch.from_numpy(frame[y1:y2, x1:x2]).permute(2, 0, 1)[None].float() / 255
    ours = warp(crop_t, torch.from_numpy(theta)[None], out_hw, max_supersample=1)[0]
    # cv2 works with pixel centres at integers; ours at +0.5
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    m_cv = np.linalg.inv(shift) @ m @ shift
    ref = cv2.warpAffine(
        frame, m_cv[:2], (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    ref_t = torch.from_numpy(ref).permute(2, 0, 1).float() / 255
    assert float((ours - ref_t).abs().mean()) < 0.01


def test_crop_region_covers_the_aligned_square_and_is_clipped() -> None:
    frame = _smooth_frame()
    lm = TEMPLATE * 100 + np.array([-40, -30])  # a face cut by the top-left frame edge
    region, _, corners = face_crop(frame.shape, lm, TEMPLATE, (64, 64))
    x1, y1, x2, y2 = region
    assert x1 == 0 and y1 == 0 and x2 <= frame.shape[1] and y2 <= frame.shape[0]
    assert corners.shape == (4, 2)


def _one_crop(frame: np.ndarray) -> FaceCrop:
    lm = TEMPLATE * 80 + np.array([100, 60])
    det = Detections(
        np.array([[100, 60, 180, 140]], np.float32),
        np.array([0.99], np.float32),
        lm[None].astype(np.float32),
    )
    from deid.align import crop_faces

    return crop_faces([frame], [det], TEMPLATE, (64, 64))[0]


def test_paste_back_writes_only_the_footprint() -> None:
    frame = _smooth_frame()
    c = _one_crop(frame)
    out = frame.copy()
    paste_back(out, c, np.zeros_like(c.pixels))
    mask = footprint_mask(c)
    x1, y1, x2, y2 = c.region
    assert (out[y1:y2, x1:x2][mask] == 0).all()
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = ~mask
    assert np.array_equal(out[outside], frame[outside])
    # pasting the crop's own pixels changes nothing
    same = frame.copy()
    paste_back(same, c, c.pixels)
    assert np.array_equal(same, frame)


def test_overlapping_crops_split_their_overlap_by_the_nearest_face() -> None:
    """Two faces side by side (their crops overlap): the owned masks are disjoint, cover the
    two footprints together, and each face's box lies in its own mask."""
    from deid.align import crop_faces

    frame = _smooth_frame()
    boxes = np.array([[100, 60, 160, 120], [150, 62, 210, 122]], np.float32)
    lms = np.stack([TEMPLATE * 60 + b[:2] for b in boxes]).astype(np.float32)
    det = Detections(boxes, np.array([0.99, 0.99], np.float32), lms)
    a, b = crop_faces([frame], [det], TEMPLATE, (64, 64))
    ma, mb = owned_masks([a, b])
    fa, fb = footprint_mask(a), footprint_mask(b)
    assert fa.sum() > ma.sum() and fb.sum() > mb.sum()  # each gave up part of its crop

    def whole(c: FaceCrop, m: np.ndarray) -> np.ndarray:
        out = np.zeros(frame.shape[:2], bool)
        x1, y1, x2, y2 = c.region
        out[y1:y2, x1:x2] = m
        return out

    assert not (whole(a, ma) & whole(b, mb)).any()
    assert np.array_equal(whole(a, ma) | whole(b, mb), whole(a, fa) | whole(b, fb))
    for c, m in ((a, ma), (b, mb)):  # the face's own box (inner part) is its own
        x1, y1, x2, y2 = (int(v) for v in c.box)
        assert whole(c, m)[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5].all()
    # pasted through the masks, in either order, each face keeps its own pixels
    for order in ((a, ma, 10), (b, mb, 200)), ((b, mb, 200), (a, ma, 10)):
        out = frame.copy()
        for c, m, v in order:
            paste_back(out, c, np.full_like(c.pixels, v), m)
        assert (out[70:110, 110:140] == 10).all() and (out[72:112, 170:200] == 200).all()


def test_composed_crops_read_as_the_written_frame() -> None:
    """A crop composed with its neighbour's new pixels (what an attack after a generator
    steers) reads, inside its own footprint, exactly as the frame reads once both are
    pasted through their owned masks; outside the overlap it is its own pixels."""
    from deid.align import compose_owned, crop_faces, paste_owned

    frame = _smooth_frame()
    boxes = np.array([[100, 60, 160, 120], [150, 62, 210, 122], [20, 150, 70, 200]], np.float32)
    lms = np.stack([TEMPLATE * (b[2] - b[0]) + b[:2] for b in boxes]).astype(np.float32)
    det = Detections(boxes, np.full(3, 0.99, np.float32), lms)
    crops = crop_faces([frame], [det], TEMPLATE, (64, 64))
    rng = np.random.default_rng(1)
    new = [rng.integers(0, 256, c.pixels.shape, dtype=np.uint8) for c in crops]
    composed = compose_owned(crops, new)
    written = frame.copy()
    paste_owned([written], crops, new)
    for c, px, m in zip(crops, composed, owned_masks(crops), strict=True):
        x1, y1, x2, y2 = c.region
        foot = footprint_mask(c)
        assert np.array_equal(px[foot], written[y1:y2, x1:x2][foot])
        assert np.array_equal(px[m], new[crops.index(c)][m])
    a, b, alone = composed
    assert not np.array_equal(a, new[0]) and not np.array_equal(b, new[1])  # they overlap
    assert np.array_equal(alone, new[2])  # no neighbour: untouched
    # composing again changes nothing (what is pasted is what was composed)
    again = compose_owned(crops, composed)
    assert all(np.array_equal(x, y) for x, y in zip(again, composed, strict=True))


@pytest.mark.parametrize("mode", ["pixelate", "blur", "black"])
def test_obscure_destroys_detail_inside_the_footprint(mode: str) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    c = _one_crop(frame)
    out = frame.copy()
    obscure(out, c, mode)
    x1, y1, x2, y2 = c.region
    mask = footprint_mask(c)
    changed = out[y1:y2, x1:x2][mask].astype(int) - frame[y1:y2, x1:x2][mask]
    assert np.abs(changed).mean() > 40  # random texture is gone
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = ~mask
    assert np.array_equal(out[outside], frame[outside])
    with pytest.raises(ValueError, match="available"):
        obscure(out, c, "swirl")


def test_padded_batches_classify_like_single_crops(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """to_batch's padding and theta adjustment do not change what the classifier sees."""
    monkeypatch.setattr(stages, "MAX_PADDING", 1.0)  # one batch of three sizes, padded
    frame = _smooth_frame(480, 640)
    dets = []
    boxes, lms = [], []
    for k, (s, x, y) in enumerate([(40, 50, 60), (90, 250, 100), (150, 400, 200)]):
        lm = TEMPLATE * s + np.array([x, y]) + k
        lms.append(lm)
        boxes.append([x, y, x + s, y + s])
    dets = [
        Detections(np.array(boxes, np.float32), np.ones(3, np.float32), np.array(lms, np.float32))
    ]
    crops = crop([frame], dets, tiny)
    assert len({c.pixels.shape for c in crops}) == 3
    batched = classify(tiny, crops, torch.device("cpu"), batch_size=8)
    single = torch.cat([classify(tiny, [c], torch.device("cpu")) for c in crops])
    assert torch.allclose(batched, single, atol=1e-4)
    x, theta = to_batch(crops, torch.device("cpu"))
    assert x.shape[0] == 3 and theta.shape == (3, 2, 3)


def test_batches_keep_padding_under_a_quarter_of_their_pixels() -> None:
    """Crops are batched in order of area; a crop that would make more than MAX_PADDING of a
    batch's pixels padding starts the next one; batch_size still bounds a batch."""
    sizes = [(30, 30), (31, 29), (33, 33), (34, 30), (60, 58), (62, 62), (140, 120), (32, 32)]
    z = np.zeros((2, 3), np.float32)
    crops = [
        FaceCrop(0, i, (0, 0, w, h), np.zeros((h, w, 3), np.uint8), z, np.zeros(4, np.float32))
        for i, (h, w) in enumerate(sizes)
    ]

    def padding(b: list[int]) -> float:
        hh = max(sizes[i][0] for i in b)
        ww = max(sizes[i][1] for i in b)
        return 1 - sum(sizes[i][0] * sizes[i][1] for i in b) / (len(b) * hh * ww)

    out = list(batches(crops, 32))
    assert sorted(i for b in out for i in b) == list(range(len(sizes)))
    assert all(padding(b) <= stages.MAX_PADDING for b in out)
    assert out == [[1, 0, 3, 7, 2], [4, 5], [6]]  # small, middle, large
    assert list(batches(crops, 32, max_padding=1.0)) == [[1, 0, 3, 7, 2, 4, 5, 6]]
    assert [len(b) for b in batches(crops, 2, max_padding=1.0)] == [2, 2, 2, 2]


def test_template_is_estimated_with_the_builders_mtcnn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The crop convention: MTCNN's mean landmarks on real training crops, MTCNN built by
    :func:`deid.detect.build_detector` (faces from 40 px, p >= 0.8)."""
    path = DATA / "celeba" / "celeba_identities_aligned_64x64.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found (set DEID_DATA_DIR)")
    with np.load(path) as d:
        crops = d["images"][:10]
    built: list[tuple[int, float]] = []

    def spy(cfg, device: torch.device) -> Detector:  # type: ignore[no-untyped-def]
        built.append((cfg.min_face_size, cfg.min_score))
        return build_mtcnn(cfg, device)

    monkeypatch.setitem(DETECTORS, "mtcnn", spy)
    t = estimate_template(crops, min_found=8)
    assert built == [(40, 0.8)]
    assert t.shape == (5, 2) and ((t > 0) & (t < 1)).all()
    # eyes level and above the nose, the nose above the mouth corners
    assert abs(t[0, 1] - t[1, 1]) < 0.05 and t[0, 1] < t[2, 1] < t[3, 1]
    assert t[0, 0] < t[2, 0] < t[1, 0]
