"""The shared core of the L-inf sign-gradient attacks: FGSM, PGD, MI-FGSM.

One loop, written for speed: the working tensors hold only the samples still running
(finished ones are written out and dropped from the batch), the success check reuses the
logits of the step's own forward pass, and the update runs in place on those tensors.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deid.attacks.base import (
    AttackResult,
    attack_mode,
    check_images,
    grid_bounds,
    is_success,
    perturbation_norms,
    quantize8,
    select,
)


def sign_iterate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    targeted: bool,
    margin: float = 0.0,
    quantize: bool = True,
    early_stop: bool = True,
    random_start: bool = False,
    decay: float | None = None,
    seed: int | None = None,
) -> AttackResult:
    r"""Iterate ``x <- Proj_{x0, eps}(x -/+ alpha * sign(g))`` with g the cross-entropy gradient
    (or its momentum, ``g <- decay * g + grad / mean|grad|``), clipped to [0, 1].

    Args:
        model: (N, C, H, W) [0, 1] -> (N, K) logits.
        images: (N, C, H, W) float in [0, 1].
        labels: (N,) int64 targets (``targeted``) or true classes.
        eps: L-inf radius; ``alpha``: step; ``steps``: at most this many steps.
        random_start: start from a uniform point of the eps-ball (seeded by ``seed``).
        decay: momentum factor (MI-FGSM); None for plain sign steps.
        early_stop: a sample leaves the batch as soon as it succeeds.
        quantize: keep every iterate on the 8-bit grid (inside the eps-ball).

    Without ``quantize`` the projection is written as torchattacks writes it
    (``x0 + clamp(x - x0, -eps, eps)``, then [0, 1]), so the iterates agree to float precision.
    """
    check_images(images, labels)
    x0 = images.detach()
    y = labels.to(x0.device)
    n = len(x0)
    if quantize:
        lo, hi = grid_bounds((x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1))
    else:
        lo = hi = x0  # unused
    xa = x0.clone()
    if random_start:
        g = torch.Generator(device=x0.device)
        if seed is not None:
            g.manual_seed(seed)
        else:
            g.seed()
        noise = torch.empty(x0.shape, device=x0.device, dtype=x0.dtype).uniform_(
            -eps, eps, generator=g
        )
        xa = _project(x0 + noise, x0, lo, hi, eps, quantize)
    out_x = x0.clone()
    out_steps = torch.zeros(n, dtype=torch.long, device=x0.device)
    success = torch.zeros(n, dtype=torch.bool, device=x0.device)
    out_logits: Tensor | None = None
    idx = torch.arange(n, device=x0.device)
    xs, ys, los, his = x0, y, lo, hi
    mom = torch.zeros_like(x0) if decay is not None else None
    sgn = -1.0 if targeted else 1.0
    nsteps = torch.zeros(n, dtype=torch.long, device=x0.device)
    with attack_mode(model):
        m = select(model, idx)
        for step in range(steps + 1):
            last = step == steps
            xa.requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                logits = m(xa)
            if out_logits is None:
                out_logits = logits.new_zeros((n, logits.shape[1]))
            ok = is_success(logits.detach(), ys, targeted, margin)
            done = ok if (early_stop and not last) else torch.ones_like(ok) if last else None
            if done is not None and bool(done.any()):
                # write finished samples out and drop them from the working tensors
                d = idx[done]
                out_x[d] = xa.detach()[done]
                out_logits[d] = logits.detach()[done]
                success[d] = ok[done]
                out_steps[d] = nsteps[done]
                if last or bool(done.all()):
                    break
                keep = ~done
                loss = F.cross_entropy(logits[keep], ys[keep], reduction="sum")
                (grad,) = torch.autograd.grad(loss, xa)
                grad = grad[keep]
                idx, xs, ys, nsteps = idx[keep], xs[keep], ys[keep], nsteps[keep]
                xa = xa.detach()[keep]
                if quantize:
                    los, his = los[keep], his[keep]
                if mom is not None:
                    mom = mom[keep]
                m = select(model, idx)
            else:
                loss = F.cross_entropy(logits, ys, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xa)
                xa = xa.detach()
            if mom is not None:
                # MI-FGSM: accumulate the L1-normalised gradient (normalised by its mean, as
                # torchattacks does; the sign is the same as with the sum)
                l1 = grad.abs().mean(dim=tuple(range(1, grad.ndim)), keepdim=True)
                grad = grad / l1.clamp_min(1e-30)
                mom.mul_(decay).add_(grad)
                grad = mom
            xa = _project(xa + sgn * alpha * grad.sign(), xs, los, his, eps, quantize)
            nsteps += 1
    assert out_logits is not None
    return AttackResult(out_x, success, out_steps, out_logits, perturbation_norms(x0, out_x))


def sign_attack(
    cfg: Any, model: nn.Module, images: Tensor, labels: Tensor, **kw: Any
) -> AttackResult:
    """:func:`sign_iterate` with the fields every sign attack's config holds (``eps``,
    ``alpha``, ``steps``, ``targeted``, ``margin``, ``quantize``, ``early_stop``); ``kw``
    adds or overrides (FGSM: one step of ``eps``; MI-FGSM: ``decay``; PGD: the start)."""
    p: dict[str, Any] = {
        "eps": cfg.eps,
        "alpha": getattr(cfg, "alpha", cfg.eps),
        "steps": getattr(cfg, "steps", 1),
        "targeted": cfg.targeted,
        "margin": cfg.margin,
        "quantize": cfg.quantize,
        "early_stop": cfg.early_stop,
    }
    return sign_iterate(model, images, labels, **{**p, **kw})


def _project(v: Tensor, x0: Tensor, lo: Tensor, hi: Tensor, eps: float, quantize: bool) -> Tensor:
    if quantize:
        return torch.maximum(torch.minimum(quantize8(v), hi), lo)
    return (x0 + (v - x0).clamp(-eps, eps)).clamp(0, 1)
