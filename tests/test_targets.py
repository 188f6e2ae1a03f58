"""Target selection."""

from __future__ import annotations

import pytest
import torch

from deid.targets import choose_targets

LOGITS = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 4.0, 1.0], [1.0, 1.5, 0.5, 2.0]])


def test_modes() -> None:
    assert choose_targets(LOGITS, "least-likely").tolist() == [3, 0, 2]
    assert choose_targets(LOGITS, "nearest").tolist() == [2, 2, 1]
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
