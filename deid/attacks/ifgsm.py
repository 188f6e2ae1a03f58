"""Iterative FGSM (Kurakin et al. 2016), targeted and untargeted."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    Budget,
    attack_mode,
    check_images,
    grid_bounds,
    is_success,
    perturbation_norms,
    project,
    select,
)
from deid.attacks.eot import EOTConfig, Transforms


class IFGSMConfig(AttackConfigBase):
    """Targeted I-FGSM. ``eps`` bounds the L-inf distance to the original; ``alpha`` is the step."""

    name: Literal["ifgsm"] = "ifgsm"
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
        check_images(images, targets)
        cfg = self.cfg
        x = images.detach()
        y = targets.to(x.device)
        n = len(x)
        lo, hi = (x - cfg.eps).clamp(0, 1), (x + cfg.eps).clamp(0, 1)
        if cfg.quantize:
            lo, hi = grid_bounds(lo, hi)
        x_adv = x.clone()
        if cfg.random_start:
            x_adv = project(
                x + torch.empty_like(x).uniform_(-cfg.eps, cfg.eps), lo, hi, cfg.quantize
            )
        sign = -1.0 if cfg.targeted else 1.0
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        logits_out: Tensor | None = None
        active = torch.arange(n, device=x.device)
        eot = Transforms(cfg.eot) if cfg.eot.enabled else None
        with attack_mode(model):
            for step in range(cfg.steps + 1):
                xa = x_adv[active].requires_grad_(step < cfg.steps)
                copies = eot is not None and step < cfg.steps
                with torch.set_grad_enabled(step < cfg.steps):
                    if copies:
                        reps = cfg.eot.samples
                        all_logits = select(model, active.repeat(reps))(eot.expand(xa))
                        logits = all_logits[: len(active)]
                    else:
                        logits = select(model, active)(xa)
                if logits_out is None:
                    logits_out = logits.new_zeros((n, logits.shape[1]))
                ok = is_success(logits.detach(), y[active], cfg.targeted, cfg.margin)
                logits_out[active] = logits.detach()
                success[active] = ok
                if step == cfg.steps:
                    break
                done = ok
                if copies:
                    m = max(cfg.margin, cfg.eot.margin)
                    per_copy = is_success(
                        all_logits.detach(), y[active].repeat(reps), cfg.targeted, m
                    ).view(reps, -1)
                    # copy 0 is the image itself: it must win by the margin too
                    done = per_copy[0] & (per_copy.float().mean(0) >= cfg.eot.robust - 1e-6)
                keep = ~done if cfg.early_stop else torch.ones_like(ok)
                if not bool(keep.any()):
                    break
                if copies:
                    k = all_logits.shape[1]
                    loss = F.cross_entropy(
                        all_logits.view(reps, -1, k)[:, keep].reshape(-1, k),
                        y[active][keep].repeat(reps),
                        reduction="sum",
                    )
                else:
                    loss = F.cross_entropy(logits[keep], y[active][keep], reduction="sum")
                (grad,) = torch.autograd.grad(loss, xa)
                idx = active[keep]
                step_x = x_adv[idx] + sign * cfg.alpha * grad[keep].sign()
                x_adv[idx] = project(step_x, lo[idx], hi[idx], cfg.quantize)
                steps[idx] += 1
                active = idx
        assert logits_out is not None
        return AttackResult(
            x_adv.detach(), success, steps, logits_out, perturbation_norms(x, x_adv)
        )
