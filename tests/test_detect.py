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
