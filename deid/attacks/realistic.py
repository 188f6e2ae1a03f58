"""Realistic-target attack: the smallest L2 change that makes the classifier sure of a target."""

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


class RealisticConfig(AttackConfigBase):
    """C&W-L2 with a binary search over the trade-off constant ``c``."""

    name: Literal["realistic"] = "realistic"
    default_target: ClassVar[TargetMode] = "nearest"
    c_init: float = Field(1.0, gt=0.0, description="initial weight of the classification term")
    binary_steps: int = Field(5, ge=1, le=30, description="binary-search rounds over c")
    steps: int = Field(60, ge=1, le=10_000, description="Adam steps per round")
    lr: float = Field(0.01, gt=0.0, le=1.0)
    kappa: float = Field(0.0, ge=0.0, description="C&W confidence: the target must win by kappa")
    eps: Budget | None = Field(None, gt=0.0, le=1.0, description="optional L-inf cap on the change")


class Realistic:
    r"""Minimal-distortion targeted attack (Carlini-Wagner L2; the seed's L-BFGS form).

    Minimises ``||x_adv - x||_2^2 + c * f(x_adv)`` over ``x_adv = (tanh(w) + 1) / 2`` (so
    ``x_adv`` stays in [0, 1]^n without clipping) with Adam, where
    ``f = max(max_{i != t} Z_i - Z_t + kappa, 0)`` on the logits Z. A binary search over ``c``
    per sample keeps the smallest c that succeeds; the returned image is the smallest-L2
    success seen, *checked after rounding to 8 bits* when ``quantize`` is set (a face looks
    the same to people, and the classifier is sure it is the target in the written file).

    Paper: Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks",
    https://arxiv.org/abs/1608.04644; Szegedy et al., "Intriguing properties of neural
    networks", https://arxiv.org/abs/1312.6199. Norm: L2. Targeted or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``; a failed sample comes back unchanged.
    """

    def __init__(self, cfg: RealisticConfig | None = None) -> None:
        self.cfg = cfg or RealisticConfig()

    def _f(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logit_gap(logits, y, self.cfg.targeted) + self.cfg.kappa).clamp_min(0.0)

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x = images.detach()
        y = targets.to(x.device)
        n = len(x)
        dims = tuple(range(1, x.ndim))
        w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        c = torch.full((n,), cfg.c_init, device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), 1e10, device=x.device)
        best_l2 = torch.full((n,), float("inf"), device=x.device)
        best = x.clone()
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        everyone = torch.arange(n, device=x.device)
        with attack_mode(model):
            m = select(model, everyone)
            for _round in range(cfg.binary_steps):
                w = w0.clone().requires_grad_(True)
                opt = torch.optim.Adam([w], lr=cfg.lr)
                found = torch.zeros(n, dtype=torch.bool, device=x.device)
                prev = torch.full((n,), float("inf"), device=x.device)
                for s in range(cfg.steps):
                    xa = (torch.tanh(w) + 1) / 2
                    if cfg.eps is not None:
                        xa = x + (xa - x).clamp(-cfg.eps, cfg.eps)
                    logits = m(xa)
                    l2 = (xa - x).pow(2).sum(dims)
                    f = self._f(logits, y)
                    loss = l2 + c * f
                    opt.zero_grad(set_to_none=True)
                    loss.sum().backward()
                    opt.step()
                    steps += 1
                    # candidates: the continuous iterate succeeds; confirm on what gets written
                    cand = f.detach() <= 0
                    if bool(cand.any()):
                        idx = everyone[cand]
                        xq = quantize8(xa.detach()[idx]) if cfg.quantize else xa.detach()[idx]
                        with torch.no_grad():
                            lq = select(model, idx)(xq)
                        ok = is_success(lq, y[idx], cfg.targeted, max(cfg.margin, 0.0))
                        l2q = (xq - x[idx]).pow(2).sum(dims)
                        better = ok & (l2q < best_l2[idx])
                        b = idx[better]
                        best[b] = xq[better]
                        best_l2[b] = l2q[better]
                        found[idx[ok]] = True
                    # stop the round once no sample is still improving (C&W's abort-early)
                    if (s + 1) % max(1, cfg.steps // 5) == 0:
                        cur = loss.detach()
                        if bool((cur > prev * 0.9999).all()):
                            break
                        prev = cur
                c, lower, upper = search_c(c, lower, upper, found)
            with torch.no_grad():
                final_logits = m(best)
        success = is_success(final_logits, y, cfg.targeted, cfg.margin)
        return AttackResult(
            best.detach(), success, steps, final_logits, perturbation_norms(x, best)
        )
