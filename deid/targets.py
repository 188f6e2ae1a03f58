"""Choosing whom each face should be mistaken for."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

TargetMode = Literal["least-likely", "nearest", "random", "lookalike"]
TARGET_MODES = ("least-likely", "nearest", "random", "lookalike")


def choose_targets(
    logits: Tensor,
    mode: TargetMode | int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Target identities for a batch, never the currently predicted one.

    Args:
        logits: (N, K) the classifier's logits on the clean faces.
        mode: ``least-likely`` (argmin p(y|x): the seed's ILLC, the hardest target),
            ``nearest`` (the second most likely class: the most plausible lookalike, so the
            smallest change), ``random`` (uniform over the other classes), or a class id.
            ``lookalike`` is ``nearest`` here; a generator mode (``replace``) chooses it
            again on the new face, as the identity the classifier sees most in it other than
            the original's (:func:`deid.pipeline.protect.lookalike_targets`).
            A fixed id that is already a face's prediction falls back to ``nearest`` for it.
        generator: for ``random``.

    Returns:
        (N,) int64 on the logits' device.
    """
    n, k = logits.shape
    pred = logits.argmax(1)
    if k < 2:
        raise ValueError("a targeted attack needs a classifier with at least 2 classes")
    nearest = logits.topk(2, 1).indices[:, 1] if n else pred
    if isinstance(mode, int) and not isinstance(mode, bool):
        if not 0 <= mode < k:
            raise ValueError(
                f"target id {mode} out of range; the classifier has classes 0..{k - 1}"
            )
        fixed = torch.full_like(pred, mode)
        return torch.where(pred == fixed, nearest, fixed)
    if mode == "least-likely":
        return logits.argmin(1)
    if mode in ("nearest", "lookalike"):
        return nearest
    if mode == "random":
        r = torch.randint(0, k - 1, (n,), generator=generator).to(logits.device)
        return r + (r >= pred).long()  # skip the predicted class
    raise ValueError(f"unknown target mode {mode!r}; available: {[*TARGET_MODES, '<class id>']}")
