"""Fast Gradient Sign Method (Goodfellow et al. 2014): one signed gradient step."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import AttackConfigBase, AttackResult, Budget
from deid.attacks.iterative import Running, clip_ball, iterate
from deid.targets import TargetMode


class FGSMConfig(AttackConfigBase):
    """One step of size ``eps`` along the sign of the loss gradient."""

    name: Literal["fgsm"] = "fgsm"
    default_target: ClassVar[TargetMode] = "least-likely"
    eps: Budget = Field(8 / 255, gt=0.0, le=1.0, description="L-inf size of the step")
    early_stop: bool = Field(
        True, description="leave samples that already succeed on the clean image unchanged"
    )


class FGSM:
    r"""Fast Gradient Sign Method.

    Untargeted: ``x' = clip_[0,1](x + eps * sign(grad_x J(x, y_true)))``; targeted
    (``targeted=True``): ``x' = clip_[0,1](x - eps * sign(grad_x J(x, y_target)))``, with J
    the cross-entropy.

    Paper: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples",
    https://arxiv.org/abs/1412.6572. Norm: L-inf (``eps``). Targeted or untargeted.
    White-box (one gradient).

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``, within ``eps`` in L-inf; ``steps`` is 0 or 1.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = FGSM(FGSMConfig(eps=0.25, targeted=False))(model, x, torch.tensor([0, 1]))
        >>> bool((r.images - x).abs().max() <= 0.25 + 1e-6), r.norms["linf"].shape
        (True, torch.Size([2]))
    """

    def __init__(self, cfg: FGSMConfig | None = None) -> None:
        self.cfg = cfg or FGSMConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        return iterate(model, images, targets, self.step, self.cfg, steps=1)

    def step(self, x: Tensor, grad: Tensor, s: Running) -> Tensor:
        """The one step: ``eps`` along the gradient's sign, clamped to the eps-ball and [0, 1]."""
        x = x + s.sign * self.cfg.eps * grad.sign()
        return clip_ball(x, s)
