"""Feature Adversaries (Sabour et al. 2016): look like the source, be represented like a guide."""

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
from deid.attacks.ifgsm import IFGSM, IFGSMConfig
from deid.attacks.lbfgs import minimize_box
from deid.errors import ConfigError
from deid.targets import TargetMode


class FeatureAdversaryConfig(AttackConfigBase):
    """Match a guide's embedding within an L-inf ball around the source image."""

    name: Literal["feature"] = "feature"
    default_target: ClassVar[TargetMode] = "least-likely"
    eps: Budget = Field(16 / 255, gt=0.0, le=1.0, description="L-inf bound delta")
    max_iter: int = Field(40, ge=1, le=10_000, description="L-BFGS-B iterations")
    guide_steps: int = Field(
        40, ge=1, le=10_000, description="steps of the synthetic guide (see the class docstring)"
    )
    guide_margin: float = Field(
        5.0, ge=0.0, description="logit margin by which a synthetic guide is the target"
    )


class FeatureAdversary:
    r"""Feature Adversaries: an image within ``eps`` (L-inf) of the source whose internal
    representation matches that of a guide image of another identity.

    ``min_{x'} ||phi(x') - phi(x_guide)||_2^2`` subject to ``||x' - x||_inf <= eps`` and
    ``x' in [0, 1]``, solved with L-BFGS-B (the paper's solver), where ``phi`` is the
    classifier's embedding (``model.embed(x)``: the layer the class scores are read from;
    :class:`deid.models.FaceClassifier` provides it). This is the form that attacks
    embedding-based recognisers: the face is *represented* as the guide's identity.

    Guides: ``attack(model, images, targets, guides=...)`` takes (N, C, H, W) guide images
    or (N, D) guide embeddings. Without them (the pipeline), each sample's guide is the
    image of the batch most confidently classified as its target; where the batch holds
    none, a synthetic guide: the sample driven by unbounded targeted I-FGSM until the
    target wins by ``guide_margin`` (an internal representation the network reads as the
    target, made from the model alone, no data needed).

    Success: targeted, the top class is the target (the guide's class); untargeted
    (``targeted=False``, ``targets`` = true classes), the guide is of the most likely other
    class and success means the top class is not the true one.

    Paper: Sabour, Cao, Faghri, Fleet, "Adversarial Manipulation of Deep Representations",
    https://arxiv.org/abs/1511.05122. Norm: L-inf (bounded). Targeted or untargeted.
    White-box (needs the embedding).

    Shape:
        - images: (N, C, H, W) float in [0, 1].
        - targets: (N,) int64 target classes (targeted) or true classes (untargeted).
        - guides (optional): (N, C, H, W) float in [0, 1] or (N, D) embeddings.
        - result.images: like ``images``, within ``eps`` in L-inf.
    """

    def __init__(self, cfg: FeatureAdversaryConfig | None = None) -> None:
        self.cfg = cfg or FeatureAdversaryConfig()

    def __call__(
        self, model: nn.Module, images: Tensor, targets: Tensor, guides: Tensor | None = None
    ) -> AttackResult:
        check_images(images, targets)
        cfg = self.cfg
        x0 = images.detach()
        y = targets.to(x0.device)
        n = len(x0)
        everyone = torch.arange(n, device=x0.device)
        with attack_mode(model):
            m = select(model, everyone)
            embed = getattr(m, "embed", None)
            if not callable(embed):
                raise ConfigError(
                    f"feature adversaries need a model with an embed(x) method (an internal "
                    f"representation); got {type(m).__name__}: use a deid FaceClassifier"
                )
            logits0 = predict(model, x0)
            guide_class = y if cfg.targeted else logits0.scatter(1, y[:, None], -1e9).argmax(1)
            with torch.no_grad():
                g = self._guides(model, x0, guide_class, logits0, guides)
            lo, hi = (x0 - cfg.eps).clamp(0, 1), (x0 + cfg.eps).clamp(0, 1)
            xa = minimize_box(
                lambda x: (embed(x) - g).pow(2).flatten(1).sum(1), x0, lo, hi, cfg.max_iter
            )
            if cfg.quantize:
                lo_q = torch.ceil(lo * 255 - 1e-4) / 255
                hi_q = torch.floor(hi * 255 + 1e-4) / 255
                xa = torch.minimum(torch.maximum(quantize8(xa), lo_q), hi_q)
            with torch.no_grad():
                logits = m(xa)
        success = is_success(logits, y, cfg.targeted, cfg.margin)
        steps = torch.full((n,), cfg.max_iter, dtype=torch.long, device=x0.device)
        return AttackResult(xa, success, steps, logits, perturbation_norms(x0, xa))

    def _guides(
        self,
        model: nn.Module,
        x0: Tensor,
        cls: Tensor,
        logits0: Tensor,
        guides: Tensor | None,
    ) -> Tensor:
        """(N, D) the guide embedding of each sample."""
        n = len(x0)
        m = select(model, torch.arange(n, device=x0.device))
        if guides is not None:
            if guides.ndim == 2 and guides.shape[0] == n:
                return guides.to(x0.device, x0.dtype)
            check_images(guides)
            if guides.shape[0] != n:
                raise ConfigError(f"guides: expected {n} guides (one per image), got {len(guides)}")
            return m.embed(guides.to(x0.device, x0.dtype))
        emb = m.embed(x0)
        g = emb.clone()
        pred = logits0.argmax(1)
        conf = torch.softmax(logits0, 1)
        need = torch.ones(n, dtype=torch.bool, device=x0.device)
        for i in range(n):
            holders = (pred == cls[i]).nonzero().flatten()
            holders = holders[holders != i]
            if len(holders):
                best = holders[conf[holders, cls[i]].argmax()]
                g[i] = emb[best]
                need[i] = False
        if bool(need.any()):
            idx = need.nonzero().flatten()
            with torch.enable_grad():
                r = IFGSM(
                    IFGSMConfig(
                        eps=1.0,
                        alpha=4 / 255,
                        steps=self.cfg.guide_steps,
                        margin=self.cfg.guide_margin,
                        quantize=False,
                    )
                )(select(model, idx), x0[idx], cls[idx])
            g[idx] = select(model, idx).embed(r.images)
        return g
