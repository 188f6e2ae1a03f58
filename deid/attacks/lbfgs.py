"""Box-constrained L-BFGS (Szegedy et al. 2013): the seed's first adversarial examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
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

# Above this many variables, L-BFGS-B's workspace ((2m + 5) n doubles) and per-iteration cost
# grow too large (big pipeline crops): a projected Adam in torch takes over.
MAX_LBFGSB_VARS = 2_000_000


def minimize_box(
    fun: Callable[[Tensor], Tensor], x0: Tensor, lo: Tensor, hi: Tensor, maxiter: int
) -> Tensor:
    """Minimise ``fun(x).sum()`` over ``lo <= x <= hi`` with SciPy's L-BFGS-B.

    ``fun`` maps an (N, ...) tensor to (N,) per-sample objectives (the samples are
    independent, so one joint problem solves them all); gradients come from autograd.
    Beyond :data:`MAX_LBFGSB_VARS` variables, ``2 * maxiter`` steps of Adam projected onto
    the box (step a tenth of the box's mean width) replace L-BFGS-B.
    Returns the minimiser, like ``x0``.
    """
    if x0.numel() > MAX_LBFGSB_VARS:
        return _projected_adam(fun, x0, lo, hi, 2 * maxiter)
    from scipy.optimize import minimize

    shape, dtype, device = x0.shape, x0.dtype, x0.device

    def f_and_g(v: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.from_numpy(v).to(device, dtype).view(shape).requires_grad_(True)
        loss = fun(x).sum()
        (g,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), g.detach().cpu().double().numpy().ravel()

    bounds = np.stack(
        [lo.detach().cpu().double().numpy().ravel(), hi.detach().cpu().double().numpy().ravel()], 1
    )
    res = minimize(
        f_and_g,
        x0.detach().cpu().double().numpy().ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": maxiter},
    )
    return torch.from_numpy(res.x).to(device, dtype).view(shape)


def _projected_adam(
    fun: Callable[[Tensor], Tensor], x0: Tensor, lo: Tensor, hi: Tensor, steps: int
) -> Tensor:
    lr = max(1e-3, 0.1 * float((hi - lo).mean()))
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        loss = fun(x).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    return x.detach()


class LBFGSConfig(AttackConfigBase):
    """``min c * ||r||_2^2 + loss(x + r)`` on the box, with a search over c per sample."""

    name: Literal["lbfgs"] = "lbfgs"
    default_target: ClassVar[TargetMode] = "nearest"
    c_init: float = Field(1.0, gt=0.0, description="initial weight of the distance term")
    search_steps: int = Field(5, ge=1, le=30, description="rounds of the search over c")
    max_iter: int = Field(30, ge=1, le=10_000, description="L-BFGS-B iterations per round")


class LBFGS:
    r"""Szegedy et al.'s box-constrained L-BFGS attack.

    Solves ``min_r c * ||r||_2^2 + loss_f(x + r, l)`` subject to ``x + r in [0, 1]^n`` with
    L-BFGS-B (SciPy), where ``loss_f`` is the cross-entropy of the target l (targeted) or
    ``-log(1 - p_y(x + r))`` (untargeted: leave the true class y). A per-sample search over
    c keeps the largest c (smallest perturbation) whose minimiser succeeds: success raises c
    (x10 or bisection), failure lowers it. The returned image is the smallest-L2 success
    seen, checked after 8-bit rounding with ``quantize``; a failed sample comes back unchanged.

    Paper: Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow, Fergus, "Intriguing
    properties of neural networks", https://arxiv.org/abs/1312.6199. Norm: L2 (minimal).
    Targeted (the paper) or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``; ``steps`` counts L-BFGS-B rounds run.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = LBFGS(LBFGSConfig(c_init=0.1))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist()
        [True, True]
    """

    def __init__(self, cfg: LBFGSConfig | None = None) -> None:
        self.cfg = cfg or LBFGSConfig()

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.cfg.targeted:
            return F.cross_entropy(logits, y, reduction="none")
        p_y = torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
        return -torch.log((1 - p_y).clamp_min(1e-12))

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        dims = tuple(range(1, x0.ndim))
        c = torch.full((n,), cfg.c_init, device=x0.device)
        lower = torch.zeros(n, device=x0.device)  # largest c known to fail... bound below
        upper = torch.full((n,), float("inf"), device=x0.device)
        best = x0.clone()
        best_l2 = torch.full((n,), float("inf"), device=x0.device)
        steps = torch.zeros(n, dtype=torch.long, device=x0.device)
        everyone = torch.arange(n, device=x0.device)
        with attack_mode(model):
            m = select(model, everyone)
            for _ in range(cfg.search_steps):
                cc = c.clone()

                def fun(x: Tensor, cc: Tensor = cc) -> Tensor:
                    return cc * (x - x0).pow(2).sum(dims) + self._loss(m(x), y)

                xa = minimize_box(fun, x0, torch.zeros_like(x0), torch.ones_like(x0), cfg.max_iter)
                steps += 1
                xq = quantize8(xa) if cfg.quantize else xa
                with torch.no_grad():
                    ok = is_success(m(xq), y, cfg.targeted, cfg.margin)
                l2 = (xq - x0).pow(2).sum(dims)
                better = ok & (l2 < best_l2)
                best[better] = xq[better]
                best_l2[better] = l2[better]
                # success: try a larger c (a smaller change); failure: a smaller one
                lower = torch.where(ok, torch.maximum(lower, c), lower)
                upper = torch.where(ok, upper, torch.minimum(upper, c))
                c = torch.where(
                    torch.isinf(upper), c * 10, torch.where(lower > 0, (lower + upper) / 2, c / 10)
                )
            with torch.no_grad():
                logits = m(best)
        success = is_success(logits, y, cfg.targeted, cfg.margin)
        return AttackResult(best, success, steps, logits, perturbation_norms(x0, best))
