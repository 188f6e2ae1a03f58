"""Jacobian-based Saliency Map Attack (Papernot et al. 2016): few pixels, a pair at a time."""

from __future__ import annotations

import math
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
    select,
)
from deid.targets import TargetMode


class JSMAConfig(AttackConfigBase):
    """Saturate the most salient pair of features per step, up to ``gamma`` of them."""

    name: Literal["jsma"] = "jsma"
    default_target: ClassVar[TargetMode] = "nearest"
    theta: float = Field(1.0, ge=-1.0, le=1.0, description="change per chosen feature")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="largest share of features changed")
    max_iter: int = Field(
        1000, ge=1, le=10_000_000, description="at most this many pairs, whatever gamma allows"
    )
    candidates: int = Field(
        256,
        ge=2,
        le=1_000_000,
        description="pairs are searched among this many best single features (all of them "
        "when the image has no more: the exact algorithm)",
    )


class JSMA:
    r"""Jacobian-based Saliency Map Attack.

    With J_k = grad_x Z_k (logits) and t the target, each step picks the pair (p, q) of
    unused features maximising ``alpha * |beta|`` with ``alpha = sum_{p,q} J_t > 0`` and
    ``beta = sum_{p,q} sum_{j != t} J_j < 0`` (for ``theta > 0``; signs flip for
    ``theta < 0``), adds ``theta`` to both and clips to [0, 1]; it stops when the target wins
    or ``ceil(gamma * n / 2)`` pairs (at most ``max_iter``) are used. Untargeted
    (``targeted=False``, y the true class): the roles are "all other classes" (alpha)
    against y (beta). Features at 0.99+
    (``theta > 0``) or 0.01- (``theta < 0``) are not used, as in the reference code. The
    pair search is exact while the image has at most ``candidates`` features, and otherwise
    runs among the ``candidates`` best single features (a pair search over every pair of a
    large crop does not fit in memory). Quantisation is automatic: with ``theta = +-1``
    features land on 0 or 1.

    Paper: Papernot, McDaniel, Jha, Fredrikson, Celik, Swami, "The Limitations of Deep
    Learning in Adversarial Settings", https://arxiv.org/abs/1511.07528. Norm: L0.
    Targeted (the paper) or untargeted. White-box.

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``; ``steps`` counts the pairs changed.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8) * 0.5
        >>> r = JSMA(JSMAConfig(gamma=0.5))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist(), bool(r.norms["l0"].max() <= 0.5 * 192)
        ([True, True], True)
    """

    def __init__(self, cfg: JSMAConfig | None = None) -> None:
        self.cfg = cfg or JSMAConfig()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        d = x0[0].numel() if n else 0
        increasing = cfg.theta > 0
        max_iters = min(math.ceil(d * cfg.gamma / 2.0), cfg.max_iter)
        xa = x0.clone().flatten(1)
        domain = (xa < 0.99) if increasing else (xa > 0.01)
        steps = torch.zeros(n, dtype=torch.long, device=x0.device)
        idx = torch.arange(n, device=x0.device)
        out_logits: Tensor | None = None
        with attack_mode(model):
            for it in range(max_iters + 1):
                xi = xa[idx].view(-1, *x0.shape[1:]).requires_grad_(True)
                logits = select(model, idx)(xi)
                if out_logits is None:
                    out_logits = logits.new_zeros((n, logits.shape[1]))
                out_logits[idx] = logits.detach()
                ok = is_success(logits.detach(), y[idx], cfg.targeted, cfg.margin)
                active = ~ok & domain[idx].any(1)
                if it == max_iters or not bool(active.any()):
                    break
                yi = y[idx]
                z_t = logits.gather(1, yi[:, None]).sum()
                g_t = torch.autograd.grad(z_t, xi, retain_graph=True)[0].flatten(1)
                g_all = torch.autograd.grad(logits.sum(), xi)[0].flatten(1)
                g_o = g_all - g_t
                if not cfg.targeted:  # raise the other classes, lower the true one
                    g_t, g_o = g_o, g_t
                act = active.nonzero().flatten()
                pq, found = self._pairs(g_t[act], g_o[act], domain[idx[act]], increasing)
                rows = idx[act]
                domain[rows[~found]] = False  # nothing admissible is left: give up
                rows, pq = rows[found], pq[found]
                if len(rows):
                    r2 = rows[:, None].expand(-1, 2)
                    xa[r2, pq] = (xa[r2, pq] + cfg.theta).clamp(0, 1)
                    domain[r2, pq] = False
                    steps[rows] += 1
                idx = idx[active]
        assert out_logits is not None
        x_adv = xa.view_as(x0)
        success = is_success(out_logits, y, cfg.targeted, cfg.margin)
        return AttackResult(x_adv, success, steps, out_logits, perturbation_norms(x0, x_adv))

    def _pairs(
        self, g_t: Tensor, g_o: Tensor, dom: Tensor, increasing: bool
    ) -> tuple[Tensor, Tensor]:
        """(m, 2) the most salient admissible pair of each sample, and (m,) whether one exists."""
        m, d = g_t.shape
        k = min(self.cfg.candidates, d)
        if k < d:
            # the best single features by the same criterion (sign-admissible ones first)
            admissible = ((g_t > 0) & (g_o < 0)) if increasing else ((g_t < 0) & (g_o > 0))
            score = (g_t * g_o).abs() + admissible * (g_t * g_o).abs().amax(1, keepdim=True)
            feats = torch.where(dom, score, torch.full_like(score, -1.0)).topk(k, 1).indices
        else:
            feats = torch.arange(d, device=g_t.device).expand(m, d)
        a, b, ok = g_t.gather(1, feats), g_o.gather(1, feats), dom.gather(1, feats)
        alpha = a[:, :, None] + a[:, None, :]
        beta = b[:, :, None] + b[:, None, :]
        mask = ((alpha > 0) & (beta < 0)) if increasing else ((alpha < 0) & (beta > 0))
        mask &= ok[:, :, None] & ok[:, None, :]
        mask &= ~torch.eye(k, dtype=torch.bool, device=g_t.device)
        sal = torch.where(mask, (alpha * beta).abs(), torch.full_like(alpha, -1.0))
        best = sal.flatten(1).argmax(1)
        pq = torch.stack(
            [feats.gather(1, (best // k)[:, None]), feats.gather(1, (best % k)[:, None])], 1
        )
        return pq.squeeze(2), mask.flatten(1).any(1)
