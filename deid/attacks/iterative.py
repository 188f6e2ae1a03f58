"""The loop shared by the sign-gradient attacks: I-FGSM (and through it the least-likely class
method and concealment), FGSM, PGD and MI-FGSM.

Each attack keeps its update step in its own module, as torchattacks does: a function
``step(x, grad, state) -> x`` that takes a signed step and clamps to the eps-ball and to
[0, 1] (:meth:`deid.attacks.pgd.PGD.step`), and, where it has one, its start
(:meth:`deid.attacks.pgd.PGD.start`). This loop does the rest, written for speed: the
working tensors hold only the samples still running (finished ones are written out and
dropped from the batch, with the state their step keeps), the success check reuses the
logits of the step's own forward pass, and with EOT (:mod:`deid.attacks.eot`) one batched
forward pass evaluates every transformed copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deid.attacks.base import (
    AttackResult,
    attack_mode,
    ball_bounds,
    check_images,
    decision_logits,
    fast,
    is_success,
    perturbation_norms,
    quantize8,
    select,
    settle_near_threshold,
)
from deid.attacks.eot import EOTConfig, Transforms


class SignConfig(Protocol):
    """The fields the loop reads from an attack's config."""

    eps: float
    targeted: bool
    margin: float
    quantize: bool
    early_stop: bool


@dataclass
class Running:
    """The samples still running, with what an update step may need of them.

    Attributes:
        x0: (M, C, H, W) their original images.
        lo, hi: (M, C, H, W) the eps-ball intersected with [0, 1] (with ``quantize``: the
            8-bit grid values inside it).
        eps: the L-inf radius.
        quantize: keep every iterate on the 8-bit grid.
        sign: -1.0 when targeted (descend the target's loss), +1.0 when not (ascend the true
            class's).
        labels: (M,) int64 their targets or true classes.
        idx: (M,) int64 their positions in the batch.
        steps: (M,) int64 the steps each has taken.
        memory: per-sample tensors a step keeps from one call to the next (MI-FGSM's
            momentum), each (M, ...); they leave with their samples.
    """

    x0: Tensor
    lo: Tensor
    hi: Tensor
    eps: float
    quantize: bool
    sign: float
    labels: Tensor
    idx: Tensor
    steps: Tensor
    memory: dict[str, Tensor] = field(default_factory=dict)

    def keep(self, mask: Tensor) -> Running:
        """The samples where ``mask`` (M,) bool is set."""
        return Running(
            self.x0[mask],
            self.lo[mask],
            self.hi[mask],
            self.eps,
            self.quantize,
            self.sign,
            self.labels[mask],
            self.idx[mask],
            self.steps[mask],
            {k: v[mask] for k, v in self.memory.items()},
        )


Step = Callable[[Tensor, Tensor, Running], Tensor]
"""``step(x, grad, state) -> x``: one update of the running samples. ``x`` and ``grad`` (the
loss gradient, the loss summed over samples) are (M, C, H, W); the result is the next iterate."""


def clip_ball(x: Tensor, s: Running) -> Tensor:
    """Clamp to the eps-ball around ``s.x0``, then to [0, 1], as torchattacks' PGD writes it
    (``x0 + clamp(x - x0, -eps, eps)``, so the iterates agree to float precision); with
    ``s.quantize``, round to the 8-bit grid and clamp to its values inside the ball."""
    if s.quantize:
        return torch.maximum(torch.minimum(quantize8(x), s.hi), s.lo)
    return (s.x0 + (x - s.x0).clamp(-s.eps, s.eps)).clamp(0, 1)


def clip_box(x: Tensor, s: Running) -> Tensor:
    """Clamp to ``[s.lo, s.hi]`` (the eps-ball and [0, 1] together, as torchattacks' BIM
    writes it); with ``s.quantize``, round to the 8-bit grid first."""
    if s.quantize:
        x = quantize8(x)
    return torch.maximum(torch.minimum(x, s.hi), s.lo)


def iterate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    step: Step,
    cfg: SignConfig,
    *,
    steps: int,
    start: Callable[[Running], Tensor] | None = None,
    memory: dict[str, Tensor] | None = None,
    eot: EOTConfig | None = None,
) -> AttackResult:
    r"""Run ``step`` on the gradient of the cross-entropy until each sample succeeds or
    ``steps`` are spent.

    Every round classifies the running samples; with ``cfg.early_stop`` a sample that has
    succeeded (by ``cfg.margin``) is written out and leaves the batch; the others take one
    ``step`` along the gradient of their summed loss. After the last step the remaining
    samples are classified once more and written out.

    With ``eot`` enabled the forward pass sees each running sample and ``eot.samples - 1``
    transformed copies of it, the loss is summed over all of them, and a sample stops early
    only when the untransformed copy wins by ``max(margin, eot.margin)`` and at least
    ``eot.robust`` of all copies do. ``success`` and ``logits`` always describe the
    returned pixels themselves.

    A model with a lower-precision view for gradients (:func:`deid.attacks.base.fast`)
    takes its gradient passes there; a sample stops only once the exact model confirms its
    success wherever the low-precision logits are within
    :data:`deid.attacks.base.DECISION_BAND` of a threshold (farther than that, the
    low-precision verdict stands and its logits are returned: see
    :func:`deid.attacks.base.decision_logits`).

    Args:
        model: (N, C, H, W) [0, 1] -> (N, K) logits.
        images: (N, C, H, W) float in [0, 1].
        labels: (N,) int64 targets (``cfg.targeted``) or true classes.
        step: the attack's update (see :data:`Step`).
        cfg: ``eps`` (the ball of :class:`Running`), ``targeted``, ``margin``, ``quantize``,
            ``early_stop``.
        steps: at most this many steps.
        start: the first iterate, from the state before any step (default: the images).
        memory: the initial :attr:`Running.memory`, each tensor (N, ...).
        eot: Expectation over Transformation (None or not enabled: none).

    Returns:
        The adversarial images, each sample's success, steps and logits on the returned
        images, and the perturbation norms.
    """
    check_images(images, labels)
    s = _begin(images, labels, cfg, memory)
    out = _Outputs(s.x0)
    x = s.x0.clone() if start is None else start(s)
    transforms = Transforms(eot) if eot is not None and eot.enabled else None
    with attack_mode(model):
        m = select(model, s.idx)
        mf = fast(m)
        for t in range(steps + 1):
            last = t == steps
            x.requires_grad_(not last)
            if last:
                logits, copies = decision_logits(m, x, s.labels, cfg.targeted, (cfg.margin,)), None
            else:
                with torch.enable_grad():
                    logits, copies = _forward(mf, x, transforms)
            ok = is_success(logits.detach(), s.labels, cfg.targeted, cfg.margin)
            if last:
                out.write(s, x, logits, ok, None)
                break
            done = _finished(ok, copies, s.labels, cfg, eot) if cfg.early_stop else None
            if done is not None and bool(done.any()) and mf is not m:
                done, decided = _confirm(
                    m, x, logits, done, s.labels, cfg, eot if copies is not None else None
                )
            else:
                decided = (logits, ok)
            if done is not None and bool(done.any()):
                out.write(s, x, decided[0], decided[1], done)
                if bool(done.all()):
                    break
                keep = ~done
                grad = _gradient(x, logits, copies, s.labels, keep)[keep]
                x, s = x.detach()[keep], s.keep(keep)
                m = select(model, s.idx)
                mf = fast(m)
            else:
                grad = _gradient(x, logits, copies, s.labels, None)
                x = x.detach()
            x = step(x, grad, s)
            s.steps += 1
    return out.result()


def _begin(
    images: Tensor, labels: Tensor, cfg: SignConfig, memory: dict[str, Tensor] | None
) -> Running:
    x0 = images.detach()
    n = len(x0)
    lo, hi = ball_bounds(x0, cfg.eps, cfg.quantize)
    return Running(
        x0,
        lo,
        hi,
        cfg.eps,
        cfg.quantize,
        -1.0 if cfg.targeted else 1.0,
        labels.to(x0.device),
        torch.arange(n, device=x0.device),
        torch.zeros(n, dtype=torch.long, device=x0.device),
        dict(memory or {}),
    )


def _forward(
    model: nn.Module, x: Tensor, transforms: Transforms | None
) -> tuple[Tensor, Tensor | None]:
    """The logits of ``x`` (M, K), and with ``transforms`` those of all its copies
    (samples * M, K; the first M are ``x`` itself), in one batched call."""
    if transforms is None:
        return model(x), None
    reps = transforms.cfg.samples
    idx = torch.arange(len(x), device=x.device).repeat(reps)
    copies = select(model, idx)(transforms.expand(x))
    return copies[: len(x)], copies


def _finished(
    ok: Tensor, copies: Tensor | None, labels: Tensor, cfg: SignConfig, eot: EOTConfig | None
) -> Tensor:
    """(M,) bool: the samples to stop. Without copies, those that succeed; with them, those
    whose untransformed copy wins by the EOT margin and whose copies win often enough."""
    if copies is None or eot is None:
        return ok
    reps = eot.samples
    m = max(cfg.margin, eot.margin)
    per_copy = is_success(copies.detach(), labels.repeat(reps), cfg.targeted, m).view(reps, -1)
    # copy 0 is the image itself: it must win by the margin too
    return per_copy[0] & (per_copy.float().mean(0) >= eot.robust - 1e-6)


def _confirm(
    model: nn.Module,
    x: Tensor,
    low: Tensor,
    done: Tensor,
    labels: Tensor,
    cfg: SignConfig,
    eot: EOTConfig | None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Low-precision gradient passes (their logits ``low``, (M, K)): the samples in ``done``
    stop only if the exact ``model`` agrees (success by the margin, with EOT by its margin
    too), asked for those within the decision band of either margin
    (:func:`deid.attacks.base.near_threshold`). Returns the samples to stop and, for writing
    them out, (M, K) logits and (M,) success."""
    idx = done.nonzero().squeeze(1)
    y = labels[idx]
    margins = (cfg.margin,) if eot is None else (cfg.margin, max(cfg.margin, eot.margin))
    exact = settle_near_threshold(
        select(model, idx), x.detach()[idx], low.detach()[idx], y, cfg.targeted, margins
    )
    ok = is_success(exact, y, cfg.targeted, cfg.margin)
    stop = (
        ok if eot is None else ok & is_success(exact, y, cfg.targeted, max(cfg.margin, eot.margin))
    )
    done = done.clone()
    done[idx] = stop
    logits = exact.new_zeros((len(x), exact.shape[1]))
    logits[idx] = exact
    success = torch.zeros_like(done)
    success[idx] = ok
    return done, (logits, success)


def _gradient(
    x: Tensor, logits: Tensor, copies: Tensor | None, labels: Tensor, keep: Tensor | None
) -> Tensor:
    """(M, C, H, W) the gradient of the cross-entropy summed over the samples in ``keep``
    (all: None) and, with ``copies``, over all their copies; zero for the others."""
    if copies is None:
        z, y = (logits, labels) if keep is None else (logits[keep], labels[keep])
    else:
        k = copies.shape[1]
        reps = len(copies) // len(x)
        z = copies.view(reps, -1, k)
        if keep is not None:
            z, labels = z[:, keep], labels[keep]
        z, y = z.reshape(-1, k), labels.repeat(reps)
    (grad,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), x)
    return grad


class _Outputs:
    """The batch's results, written sample by sample as each finishes."""

    def __init__(self, x0: Tensor) -> None:
        n = len(x0)
        self.x0 = x0
        self.images = x0.clone()
        self.success = torch.zeros(n, dtype=torch.bool, device=x0.device)
        self.steps = torch.zeros(n, dtype=torch.long, device=x0.device)
        self.logits: Tensor | None = None

    def write(self, s: Running, x: Tensor, logits: Tensor, ok: Tensor, mask: Tensor | None) -> None:
        """Record the running samples in ``mask`` (all: None)."""
        logits = logits.detach()
        if self.logits is None:
            self.logits = logits.new_zeros((len(self.x0), logits.shape[1]))
        x = x.detach()
        if mask is None:
            idx, steps = s.idx, s.steps
        else:
            idx, steps, x, logits, ok = s.idx[mask], s.steps[mask], x[mask], logits[mask], ok[mask]
        self.images[idx] = x
        self.logits[idx] = logits
        self.success[idx] = ok
        self.steps[idx] = steps

    def result(self) -> AttackResult:
        assert self.logits is not None
        return AttackResult(
            self.images,
            self.success,
            self.steps,
            self.logits,
            perturbation_norms(self.x0, self.images),
        )
