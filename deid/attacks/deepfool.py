"""DeepFool (Moosavi-Dezfooli et al. 2015): the nearest decision boundary, linearised."""

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
    perturbation_norms,
    quantize8,
    select,
)
from deid.targets import TargetMode

_TOL = 1e-7  # keeps a zero gradient difference from dividing by zero (ART uses the same)


class DeepFoolConfig(AttackConfigBase):
    """Linearise the classifier, step onto the nearest boundary, repeat."""

    name: Literal["deepfool"] = "deepfool"
    default_target: ClassVar[TargetMode] = "nearest"
    steps: int = Field(50, ge=1, le=10_000)
    overshoot: float = Field(0.02, ge=0.0, le=10.0)
    overshoot_mode: Literal["final", "step"] = Field(
        "final",
        description="final: x + (1 + overshoot) * r_total at the end (the paper, ART); "
        "step: every step is scaled by (1 + overshoot) (torchattacks)",
    )
    nb_grads: int = Field(
        10, ge=1, le=100_000, description="candidate classes: the top ones of the clean image"
    )


class DeepFool:
    r"""DeepFool: the smallest L2 step to the nearest linearised decision boundary, iterated.

    At each step, for the current top class c = y (untargeted) and each candidate class k,
    ``w_k = grad f_k - grad f_y``, ``f'_k = f_k - f_y``; the step is
    ``r = |f'_l| / ||w_l||^2 * w_l`` with ``l = argmin_k |f'_k| / ||w_k||``, and
    ``x <- clip_[0,1](x + r)``, until the top class changes (or ``steps``). The candidates
    are the ``nb_grads`` top classes of the clean image (the paper's choice for ImageNet).
    The overshoot pushes across the boundary. ``targeted=True`` always takes ``k = target``
    against the current top class, until the target wins.

    With ``quantize`` the returned image is on the 8-bit grid (iterates stay continuous, the
    success check reads the rounded image) and success is re-checked on what is returned.

    Paper: Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool
    deep neural networks", https://arxiv.org/abs/1511.04599. Norm: L2 (minimal). Untargeted
    (the paper) or targeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 true classes (untargeted) or target classes (targeted).
        - result.images: like ``images``.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> cfg = DeepFoolConfig(targeted=False, quantize=False)
        >>> r = DeepFool(cfg)(model, x, model(x).argmax(1))
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: DeepFoolConfig | None = None) -> None:
        self.cfg = cfg or DeepFoolConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        xc = x0.clone()  # continuous iterates
        steps = torch.zeros(n, dtype=torch.long, device=x0.device)
        idx = torch.arange(n, device=x0.device)
        scale = 1.0 + cfg.overshoot if cfg.overshoot_mode == "step" else 1.0
        cand: Tensor | None = None
        with attack_mode(model):
            for step in range(cfg.steps + 1):
                xa = (quantize8(xc[idx]) if cfg.quantize else xc[idx]).requires_grad_(True)
                logits = select(model, idx)(xa)
                if cand is None:  # candidate classes from the clean image
                    k = min(cfg.nb_grads + 1, logits.shape[1])
                    cand = logits.detach().topk(k, 1).indices
                ok = is_success(logits.detach(), y[idx], cfg.targeted, cfg.margin)
                keep = ~ok
                if step == cfg.steps or not bool(keep.any()):
                    break
                r = self._step(logits, xa, y[idx], cand[idx])
                i = idx[keep]
                xc[i] = (xc[i] + scale * r[keep]).clamp(0, 1)
                steps[i] += 1
                idx = i
            x_adv = xc
            if cfg.overshoot_mode == "final":
                x_adv = (x0 + (1.0 + cfg.overshoot) * (xc - x0)).clamp(0, 1)
            if cfg.quantize:
                x_adv = quantize8(x_adv)
            with torch.no_grad():
                logits = select(model, torch.arange(n, device=x0.device))(x_adv)
        success = is_success(logits, y, cfg.targeted, cfg.margin)
        return AttackResult(x_adv, success, steps, logits, perturbation_norms(x0, x_adv))

    def _step(self, logits: Tensor, xa: Tensor, y: Tensor, cand: Tensor) -> Tensor:
        """(n, C, H, W) the linearised step of each sample (zero where nothing is found)."""
        dims = (-1,) + (1,) * (xa.ndim - 1)
        if self.cfg.targeted:
            # towards the target, against the current top class
            top = logits.detach().argmax(1)
            g = torch.autograd.grad(
                (logits.gather(1, y[:, None]) - logits.gather(1, top[:, None])).sum(), xa
            )[0]
            f = (logits.gather(1, y[:, None]) - logits.gather(1, top[:, None])).squeeze(1)
            w = g.flatten(1)
            r = f.detach().abs() / (w.norm(dim=1) ** 2 + _TOL)
            return r.view(dims) * g
        # untargeted: the nearest boundary among the candidate classes
        f_y = logits.gather(1, y[:, None]).squeeze(1)
        g_y = torch.autograd.grad(f_y.sum(), xa, retain_graph=True)[0].flatten(1)
        best_val = torch.full((len(xa),), float("inf"), device=xa.device)
        best_r = torch.zeros_like(g_y)
        for j in range(cand.shape[1]):
            kj = cand[:, j]
            f_k = logits.gather(1, kj[:, None]).squeeze(1)
            g_k = torch.autograd.grad(f_k.sum(), xa, retain_graph=j + 1 < cand.shape[1])[0]
            w = g_k.flatten(1) - g_y
            f = (f_k - f_y).detach()
            wn = w.norm(dim=1)
            val = f.abs() / (wn + _TOL)
            val = torch.where(kj == y, torch.full_like(val, float("inf")), val)
            better = val < best_val
            best_val = torch.where(better, val, best_val)
            r = (f.abs() / (wn**2 + _TOL))[:, None] * w
            best_r = torch.where(better[:, None], r, best_r)
        return best_r.view_as(xa)
