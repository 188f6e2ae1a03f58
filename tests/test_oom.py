"""A batch too large for the accelerator's memory is met by smaller batches, never by a
crash: the protection step halves a batch that runs out of memory, down to one face.

A CPU cannot run out of GPU memory on demand, so the attack here raises the error CUDA's
allocator raises (``torch.OutOfMemoryError``) whenever it is handed more faces than a set
budget, and otherwise runs the real I-FGSM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deid.attacks.ifgsm import IFGSM, IFGSMConfig
from deid.pipeline.stages import (
    MemoryBudget,
    attack_faces,
    batches,
    budget_for,
    halving_on_oom,
    is_out_of_memory,
    padded_pixels,
)
from deid.types import FaceCrop


class SmallMemory:
    """I-FGSM on a device that holds at most ``budget`` faces per call."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.attack = IFGSM(IFGSMConfig(steps=3, eot={"enabled": False}))
        self.sizes: list[int] = []

    def __call__(self, model, x, t):
        self.sizes.append(len(x))
        if len(x) > self.budget:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.attack(model, x, t)


def _crops(faces: torch.Tensor) -> list[FaceCrop]:
    px = (faces.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    ident = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    h, w = px.shape[1:3]
    return [
        FaceCrop(0, k, (0, 0, w, h), p, ident, np.array([0, 0, w, h], np.float32))
        for k, p in enumerate(px)
    ]


def test_an_out_of_memory_batch_is_halved_and_gives_the_same_faces(tiny, faces) -> None:
    crops = _crops(faces)
    t = torch.tensor([1, 2, 3, 0, 1, 2, 3, 0])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    small = SmallMemory(budget=2)
    got = attack_faces(small, tiny, crops, t, pred, torch.device("cpu"), batch_size=8)
    assert small.sizes[0] == 8 and max(s for s in small.sizes[1:]) <= 4
    assert len(got) == 8
    roomy = SmallMemory(budget=8)
    want = attack_faces(roomy, tiny, crops, t, pred, torch.device("cpu"), batch_size=2)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.pixels, b.pixels) and a.success == b.success


def test_one_face_that_does_not_fit_and_other_errors_are_raised() -> None:
    def never(idx: list[int]) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        halving_on_oom(never, [0, 1, 2])
    seen: list[list[int]] = []

    def broken(idx: list[int]) -> None:
        seen.append(idx)
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError):
        halving_on_oom(broken, [0, 1, 2, 3])
    assert seen == [[0, 1, 2, 3]]  # not retried
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_the_budget_bounds_batches_by_what_the_memory_holds() -> None:
    usable = 10_000
    b = MemoryBudget(torch.device("cpu"), headroom=0.8, usable=lambda: usable)
    assert b.max_pixels() is None  # nothing learnt yet: batch_size alone
    b.ran(pixels=1000, peak_bytes=4000)  # 4 bytes a padded pixel
    assert b.max_pixels() == 2000
    b.ran_out(pixels=500)  # 500 px did not fit in 10 000 bytes: at least 20 bytes a pixel
    assert b.max_pixels() == 400
    b.ran(pixels=1000, peak_bytes=4000)  # a cheaper batch does not unlearn it
    assert b.max_pixels() == 400
    b.ran_out(pixels=100, usable=5000)  # what was usable when that batch started
    assert b.max_pixels() == 160
    assert budget_for(object(), torch.device("cpu")) is None  # no budget on a CPU

    ident = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    crops = [
        FaceCrop(0, k, (0, 0, s, s), np.zeros((s, s, 3), np.uint8), ident, np.zeros(4))
        for k, s in enumerate([10, 10, 10, 12, 12, 20, 20, 20, 30])
    ]
    got = list(batches(crops, size=32, max_padding=1.0, max_pixels=450))
    assert sorted(i for bt in got for i in bt) == list(range(9))
    for bt in got:  # within the bound, or one crop larger than it alone
        assert padded_pixels([crops[i] for i in bt]) <= 450 or len(bt) == 1


def test_what_ran_out_of_memory_once_is_not_tried_again(tiny, faces) -> None:
    """A budget that learns from the out-of-memory errors of one protection call: later
    calls cut their batches to fit, and the faces are the same as with room to spare."""
    crops = _crops(faces)
    t = torch.tensor([1, 2, 3, 0, 1, 2, 3, 0])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    want = attack_faces(SmallMemory(8), tiny, crops, t, pred, torch.device("cpu"), batch_size=8)
    budget = MemoryBudget(torch.device("cpu"), usable=lambda: 1 << 30)
    failures = []
    for _ in range(4):
        small = SmallMemory(budget=2)
        got = attack_faces(
            small, tiny, crops, t, pred, torch.device("cpu"), batch_size=8, budget=budget
        )
        failures.append(sum(s > 2 for s in small.sizes))
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a.pixels, b.pixels) and a.success == b.success
    assert failures[0] >= 1 and failures[2:] == [0, 0]  # [3, 1, 0, 0]
    assert failures == sorted(failures, reverse=True)
