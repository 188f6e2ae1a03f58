"""Target selection."""

from __future__ import annotations

import pytest
import torch

from deid.targets import choose_targets, lookalike_targets

LOGITS = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 4.0, 1.0], [1.0, 1.5, 0.5, 2.0]])


def test_modes() -> None:
    assert choose_targets(LOGITS, "least-likely").tolist() == [3, 0, 2]
    assert choose_targets(LOGITS, "nearest").tolist() == [2, 2, 1]
    # on the face it is given, lookalike is nearest (a generator chooses it on its new face)
    assert choose_targets(LOGITS, "lookalike").tolist() == [2, 2, 1]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        r = choose_targets(LOGITS, "random", g)
        assert (r != LOGITS.argmax(1)).all() and ((r >= 0) & (r < 4)).all()


def test_fixed_identity_never_the_face_itself() -> None:
    assert choose_targets(LOGITS, 1).tolist() == [1, 2, 1]  # face 1 is already class 1


def test_bad_modes() -> None:
    with pytest.raises(ValueError, match="out of range"):
        choose_targets(LOGITS, 9)
    with pytest.raises(ValueError, match="least-likely"):
        choose_targets(LOGITS, "farthest")  # type: ignore[arg-type]


def test_lookalike_is_one_target_per_track_never_the_original_and_kept() -> None:

    lp = torch.log_softmax(
        torch.tensor(
            [
                [5.0, 4.0, 0.0, 0.0],  # track 7: the original (0) is still likeliest
                [5.0, 0.0, 4.5, 0.0],  # track 7: 2 leads here, 1 over the track's faces
                [5.0, 0.0, 3.0, 0.0],
                [0.0, 1.0, 0.0, 3.0],  # a still (no track): decided alone
            ]
        ),
        1,
    )
    preds = torch.tensor([0, 0, 0, 1])
    kept: dict[object, int] = {}
    t = lookalike_targets(lp, preds, [7, 7, 7, -1], kept)
    assert t.tolist() == [2, 2, 2, 3]  # summed over the track: 2 (7.5) over 1 (4.0)
    assert kept == {("lookalike", 7): 2}
    # the next call keeps track 7's target whatever its new faces lean to
    t2 = lookalike_targets(lp[:1], preds[:1], [7], kept)
    assert t2.tolist() == [2]
    # unless that target has become the track's own identity: then it is chosen again
    t3 = lookalike_targets(lp[:1], torch.tensor([2]), [7], kept)
    assert t3.tolist() == [0] and kept[("lookalike", 7)] == 0
    # without memory nothing is kept, and the target is never the original
    t4 = lookalike_targets(lp, torch.tensor([1, 1, 1, 3]), [1, 1, 1, -1])
    assert t4[0] != 1 and t4[3] != 3
