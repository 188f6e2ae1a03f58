"""SPSA (Uesato et al. 2018): gradient-free, from score queries only."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    Budget,
    ball_bounds,
    check_images,
    is_success,
    logit_gap,
    perturbation_norms,
    quantize8,
)
from deid.attacks.query import QueryModel, as_query
from deid.targets import TargetMode


class SPSAConfig(AttackConfigBase):
    """Adam on a finite-difference estimate of the margin loss, projected onto the eps-ball."""

    name: Literal["spsa"] = "spsa"
    default_target: ClassVar[TargetMode] = "least-likely"
    eps: Budget = Field(16 / 255, gt=0.0, le=1.0, description="L-inf radius")
    delta: float = Field(0.01, gt=0.0, le=1.0, description="finite-difference step")
    lr: float = Field(0.01, gt=0.0, le=1.0, description="Adam's learning rate")
    steps: int = Field(20, ge=1, le=100_000, description="Adam steps (nb_iter)")
    samples: int = Field(64, ge=1, le=100_000, description="perturbation pairs per estimate")
    max_batch: int = Field(256, ge=1, le=1_000_000, description="images per query call")
    early_stop: bool = Field(True, description="stop each sample as soon as it succeeds")
    seed: int | None = Field(0, description="the perturbations' seed (None: a fresh one)")


class SPSA:
    r"""Simultaneous Perturbation Stochastic Approximation attack.

    The gradient of the margin loss ``L(x) = max_{j != t} Z_j - Z_t`` (targeted; untargeted:
    ``Z_y - max_{j != y} Z_j``) is estimated from queries alone,
    ``g = mean_i (L(x + delta v_i) - L(x - delta v_i)) / (2 delta) * v_i`` with Rademacher
    v_i, and Adam takes a step on it; the iterate is projected onto the eps-ball and [0, 1].
    Each sample stops as soon as it succeeds (one extra query per step checks it).

    Black-box: the attack wraps the model in :class:`deid.attacks.query.QueryModel` at its
    boundary and its search sees only that (scores, no gradients). ``steps`` in the result
    is the number of queries each sample used; ``queries`` their total.

    Paper: Uesato, O'Donoghue, van den Oord, Kohli, "Adversarial Risk and the Dangers of
    Evaluating Against Weak Attacks", https://arxiv.org/abs/1802.05666. Norm: L-inf.
    Targeted or untargeted. Black-box (scores).

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> r = SPSA(SPSAConfig(eps=0.3, lr=0.05))(model, x, torch.tensor([1, 2]))
        >>> r.success.tolist(), int(r.queries.sum()) > 0
        ([True, True], True)
    """

    def __init__(self, cfg: SPSAConfig | None = None) -> None:
        self.cfg = cfg or SPSAConfig()

    def __call__(
        self, model: nn.Module | QueryModel, images: Tensor, targets: Tensor
    ) -> AttackResult:
        check_images(images, targets)
        return self._search(as_query(model, "logits"), images.detach(), targets.to(images.device))

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return logit_gap(logits, y, self.cfg.targeted)

    def _search(self, query: QueryModel, x0: Tensor, y: Tensor) -> AttackResult:
        cfg = self.cfg
        n = len(x0)
        dev = x0.device
        if cfg.quantize:
            lo, hi = ball_bounds(x0, cfg.eps, True)
        gen = torch.Generator(device=dev)
        if cfg.seed is None:
            gen.seed()
        else:
            gen.manual_seed(cfg.seed)
        dx = torch.zeros_like(x0)
        m1, m2 = torch.zeros_like(x0), torch.zeros_like(x0)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        queries = torch.zeros(n, dtype=torch.long, device=dev)
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        out = x0.clone()
        logits_out: Tensor | None = None
        idx = torch.arange(n, device=dev)
        for step in range(cfg.steps + 1):
            xa = x0[idx] + dx[idx]
            if cfg.quantize:
                xa = torch.maximum(torch.minimum(quantize8(xa), hi[idx]), lo[idx])
            logits = query.select(idx)(xa)
            queries[idx] += 1
            if logits_out is None:
                logits_out = logits.new_zeros((n, logits.shape[1]))
            ok = is_success(logits, y[idx], cfg.targeted, cfg.margin)
            last = step == cfg.steps
            done = torch.ones_like(ok) if last else (ok if cfg.early_stop else torch.zeros_like(ok))
            d = idx[done]
            out[d], logits_out[d], success[d] = xa[done], logits[done], ok[done]
            idx = idx[~done]
            if last or not len(idx):
                break
            g = self._estimate(query, x0[idx] + dx[idx], y[idx], idx, gen)
            queries[idx] += 2 * cfg.samples
            # Adam (element-wise, so per sample), minimising the loss
            t = step + 1
            m1[idx] = b1 * m1[idx] + (1 - b1) * g
            m2[idx] = b2 * m2[idx] + (1 - b2) * g * g
            mhat = m1[idx] / (1 - b1**t)
            vhat = m2[idx] / (1 - b2**t)
            new = dx[idx] - cfg.lr * mhat / (vhat.sqrt() + adam_eps)
            # project onto the eps-ball and the image box
            new = new.clamp(-cfg.eps, cfg.eps)
            dx[idx] = (x0[idx] + new).clamp(0, 1) - x0[idx]
        assert logits_out is not None
        return AttackResult(
            out, success, queries, logits_out, perturbation_norms(x0, out), queries=queries
        )

    def _estimate(
        self, query: QueryModel, x: Tensor, y: Tensor, idx: Tensor, gen: torch.Generator
    ) -> Tensor:
        """(m, C, H, W) the SPSA gradient estimate of the loss at each of the m images."""
        cfg = self.cfg
        m = len(x)
        grad = torch.zeros_like(x)
        per_call = max(1, cfg.max_batch // max(1, 2 * m))
        done = 0
        while done < cfg.samples:
            s = min(per_call, cfg.samples - done)
            v = torch.randint(0, 2, (s, *x.shape), generator=gen, device=x.device)
            v = v.to(x.dtype) * 2 - 1
            xp = (x[None] + cfg.delta * v).flatten(0, 1)
            xm = (x[None] - cfg.delta * v).flatten(0, 1)
            sel = idx.repeat(s)
            yy = y.repeat(s)
            q = query.select(torch.cat([sel, sel]))
            lg = q(torch.cat([xp, xm]))
            diff = (self._loss(lg[: len(xp)], yy) - self._loss(lg[len(xp) :], yy)).view(s, m)
            grad += (diff.view(s, m, *([1] * (x.ndim - 1))) / (2 * cfg.delta) * v).sum(0)
            done += s
        return grad / cfg.samples
