"""EAD: Elastic-Net Attacks (Chen et al. 2017): C&W with an L1 term, solved by FISTA."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
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


class EADConfig(AttackConfigBase):
    """``min c * f(x') + ||x' - x||_2^2 + beta * ||x' - x||_1`` by ISTA with momentum."""

    name: Literal["ead"] = "ead"
    default_target: ClassVar[TargetMode] = "nearest"
    beta: float = Field(1e-3, ge=0.0, le=10.0, description="weight of the L1 term")
    c_init: float = Field(1e-3, gt=0.0, description="initial weight of the classification term")
    binary_steps: int = Field(9, ge=1, le=30, description="binary-search rounds over c")
    steps: int = Field(100, ge=1, le=100_000, description="iterations per round")
    lr: float = Field(0.01, gt=0.0, le=1.0, description="initial step (square-root decay to 0)")
    kappa: float = Field(0.0, ge=0.0, description="confidence: the target must win by kappa")
    decision_rule: Literal["EN", "L1", "L2"] = Field(
        "EN", description="which distance picks the best success: elastic net, L1 or L2"
    )


class EAD:
    r"""Elastic-Net Attack (EAD).

    Minimises ``c * f(x') + ||x' - x||_2^2 + beta * ||x' - x||_1`` over ``x' in [0, 1]^n``
    with ``f = max(max_{j != t} Z_j - Z_t, -kappa)`` (targeted; untargeted
    ``max(Z_y - max_{j != y} Z_j, -kappa)``), by FISTA: a gradient step on the smooth part
    at the slack point y_k with a square-root-decayed step, the projected
    shrinkage-thresholding ``S_beta`` (the L1 term's proximal map, clipped to [0, 1]), then
    ``y_{k+1} = x_{k+1} + k / (k + 3) * (x_{k+1} - x_k)``. A per-sample binary search over c
    keeps the success with the smallest distance under ``decision_rule`` (checked after
    8-bit rounding with ``quantize``); a failed sample comes back unchanged. As in ART's
    ElasticNet.

    Paper: Chen, Sharma, Zhang, Yi, Hsieh, "EAD: Elastic-Net Attacks to Deep Neural Networks
    via Adversarial Examples", https://arxiv.org/abs/1709.04114. Norm: L1 (elastic net
    L1 + L2). Targeted or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``; ``steps`` counts iterations.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = EAD(EADConfig(c_init=1.0, binary_steps=3, steps=50))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: EADConfig | None = None) -> None:
        self.cfg = cfg or EADConfig()

    def _f(self, logits: Tensor, y: Tensor) -> Tensor:
        return logit_gap(logits, y, self.cfg.targeted).clamp_min(-self.cfg.kappa)

    def _dist(self, xa: Tensor, x0: Tensor) -> Tensor:
        d = (xa - x0).flatten(1)
        l1, l2 = d.abs().sum(1), d.pow(2).sum(1)
        rule = self.cfg.decision_rule
        return l1 if rule == "L1" else l2 if rule == "L2" else l2 + self.cfg.beta * l1

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        dev = x0.device
        c = torch.full((n,), cfg.c_init, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e11, device=dev)
        best = x0.clone()
        best_dist = torch.full((n,), float("inf"), device=dev)
        steps = torch.zeros(n, dtype=torch.long, device=dev)
        with attack_mode(model):
            m = select(model, torch.arange(n, device=dev))
            for _round in range(cfg.binary_steps):
                xk = x0.clone()
                yk = x0.clone()
                found = torch.zeros(n, dtype=torch.bool, device=dev)
                for k in range(cfg.steps):
                    lr = cfg.lr * (1 - k / cfg.steps) ** 0.5
                    yv = yk.requires_grad_(True)
                    loss = c * self._f(m(yv), y) + (yv - x0).pow(2).flatten(1).sum(1)
                    (g,) = torch.autograd.grad(loss.sum(), yv)
                    z = yk.detach() - lr * g
                    diff = z - x0
                    x_next = torch.where(
                        diff > cfg.beta,
                        (z - cfg.beta).clamp(max=1.0),
                        torch.where(diff < -cfg.beta, (z + cfg.beta).clamp(min=0.0), x0),
                    )
                    yk = x_next + (k / (k + 3)) * (x_next - xk)
                    xk = x_next
                    steps += 1
                    xq = quantize8(xk) if cfg.quantize else xk
                    with torch.no_grad():
                        ok = is_success(m(xq), y, cfg.targeted, cfg.margin)
                    dist = self._dist(xq, x0)
                    better = ok & (dist < best_dist)
                    best[better] = xq[better]
                    best_dist[better] = dist[better]
                    found |= ok
                c, lower, upper = search_c(c, lower, upper, found)
            with torch.no_grad():
                logits = m(best)
        success = is_success(logits, y, cfg.targeted, cfg.margin)
        return AttackResult(best, success, steps, logits, perturbation_norms(x0, best))
