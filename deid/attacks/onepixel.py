"""One-Pixel attack (Su et al. 2017): differential evolution over a few pixels, from queries."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    check_images,
    is_success,
    perturbation_norms,
    quantize8,
)
from deid.attacks.query import QueryModel, as_query
from deid.targets import TargetMode


class OnePixelConfig(AttackConfigBase):
    """Differential evolution (DE/rand/1, no crossover) over ``pixels`` (row, col, colour)."""

    name: Literal["onepixel"] = "onepixel"
    default_target: ClassVar[TargetMode] = "nearest"
    pixels: int = Field(1, ge=1, le=1000, description="pixels changed")
    steps: int = Field(75, ge=1, le=100_000, description="DE generations")
    popsize: int = Field(100, ge=4, le=100_000, description="candidates per image")
    mutation: float = Field(0.5, gt=0.0, le=2.0, description="DE's F (rand1)")
    strategy: Literal["rand1", "best1"] = Field(
        "rand1",
        description="rand1: c = a + F (b - d), the paper's; best1: c = best + F (b - d) with F "
        "drawn from U(0.5, 1) each generation (SciPy's default, which torchattacks uses)",
    )
    max_batch: int = Field(1024, ge=1, le=1_000_000, description="images per query call")
    early_stop: bool = Field(True, description="stop an image once its best candidate succeeds")
    seed: int | None = Field(0, description="the search's seed (None: a fresh one)")


class OnePixel:
    r"""One-Pixel attack: differential evolution over candidates of ``pixels`` pixels each.

    A candidate is (row, column, value per channel) per pixel; its fitness is the true
    class's probability (untargeted, minimised) or ``1 - p_target`` (targeted). Each
    generation makes ``c = a + F * (b - d)`` from three random members (DE/rand/1, F = 0.5,
    no crossover, as in the paper; ``strategy="best1"``: ``c = best + F (b - d)``, F drawn in
    [0.5, 1] per generation, SciPy's default), draws genes that leave their range again at
    random, and keeps whichever of candidate and child is fitter. An
    image stops once its best candidate succeeds (``early_stop``); the returned image is its
    best candidate (also when the attack fails, as torchattacks returns it).

    Black-box: the attack wraps the model in :class:`deid.attacks.query.QueryModel` at its
    boundary and its search sees only that (probabilities, no gradients). ``steps`` in the
    result counts each image's queries; ``queries`` too.

    Paper: Su, Vargas, Sakurai, "One pixel attack for fooling deep neural networks",
    https://arxiv.org/abs/1710.08864. Norm: L0 (``pixels`` pixels, up to C values each).
    Targeted or untargeted. Black-box (scores).

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - result.images: like ``images``, differing in at most ``pixels`` pixels.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
        >>> x = torch.rand(2, 3, 4, 4)
        >>> r = OnePixel(OnePixelConfig(pixels=3, popsize=20, steps=20, targeted=False))(
        ...     model, x, model(x).argmax(1))
        >>> bool((r.norms["l0"] <= 9).all()), int(r.queries.min()) > 0
        (True, True)
    """

    def __init__(self, cfg: OnePixelConfig | None = None) -> None:
        self.cfg = cfg or OnePixelConfig()

    def __call__(
        self, model: nn.Module | QueryModel, images: Tensor, targets: Tensor
    ) -> AttackResult:
        check_images(images, targets)
        return self._search(as_query(model, "logits"), images.detach(), targets.to(images.device))

    def _render(self, x0: Tensor, rows: Tensor, cand: Tensor) -> Tensor:
        """Images ``x0[rows]`` with each candidate's pixels set. cand: (m, pixels, 2 + C)."""
        x = x0[rows].clone()
        _, c, h, w = x.shape
        r = cand[..., 0].long().clamp(0, h - 1)
        col = cand[..., 1].long().clamp(0, w - 1)
        vals = cand[..., 2:]
        if self.cfg.quantize:
            vals = quantize8(vals)
        m = torch.arange(len(x), device=x.device)[:, None].expand_as(r)
        for ch in range(c):
            x[m, ch, r, col] = vals[..., ch]
        return x

    def _fitness(
        self, query: QueryModel, x0: Tensor, y: Tensor, rows: Tensor, cand: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(m,) fitness (lower is better) and (m, K) logits of the candidates."""
        outs = []
        for i in range(0, len(rows), self.cfg.max_batch):
            sl = slice(i, i + self.cfg.max_batch)
            outs.append(query.select(rows[sl])(self._render(x0, rows[sl], cand[sl])))
        logits = torch.cat(outs)
        p = torch.softmax(logits, 1).gather(1, y[rows][:, None]).squeeze(1)
        return (1 - p if self.cfg.targeted else p), logits

    def _search(self, query: QueryModel, x0: Tensor, y: Tensor) -> AttackResult:
        cfg = self.cfg
        n, c, h, w = x0.shape
        dev = x0.device
        gen = torch.Generator(device=dev)
        if cfg.seed is None:
            gen.seed()
        else:
            gen.manual_seed(cfg.seed)
        p, k = cfg.popsize, cfg.pixels
        hi = torch.tensor([h - 1e-3, w - 1e-3] + [1.0] * c, device=dev, dtype=x0.dtype)
        pop = torch.rand((n, p, k, 2 + c), generator=gen, device=dev, dtype=x0.dtype) * hi
        rows = torch.arange(n, device=dev).repeat_interleave(p)
        fit, logits = self._fitness(query, x0, y, rows, pop.flatten(0, 1))
        fit, logits = fit.view(n, p), logits.view(n, p, -1)
        queries = torch.full((n,), p, dtype=torch.long, device=dev)
        active = torch.arange(n, device=dev)
        arange_p = torch.arange(p, device=dev)
        for _gen in range(cfg.steps):
            best = fit[active].argmin(1)
            ok = is_success(logits[active, best], y[active], cfg.targeted, cfg.margin)
            if cfg.early_stop:
                active = active[~ok]
            if not len(active):
                break
            m = len(active)
            # three distinct-from-self random members per candidate
            r = torch.randint(0, p - 1, (m, p, 3), generator=gen, device=dev)
            r = r + (r >= arange_p[None, :, None]).long()
            pa = pop[active]
            pick = torch.arange(m, device=dev)[:, None]
            if cfg.strategy == "rand1":
                base, f = pa[pick, r[..., 0]], cfg.mutation
            else:
                base = pa[torch.arange(m, device=dev), fit[active].argmin(1)][:, None]
                f = 0.5 + 0.5 * float(torch.rand((), generator=gen, device=dev))
            child = base + f * (pa[pick, r[..., 1]] - pa[pick, r[..., 2]])
            # out-of-range genes are drawn again uniformly (as SciPy's DE does), not clipped:
            # clipping would pile colours up at 0 and 1
            out = (child < 0) | (child > hi)
            redraw = torch.rand(child.shape, generator=gen, device=dev, dtype=child.dtype) * hi
            child = torch.where(out, redraw, child)
            rws = active.repeat_interleave(p)
            f_new, l_new = self._fitness(query, x0, y, rws, child.flatten(0, 1))
            f_new, l_new = f_new.view(m, p), l_new.view(m, p, -1)
            better = f_new <= fit[active]
            pop[active] = torch.where(better[..., None, None], child, pa)
            fit[active] = torch.where(better, f_new, fit[active])
            logits[active] = torch.where(better[..., None], l_new, logits[active])
            queries[active] += p
        best = fit.argmin(1)
        everyone = torch.arange(n, device=dev)
        x_adv = self._render(x0, everyone, pop[everyone, best])
        final = logits[everyone, best]
        success = is_success(final, y, cfg.targeted, cfg.margin)
        return AttackResult(
            x_adv, success, queries, final, perturbation_norms(x0, x_adv), queries=queries
        )
