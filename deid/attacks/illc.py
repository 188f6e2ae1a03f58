"""Iterative least-likely class method (Kurakin et al. 2016): I-FGSM towards argmin p(y|x)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from deid.attacks.base import AttackResult, is_success, predict
from deid.attacks.ifgsm import IFGSM, IFGSMConfig


class ILLCConfig(IFGSMConfig):
    """I-FGSM's fields; ``targeted=False`` picks the least-likely class itself."""

    name: Literal["illc"] = "illc"  # type: ignore[assignment]


class ILLC:
    r"""Iterative least-likely class method.

    ``y_LL = argmin_y p(y | x)`` on the clean image, then targeted I-FGSM towards it::

        x_{N+1} = Clip_{x,eps}{ x_N - alpha * sign(grad_x J(x_N, y_LL)) }

    - ``targeted=False`` (the paper's use): ``targets`` are the true classes; the attack
      computes ``y_LL`` itself and success means the top class is no longer the true one.
    - ``targeted=True``: ``targets`` are taken as given (callers pass the least-likely class,
      which is this attack's default target in the pipeline); success = top class is target.

    Paper: Kurakin, Goodfellow, Bengio, "Adversarial examples in the physical world",
    https://arxiv.org/abs/1607.02533. Norm: L-inf. Targeted (at y_LL) or untargeted.
    White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 (see above).
        - result.images: like ``images``, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> y = model(x).argmax(1)
        >>> r = ILLC(ILLCConfig(eps=0.3, alpha=0.05, targeted=False))(model, x, y)
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: ILLCConfig | None = None) -> None:
        self.cfg = cfg or ILLCConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        cfg = self.cfg
        inner = IFGSM(IFGSMConfig(**{**cfg.model_dump(exclude={"name"}), "targeted": True}))
        if cfg.targeted:
            return inner(model, images, targets)
        y = targets.to(images.device)
        least = predict(model, images.detach()).argmin(1)
        r = inner(model, images, least)
        success = is_success(r.logits, y, False, cfg.margin)
        return AttackResult(r.images, success, r.steps, r.logits, r.norms)
