"""Target selection."""

from __future__ import annotations

import pytest
import torch

from deid.targets import LOOKALIKE_AVOID, choose_targets, lookalike_targets

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


def test_lookalike_is_one_target_per_track_never_whom_the_original_resembles() -> None:
    k = 10
    original = torch.arange(k, 0, -1).float().repeat(4, 1)  # likeliest: 0, 1, 2, 3, 4, ...
    new = torch.zeros(4, k)
    new[0, [0, 5, 6]] = torch.tensor([9.0, 4.0, 0.0])  # the original (0) is still likeliest
    new[1, [5, 6]] = torch.tensor([0.0, 4.5])  # 6 leads here, 5 over the track's faces
    new[2, [5, 6]] = torch.tensor([3.0, 0.0])
    new[3, [1, 7]] = torch.tensor([9.0, 3.0])  # a still: 1 is among the original's 5 likeliest
    lp = torch.log_softmax(new, 1)
    kept: dict[object, int] = {}
    t = lookalike_targets(lp, original, [7, 7, 7, -1], kept)
    assert t.tolist() == [5, 5, 5, 7]
    assert kept == {("lookalike", 7): 5}
    # the next call keeps track 7's target whatever its new faces lean to
    assert lookalike_targets(lp[1:2], original[:1], [7], kept).tolist() == [5]
    # unless that target has become one of the identities to avoid: then it is chosen again
    t3 = lookalike_targets(lp[1:2], original[:1], [7], kept, preds=torch.tensor([5]))
    assert t3.tolist() == [6] and kept[("lookalike", 7)] == 6
    # without memory nothing is kept; never one of the original's 5 likeliest
    t4 = lookalike_targets(lp, original, [1, 1, 1, -1])
    assert all(v >= LOOKALIKE_AVOID for v in t4.tolist())
