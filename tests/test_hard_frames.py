"""Hard frames (issue 3, part 6): crowds, 20-px faces, faces cut by the frame edge, profiles,
grey frames, 4K frames, frames without faces. Real faces throughout: CelebA held-out crops
planted into a real scene (a frame of the shared pedestrian clip) and the shared photos.

A planted face counts as protected when most pixels of its face box changed in the written
file (attacked or obscured); the report's counts are checked against what was planted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from deid.align import box_landmarks, crop_faces, is_gray, obscure, paste_back
from deid.attacks.ifgsm import IFGSMConfig
from deid.batch import process_file
from deid.config import Settings, load_settings
from deid.detect import MTCNNDetector
from deid.io import read_frames, read_image, write_image
from deid.pipeline import Resources, attack_faces, classify, run_images
from deid.types import Detections

from .conftest import DATA, SCENES, scene

CLIP = SCENES / "pedestrians_walking_1080p.mp4"
CELEBA = DATA / "celeba" / "celeba_identities_aligned_64x64.npz"

# Where MTCNN's box sits in a CelebA 64x64 crop (fractions of the crop side, measured):
# x 0.22..0.77, y 0.19..0.93. A planted face of box width w is a crop of side w / 0.55.
FACE_IN_CROP = 0.55
INNER = (0.27, 0.3, 0.73, 0.85)  # the face itself inside a crop, for the pixel check


# --------------------------------------------------------------------------------------------
# real frames with planted real faces
# --------------------------------------------------------------------------------------------
def celeba_faces() -> np.ndarray:
    """(890, 64, 64, 3) uint8 held-out CelebA faces."""
    if not CELEBA.is_file():
        pytest.skip(f"{CELEBA} not found (set DEID_DATA_DIR)")
    d = np.load(CELEBA)
    return d["images"][d["split"] == 1]


def clip_frame() -> np.ndarray:
    """The first frame of the shared pedestrian clip, (1080, 1920, 3) RGB."""
    if not CLIP.is_file():
        pytest.skip(f"{CLIP} not found (set DEID_DATA_DIR)")
    return next(iter(read_frames(CLIP)))


def planted_frame(
    size: tuple[int, int],
    faces: np.ndarray,
    widths: list[int],
    rows: list[int],
    cols: int,
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """A real scene of ``size`` (W, H) (the clip's first frame, resized) with real faces
    planted in a grid across its upper part (above the pedestrians).

    Returns:
        the (H, W, 3) frame and, per planted face, (x1, y1, x2, y2, face width) of its crop.
    """
    w, h = size
    bg = clip_frame()
    interp = cv2.INTER_CUBIC if w > bg.shape[1] else cv2.INTER_AREA
    frame = cv2.resize(bg, (w, h), interpolation=interp)
    rng = np.random.default_rng(seed)
    step = (w - 40) // cols
    planted = []
    k = 0
    for y in rows:
        for c in range(cols):
            fw = widths[k % len(widths)]
            side = round(fw / FACE_IN_CROP)
            x = 20 + c * step + int(rng.integers(0, max(1, step - side - 10)))
            face = cv2.resize(
                faces[(k * 7) % len(faces)], (side, side), interpolation=cv2.INTER_AREA
            )
            frame[y : y + side, x : x + side] = face
            planted.append((x, y, x + side, y + side, fw))
            k += 1
    return frame, planted


def inner_box(crop: tuple[int, ...]) -> tuple[int, int, int, int]:
    x1, y1, x2 = crop[:3]
    s = x2 - x1
    return (
        round(x1 + INNER[0] * s),
        round(y1 + INNER[1] * s),
        round(x1 + INNER[2] * s),
        round(y1 + INNER[3] * s),
    )


def changed_share(before: np.ndarray, after: np.ndarray, box: tuple[int, ...]) -> float:
    """Share of the pixels inside ``box`` (clipped to the frame) that differ."""
    h, w = before.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(w, int(box[2])), min(h, int(box[3]))
    a = before[y1:y2, x1:x2].astype(int)
    b = after[y1:y2, x1:x2].astype(int)
    return float((np.abs(a - b).reshape(a.shape[0], a.shape[1], -1).sum(2) > 0).mean())


def records_in(report: dict[str, Any], crop: tuple[int, ...]) -> list[dict[str, Any]]:
    """The face records whose box centre lies inside a planted crop."""
    x1, y1, x2, y2 = crop[:4]
    out = []
    for r in report["faces_detail"]:
        bx1, by1, bx2, by2 = r["box"]
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# resources
# --------------------------------------------------------------------------------------------
def _settings(**detector: Any) -> Settings:
    attack: dict[str, Any] = {"name": "ifgsm"}
    if "eot" in IFGSMConfig.model_fields:
        # lossless PNG output here: the codec-robust averaging is not what these tests check
        attack["eot"] = {"enabled": False}
    return load_settings(
        overrides={"pipeline": {"device": "cpu"}, "detector": detector, "attack": attack}
    )


def _resources(settings: Settings) -> Resources:
    return Resources.load(settings)  # the detector as the settings describe it (tiles, padding)


@pytest.fixture(scope="module")
def res() -> Resources:
    # mirror padding on: faces cut by the frame edge are found too
    return _resources(_settings(edge_pad=32))


def _run(res: Resources, frame: np.ndarray, tmp: Path, name: str) -> tuple[np.ndarray, dict]:
    src = tmp / f"{name}.png"
    write_image(src, frame)
    out = tmp / "out" / f"{name}.png"
    report = run_images(src, out, res, progress=False)
    return read_image(out), report


def _check_totals(report: dict[str, Any]) -> None:
    t = report["totals"]
    assert t["faces"] == len(report["faces_detail"])
    assert t["attack_succeeded"] + t["fail_closed"] == t["faces"]
    assert t["frames"] == t["frames_with_faces"] + t["frames_without_faces"]
    assert t["unprotected_faces"] == 0
    for r in report["faces_detail"]:
        assert r["action"] == "attacked" or r["action"].startswith(("obscured", "repaired")), r


def _assert_protected(
    before: np.ndarray, after: np.ndarray, report: dict, planted: list[tuple[int, ...]]
) -> None:
    missing, unchanged = [], []
    for crop in planted:
        if not records_in(report, crop):
            missing.append(crop)
        elif changed_share(before, after, inner_box(crop)) < 0.5:
            unchanged.append(crop)
    assert not missing, f"planted faces not detected: {missing}"
    assert not unchanged, f"planted faces left (mostly) unchanged: {unchanged}"


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------
def test_crowd_of_small_faces_down_to_20px(res: Resources, tmp_path: Path) -> None:
    faces = celeba_faces()
    widths = [20, 24, 28, 32, 40, 48]
    frame, planted = planted_frame((1280, 720), faces, widths, rows=[8, 108, 208], cols=8)
    assert len(planted) == 24
    after, report = _run(res, frame, tmp_path, "crowd")
    _check_totals(report)
    t = report["totals"]
    assert t["frames"] == 1 and t["frames_with_faces"] == 1 and t["frames_without_faces"] == 0
    assert t["faces"] >= 24
    # every planted face, the 20-px ones included, was found and attacked or obscured
    _assert_protected(frame, after, report, planted)
    assert min(p[4] for p in planted) == 20
    # the sky of the scene (between the planted faces) is untouched: only faces change
    assert changed_share(frame, after, (0, 300, 1280, 330)) < 0.2


def test_face_half_outside_the_frame(res: Resources, tmp_path: Path) -> None:
    photo = scene("group_friends_stoop.jpg")
    full = res.detector.detect([photo])[0]
    k = int(np.argmax(full.boxes[:, 2]))  # the rightmost face
    x1, y1, x2, y2 = full.boxes[k]
    cut = round((x1 + x2) / 2)  # the frame ends in the middle of that face
    frame = np.ascontiguousarray(photo[:, :cut])
    after, report = _run(res, frame, tmp_path, "cut")
    _check_totals(report)
    visible = (x1, y1, cut, y2)
    found = [
        r for r in report["faces_detail"] if r["box"][2] > (x1 + cut) / 2 and r["box"][0] < cut
    ]
    assert found, f"the half face at {visible} was not detected"
    assert all(0 <= r["region"][0] < r["region"][2] <= cut for r in found)
    # its visible half is de-identified or obscured
    assert changed_share(frame, after, visible) >= 0.5
    assert report["totals"]["faces"] >= len(full)


def test_cut_and_degenerate_regions_go_through_every_stage(res: Resources) -> None:
    """Landmarks outside the frame, 1-px regions at the border and collapsed (profile-like)
    landmarks: crop, classify, attack, paste back and obscure run without errors, and a face
    with unusable landmarks is aligned (and obscured) by its box."""
    frame = scene("astronaut_single_face.png")
    face = res.detector.detect([frame])[0]
    assert len(face) == 1
    h, w = frame.shape[:2]
    boxes = np.array(
        [
            [w - 3, 10, w + 60, 80],  # 3 px inside the right edge
            [-70, -70, 2, 2],  # a corner: 2x2 px visible
            [w + 100, h + 100, w + 160, h + 170],  # wholly outside
            face.boxes[0],  # the real face ...
            face.boxes[0],  # ... with its landmarks collapsed onto one point
            face.boxes[0],  # ... with landmarks squeezed to one side, as on a profile
        ],
        np.float32,
    )
    lms = np.stack([box_landmarks(b) for b in boxes])
    lms[3] = face.landmarks[0]
    lms[4] = face.landmarks[0][2]
    fx = face.landmarks[0][:, 0]
    lms[5, :, 0] = boxes[5][0] + 0.15 * (fx - fx.min()) + 2
    det = Detections(boxes, np.ones(len(boxes), np.float32), lms)
    meta = res.classifier.meta
    crops = crop_faces([frame], [det], np.asarray(meta.template), tuple(meta.input_size))
    assert len(crops) == 6
    for c in crops:
        x1, y1, x2, y2 = c.region
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and c.pixels.shape[:2] == (y2 - y1, x2 - x1)
    assert crops[3].extra["aligned_by"] == "landmarks"
    assert crops[4].extra["aligned_by"] == "box"  # no usable alignment: placed from the box
    # however it is aligned, the crop of the real face covers its detected box
    fx1, fy1, fx2, fy2 = face.boxes[0]
    for c in crops[3:]:
        assert c.region[0] <= fx1 + 5 and c.region[1] <= fy1 + 5, c.region
        assert c.region[2] >= fx2 - 5 and c.region[3] >= fy2 - 5, c.region
    logits = classify(res.classifier, crops, res.device)
    outcomes = attack_faces(
        res.attack, res.classifier, crops, logits.argmin(1), logits.argmax(1), res.device, 32
    )
    assert len(outcomes) == 6
    for c, o in zip(crops, outcomes, strict=True):
        assert o.pixels.shape == c.pixels.shape
        out = frame.copy()
        paste_back(out, c, o.pixels)
        for mode in ("pixelate", "blur", "black"):
            hidden = frame.copy()
            obscure(hidden, c, mode)
            if c.region[2] - c.region[0] > 8:
                assert changed_share(frame, hidden, c.box) > 0.5, (c.region, mode)
    # the fallback on a face with degenerate or profile landmarks hides its whole box
    x1, y1, x2, y2 = face.boxes[0].round().astype(int)
    for c in crops[4:]:
        hidden = frame.copy()
        obscure(hidden, c, "black")
        assert (hidden[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] == 0).mean() > 0.9, c.extra


@pytest.fixture(scope="module")
def grey_run(res: Resources, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A grey photo (1-channel PNG, as a monochrome camera writes it) through the pipeline."""
    tmp = tmp_path_factory.mktemp("grey")
    grey = cv2.cvtColor(scene("group_friends_stoop.jpg"), cv2.COLOR_RGB2GRAY)
    src = tmp / "grey.png"
    Image.fromarray(grey).save(src)
    out = tmp / "out" / "grey.png"
    report = run_images(src, out, res, progress=False)
    return read_image(src), read_image(out), report


def test_grayscale_frame_is_detected_and_protected(grey_run: tuple) -> None:
    frame, after, report = grey_run
    assert is_gray(frame)
    _check_totals(report)
    assert report["totals"]["faces"] >= 5
    for r in report["faces_detail"]:
        assert changed_share(frame, after, r["box"]) >= 0.5, r


def test_grayscale_output_stays_grey(grey_run: tuple) -> None:
    _, after, report = grey_run
    assert report["totals"]["attack_succeeded"] >= 1
    # a colour perturbation on a grey frame would give the attack away
    assert is_gray(after)


def test_frames_without_faces_pass_through_and_are_counted(res: Resources, tmp_path: Path) -> None:
    empty = np.ascontiguousarray(clip_frame()[0:360, 700:1340])  # the arch, no people
    assert len(res.detector.detect([empty])[0]) == 0
    folder = tmp_path / "in"
    write_image(folder / "a_empty.png", empty)
    write_image(folder / "b_face.png", scene("astronaut_single_face.png"))
    report = run_images(folder, tmp_path / "out", res, progress=False)
    _check_totals(report)
    t = report["totals"]
    assert (t["frames"], t["frames_with_faces"], t["frames_without_faces"]) == (2, 1, 1)
    assert t["faces"] == 1
    # bit-identical: the PNG's pixels, and no face record for it
    assert np.array_equal(read_image(tmp_path / "out" / "a_empty.png"), empty)
    assert all("a_empty" not in r["file"] for r in report["faces_detail"])


def test_frames_too_small_for_the_detector_pass_through_and_are_listed(
    res: Resources, tmp_path: Path
) -> None:
    """One tiny image among others does not stop a folder: every output is written, the
    tiny ones unchanged, and the report counts and lists them."""
    rng = np.random.default_rng(0)
    shapes = {"b_1x1.png": (1, 1), "c_8x8.png": (8, 8), "d_8x4000.png": (8, 4000)}
    shapes |= {"e_4000x8.png": (4000, 8), "f_16x16.png": (16, 16)}
    folder = tmp_path / "in"
    write_image(folder / "a_face.png", scene("astronaut_single_face.png"))
    for name, (h, w) in shapes.items():
        write_image(folder / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    report = run_images(folder, tmp_path / "out", res, progress=False)
    _check_totals(report)
    t = report["totals"]
    assert (t["frames"], t["frames_with_faces"], t["faces"]) == (6, 1, 1)
    # 16x16 is searched (the default looks for faces from 12 px); 8x8, padded to 10, is not
    too_small = ["b_1x1.png", "c_8x8.png", "d_8x4000.png", "e_4000x8.png"]
    assert t["frames_too_small"] == 4
    assert [Path(f).name for f in report["too_small_inputs"]] == too_small
    for name in shapes:
        assert np.array_equal(read_image(tmp_path / "out" / name), read_image(folder / name))
    # the same file in a dataset batch (deid batch, service shards) is done, not failed
    row = process_file(folder / "d_8x4000.png", tmp_path / "batch" / "d.png", res)
    assert (row["status"], row["faces"], row["width"], row["height"]) == ("done", 0, 4000, 8)


@pytest.mark.slow
def test_4k_frame_tiles_find_the_small_faces_a_downscaled_pass_misses(tmp_path: Path) -> None:
    faces = celeba_faces()
    widths = [20, 20, 24, 28, 32, 48, 64, 80]  # bench/detect_4k.py: 40 faces, 5 per width
    frame, planted = planted_frame((3840, 2160), faces, widths, rows=[60, 300, 540], cols=8)
    settings = _settings(tile=2048)
    res = _resources(settings)
    assert res.detector.mode(frame.shape) == "tiled"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    after, report = _run(res, frame, tmp_path, "frame4k")
    _check_totals(report)
    # detection on tiles, the attack at full resolution: every planted face is protected
    _assert_protected(frame, after, report, planted)
    assert after.shape == frame.shape
    # the same frame detected on a copy downscaled to 1920 px loses some of the 20-px faces
    small = MTCNNDetector(min_face_size=20, max_side=1920).detect([frame])[0]
    centres = (small.boxes[:, :2] + small.boxes[:, 2:]) / 2

    def found(crop: tuple[int, ...]) -> bool:
        x1, y1, x2, y2 = crop[:4]
        return bool(
            (
                (centres[:, 0] > x1)
                & (centres[:, 0] < x2)
                & (centres[:, 1] > y1)
                & (centres[:, 1] < y2)
            ).any()
        )

    missed = [p for p in planted if not found(p)]
    assert missed, "the downscaled pass found every planted face: the test frame is too easy"
    assert min(p[4] for p in missed) == 20
