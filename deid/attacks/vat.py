"""Virtual adversarial perturbation (Miyato et al. 2015/2016): no labels needed."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    attack_mode,
    check_images,
    is_success,
    perturbation_norms,
    quantize8,
    select,
)
from deid.targets import TargetMode


class VATConfig(AttackConfigBase):
    """The L2 direction that most changes the model's output distribution (power iteration)."""

    name: Literal["vat"] = "vat"
    default_target: ClassVar[TargetMode] = "nearest"
    targeted: bool = Field(False, description="always False: VAT has no target")
    eps: float = Field(2.0, gt=0.0, le=1000.0, description="L2 size of the perturbation")
    xi: float = Field(
        1e-6, gt=0.0, le=1.0, description="finite-difference step of the power iteration"
    )
    power_iterations: int = Field(1, ge=1, le=100)
    seed: int | None = Field(0, description="seed of the random start direction (None: fresh)")

    @field_validator("targeted")
    @classmethod
    def _untargeted(cls, v: bool) -> bool:
        if v:
            raise ValueError("vat is untargeted only (it uses no labels); set targeted: false")
        return v


class VAT:
    r"""Virtual adversarial perturbation.

    ``r_vadv = eps * d / ||d||_2`` where d approximates the dominant eigenvector of the
    Hessian of ``KL(p(.|x) || p(.|x + r))`` at r = 0, by power iteration from a random
    direction: ``d <- grad_r KL(p(.|x) || p(.|x + xi d))`` (normalised), repeated
    ``power_iterations`` times. Labels are not used to craft it (that is the point of the
    "virtual" label p(.|x)); ``targets`` are the true classes, used only for the success
    mask (the top class is no longer the true one). One image per sample, clipped to
    [0, 1] (and the 8-bit grid with ``quantize``).

    Paper: Miyato, Maeda, Koyama, Nakae, Ishii, "Distributional Smoothing with Virtual
    Adversarial Training", https://arxiv.org/abs/1507.00677 (and "Virtual Adversarial
    Training", https://arxiv.org/abs/1704.03976). Norm: L2 (``eps``). Untargeted only.
    White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 true classes.
        - result.images: like ``images``, within ``eps`` in L2 (before clipping).

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = VAT(VATConfig(eps=1.0, quantize=False))(model, x, model(x).argmax(1))
        >>> bool((r.norms["l2"] <= 1.0 + 1e-5).all())
        True
    """

    def __init__(self, cfg: VATConfig | None = None) -> None:
        self.cfg = cfg or VATConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        gen = torch.Generator(device=x0.device)
        if cfg.seed is None:
            gen.seed()
        else:
            gen.manual_seed(cfg.seed)
        d = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        with attack_mode(model):
            m = select(model, torch.arange(n, device=x0.device))
            with torch.no_grad():
                logp = F.log_softmax(m(x0), 1)
            for _ in range(cfg.power_iterations):
                d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                r = (cfg.xi * d).requires_grad_(True)
                kl = F.kl_div(F.log_softmax(m(x0 + r), 1), logp, log_target=True, reduction="sum")
                (d,) = torch.autograd.grad(kl, r)
            d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            x_adv = (x0 + cfg.eps * d).clamp(0, 1)
            if cfg.quantize:
                x_adv = quantize8(x_adv)
            with torch.no_grad():
                logits = m(x_adv)
        success = is_success(logits, y, False, cfg.margin)
        steps = torch.full((n,), cfg.power_iterations, dtype=torch.long, device=x0.device)
        return AttackResult(x_adv, success, steps, logits, perturbation_norms(x0, x_adv))
