"""Universal adversarial perturbation (Moosavi-Dezfooli et al. 2016): one change for a whole set."""

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
    perturbation_norms,
    predict,
    quantize8,
    select,
)
from deid.attacks.deepfool import DeepFool, DeepFoolConfig
from deid.targets import TargetMode


class UniversalConfig(AttackConfigBase):
    """Accumulate DeepFool steps over the set into one perturbation inside an Lp ball."""

    name: Literal["universal"] = "universal"
    default_target: ClassVar[TargetMode] = "nearest"
    norm: Literal["linf", "l2"] = "linf"
    eps: Budget = Field(16 / 255, gt=0.0, le=1000.0, description="radius xi of the ball")
    fooling_rate: float = Field(
        0.8, gt=0.0, le=1.0, description="stop once this share succeeds (1 - delta)"
    )
    max_passes: int = Field(5, ge=1, le=1000, description="passes over the set")
    deepfool_steps: int = Field(10, ge=1, le=1000)
    overshoot: float = Field(0.02, ge=0.0, le=10.0)
    nb_grads: int = Field(10, ge=1, le=100_000)
    seed: int | None = Field(0, description="order of the passes (None: a fresh one)")


class Universal:
    r"""Universal adversarial perturbation: a single ``v`` that fools the model on most of a set.

    ``v = 0``; for each image x_i (in random order) still classified as before (untargeted)
    or not yet as its target (targeted), the minimal DeepFool step ``dv`` that moves
    ``x_i + v`` across the boundary is added and v is projected back onto the ball,
    ``v <- P_{p, xi}(v + dv)``; passes repeat until the share that succeeds reaches
    ``fooling_rate`` or ``max_passes``. Every image gets the same v (clipped to [0, 1], and to
    the 8-bit grid with ``quantize``); the result's mask says which it fools. Called on a
    batch, the perturbation is fitted on that batch (in the pipeline: on the faces of the
    batch of frames it gets). Targeted works best with one common target.

    Paper: Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, "Universal adversarial perturbations",
    https://arxiv.org/abs/1610.08401. Norm: L-inf or L2 (``norm``, radius ``eps``).
    Untargeted (the paper) or targeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1] (one size: v is (C, H, W)).
        - targets: (N,) int64 true classes (untargeted) or target classes (targeted).
        - result.images: ``clip(images + v)``; ``steps``: DeepFool steps spent on each image.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(6, 3, 8, 8)
        >>> cfg = UniversalConfig(eps=0.3, targeted=False, quantize=False)
        >>> r = Universal(cfg)(model, x, model(x).argmax(1))
        >>> d = r.images - x
        >>> bool(d.abs().max() <= 0.3 + 1e-6), r.success_rate >= 0.5
        (True, True)
    """

    def __init__(self, cfg: UniversalConfig | None = None) -> None:
        self.cfg = cfg or UniversalConfig()

    def _project(self, v: Tensor) -> Tensor:
        if self.cfg.norm == "linf":
            return v.clamp(-self.cfg.eps, self.cfg.eps)
        nrm = v.norm()
        return v * min(1.0, self.cfg.eps / max(float(nrm), 1e-12))

    def _apply(self, x0: Tensor, v: Tensor) -> Tensor:
        xa = (x0 + v).clamp(0, 1)
        return quantize8(xa) if self.cfg.quantize else xa

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        dev = x0.device
        v = torch.zeros_like(x0[0]) if n else x0.new_zeros(x0.shape[1:])
        steps = torch.zeros(n, dtype=torch.long, device=dev)
        df = DeepFool(
            DeepFoolConfig(
                targeted=cfg.targeted,
                steps=cfg.deepfool_steps,
                overshoot=cfg.overshoot,
                overshoot_mode="step",  # crosses the boundary at each step: fewer steps
                nb_grads=cfg.nb_grads,
                quantize=False,
                margin=cfg.margin,
            )
        )
        gen = torch.Generator()
        if cfg.seed is None:
            gen.seed()
        else:
            gen.manual_seed(cfg.seed)
        with attack_mode(model):
            for _pass in range(cfg.max_passes):
                ok = is_success(predict(model, self._apply(x0, v)), y, cfg.targeted, cfg.margin)
                if n == 0 or float(ok.float().mean()) >= cfg.fooling_rate:
                    break
                for i in torch.randperm(n, generator=gen).tolist():
                    one = torch.tensor([i], device=dev)
                    mi = select(model, one)
                    xi = (x0[i : i + 1] + v).clamp(0, 1)
                    with torch.no_grad():
                        if bool(is_success(mi(xi), y[one], cfg.targeted, cfg.margin)[0]):
                            continue
                    r = df(mi, xi, y[one])
                    steps[i] += r.steps[0]
                    if bool(r.success[0]):
                        v = self._project(v + (r.images[0] - xi[0]))
            x_adv = self._apply(x0, v)
            logits = predict(model, x_adv)
        success = is_success(logits, y, cfg.targeted, cfg.margin)
        return AttackResult(x_adv, success, steps, logits, perturbation_norms(x0, x_adv))
