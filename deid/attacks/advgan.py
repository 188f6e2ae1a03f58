"""AdvGAN (Xiao et al. 2018): a trained generator perturbs every face of a batch in one
forward pass; optional I-FGSM steps refine the faces it missed."""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from deid.attacks.base import (
    AttackConfigBase,
    AttackResult,
    Budget,
    ball_bounds,
    check_images,
    decision_logits,
    fast,
    is_success,
    perturbation_norms,
    project,
    quantize8,
    select,
    settle_near_threshold,
)
from deid.attacks.eot import EOTConfig
from deid.attacks.ifgsm import IFGSM, IFGSMConfig
from deid.attacks.iterative import iterate
from deid.errors import ConfigError
from deid.generators.advgan import AdvGenerator, classifier_fingerprint, read_meta
from deid.models import WEIGHTS_DIR
from deid.models.classifier import FaceClassifier, to_channels, warp
from deid.targets import TargetMode

log = logging.getLogger(__name__)

_LUMA = (0.299, 0.587, 0.114)


class AdvGANConfig(AttackConfigBase):
    """AdvGAN: the generator's perturbation, then up to ``steps`` I-FGSM steps (with
    ``eot`` if enabled) for the faces that are not yet their target by the refinement's
    margin (``refine_margin``)."""

    name: Literal["advgan"] = "advgan"
    default_target: ClassVar[TargetMode] = "random"  # trained on uniformly drawn targets
    weights: str | None = Field(
        None,
        description="generator checkpoint (.pt) or a shipped name such as advgan-yaleb-mlp; "
        "None: the shipped generator trained against the classifier in use",
    )
    eps: Budget | None = Field(
        None, gt=0.0, le=1.0, description="L-inf bound (None: the generator's own)"
    )
    grades: list[float] | None = Field(
        None,
        description="fractions of the generator's perturbation tried in this order, each face "
        "keeping the first at which it is its target by the refinement's margin (one "
        "classifier pass per fraction on the faces still short; e.g. [0.25, 0.5, 1.0]: "
        "faces that need less get a fainter pattern); None: the whole perturbation",
    )
    grade_margin: float = Field(
        0.0,
        ge=0.0,
        description="what a face must win by, beyond the refinement's margin, to keep a "
        "fraction below the last (a fainter pattern survives the codec less well)",
    )
    # the defaults: 3 plain steps for the faces the generator leaves under a margin of 5
    # (on 890 held-out CelebA faces 99.1% 8-bit, 90.1% after H.264 crf 23, a third of the
    # time of 5 steps with EOT for 91.1%: README "AdvGAN")
    steps: int = Field(3, ge=0, le=1000, description="I-FGSM refinement steps for missed faces")
    refine_margin: float | None = Field(
        5.0,
        ge=0.0,
        description="logit margin a face must reach its target by to skip the refinement, "
        "and at which its refinement stops (with EOT: its copies too); success itself is "
        "still judged by `margin`. None: `eot.margin` with EOT on, else `margin`",
    )
    alpha: Budget = Field(2 / 255, gt=0.0, le=1.0, description="refinement step size")
    eot: EOTConfig = Field(
        default_factory=EOTConfig,
        description="the refinement's Expectation over Transformation (off by default; with "
        "`refine_margin: null` its margin decides which faces the generator missed)",
    )

    @field_validator("targeted")
    @classmethod
    def _targeted(cls, v: bool) -> bool:
        if not v:
            raise ValueError("advgan's generator is trained for targets only; set targeted: true")
        return v

    @field_validator("grades")
    @classmethod
    def _grades(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (
            not v or any(not 0.0 <= g <= 1.0 for g in v) or any(a >= b for a, b in pairwise(v))
        ):
            raise ValueError(f"expected increasing fractions in [0, 1], got {v}")
        return v


class AdvGAN:
    r"""AdvGAN: ``x_adv = Clip_{x,eps}(x + G(x, t))``, one forward pass of a generator
    trained against the (frozen) classifier, then optional refinement.

    The generator (:class:`deid.generators.advgan.AdvGenerator`) works in the classifier's
    aligned input space: a crop is warped by the classifier's own alignment (a
    :class:`~deid.models.classifier.BoundClassifier`) or resized to the input size, the
    perturbation is computed there and mapped back to the crop by the inverse warp (bilinear,
    so it stays within eps), made grey on grey faces, added, clipped to the eps-ball and
    [0, 1] and rounded to 8 bits. Faces that are not classified as their target by the
    refinement's margin (:func:`refine_margin`: ``refine_margin``, 5 by default) then get
    up to ``steps`` targeted I-FGSM steps (with EOT if enabled)
    (:mod:`deid.attacks.iterative`) starting from the generator's output, inside the same
    ball. ``success`` (by ``margin``) and ``logits`` describe the returned pixels (a
    classifier set to a lower precision screens these checks, and the exact classifier
    decides every face near a threshold: :func:`deid.attacks.base.decision_logits`).

    Paper: Xiao, Li, Zhu, He, Liu, Song, "Generating Adversarial Examples with Adversarial
    Networks", https://arxiv.org/abs/1801.02610. Norm: L-inf. White-box at training time;
    one forward pass at attack time. Trained by ``deid train advgan`` (targeted C&W margin
    through EOT transformations + GAN + hinge).

    Args:
        cfg: :class:`AdvGANConfig`.

    Shape:
        - images: (N, C, H, W) float in [0, 1] (any H, W).
        - targets: (N,) int64 target classes.
        - result.images: like ``images``, within eps of them in L-inf.
        - result.steps: (N,) the refinement steps each face took (0: the generator alone).

    Example:
        >>> from deid.models import load_classifier
        >>> from deid.data import load_yaleb
        >>> model = load_classifier("yaleb-mlp")
        >>> x, y = load_yaleb().tensors("test")
        >>> r = AdvGAN(AdvGANConfig(steps=0))(model, x[:8], (y[:8] + 1) % 38)
        >>> bool((r.images - x[:8]).abs().max() <= 16 / 255 + 1e-6)
        True
    """

    def __init__(self, cfg: AdvGANConfig | None = None) -> None:
        self.cfg = cfg or AdvGANConfig()
        self._generators: dict[tuple[Path, str], AdvGenerator] = {}
        self._paths: weakref.WeakKeyDictionary[nn.Module, Path] = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        check_images(images, targets)
        c = self.cfg
        clf, theta = unwrap(model)
        gen = self.generator(clf, images.device)
        eps = min(c.eps, gen.meta.eps) if c.eps is not None else gen.meta.eps
        x0 = images.detach()
        robust = refine_margin(c)
        # the margins this call decides at (a model set to a lower precision screens them:
        # deid.attacks.base.decision_logits)
        margins = (c.margin,) + ((robust,) if c.steps > 0 else ())
        if c.grades:
            margins += (robust, robust + c.grade_margin)
        with torch.no_grad():
            source = model(x0).argmax(1) if gen.meta.source else None
            delta = perturbation(gen, x0, targets, theta, source)
            if c.grades and len(x0):
                x, logits = self._graded(model, x0, delta, targets, eps, robust, margins)
            else:
                x = self._apply(x0, delta, eps)
                logits = decision_logits(model, x, targets, True, margins)
        ok = is_success(logits, targets, True, c.margin)
        steps = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        if c.steps > 0:
            miss = ~is_success(logits, targets, True, robust)
            if bool(miss.any()):
                idx = miss.nonzero().squeeze(1)
                r = self._refine(select(model, idx), x0[idx], targets[idx], x[idx], eps)
                # a face that won by `margin` and lost it in its steps keeps the generator's
                # pixels (with a refinement margin above `margin`, such faces take steps too)
                take = (r.success | ~ok[idx]).nonzero().squeeze(1)
                at = idx[take]
                x[at], logits[at], ok[at] = r.images[take], r.logits[take], r.success[take]
                steps[idx] = r.steps
        return AttackResult(x, ok, steps, logits, perturbation_norms(x0, x))

    def _apply(self, x0: Tensor, delta: Tensor, eps: float) -> Tensor:
        """``x0 + delta`` rounded to 8 bits (``quantize``), in [0, 1] and the eps-ball."""
        q = self.cfg.quantize
        # the generator keeps within its own eps: on 8-bit faces the rounded result is
        # already inside the ball's grid values, and projecting changes nothing
        x = (quantize8(x0 + delta) if q else x0 + delta).clamp(0, 1)
        if float((x - x0).abs().amax()) > eps + 1e-6:  # off-grid faces, a smaller eps
            x = project(x0 + delta, *ball_bounds(x0, eps, q), q)
        return x

    def _graded(
        self,
        model: nn.Module,
        x0: Tensor,
        delta: Tensor,
        t: Tensor,
        eps: float,
        margin: float,
        margins: tuple[float, ...],
    ) -> tuple[Tensor, Tensor]:
        """``cfg.grades``: each face at the first fraction of ``delta`` at which it is its
        target by ``margin`` (plus ``cfg.grade_margin`` below the last fraction); the faces
        short at the last fraction keep that one."""
        x = torch.empty_like(x0)
        logits: Tensor | None = None
        idx = torch.arange(len(x0), device=x0.device)
        grades = self.cfg.grades or [1.0]
        for g in grades:
            xi = self._apply(x0[idx], g * delta[idx], eps)
            mi = select(model, idx) if len(idx) < len(x0) else model
            li = decision_logits(mi, xi, t[idx], True, margins)
            if logits is None:
                logits = li.new_empty((len(x0), li.shape[1]))
            x[idx], logits[idx] = xi, li
            # a fainter pattern survives the codec less well: it must win by more
            need = margin if g == grades[-1] else margin + self.cfg.grade_margin
            idx = idx[~is_success(li, t[idx], True, need)]
            if len(idx) == 0:
                break
        assert logits is not None
        return x, logits

    def _refine(
        self, model: nn.Module, x0: Tensor, t: Tensor, start: Tensor, eps: float
    ) -> AttackResult:
        """Up to ``steps`` I-FGSM steps from ``start`` until each face wins by the
        refinement's margin (:func:`refine_margin`); ``success`` by ``margin``."""
        c = self.cfg
        robust = refine_margin(c)
        # the loop stops a face at its config's margin (with EOT: its copies at eot.margin)
        eot = c.eot.model_copy(update={"margin": robust}) if c.eot.enabled else c.eot
        icfg = IFGSMConfig(
            eps=eps,
            alpha=min(c.alpha, eps),
            steps=c.steps,
            margin=c.margin if c.eot.enabled else robust,
            quantize=c.quantize,
            eot=eot,
        )
        r = iterate(
            model, x0, t, IFGSM(icfg).step, icfg, steps=c.steps, start=lambda s: start, eot=eot
        )
        if icfg.margin != c.margin:  # the loop judged success by the refinement's margin
            logits = r.logits
            if fast(model) is not model:  # the exact classifier decides near `margin`
                logits = settle_near_threshold(
                    model, r.images, logits.clone(), t, True, (c.margin,)
                )
            r = replace(r, logits=logits, success=is_success(logits, t, True, c.margin))
        return r

    def generator(self, classifier: FaceClassifier, device: torch.device) -> AdvGenerator:
        """The generator for ``classifier`` (``cfg.weights``, or the shipped one trained
        against these weights), loaded once per device."""
        path = self._paths.get(classifier)
        if path is None:
            path = generator_path(self.cfg.weights, classifier)
            self._paths[classifier] = path
        key = (path, str(device))
        if key not in self._generators:
            gen = AdvGenerator.load(path, device)
            m = gen.meta
            if m.num_classes != classifier.num_classes or m.channels != classifier.meta.channels:
                raise ConfigError(
                    f"AdvGAN generator {path} was made for {m.num_classes} classes, "
                    f"{m.channels} channel(s); the classifier has {classifier.num_classes}, "
                    f"{classifier.meta.channels}"
                )
            self._generators[key] = gen
        return self._generators[key]


def refine_margin(cfg: AdvGANConfig) -> float:
    """The logit margin below which a face gets ``cfg``'s refinement steps and at which they
    stop: ``refine_margin`` if set, else ``eot.margin`` with EOT on; never below ``margin``."""
    m = cfg.refine_margin
    if m is None:
        m = cfg.eot.margin if cfg.eot.enabled else cfg.margin
    return max(cfg.margin, m)


def unwrap(model: nn.Module) -> tuple[FaceClassifier, Tensor | None]:
    """The :class:`FaceClassifier` inside ``model`` and its bound alignment, if any
    (through :class:`~deid.models.classifier.BoundClassifier` and wrappers that keep the
    wrapped model as ``.model``, such as the pipeline's grey-input one)."""
    m, theta = model, None
    for _ in range(8):
        if isinstance(m, FaceClassifier):
            return m, theta
        if hasattr(m, "theta") and hasattr(m, "classifier"):
            theta, m = m.theta, m.classifier
        elif isinstance(getattr(m, "model", None), nn.Module):
            m = m.model
        else:
            break
    raise ConfigError(
        f"advgan: expected a deid FaceClassifier (or one bound to alignments), got "
        f"{type(model).__name__}"
    )


def generator_path(weights: str | None, classifier: FaceClassifier) -> Path:
    """``weights`` as a path or shipped name; None: the shipped generator whose recorded
    classifier fingerprint is this classifier's."""
    if weights is not None:
        p = Path(weights)
        if p.suffix not in (".pt", ".pth"):
            p = WEIGHTS_DIR / f"{weights}.pt"
        if not p.is_file():
            raise ConfigError(f"advgan: generator checkpoint {weights!r} not found ({p})")
        fp = classifier_fingerprint(classifier)
        if read_meta(p).fingerprint not in ("", fp):
            log.warning("advgan: %s was trained against other classifier weights", p)
        return p
    fp = classifier_fingerprint(classifier)
    for p in sorted(WEIGHTS_DIR.glob("advgan-*.pt")):
        if read_meta(p).fingerprint == fp:
            return p
    raise ConfigError(
        f"advgan: no shipped generator was trained against this classifier "
        f"({classifier.meta.dataset}, fingerprint {fp}); train one with "
        "`deid train advgan --classifier NAME -o GEN.pt` and set attack.weights to it"
    )


def perturbation(
    gen: AdvGenerator,
    x: Tensor,
    targets: Tensor,
    theta: Tensor | None,
    source: Tensor | None = None,
) -> Tensor:
    """(N, C, H, W) the generator's perturbation of crops ``x``, in crop pixels.

    The crops are brought to the generator's input (the alignment warp ``theta``, or a
    resize), the perturbation is mapped back (the inverse warp, or a resize; zero where the
    aligned face does not reach) and given the crops' channels (``source``: the classifier's
    prediction on each crop, for a generator conditioned on it): a grayscale generator's
    perturbation is the same in R, G and B, and a colour one is made grey on grey crops."""
    hw = tuple(gen.meta.size)
    xc = to_channels(x, gen.meta.channels)
    if theta is not None:
        xa = warp(xc, theta, hw)
    elif tuple(x.shape[-2:]) != hw:
        xa = F.interpolate(xc, size=hw, mode="bilinear", align_corners=False, antialias=True)
    else:
        xa = xc
    d = gen(xa, targets, source)
    if theta is not None:
        d = unwarp(d, theta, (x.shape[-2], x.shape[-1]))
    elif tuple(x.shape[-2:]) != hw:
        d = F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
    if x.shape[1] == d.shape[1]:
        if x.shape[1] == 3:
            grey = (x[:, :1] == x[:, 1:2]).flatten(1).all(1) & (x[:, 1:2] == x[:, 2:]).flatten(
                1
            ).all(1)
            luma = (d * d.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
            d = torch.where(grey.view(-1, 1, 1, 1), luma.expand_as(d), d)
        return d
    if d.shape[1] == 1:
        return d.expand(-1, x.shape[1], -1, -1)
    return (d * d.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def unwarp(d: Tensor, theta: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Map (N, C, h, w) values of the aligned frame back to crops of ``out_hw``: the inverse
    of :func:`deid.models.classifier.warp`'s affine map (zero outside the aligned frame)."""
    a = theta[:, :, :2]
    b = theta[:, :, 2:]
    ainv = torch.linalg.inv(a.double()).to(theta.dtype)
    inv = torch.cat([ainv, -ainv @ b], 2)
    grid = F.affine_grid(inv.to(d.dtype), [len(d), d.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(d, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
