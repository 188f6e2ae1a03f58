"""Offline tracking: association, gap filling, end extension, one target per track."""

from __future__ import annotations

import numpy as np

from deid.pipeline.tracking import associate, iou_matrix, plan_tracks

LM = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.75], [0.62, 0.75]])


def face(x: float, y: float, size: float = 40.0, logits: list[float] | None = None) -> dict:
    box = [x, y, x + size, y + size]
    lm = (np.array([x, y]) + LM * size).tolist()
    return {"box": box, "score": 0.99, "landmarks": lm, "logits": logits or [3.0, 1.0, 0.0, -2.0]}


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], float)
    b = np.array([[5, 0, 15, 10]], float)
    m = iou_matrix(a, b)
    assert m.shape == (2, 1)
    assert abs(m[0, 0] - 50 / 150) < 1e-9 and m[1, 0] == 0


def test_two_crossing_faces_keep_their_ids() -> None:
    # A moves right, B moves left; they pass each other at frame ~10 at different heights
    frames = []
    for t in range(20):
        frames.append(
            np.array(
                [[10 + 10 * t, 100, 50 + 10 * t, 140], [210 - 10 * t, 160, 250 - 10 * t, 200]],
                float,
            )
        )
    ids = associate(frames)
    assert all(f == [0, 1] for f in ids), ids


def test_small_fast_face_is_matched_by_centre_distance() -> None:
    # a 20 px face moving 14 px per frame: consecutive boxes overlap with IoU < 0.3
    frames = [np.array([[14.0 * t, 50, 14.0 * t + 20, 70]]) for t in range(10)]
    assert iou_matrix(frames[0], frames[1])[0, 0] < 0.3
    assert [f[0] for f in associate(frames)] == [0] * 10


def test_gap_is_interpolated_and_ends_extended() -> None:
    n = 20
    faces: list[list[dict]] = [[] for _ in range(n)]
    for t in range(3, 17):
        if t in (8, 9, 10):  # the detector misses the face for three frames
            continue
        faces[t].append(face(100 + 5 * t, 50))
    plan = plan_tracks(faces, 640, 480, "least-likely", 4, max_gap=5, extend=2)
    kinds = {t: [f["kind"] for f in fr] for t, fr in enumerate(plan["frames"])}
    assert kinds[8] == kinds[9] == kinds[10] == ["interpolated"]
    assert kinds[1] == kinds[2] == ["extrapolated"] and kinds[17] == kinds[18] == ["extrapolated"]
    assert kinds[0] == [] and kinds[19] == []
    # interpolated boxes lie on the straight path
    b9 = plan["frames"][9][0]["box"]
    assert abs(b9[0] - (100 + 5 * 9)) < 1e-6
    # extrapolated boxes continue the motion
    assert abs(plan["frames"][18][0]["box"][0] - (100 + 5 * 18)) < 1e-6
    (track,) = plan["tracks"]
    assert track["detected"] == 11 and track["interpolated"] == 3 and track["extrapolated"] == 4
    assert (track["first"], track["last"]) == (1, 18)


def test_long_gap_splits_the_track() -> None:
    faces: list[list[dict]] = [[face(100, 50)] if t < 5 or t > 15 else [] for t in range(20)]
    plan = plan_tracks(faces, 640, 480, "least-likely", 4, max_gap=3, extend=0)
    assert len(plan["tracks"]) == 2
    assert all(fr == [] for fr in plan["frames"][5:16])


def test_one_target_per_track_from_mean_logits() -> None:
    # the per-frame least-likely class flips between 2 and 3; the track's mean decides once
    faces = [
        [face(100 + 2 * t, 50, logits=[3.0, 1.0, -2.0 + (t % 2) * 0.5, -1.9 - (t % 2) * 0.5])]
        for t in range(10)
    ]
    plan = plan_tracks(faces, 640, 480, "least-likely", 4)
    targets = {f["target"] for fr in plan["frames"] for f in fr}
    assert len(targets) == 1 and targets.pop() == 3  # mean logits: class 2 -1.75, class 3 -2.15
    assert plan["tracks"][0]["pred"] == 0


def test_random_targets_depend_on_seed_and_track_not_on_frames() -> None:
    faces = [[face(100, 50), face(400, 50)] for _ in range(6)]
    a = plan_tracks(faces, 640, 480, "random", 4, seed=1)
    b = plan_tracks(faces[:3], 640, 480, "random", 4, seed=1)
    assert [t["target"] for t in a["tracks"]] == [t["target"] for t in b["tracks"]]
    for t in a["tracks"]:
        assert t["target"] != t["pred"]


def test_extrapolation_stops_at_the_frame_edge() -> None:
    faces = [[face(560 + 20 * t, 50)] for t in range(3)] + [[] for _ in range(5)]
    plan = plan_tracks(faces, 640, 480, "least-likely", 4, extend=5)
    for fr in plan["frames"]:
        for f in fr:
            x1, y1, x2, y2 = f["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    assert plan["frames"][5] == []  # the face left the frame


def _scored(x: float, y: float, score: float, size: float = 16.0) -> dict:
    return {**face(x, y, size), "score": score}


def test_hysteresis_keeps_weak_detections_only_in_confirmed_tracks() -> None:
    """A small face scored 0.7 in most frames and 0.9 in one is kept in all of them; a patch
    of ground scored 0.7 now and then, never more, is dropped, and counted."""
    n = 10
    faces: list[list[dict]] = [[] for _ in range(n)]
    for t in range(n):
        faces[t].append(_scored(100 + 2 * t, 50, 0.9 if t == 6 else 0.7))
        if t in (2, 3, 4):
            faces[t].append(_scored(400, 300, 0.75))
    plan = plan_tracks(faces, 640, 480, "least-likely", 4, extend=0, min_score=0.85)
    (track,) = plan["tracks"]
    assert track["id"] == 0 and track["detected"] == n and track["best_score"] == 0.9
    assert all([f["kind"] for f in fr] == ["detected"] for fr in plan["frames"])
    assert all(fr[0]["box"][0] < 200 for fr in plan["frames"])  # the ground patch is gone
    assert plan["unconfirmed"] == 3
    # without the hysteresis the patch is a track of its own; with a bar no detection
    # reaches, nothing is left
    assert len(plan_tracks(faces, 640, 480, "least-likely", 4)["tracks"]) == 2
    none = plan_tracks(faces, 640, 480, "least-likely", 4, min_score=0.95)
    assert none["tracks"] == [] and none["unconfirmed"] == n + 3


def test_dropped_tracks_leave_dense_ids_in_order_of_appearance() -> None:
    faces = [
        [_scored(10, 10, 0.7), _scored(200, 10, 0.9), _scored(400, 10, 0.95)] for _ in range(4)
    ]
    plan = plan_tracks(faces, 640, 480, "least-likely", 4, min_score=0.85)
    assert [t["id"] for t in plan["tracks"]] == [0, 1]
    assert [[f["track"] for f in fr] for fr in plan["frames"]] == [[0, 1]] * 4
    assert plan["frames"][0][0]["box"][0] == 200
