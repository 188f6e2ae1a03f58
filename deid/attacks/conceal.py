"""Concealment: replace the face with random input that the classifier takes for the target."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    Budget,
    check_images,
    perturbation_norms,
)
from deid.attacks.eot import EOTConfig
from deid.attacks.ifgsm import IFGSM, IFGSMConfig
from deid.targets import TargetMode


class ConcealConfig(AttackConfigBase):
    """Random start, then targeted sign steps with no distance bound."""

    name: Literal["conceal"] = "conceal"
    default_target: ClassVar[TargetMode] = "least-likely"
    alpha: Budget = Field(4 / 255, gt=0.0, le=1.0)
    steps: int = Field(30, ge=1, le=10_000)
    noise: Literal["uniform", "gaussian", "smooth"] = Field(
        "smooth",
        description="start: uniform or Gaussian pixel noise, or smooth (uniform noise on a "
        "grid of cell x cell pixels, upsampled bilinearly: survives codecs better)",
    )
    cell: int = Field(8, ge=2, le=64, description="grid cell of the smooth noise (pixels)")
    seed: int = 0
    eot: EOTConfig = Field(
        default_factory=lambda: EOTConfig(enabled=True),
        description="Expectation over Transformation (see deid.attacks.eot); on by default: "
        "with it and the smooth start, concealment survives H.264 at crf 28",
    )


class Conceal:
    r"""Non-realistic de-identification: the face region becomes noise that the classifier
    is sure is the target identity, hiding the face from people and the classifier alike.

    ``x_0`` is drawn at random (the seed's "random input": uniform, or Gaussian around
    0.5, or smooth noise, which video codecs keep better), then targeted I-FGSM steps
    ``x_{N+1} = clip_[0,1](x_N - alpha sign(grad J(x_N, y_target)))`` run without an
    eps-ball (with EOT by default, see :mod:`deid.attacks.eot`). Norm: none (unbounded).
    Targeted. White-box.

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
        elif cfg.noise == "smooth":
            n, c, h, w = images.shape
            coarse = torch.rand((n, c, -(-h // cfg.cell) + 1, -(-w // cfg.cell) + 1), generator=g)
            x0 = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
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
                eot=cfg.eot,
            )
        )
        r = inner(model, x0, targets)
        return AttackResult(
            r.images, r.success, r.steps, r.logits, perturbation_norms(images.detach(), r.images)
        )
