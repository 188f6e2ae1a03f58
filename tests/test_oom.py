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
from deid.pipeline.stages import attack_faces, halving_on_oom, is_out_of_memory
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
