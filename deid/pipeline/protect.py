"""The protection step: what replaces a face's pixels, chosen by name from one registry
(the generators' contract and registry live in :mod:`deid.generators.base`).

Two kinds of protection share ``attack.name`` (and ``deid run --attack NAME``):

* an **attack** (:mod:`deid.attacks`) perturbs the crop until the classifier sees the face's
  target identity; it needs the classifier and the targets (:class:`AttackProtector`);
* a **generator** maps a face crop, its landmarks and its track id to a new crop (a GAN
  replacement, say), optionally followed by an attack (``then: ifgsm``; ``auto``: AdvGAN
  where a generator was trained against the classifier, else I-FGSM)
  (:class:`GeneratorProtector`). A generated face counts as protected when the classifier no
  longer sees the original identity in it (or, with ``then``, when the attack reached its
  target).

Both return one :class:`~deid.pipeline.stages.FaceOutcome` per crop, so what follows is the
same for either: a failed face is obscured, the written file is re-read and verified, a face
still recognised there is obscured (fail closed), and a video's faces keep their track.

A generator is one module and one line (``register_generator`` from
:mod:`deid.generators.base`, also exported by :mod:`deid.pipeline`)::

    register_generator("grey", lambda cfg: GreyFaces())   # then `deid run --attack grey`
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from deid.align import compose_owned, gray_like, is_gray
from deid.attacks.base import Attack, AttackConfigBase, from_uint8, perturbation_norms, to_uint8
from deid.attacks.registry import ATTACKS, build_attack
from deid.errors import ConfigError, ShapeError
from deid.generators.base import GENERATORS, Generator, follow_attack
from deid.models import FaceClassifier
from deid.pipeline.stages import (
    FaceOutcome,
    attack_faces,
    batches,
    classify,
    halving_on_oom,
    psnr,
    to_batch,
)
from deid.targets import lookalike_targets
from deid.types import FaceCrop


@dataclass(frozen=True)
class ProtectContext:
    """What a protection step may use besides the crops.

    Attributes:
        classifier: the identity classifier (attacks steer it; outcomes are read with it).
        targets: (N,) int64 target class of each crop (one per track in a video).
        preds: (N,) int64 the classifier's identity of each clean crop.
        device: where to compute.
        batch_size: faces per batch.
        target_mode: the target mode the targets were chosen by; a generator followed by
            an attack re-chooses them from the new faces for ``lookalike``
            (:func:`deid.targets.lookalike_targets`).
        memory: kept by the caller for one video chunk, stream or folder: what a protector
            decided for a track in one call and keeps for it in the next (the lookalike
            targets).
    """

    classifier: FaceClassifier
    targets: Tensor
    preds: Tensor
    device: torch.device
    batch_size: int
    target_mode: str | int | None = None
    memory: dict[Any, Any] | None = None


#: One outcome per crop, in the crops' order.
ProtectResult = list[FaceOutcome]


@runtime_checkable
class Protector(Protocol):
    """A protection step: ``protect(crops, context) -> ProtectResult``."""

    name: str

    def protect(self, crops: Sequence[FaceCrop], ctx: ProtectContext) -> ProtectResult: ...


class AttackProtector:
    """Today's protection: an adversarial attack steering each face to its target."""

    def __init__(self, name: str, attack: Attack) -> None:
        self.name = name
        self.attack = attack

    def protect(self, crops: Sequence[FaceCrop], ctx: ProtectContext) -> ProtectResult:
        return attack_faces(
            self.attack,
            ctx.classifier,
            crops,
            ctx.targets,
            ctx.preds,
            ctx.device,
            ctx.batch_size,
        )


class GeneratorProtector:
    """A generator, optionally followed by an attack on its output."""

    def __init__(
        self,
        name: str,
        generator: Generator,
        then: Attack | None = None,
        escalate: Attack | None = None,
    ) -> None:
        self.name = name
        self.generator = generator
        self.then = then
        self.escalate = escalate  # a second round for faces whose `then` steps all ran

    def protect(self, crops: Sequence[FaceCrop], ctx: ProtectContext) -> ProtectResult:
        generated = self._generate(crops, ctx)
        if self.then is None:
            return generated
        # attack each new face as the frame will hold it: where its crop overlaps another
        # face's, with that face's new pixels (a crop is larger than its face)
        composed = compose_owned(crops, [o.pixels for o in generated])
        new = [replace(c, pixels=px) for c, px in zip(crops, composed, strict=True)]
        if ctx.target_mode == "lookalike":
            targets = lookalike_targets(
                torch.log_softmax(classify(ctx.classifier, new, ctx.device, ctx.batch_size), 1),
                classify(ctx.classifier, crops, ctx.device, ctx.batch_size),
                [c.track for c in crops],
                ctx.memory,
                ctx.preds,
            )
            ctx = replace(ctx, targets=targets)
        attacked = attack_faces(
            self.then, ctx.classifier, new, ctx.targets, ctx.preds, ctx.device, ctx.batch_size
        )
        if self.escalate is not None:
            self._escalate(new, attacked, ctx)
        for c, o in zip(crops, attacked, strict=True):
            o.psnr = psnr(o.pixels, c.pixels)  # against the original face
        return attacked

    def _escalate(
        self, new: Sequence[FaceCrop], attacked: list[FaceOutcome], ctx: ProtectContext
    ) -> None:
        """Faces whose ``then`` steps all ran without stopping early (the margin, on every
        EOT copy, not reached: small faces, mostly) get the escalation attack from where
        they are, in place: its ball adds to the first, so the written face stays within
        ``escalate_eps`` of its generated face."""
        ran = ran_out(self.then, torch.tensor([o.steps for o in attacked]))
        hard = ran.nonzero().flatten().tolist()
        if not hard:
            return
        again = [replace(new[i], pixels=attacked[i].pixels) for i in hard]
        idx = torch.as_tensor(hard)
        more = attack_faces(
            self.escalate,
            ctx.classifier,
            again,
            ctx.targets[idx],
            ctx.preds[idx],
            ctx.device,
            ctx.batch_size,
        )
        keep = kept_second(
            torch.tensor([attacked[i].success for i in hard]),
            torch.tensor([o.success for o in more]),
        )
        for i, o, k in zip(hard, more, keep.tolist(), strict=True):
            if not k:
                continue
            o.steps += attacked[i].steps
            start, end = from_uint8(new[i].pixels[None]), from_uint8(o.pixels[None])
            o.norms = {k: float(v[0]) for k, v in perturbation_norms(start, end).items()}
            attacked[i] = o

    @torch.no_grad()
    def _generate(self, crops: Sequence[FaceCrop], ctx: ProtectContext) -> ProtectResult:
        outcomes: list[FaceOutcome | None] = [None] * len(crops)

        def run(idx: list[int]) -> None:
            sub = [crops[i] for i in idx]
            x, theta = to_batch(sub, ctx.device)
            landmarks = torch.tensor(np.stack([_crop_landmarks(c) for c in sub]))
            # a face of a still has no track (-1): give each its own id, so each gets its own
            # new face (a generator keyed by the track would give them all one)
            tracks = torch.tensor(
                [c.track if c.track >= 0 else -1 - (c.frame * 100_000 + c.face) for c in sub],
                dtype=torch.int64,
            )
            y = self.generator.generate(x, landmarks.to(ctx.device), tracks.to(ctx.device))
            if y.shape != x.shape:
                raise ShapeError(f"generator {self.name!r} output", tuple(y.shape), str(x.shape))
            px = to_uint8(y.clamp(0, 1))
            px = np.stack(
                [gray_like(p) if is_gray(c.pixels) else p for p, c in zip(px, sub, strict=True)]
            )
            written = from_uint8(px).to(ctx.device)
            logits = ctx.classifier.bind(theta)(written)
            probs = torch.softmax(logits.float(), 1).cpu()
            norms = perturbation_norms(x, written)
            for j, i in enumerate(idx):
                h, w = crops[i].pixels.shape[:2]
                pred, final = int(ctx.preds[i]), int(probs[j].argmax())
                outcomes[i] = FaceOutcome(
                    pixels=px[j, :h, :w],
                    success=final != pred,  # no longer seen as itself
                    steps=0,
                    pred=pred,
                    target=int(ctx.targets[i]),
                    final=final,
                    final_conf=float(probs[j].max()),
                    norms={k: float(v[j]) for k, v in norms.items()},
                    psnr=psnr(px[j, :h, :w], crops[i].pixels),
                )

        for idx in batches(crops, ctx.batch_size):
            halving_on_oom(run, idx)
        return [o for o in outcomes if o is not None]


def _crop_landmarks(c: FaceCrop) -> np.ndarray:
    """(5, 2) float32 landmarks of a crop in its own pixels (NaN when it has none)."""
    lm = c.extra.get("landmarks")
    if lm is None:
        return np.full((5, 2), np.nan, np.float32)
    return (np.asarray(lm, np.float32) - np.array(c.region[:2], np.float32)).reshape(5, 2)


def build_protector(cfg: AttackConfigBase) -> Protector:
    """The protection step the ``attack`` settings name: a generator or an attack."""
    name = getattr(cfg, "name", None)
    if name in GENERATORS:
        then = getattr(cfg, "then", None)
        params = dict(getattr(cfg, "then_params", None) or {})
        follow = follow_attack(then, params)
        return GeneratorProtector(
            name, GENERATORS[name](cfg), follow, escalation(follow, then, params, cfg)
        )
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return AttackProtector(name, build_attack(cfg))


def ran_out(then: Attack | None, steps: Tensor) -> Tensor:
    """(N,) bool: the faces whose ``then`` attack used all its steps (none stopped early at
    its margin): those the second round (:func:`escalation`) is for."""
    budget = getattr(getattr(then, "cfg", None), "steps", None)
    return steps >= budget if budget is not None else torch.zeros(len(steps), dtype=torch.bool)


def kept_second(first: Tensor, second: Tensor) -> Tensor:
    """(N,) bool: which second-round results replace the first round's, by their success:
    all but those where the first round reached the target and the second did not."""
    return second | ~first


def escalation(
    follow: Attack | None, then: str | None, params: dict[str, Any], cfg: AttackConfigBase
) -> Attack | None:
    """The second round of a generator's ``then`` attack (``escalate_eps``): the same attack
    with the ball that is left between its own eps and ``escalate_eps``."""
    top = getattr(cfg, "escalate_eps", None)
    eps = getattr(getattr(follow, "cfg", None), "eps", None)
    if follow is None or top is None or eps is None or top <= eps:
        return None
    return follow_attack(then, {**params, "eps": top - eps})
