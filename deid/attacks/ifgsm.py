"""Iterative FGSM (Kurakin et al. 2016), targeted and untargeted."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import AttackConfigBase, AttackResult, Budget
from deid.attacks.eot import EOTConfig
from deid.attacks.iterative import Running, clip_box, iterate
from deid.targets import TargetMode


class IFGSMConfig(AttackConfigBase):
    """Targeted I-FGSM. ``eps`` bounds the L-inf distance to the original; ``alpha`` is the step."""

    name: Literal["ifgsm"] = "ifgsm"
    default_target: ClassVar[TargetMode] = "least-likely"
    eps: Budget = Field(16 / 255, gt=0.0, le=1.0)
    alpha: Budget = Field(2 / 255, gt=0.0, le=1.0)
    steps: int = Field(20, ge=1, le=10_000)
    early_stop: bool = Field(True, description="stop each sample as soon as it succeeds")
    random_start: bool = Field(
        False, description="start from a uniform point in the eps-ball (PGD)"
    )
    eot: EOTConfig = Field(
        default_factory=EOTConfig,
        description="Expectation over Transformation: survive codecs, rescaling, blur, noise",
    )


class IFGSM:
    r"""Iterative Fast Gradient Sign Method, as the seed writes it.

    Targeted (gradient descent on the target's loss)::

        x_0 = x,   x_{N+1} = Clip_{x,eps}{ x_N - alpha * sign(grad_x J(x_N, y_target)) }

    untargeted (``targeted=False``, ascent on the true class's loss)::

        x_{N+1} = Clip_{x,eps}{ x_N + alpha * sign(grad_x J(x_N, y_true)) }

    with J the cross-entropy, clipped to [0, 1] too. The iterative least-likely class method
    is the targeted form with ``y_target = argmin_y p(y|x)`` (:func:`deid.targets.choose_targets`).

    Paper: Kurakin, Goodfellow, Bengio, "Adversarial examples in the physical world",
    https://arxiv.org/abs/1607.02533. Norm: L-inf. White-box.

    Each sample stops as soon as it succeeds (``early_stop``): it is dropped from the batch,
    and the success check reuses the logits of the step's own forward pass. With
    ``quantize`` every iterate is rounded to the 8-bit grid, so success holds for the
    written pixels (for 8-bit inputs and steps that are multiples of 1/255 this changes
    nothing).

    With ``eot.enabled`` (:mod:`deid.attacks.eot`), each step's loss is summed over
    ``eot.samples`` copies of the iterate (the first untransformed, the others passed
    through random JPEG/H.264-like quantisation, rescaling, blur, shifts and noise), and a
    sample stops early only when the untransformed copy wins by ``eot.margin`` *and* at
    least ``eot.robust`` of all copies do, so it does not stop at the fragile decision
    boundary. ``success`` (by ``margin``) and ``logits`` always describe the returned
    pixels themselves. Without EOT the iterates are exactly the textbook ones above.

    Args:
        cfg: :class:`IFGSMConfig`.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64, the target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``, within ``eps`` of them in L-inf.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = IFGSM(IFGSMConfig(eps=0.3, alpha=0.05, steps=20))(model, x, torch.tensor([1, 2]))
        >>> bool((r.images - x).abs().max() <= 0.3 + 1e-6), r.success.tolist()
        (True, [True, True])
    """

    def __init__(self, cfg: IFGSMConfig | None = None) -> None:
        self.cfg = cfg or IFGSMConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        c = self.cfg
        start = self.start if c.random_start else None
        return iterate(model, images, targets, self.step, c, steps=c.steps, start=start, eot=c.eot)

    def step(self, x: Tensor, grad: Tensor, s: Running) -> Tensor:
        """A signed step, clamped to the eps-ball and [0, 1] (``s.lo``, ``s.hi``)."""
        x = x + s.sign * self.cfg.alpha * grad.sign()
        return clip_box(x, s)

    def start(self, s: Running) -> Tensor:
        """``random_start``: a uniform point of the eps-ball (from torch's global generator)."""
        return clip_box(s.x0 + torch.empty_like(s.x0).uniform_(-s.eps, s.eps), s)
