"""The detector seam: MTCNN on real photos (its weights ship in the facenet-pytorch wheel),
tiling for any single-scale detector, and a detector added through the registry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from deid.align import box_landmarks
from deid.config import DetectorConfig, load_settings
from deid.detect import (
    DETECTORS,
    Detector,
    MTCNNDetector,
    RawDetections,
    TiledDetector,
    build_detector,
    register_detector,
)
from deid.detect.light import stretched
from deid.detect.turns import map_back, turn_frame
from deid.errors import ConfigError
from deid.io import read_frames, read_image, write_image
from deid.pipeline import run
from deid.types import Detections

from .conftest import SCENES, scene


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector(min_face_size=20)


def test_group_photo_and_empty_frame_in_one_batch(detector: MTCNNDetector) -> None:
    group = scene("group_friends_stoop.jpg")
    dets = detector.detect([group, np.zeros((120, 160, 3), np.uint8), group])
    assert len(dets) == 3
    assert len(dets[0]) >= 5 and len(dets[2]) == len(dets[0])
    empty = dets[1]
    assert len(empty) == 0
    assert (
        empty.boxes.shape == (0, 4)
        and empty.scores.shape == (0,)
        and empty.landmarks.shape == (0, 5, 2)
    )
    d = dets[0]
    assert d.boxes.dtype == np.float32 and d.landmarks.dtype == np.float32
    assert (d.scores >= 0.9).all()
    # landmarks lie inside their boxes (eyes above mouth)
    inside = (d.landmarks[..., 0] >= d.boxes[:, None, 0] - 5) & (
        d.landmarks[..., 0] <= d.boxes[:, None, 2] + 5
    )
    assert inside.all()
    assert (d.landmarks[:, 0, 1] < d.landmarks[:, 3, 1]).all()


def test_small_faces_in_a_crowd(detector: MTCNNDetector) -> None:
    crowd = scene("crowd_volleyball_team.jpg")
    d = detector.detect([crowd])[0]
    assert len(d) >= 15
    assert (d.boxes[:, 2] - d.boxes[:, 0]).min() < 30  # small faces are found


def test_downscaled_detection_maps_boxes_back() -> None:
    group = scene("group_friends_stoop.jpg")
    full = MTCNNDetector(min_face_size=20).detect([group])[0]
    small = MTCNNDetector(min_face_size=20, max_side=800).detect([group])[0]
    assert len(small) == len(full)
    a = full.boxes[np.argsort(full.boxes[:, 0])]
    b = small.boxes[np.argsort(small.boxes[:, 0])]
    assert np.abs(a - b).max() < 12


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        MTCNNDetector().detect([np.zeros((10, 10), np.uint8)])


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (19, 300), (8, 4000), (4000, 8)])
def test_frames_too_small_for_the_detector_have_no_faces(
    detector: MTCNNDetector, shape: tuple[int, int]
) -> None:
    """MTCNN's image pyramid maps ``min_face_size`` px to its 12-px window: a frame whose
    shorter side is below that has no pyramid level (facenet-pytorch fails on torch.cat([]))
    and cannot hold a face the detector looks for; it gets no detections."""
    frame = np.full((*shape, 3), 128, np.uint8)
    assert detector.too_small(frame.shape)
    dets = detector.detect([frame, frame])
    assert [len(d) for d in dets] == [0, 0] and dets[0].boxes.shape == (0, 4)


def test_the_smallest_frame_the_detector_searches(detector: MTCNNDetector) -> None:
    assert not detector.too_small((20, 20, 3)) and detector.too_small((19, 20, 3))
    assert len(detector.detect([np.full((20, 4000, 3), 128, np.uint8)])[0]) == 0
    # mirror padding (at most 1/8 of the shorter side per edge) makes a frame larger
    padded = MTCNNDetector(min_face_size=20, edge_pad=32)
    assert not padded.too_small((16, 16, 3)) and padded.too_small((15, 15, 3))
    assert len(padded.detect([np.full((16, 16, 3), 128, np.uint8)])[0]) == 0


def test_copies_too_small_in_the_downscaled_and_tiled_modes() -> None:
    """A long thin frame is searched at full resolution, but its downscaled copy (max_side)
    or its tiled overview copy has a shorter side below min_face_size: that copy is skipped
    (it cannot hold such a face), not a crash."""
    frame = np.full((40, 3000, 3), 128, np.uint8)
    for det in (MTCNNDetector(min_face_size=20, max_side=800), MTCNNDetector(tile=2048)):
        assert not det.too_small(frame.shape)
        assert len(det.detect([frame])[0]) == 0


# --------------------------------------------------------------------------------------------
# the seam: builder, registry, tiling for any detector
# --------------------------------------------------------------------------------------------
def test_the_builder_makes_mtcnn_as_the_settings_describe() -> None:
    assert DetectorConfig().name == "mtcnn" and load_settings().detector.name == "mtcnn"
    cfg = DetectorConfig(
        min_face_size=30,
        thresholds=(0.5, 0.6, 0.8),
        min_score=0.8,
        max_side=900,
        edge_pad=16,
        recheck_score=None,
    )
    det = build_detector(cfg, "cpu")
    assert isinstance(det, MTCNNDetector) and isinstance(det, Detector)
    assert (det.min_face_size, det.min_score, det.max_side, det.edge_pad) == (30, 0.8, 900, 16)
    assert (det.tile, det.tile_overlap) == (2048, 128)
    assert det._mtcnn.thresholds == [0.5, 0.6, 0.8] and det._mtcnn.min_face_size == 30
    assert det.pyramid == "enlarged"
    assert build_detector(cfg.model_copy(update={"pyramid": "frame"})).pyramid == "frame"
    with pytest.raises(ValidationError, match="pyramid"):
        DetectorConfig(pyramid="tiles")
    # the pipeline's call from before the registry builds the same
    old = MTCNNDetector.from_config(cfg, "cpu")
    assert type(old) is MTCNNDetector and vars(old).keys() == vars(det).keys()


def test_every_module_gets_its_detector_from_the_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Template estimation (and training), CelebA preparation and the held-out utility check
    build MTCNN through :func:`build_detector`, each with the settings it always used."""
    from deid.align import template_detector
    from deid.data.prepare import DETECT_MAX_SIDE, celeba_detector
    from deid.eval.heldout import utility_detector

    built: list[tuple[DetectorConfig, torch.device]] = []

    def spy(cfg: DetectorConfig, device: torch.device) -> Detector:
        built.append((cfg, device))
        return MTCNNDetector.__new__(MTCNNDetector)  # not built: only the settings matter here

    monkeypatch.setitem(DETECTORS, "mtcnn", spy)
    template_detector()
    celeba_detector()
    utility_detector("cpu")
    plain = {"name": "mtcnn", "thresholds": (0.6, 0.7, 0.7), "max_side": None, "tile": None}
    plain |= {"factor": 0.709, "upscale": 1.0, "pyramid": "enlarged"}  # not the drone defaults
    plain |= {"keyframe_interval": 1, "track_score": None}  # every image on its own
    plain |= {"recheck_score": None, "confirm_score": None}  # no second look
    plain |= {"turns": [], "stretch_range": None}  # upright faces, as lit
    assert [(c.model_dump(exclude={"tile_overlap", "batch_frames"}), d) for c, d in built] == [
        ({**plain, "min_face_size": 40, "min_score": 0.8, "edge_pad": 0}, torch.device("cpu")),
        (
            {**plain, "min_face_size": 30, "min_score": 0.9, "edge_pad": 0}
            | {"max_side": DETECT_MAX_SIDE},
            torch.device("cpu"),
        ),
        ({**plain, "min_face_size": 20, "min_score": 0.9, "edge_pad": 0}, torch.device("cpu")),
    ]


def test_unknown_detectors_and_bad_factories_are_refused() -> None:
    bad = DetectorConfig.model_construct(name="yolo")  # e.g. unregistered after validation
    with pytest.raises(ConfigError, match=r"unknown detector 'yolo'; available: \[.*'mtcnn'"):
        build_detector(bad)
    with pytest.raises(ValueError, match="already registered"):
        register_detector("mtcnn", lambda cfg, device: None)  # type: ignore[arg-type,return-value]
    register_detector("no-detect", lambda cfg, device: object())  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(TypeError, match=r"'no-detect'.*lacks detect"):
            build_detector(DetectorConfig(name="no-detect"))
    finally:
        del DETECTORS["no-detect"]
    assert "no-detect" not in DETECTORS


class BlobDetector(TiledDetector):
    """A single-scale detector of bright squares on black (one connected component each),
    recording the sizes of the images it is given."""

    def __init__(self, min_score: float = 0.5, **kw: object) -> None:
        super().__init__(min_face_size=20, min_score=min_score, **kw)  # type: ignore[arg-type]
        self.seen: list[tuple[int, ...]] = []

    def detect_single(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        out = []
        for img in images:
            self.seen.append(img.shape)
            n, _, stats, _ = cv2.connectedComponentsWithStats((img[..., 0] > 127).astype(np.uint8))
            x, y, w, h = (stats[1:, k].astype(np.float32) for k in range(4))
            boxes = np.stack([x, y, x + w, y + h], 1).reshape(-1, 4)
            lms = np.stack([box_landmarks(b) for b in boxes]) if n > 1 else np.zeros((0, 5, 2))
            out.append((boxes, np.ones(n - 1, np.float32), lms.astype(np.float32)))
        return out


def _squares(shape: tuple[int, int], squares: list[tuple[int, int, int]]) -> np.ndarray:
    frame = np.zeros((*shape, 3), np.uint8)
    for x, y, side in squares:
        frame[y : y + side, x : x + side] = 255
    return frame


def test_tiling_and_downscaling_serve_any_single_scale_detector() -> None:
    """Tiling is the helper's, not MTCNN's: a toy detector that only ever sees windows of at
    most ``tile`` px finds each square of a 2600x1400 frame once, at its place in the frame:
    squares cut by a window edge (whole in the neighbouring window), one larger than the
    overlap across a window edge (found in the overview pass) and one at the frame corner."""
    det = BlobDetector(tile=1024, tile_overlap=128)
    # windows: x 0..952, 824..1776, 1648..2600; y 0..752, 648..1400
    squares = [(800, 100, 60), (1700, 680, 50), (300, 500, 40), (700, 400, 300), (2550, 1350, 50)]
    frame = _squares((1400, 2600), squares)
    assert det.mode(frame.shape) == "tiled"
    d = det.detect([frame])[0]
    assert max(max(s[:2]) for s in det.seen) <= 1024
    assert len(d) == len(squares), d.boxes
    got = d.boxes[np.argsort(d.boxes[:, 0])]
    want = np.array(sorted([x, y, x + s, y + s] for x, y, s in squares), np.float32)
    small = np.array([s for _, _, s in sorted(squares)]) < 128  # whole in a full-res window
    assert np.abs(got - want)[small].max() <= 0.5
    assert np.abs(got - want)[~small].max() <= 4  # the overview is about 1/3 scale
    assert d.landmarks.shape == (5, 5, 2) and d.boxes.dtype == np.float32

    # downscaled: the detector sees a copy of at most max_side px, boxes come back in frame px
    det = BlobDetector(max_side=800)
    frame = _squares((1400, 2600), [(1000, 600, 200)])
    d = det.detect([frame])[0]
    assert det.seen == [(431, 800, 3)] and len(d) == 1
    assert np.abs(d.boxes[0] - [1000, 600, 1200, 800]).max() <= 4
    # too small: a frame's shorter side below min_face_size, mirror padding counted
    assert det.too_small((19, 4000, 3)) and not det.too_small((20, 20, 3))
    assert not BlobDetector(edge_pad=32).too_small((16, 16, 3))


class FixedDetector:
    """A detector that says every frame holds one face, at ``FACE`` (fractions of the frame),
    with the landmarks of a frontal face filling that box."""

    FACE = (0.05, 0.55, 0.4, 0.9)

    def __init__(self, cfg: DetectorConfig, device: torch.device) -> None:
        self.min_face_size = cfg.min_face_size
        self.calls: list[tuple[int, int | None]] = []

    def detect(self, frames: Sequence[np.ndarray], edge_pad: int | None = None) -> list[Detections]:
        self.calls.append((len(frames), edge_pad))
        out = []
        for f in frames:
            h, w = f.shape[:2]
            box = np.array(self.FACE, np.float32) * [w, h, w, h]
            out.append(
                Detections(box[None], np.array([0.99], np.float32), box_landmarks(box)[None])
            )
        return out

    def too_small(self, shape: Sequence[int]) -> bool:
        return min(shape[:2]) < self.min_face_size


@pytest.fixture
def fixed_detector() -> Iterator[list[FixedDetector]]:
    built: list[FixedDetector] = []

    def factory(cfg: DetectorConfig, device: torch.device) -> FixedDetector:
        built.append(FixedDetector(cfg, device))
        return built[-1]

    register_detector("fixed", factory)
    try:
        yield built
    finally:
        del DETECTORS["fixed"]


def test_a_registered_detector_runs_the_pipeline_end_to_end(
    fixed_detector: list[FixedDetector], tmp_path: Path
) -> None:
    """Adding a detector is one factory and one registry line; ``detector.name`` selects it
    and the whole pipeline runs on its detections: the face it reports is changed, the real
    face (which MTCNN finds) is not."""
    photo = SCENES / "astronaut_single_face.png"
    if not photo.is_file():
        pytest.skip(f"{photo} not found (set DEID_DATA_DIR)")
    img = cv2.resize(read_image(photo), (256, 256), interpolation=cv2.INTER_AREA)
    src, out = tmp_path / "astronaut.png", tmp_path / "out" / "astronaut.png"
    write_image(src, img)
    real = build_detector(DetectorConfig()).detect([img])[0]
    assert len(real) == 1
    with pytest.raises(ConfigError, match=r"unknown detector 'fixd'.*'fixed'"):
        load_settings(overrides={"detector": {"name": "fixd"}})
    settings = load_settings(
        overrides={
            "pipeline": {"device": "cpu"},
            "detector": {"name": "fixed"},
            "attack": {"name": "ifgsm", "steps": 5, "eot": {"enabled": False}},
        }
    )
    report = run(src, out, settings, progress=False)

    assert len(fixed_detector) == 1  # the pipeline built the registered detector
    calls = fixed_detector[0].calls
    assert calls[0] == (1, None) and (1, 0) in calls  # frames, then verification windows
    assert report["settings"]["detector"]["name"] == "fixed"
    assert report["totals"]["faces"] == 1 and report["totals"]["unprotected_faces"] == 0
    after = read_image(out)
    x1, y1, x2, y2 = (np.array(FixedDetector.FACE) * 256).round().astype(int)
    inner = (after != img).any(-1)[y1 + 10 : y2 - 10, x1 + 10 : x2 - 10]
    assert inner.mean() > 0.5, "the reported face was left unchanged"
    fx1, fy1, fx2, fy2 = real.boxes[0].round().astype(int)
    assert np.array_equal(after[fy1:fy2, fx1:fx2], img[fy1:fy2, fx1:fx2])


class ShyBlobDetector(BlobDetector):
    """:class:`BlobDetector` that is sure of a white square only when it is 40 px or more in
    the image it is given (0.6 below), and never sure of a grey one (0.6 at any size): a
    small face and a patch of ground, as the first pass of MTCNN sees them."""

    def detect_single(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        out = []
        for img, (b, _, lm) in zip(images, super().detect_single(images), strict=True):
            side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
            white = np.array(
                [img[int((y1 + y2) / 2), int((x1 + x2) / 2), 0] > 220 for x1, y1, x2, y2 in b],
                bool,
            ).reshape(-1)
            out.append((b, np.where(white & (side >= 40), 0.95, 0.6).astype(np.float32), lm))
        return out


def test_the_second_look_confirms_small_faces_and_not_the_ground() -> None:
    """An unsure detection (``recheck_score`` up to ``min_score``) is searched again in its
    surroundings enlarged so that it is 48 px: a small white square that the detector is sure
    of at that size is kept, with its box in frame pixels; a grey one, unsure at any size, is
    dropped; a sure detection is not looked at again. Without the second look only the large
    square is found."""
    frame = _squares((400, 400), [(100, 100, 16), (40, 300, 60)])
    frame[250:266, 250:266] = 160  # grey: bright enough to be a blob, never sure
    plain = ShyBlobDetector(min_score=0.85)
    assert plain.recheck_score is None
    d = plain.detect([frame])[0]
    assert len(d) == 1 and d.boxes[0].tolist() == [40, 300, 100, 360]

    det = ShyBlobDetector(min_score=0.85, recheck_score=0.5)
    d = det.detect([frame])[0]
    order = np.argsort(d.boxes[:, 1])
    assert len(d) == 2, d.boxes
    assert np.abs(d.boxes[order[0]] - [100, 100, 116, 116]).max() <= 1.0
    assert d.boxes[order[1]].tolist() == [40, 300, 100, 360]
    assert (d.scores >= 0.85).all()
    # two views per unsure blob (the white and the grey), each 48 px per box side
    assert sorted(set(det.seen[1:])) == [(144, 144, 3), (192, 192, 3)]
    assert det.seen.count((144, 144, 3)) == 2


def test_the_second_look_settings() -> None:
    """``recheck_score`` reaches MTCNN's last stage (unsure faces get through it) and is off
    when null or not below the confirming score; video analysis, which lowers ``min_score``
    to ``track_score``, keeps confirming at the pipeline's ``min_score``."""
    cfg = load_settings().detector
    assert cfg.recheck_score == 0.5 and cfg.confirm_score is None
    det = build_detector(cfg, "cpu")
    assert isinstance(det, MTCNNDetector)
    assert (det.recheck_score, det.confirm_score, det.keep_score) == (0.5, 0.85, 0.5)
    assert det._mtcnn.thresholds[2] == 0.5 and det._mtcnn_look.min_face_size == 20
    tracks = build_detector(cfg.model_copy(update={"track_score": 0.6}).for_tracks(), "cpu")
    assert (tracks.min_score, tracks.confirm_score) == (0.6, 0.85)  # type: ignore[attr-defined]
    off = build_detector(cfg.model_copy(update={"recheck_score": None}), "cpu")
    assert off.recheck_score is None and off._mtcnn.thresholds[2] == 0.7  # type: ignore[attr-defined]
    high = build_detector(cfg.model_copy(update={"recheck_score": 0.9}), "cpu")
    assert high.recheck_score is None  # type: ignore[attr-defined]


def test_a_second_look_that_finds_a_face_twice_keeps_it_once() -> None:
    """A box the second look moved onto a face another box already covers is merged with it
    (the stronger stays); two boxes it left alone are never merged, however much they
    overlap (two faces close together, as MTCNN gave them)."""
    from deid.detect.tiling import _drop_moved_duplicates

    boxes = np.array(
        [[0, 0, 20, 20], [2, 0, 22, 20], [100, 0, 120, 20], [101, 1, 121, 21]], np.float32
    )
    scores = np.array([0.9, 0.95, 0.9, 0.88], np.float32)
    raw = (boxes, scores, np.zeros((4, 5, 2), np.float32))
    kept = _drop_moved_duplicates(raw, np.array([False, True, False, False]), 0.4)
    assert kept[0].tolist() == boxes[[1, 2, 3]].tolist()  # the moved 0.95 wins its pair
    kept = _drop_moved_duplicates(raw, np.zeros(4, bool), 0.4)
    assert len(kept[0]) == 4


@pytest.mark.parametrize("angle", [90, 180, 270, 30, -45])
def test_a_turned_views_boxes_map_back_onto_the_frame(angle: float) -> None:
    """A box found in a turned copy of the frame comes back as the upright rectangle
    around the same pixels (exact for quarter turns), landmarks exactly."""
    frame = np.zeros((120, 200, 3), np.uint8)
    box = np.array([50, 30, 90, 100], np.float32)  # x1, y1, x2, y2 (pixel edges)
    frame[30:100, 50:90] = 255
    turned, back = turn_frame(frame, angle)
    ys, xs = np.nonzero(turned[..., 0] > 200)  # not the grey canvas
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    lm = np.array([[[xs.mean(), ys.mean()]] * 5], np.float32)
    det = Detections(found, np.array([0.99], np.float32), lm)
    (got,) = [map_back(det, back, frame.shape)]
    if angle % 90 == 0:
        np.testing.assert_allclose(got.boxes[0], box, atol=0.01)
    else:  # the rectangle around a turned rectangle: holds the box
        assert (got.boxes[0, :2] <= box[:2] + 1).all() and (got.boxes[0, 2:] >= box[2:] - 1).all()
        # the box around a turned rectangle, turned back: (cos + sin)^2 the area, twice over
        assert (got.boxes[0, 2:] - got.boxes[0, :2]).prod() < 4.5 * (box[2:] - box[:2]).prod()
    np.testing.assert_allclose(got.landmarks[0, 0], [70, 65], atol=1.0)


def test_turns_find_the_faces_of_a_photo_on_its_side() -> None:
    """MTCNN finds (almost) none of a group photo's faces turned a quarter turn; with
    ``detector.turns`` it finds each one the upright photo gives, each once."""
    photo = scene("group_friends_table.jpg")
    upright = build_detector(load_settings(None, {}).detector).detect([photo])[0]
    side = np.ascontiguousarray(np.rot90(photo, -1))
    plain = build_detector(load_settings(None, {}).detector).detect([side])[0]
    turned = build_detector(load_settings(None, {"detector": {"turns": [90, 180, 270]}}).detector)
    found = turned.detect([side])[0]
    assert len(upright) == 8 and len(plain) <= 2
    # the upright faces' centres, on the photo turned clockwise: (x, y) -> (h - 1 - y, x)
    h = photo.shape[0]
    centres = [((h - 1 - (b[1] + b[3]) / 2), (b[0] + b[2]) / 2) for b in upright.boxes]
    hits = [
        sum(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in found.boxes) for cx, cy in centres
    ]
    assert hits == [1] * 8
    assert turned.detect([]) == []  # an empty batch (no windows to search) is no error


def test_turns_are_angles_other_than_upright() -> None:
    assert DetectorConfig(turns=[90, -90.0]).turns == [90.0, -90.0]
    for bad in ([0], [360], [90, 450], [90, -270]):
        with pytest.raises(ValidationError):
            DetectorConfig(turns=bad)


def test_dim_and_hazy_frames_are_detected_stretched() -> None:
    """At dusk (frames using about 40 grey levels, with sensor noise) and in fog (a narrow
    band of bright levels) MTCNN misses faces it finds in the same frames stretched to the
    full range; frames of ordinary contrast pass unchanged."""
    frames = []
    for i, f in enumerate(read_frames(SCENES / "pedestrians_walking_1080p.mp4")):
        if i >= 8:
            break
        if i % 2 == 0:
            frames.append(np.ascontiguousarray(f[::2, ::2]))
    rng = np.random.default_rng(0)

    def noisy(x: np.ndarray) -> np.ndarray:
        return np.clip(x + rng.normal(0, 2, x.shape), 0, 255).round().astype(np.uint8)

    # linear light times 0.02; the frame blended 90% into a grey of 210
    dark = [noisy(((f.astype(np.float32) / 255) ** 2.2 * 0.02) ** (1 / 2.2) * 255) for f in frames]
    fog = [noisy(f.astype(np.float32) * 0.1 + 0.9 * 210) for f in frames]
    assert stretched(frames[0], 120) is None  # ordinary contrast: left alone
    assert stretched(np.zeros((64, 64, 3), np.uint8), 120) is None  # nothing to stretch
    off = build_detector(load_settings(None, {"detector": {"stretch_range": None}}).detector)
    on = build_detector(load_settings(None, {}).detector)
    lit = off.detect(frames)

    def found(dets: list[Detections]) -> int:  # faces of the lit frames found again
        return sum(
            any(b[0] <= (c[0] + c[2]) / 2 <= b[2] and b[1] <= (c[1] + c[3]) / 2 <= b[3] for c in d)
            for lf, d in zip(lit, (x.boxes for x in dets), strict=True)
            for b in lf.boxes
        )

    n = sum(len(d) for d in lit)
    assert n >= 24
    plain, levelled = found(off.detect(dark)), found(on.detect(dark))
    assert plain <= n - 4 and levelled >= n - 1, (n, plain, levelled)
    plain, levelled = found(off.detect(fog)), found(on.detect(fog))
    assert plain <= 2 and levelled >= n - 6, (n, plain, levelled)
