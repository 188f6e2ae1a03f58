"""Momentum Iterative FGSM (Dong et al. 2017)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import AttackConfigBase, AttackResult, Budget
from deid.attacks.iterative import Running, clip_ball, iterate
from deid.targets import TargetMode


class MIFGSMConfig(AttackConfigBase):
    """Sign steps along an accumulated, L1-normalised gradient."""

    name: Literal["mifgsm"] = "mifgsm"
    default_target: ClassVar[TargetMode] = "least-likely"
    eps: Budget = Field(16 / 255, gt=0.0, le=1.0)
    alpha: Budget = Field(2 / 255, gt=0.0, le=1.0)
    steps: int = Field(20, ge=1, le=10_000)
    decay: float = Field(1.0, ge=0.0, le=10.0, description="momentum factor mu")
    early_stop: bool = Field(True, description="stop each sample as soon as it succeeds")


class MIFGSM:
    r"""Momentum Iterative Fast Gradient Sign Method.

    ``g_{t+1} = mu * g_t + grad J(x_t, y) / ||grad J(x_t, y)||_1``,
    ``x_{t+1} = Clip_{x, eps}(x_t + s * alpha * sign(g_{t+1}))`` (s = +1 untargeted, -1
    targeted), clipped to [0, 1]. Momentum stabilises the direction and transfers better
    to other models.

    Paper: Dong, Liao, Pang, Su, Zhu, Hu, Li, "Boosting Adversarial Attacks with Momentum",
    https://arxiv.org/abs/1710.06081. Norm: L-inf. Targeted or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = MIFGSM(MIFGSMConfig(eps=0.3, alpha=0.05))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: MIFGSMConfig | None = None) -> None:
        self.cfg = cfg or MIFGSMConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        c = self.cfg
        momentum = {"g": torch.zeros_like(images)}
        return iterate(model, images, targets, self.step, c, steps=c.steps, memory=momentum)

    def step(self, x: Tensor, grad: Tensor, s: Running) -> Tensor:
        """Accumulate the L1-normalised gradient, step along its sign, clamp to the eps-ball
        and [0, 1]. The L1 norm is taken as the mean, as torchattacks does (same sign)."""
        grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
        g = s.memory["g"].mul_(self.cfg.decay).add_(grad)
        x = x + s.sign * self.cfg.alpha * g.sign()
        return clip_ball(x, s)
