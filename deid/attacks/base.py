"""The attack interface: batch in, adversarial images and a per-sample success mask out.

Every attack is a class built from one pydantic config and called as
``attack(model, images, targets) -> AttackResult``. The model is an argument, not state.
``images`` are (N, C, H, W) float in [0, 1]; normalisation lives in the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from torch import Tensor, nn

from deid.argtypes import parse_fraction
from deid.errors import ShapeError
from deid.targets import TargetMode


def _fraction_field(v: object) -> object:
    """Accept ``"16/255"`` for a float field (what people write for 8-bit budgets)."""
    if isinstance(v, str) and "/" in v:
        try:
            return parse_fraction(v)
        except ValueError:
            return v  # let pydantic report it as not a number
    return v


Budget = Annotated[float, BeforeValidator(_fraction_field)]


class AttackConfigBase(BaseModel):
    """Fields every attack has.

    A subclass names its attack (``name: Literal["NAME"] = "NAME"``, the key of the registry
    and of ``Settings.attack``) and says which target the pipeline picks for it when
    ``target`` is None (``default_target``: ``least-likely``, ``nearest`` or ``random``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    default_target: ClassVar[TargetMode]

    targeted: bool = Field(
        True, description="reach a given identity (True) or just leave the true one"
    )
    margin: float = Field(0.0, ge=0.0, description="logit margin by which the target must win")
    quantize: bool = Field(True, description="keep images on the 8-bit grid (what gets written)")
    batch_size: int = Field(32, ge=1, le=4096, description="faces attacked together")
    target: str | int | None = Field(
        None,
        description="least-likely, nearest, random, lookalike, a class id or name (None: the "
        "attack's default)",
    )


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns.

    Attributes:
        images: (N, C, H, W) adversarial images in [0, 1], same device and dtype as the input.
        success: (N,) bool. Targeted: the model's top class is the target (by ``margin``);
            untargeted: it is not the true class.
        steps: (N,) int64 gradient steps (or model queries) each sample used.
        logits: (N, K) the model's logits on ``images`` (as returned, after quantisation).
        norms: per-sample L0, L1, L2 and Linf of ``images - original``, each (N,).
        queries: (N,) int64 model queries each sample used, for black-box attacks (those
            that only see a :class:`deid.attacks.query.QueryModel`); None otherwise.
    """

    images: Tensor
    success: Tensor
    steps: Tensor
    logits: Tensor
    norms: dict[str, Tensor]
    queries: Tensor | None = None

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self.success) else 1.0


class Attack(Protocol):
    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult: ...


def check_images(images: Tensor, targets: Tensor | None = None) -> None:
    """Guard an attack's inputs: (N, C, H, W) floats in [0, 1] and (N,) labels."""
    if images.ndim != 4:
        raise ShapeError("images", tuple(images.shape), "(N, C, H, W)")
    if not images.is_floating_point():
        raise TypeError(f"images: expected a float tensor in [0, 1], got {images.dtype}")
    if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
        raise ValueError(
            f"images: expected values in [0, 1], got "
            f"[{float(images.min()):.3g}, {float(images.max()):.3g}]"
        )
    if targets is not None and targets.shape != (images.shape[0],):
        raise ShapeError("targets", tuple(targets.shape), f"({images.shape[0]},)")


def perturbation_norms(x: Tensor, x_adv: Tensor, eps0: float = 1e-6) -> dict[str, Tensor]:
    """The seed's four measures of each sample's perturbation (pixels in [0, 1] units)."""
    d = (x_adv - x).flatten(1)
    a = d.abs()
    return {
        "l0": (a > eps0).sum(1).to(torch.float32),
        "l1": a.sum(1),
        "l2": d.norm(dim=1),
        "linf": a.amax(1) if d.shape[1] else d.new_zeros(len(d)),
    }


def is_success(logits: Tensor, labels: Tensor, targeted: bool, margin: float = 0.0) -> Tensor:
    """(N,) bool: targeted -> label wins by ``margin``; untargeted -> another class wins by it."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    best_other = other.amax(1)
    if targeted:
        return (true - best_other > margin) if margin > 0 else (logits.argmax(1) == labels)
    return (best_other - true > margin) if margin > 0 else (logits.argmax(1) != labels)


def logit_gap(logits: Tensor, labels: Tensor, targeted: bool) -> Tensor:
    """(N,) C&W's margin on the logits Z, <= 0 exactly when the attack has succeeded:
    ``max_{i != t} Z_i - Z_t`` (targeted, t = label) or ``Z_y - max_{i != y} Z_i``."""
    z = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return (other - z) if targeted else (z - other)


def search_c(
    c: Tensor, lower: Tensor, upper: Tensor, found: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One round of C&W's per-sample binary search over the constant ``c``: a sample that
    succeeded halves towards its lower bound, one that did not bisects upwards (or grows
    tenfold while no success has bounded it). Returns the new ``(c, lower, upper)``."""
    upper = torch.where(found, torch.minimum(upper, c), upper)
    lower = torch.where(found, lower, torch.maximum(lower, c))
    c = torch.where(upper < 1e9, (lower + upper) / 2, c * 10)
    return c, lower, upper


def quantize8(x: Tensor) -> Tensor:
    """Round to the 8-bit grid that an image file stores."""
    return torch.round(x * 255.0) / 255.0


def to_uint8(x: Tensor) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] -> (N, H, W, C) uint8 (rounded, clipped), on the CPU."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(a: np.ndarray) -> Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1] (the inverse of :func:`to_uint8`)."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0


def _grid_inside(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The smallest 8-bit grid value >= ``lo`` and the largest <= ``hi``."""
    return torch.ceil(lo * 255.0 - 1e-4) / 255.0, torch.floor(hi * 255.0 + 1e-4) / 255.0


def grid_bounds(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The 8-bit grid values inside [lo, hi] (where the interval holds none, lo and hi)."""
    lo_q, hi_q = _grid_inside(lo, hi)
    empty = lo_q > hi_q
    return torch.where(empty, lo, lo_q), torch.where(empty, hi, hi_q)


def ball_bounds(x0: Tensor, eps: float, quantize: bool) -> tuple[Tensor, Tensor]:
    """The box an attack's iterates stay in: the L-inf ball of ``eps`` around ``x0`` inside
    [0, 1]; with ``quantize``, its 8-bit grid values (:func:`grid_bounds`). With ``eps`` of
    at least one grey level every such interval holds a grid value (it reaches ``eps`` to
    one side of ``x0`` in [0, 1]), so the check for empty ones is skipped."""
    lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    if not quantize:
        return lo, hi
    return _grid_inside(lo, hi) if eps * 255.0 >= 1.0 + 1e-6 else grid_bounds(lo, hi)


def project(v: Tensor, lo: Tensor, hi: Tensor, quantize: bool) -> Tensor:
    """Clip ``v`` into [lo, hi]; with ``quantize``, onto the 8-bit grid values inside it
    (``lo``/``hi`` then come from :func:`grid_bounds`)."""
    if quantize:
        v = quantize8(v)
    return torch.maximum(torch.minimum(v, hi), lo)


def select(model: nn.Module, idx: Tensor) -> nn.Module:
    """The model for a subset of the batch. Models with per-sample state (an alignment per
    face, see :class:`deid.models.classifier.BoundClassifier`) implement ``select(idx)``."""
    sel = getattr(model, "select", None)
    return sel(idx) if callable(sel) else model


def fast(model: nn.Module) -> nn.Module:
    """The model for gradient passes. Classifiers set to a lower precision
    (:meth:`deid.models.classifier.FaceClassifier.set_gradient_precision`) implement
    ``fast()``; their logits serve gradients, and screen decisions only where they are far
    from the threshold (:func:`decision_logits`); every other decision is ``model``'s."""
    f = getattr(model, "fast", None)
    return f() if callable(f) else model


DECISION_BAND = 0.5
"""Logits: a lower-precision pass decides only the faces whose winning margin is farther than
this from the decision's threshold, or than 1/32 of the row's largest logit magnitude where
that is more (:func:`near_threshold`); the exact model decides the rest.
The shipped classifiers' bfloat16 copies differed from float32 by at most 0.071 in any
logit and 0.069 in any target's winning margin, and by at most 0.58% of the largest logit
magnitude, over 400 held-out faces each of the CelebA CNN and the Yale B MLPs, clean, after
AdvGAN and after 10-step I-FGSM (2026-12-06): the band is seven times the first, 1/32 over
five times the last."""


def near_threshold(
    logits: Tensor,
    labels: Tensor,
    targeted: bool,
    margins: tuple[float, ...],
    band: float = DECISION_BAND,
) -> Tensor:
    """(N,) bool: the rows whose winning margin (``-`` :func:`logit_gap`) lies within
    ``band`` of any of ``margins``: those whose decision a lower-precision pass must leave
    to the exact model (``band``: at least; the row's largest logit magnitude / 32 where
    that is more)."""
    z = logits.detach().float()
    won_by = -logit_gap(z, labels, targeted)
    width = (z.abs().amax(1) / 32).clamp_min(band)
    near = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    for m in margins:
        near |= (won_by - m).abs() <= width
    return near


@torch.no_grad()
def decision_logits(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    targeted: bool,
    margins: tuple[float, ...] = (0.0,),
    band: float = DECISION_BAND,
) -> Tensor:
    """(N, K) logits of ``images`` for success decisions at each of ``margins``
    (:func:`is_success`), screened in lower precision where the model has a view for it
    (:func:`fast`).

    The low-precision pass classifies every image; an image whose winning margin (``-``
    :func:`logit_gap`) lies within ``band`` of any of ``margins`` is classified again by
    ``model`` itself, and its exact logits replace the screened ones. Every decision at those
    margins is therefore the exact model's wherever the low-precision winning margins are
    within ``band`` of the exact ones (:data:`DECISION_BAND`: seven times the largest
    difference measured); the other rows' logits are the low-precision pass's, within that
    error. A model without a lower-precision view: its own logits, one pass."""
    view = fast(model)
    if view is model:
        return model(images)
    return settle_near_threshold(model, images, view(images), labels, targeted, margins, band)


@torch.no_grad()
def settle_near_threshold(
    model: nn.Module,
    images: Tensor,
    logits: Tensor,
    labels: Tensor,
    targeted: bool,
    margins: tuple[float, ...],
    band: float = DECISION_BAND,
) -> Tensor:
    """``logits`` (N, K) of ``images`` from a lower-precision pass, with the rows
    :func:`near_threshold` picks replaced, in place, by ``model``'s own logits (one pass
    over those rows only); returns ``logits``."""
    near = near_threshold(logits, labels, targeted, margins, band)
    if bool(near.any()):
        idx = near.nonzero().squeeze(1)
        logits[idx] = select(model, idx)(images[idx]).to(logits.dtype)
    return logits


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen weights for the duration of an attack (no weight gradients are
    computed: a third less work per backward pass); restores both afterwards."""
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Logits of ``model`` on ``images`` in batches (no gradients)."""
    outs = []
    for i in range(0, len(images), batch_size):
        outs.append(
            select(model, torch.arange(i, min(i + batch_size, len(images)), device=images.device))(
                images[i : i + batch_size]
            )
        )
    return torch.cat(outs) if outs else images.new_zeros((0, 0))
