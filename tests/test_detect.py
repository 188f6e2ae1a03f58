"""MTCNN adapter on real photos (its weights ship in the facenet-pytorch wheel)."""

from __future__ import annotations

import numpy as np
import pytest

from deid.detect import MTCNNDetector

from .conftest import scene


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
