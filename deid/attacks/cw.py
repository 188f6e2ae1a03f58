"""Carlini-Wagner L2 (2016), registered as ``cw``."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    Budget,
    attack_mode,
    check_images,
    is_success,
    logit_gap,
    perturbation_norms,
    quantize8,
    search_c,
    select,
)
from deid.targets import TargetMode


class CWConfig(AttackConfigBase):
    """C&W-L2: ``binary_steps`` rounds of ``steps`` Adam steps at ``lr`` over c.
    ``binary_steps=1`` is one fixed ``c_init`` (torchattacks' ``CW``)."""

    name: Literal["cw"] = "cw"
    default_target: ClassVar[TargetMode] = "nearest"
    c_init: float = Field(1.0, gt=0.0, description="initial weight of the classification term")
    binary_steps: int = Field(5, ge=1, le=30, description="binary-search rounds over c")
    steps: int = Field(100, ge=1, le=100_000, description="Adam steps per round")
    lr: float = Field(0.01, gt=0.0, le=1.0)
    kappa: float = Field(0.0, ge=0.0, description="confidence: the target must win by kappa")
    abort_early: bool = Field(
        True, description="a sample leaves a round once its loss stops falling (per sample)"
    )
    eps: Budget | None = Field(None, gt=0.0, le=1.0, description="optional L-inf cap")


class CW:
    r"""Carlini-Wagner L2 attack.

    Minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2`` (so x' is in
    [0, 1] without clipping) with Adam, ``f = max(max_{i != t} Z_i - Z_t + kappa, 0)``
    (targeted; untargeted: ``max(Z_y - max_{i != y} Z_i + kappa, 0)``) on the logits Z, and
    a per-sample binary search over c. Returns the smallest-L2 success seen; a failed sample
    comes back unchanged.

    Work saved without changing the method: every ``steps // 10`` steps, a sample whose loss
    fell by less than 0.01% leaves the batch for the rest of the round (C&W's abort-early,
    per sample instead of per batch); and the success check reuses the step's own logits.
    With ``quantize`` the forward pass sees the 8-bit rounded image (the rounding is passed
    through straight in the backward pass), so those logits *are* the check after rounding
    and no extra forward pass is needed.

    Paper: Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks",
    https://arxiv.org/abs/1608.04644. Norm: L2. Targeted or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``; ``steps`` counts each sample's Adam steps.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = CW(CWConfig(steps=50, lr=0.05, binary_steps=3))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: CWConfig | None = None) -> None:
        self.cfg = cfg or CWConfig()

    def _f(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logit_gap(logits, y, self.cfg.targeted) + self.cfg.kappa).clamp_min(0.0)

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        dev = x0.device
        dims = tuple(range(1, x0.ndim))
        w0 = torch.atanh((x0 * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        c = torch.full((n,), cfg.c_init, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e10, device=dev)
        best = x0.clone()
        best_l2 = torch.full((n,), float("inf"), device=dev)
        steps = torch.zeros(n, dtype=torch.long, device=dev)
        check = max(1, cfg.steps // 10)
        with attack_mode(model):
            for _round in range(cfg.binary_steps):
                idx = torch.arange(n, device=dev)
                w = w0.clone().requires_grad_(True)
                opt = torch.optim.Adam([w], lr=cfg.lr)
                found = torch.zeros(n, dtype=torch.bool, device=dev)
                prev = torch.full((n,), float("inf"), device=dev)
                m = select(model, idx)
                for s in range(cfg.steps):
                    xa = (torch.tanh(w[idx]) + 1) / 2
                    if cfg.eps is not None:
                        xa = x0[idx] + (xa - x0[idx]).clamp(-cfg.eps, cfg.eps)
                    if cfg.quantize:  # the 8-bit image forward, straight-through backward
                        xa = xa + (quantize8(xa) - xa).detach()
                    logits = m(xa)
                    l2 = (xa - x0[idx]).pow(2).sum(dims)
                    f = self._f(logits, y[idx])
                    loss = l2 + c[idx] * f
                    # the success check reuses these logits (of the image that is returned)
                    ok = is_success(logits.detach(), y[idx], cfg.targeted, cfg.margin) & (
                        f.detach() <= 0
                    )
                    better = ok & (l2.detach() < best_l2[idx])
                    b = idx[better]
                    best[b] = xa.detach()[better]
                    best_l2[b] = l2.detach()[better]
                    found[idx[ok]] = True
                    opt.zero_grad(set_to_none=True)
                    loss.sum().backward()
                    opt.step()
                    steps[idx] += 1
                    if cfg.abort_early and (s + 1) % check == 0:
                        cur = loss.detach()
                        going = cur <= prev[idx] * 0.9999
                        prev[idx] = cur
                        if not bool(going.all()):
                            idx = idx[going]
                            if not len(idx):
                                break
                            m = select(model, idx)
                c, lower, upper = search_c(c, lower, upper, found)
            with torch.no_grad():
                final_logits = select(model, torch.arange(n, device=dev))(best)
        success = is_success(final_logits, y, cfg.targeted, cfg.margin)
        return AttackResult(best, success, steps, final_logits, perturbation_norms(x0, best))
