"""Concealment: replace the face with random input that the classifier takes for the target."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    Budget,
    check_images,
    perturbation_norms,
)
from deid.attacks.ifgsm import IFGSM, IFGSMConfig


class ConcealConfig(AttackConfigBase):
    """Random start, then targeted sign steps with no distance bound."""

    name: Literal["conceal"] = "conceal"
    alpha: Budget = Field(4 / 255, gt=0.0, le=1.0)
    steps: int = Field(30, ge=1, le=10_000)
    noise: Literal["uniform", "gaussian"] = "uniform"
    seed: int = 0


class Conceal:
    r"""Non-realistic de-identification: the face region becomes noise that the classifier
    is sure is the target identity, hiding the face from people and the classifier alike.

    ``x_0`` is drawn at random (the seed's "random input": uniform, or Gaussian around
    0.5), then targeted I-FGSM steps ``x_{N+1} = clip_[0,1](x_N - alpha sign(grad J(x_N,
    y_target)))`` run without an eps-ball. Norm: none (unbounded). Targeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1] (only their shape, device and dtype are used,
          and the norms are measured against them).
        - targets: (N,) int64.
    """

    def __init__(self, cfg: ConcealConfig | None = None) -> None:
        self.cfg = cfg or ConcealConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        if cfg.noise == "uniform":
            x0 = torch.rand(images.shape, generator=g)
        else:
            x0 = (0.5 + 0.25 * torch.randn(images.shape, generator=g)).clamp(0, 1)
        x0 = x0.to(images.device, images.dtype)
        if cfg.quantize:
            x0 = torch.round(x0 * 255) / 255
        inner = IFGSM(
            IFGSMConfig(
                eps=1.0,
                alpha=cfg.alpha,
                steps=cfg.steps,
                targeted=cfg.targeted,
                margin=cfg.margin,
                quantize=cfg.quantize,
            )
        )
        r = inner(model, x0, targets)
        return AttackResult(
            r.images, r.success, r.steps, r.logits, perturbation_norms(images.detach(), r.images)
        )
