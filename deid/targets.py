"""Choosing whom each face should be mistaken for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

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
            the original's (:func:`deid.targets.lookalike_targets`).
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


#: A lookalike target is never one of the original face's this many likeliest identities:
#: on 400 held-out CelebA faces the true identity is a clean face's likeliest for 75% of
#: them and among its 5 likeliest for 89% (deid's CelebA CNN), and a target that is the
#: person's own identity would undo the protection for deid's classifier.
LOOKALIKE_AVOID = 5


def lookalike_targets(
    log_probs: Tensor,
    original: Tensor,
    tracks: Sequence[int],
    memory: dict[Any, Any] | None = None,
    preds: Tensor | None = None,
) -> Tensor:
    """The ``lookalike`` target of each new face: the identity the classifier already sees
    most in it, among those the original face is least like to be, so the targeted steps
    have the least way to go.

    One per track: the faces of a track in this call vote by their summed log-probabilities,
    and a track decided in an earlier call (``memory``) keeps its target. A face without a
    track (< 0) is decided alone.

    Args:
        log_probs: (N, K) the classifier's log-probabilities on the new faces.
        original: (N, K) its logits on the original faces: each face's
            :data:`LOOKALIKE_AVOID` likeliest identities are never its track's target.
        tracks: (N,) track ids.
        memory: track -> target, read and updated (None: nothing kept).
        preds: (N,) more identities never to choose (a track's identity from all its
            faces, as a video's plan has it).

    Returns:
        (N,) int64.
    """
    avoid = original.topk(min(LOOKALIKE_AVOID, original.shape[1] - 1), 1).indices.cpu()
    if preds is not None:
        avoid = torch.cat([avoid, preds.cpu().view(-1, 1)], 1)
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(tracks):
        groups.setdefault(int(t) if t >= 0 else -1 - i, []).append(i)
    kept = memory if memory is not None else {}
    out = torch.empty(len(log_probs), dtype=torch.int64)
    for track, idx in groups.items():
        banned = avoid[idx].unique()
        chosen = kept.get(("lookalike", track)) if track >= 0 else None
        if chosen is None or chosen in banned.tolist():  # new, or its identity changed
            score = log_probs[idx].sum(0).cpu()
            score[banned] = float("-inf")  # never the original, nor whom it resembles
            chosen = int(score.argmax())
            if track >= 0:
                kept[("lookalike", track)] = chosen
        out[idx] = chosen
    return out
