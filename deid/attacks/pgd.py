"""Projected Gradient Descent with a random start (Madry et al. 2017)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import AttackConfigBase, AttackResult, Budget
from deid.attacks.iterative import Running, clip_ball, iterate
from deid.targets import TargetMode


class PGDConfig(AttackConfigBase):
    """L-inf PGD: a uniform random start in the eps-ball, then projected sign steps."""

    name: Literal["pgd"] = "pgd"
    default_target: ClassVar[TargetMode] = "least-likely"
    eps: Budget = Field(16 / 255, gt=0.0, le=1.0)
    alpha: Budget = Field(2 / 255, gt=0.0, le=1.0)
    steps: int = Field(20, ge=1, le=10_000)
    random_start: bool = Field(True, description="start from a uniform point in the eps-ball")
    seed: int | None = Field(0, description="random start's seed (None: a fresh one each call)")
    early_stop: bool = Field(True, description="stop each sample as soon as it succeeds")


class PGD:
    r"""Projected Gradient Descent on the cross-entropy, L-inf ball.

    ``x_0 = x + U(-eps, eps)`` (clipped to [0, 1]; ``random_start=False`` starts at ``x``,
    which is I-FGSM/BIM), then
    ``x_{t+1} = Proj_{B(x, eps) and [0,1]}(x_t + s * alpha * sign(grad J(x_t, y)))`` with
    s = +1 untargeted (true class y), -1 targeted (target class y). Each sample stops as soon
    as it succeeds (``early_stop``); with ``quantize`` every iterate is on the 8-bit grid.

    Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", https://arxiv.org/abs/1706.06083. Norm: L-inf. Targeted or
    untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = PGD(PGDConfig(eps=0.3, alpha=0.05))(model, x, torch.tensor([1, 2]))
        >>> bool((r.images - x).abs().max() <= 0.3 + 1e-6), r.success.tolist()
        (True, [True, True])
    """

    def __init__(self, cfg: PGDConfig | None = None) -> None:
        self.cfg = cfg or PGDConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        c = self.cfg
        start = self.start if c.random_start else None
        return iterate(model, images, targets, self.step, c, steps=c.steps, start=start)

    def step(self, x: Tensor, grad: Tensor, s: Running) -> Tensor:
        """A signed step of ``alpha``, clamped to the eps-ball, then to [0, 1]."""
        x = x + s.sign * self.cfg.alpha * grad.sign()
        return clip_ball(x, s)

    def start(self, s: Running) -> Tensor:
        """A uniform point of the eps-ball, clamped to [0, 1], drawn with ``seed``."""
        g = torch.Generator(device=s.x0.device)
        if self.cfg.seed is not None:
            g.manual_seed(self.cfg.seed)
        else:
            g.seed()
        noise = torch.empty(s.x0.shape, device=s.x0.device, dtype=s.x0.dtype)
        return clip_ball(s.x0 + noise.uniform_(-s.eps, s.eps, generator=g), s)
