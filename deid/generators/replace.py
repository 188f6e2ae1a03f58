"""``--attack replace``: every face is replaced by a generated face of no one, one new face per
track, pasted back with a soft mask and colour-matched; then (by default) a few targeted
I-FGSM steps with EOT (as configs/default.yaml's I-FGSM: 16/255, 4 copies, margin 2) make
deid's classifier see the chosen target identity in it (``then: auto``: the classifier's
AdvGAN generator first, faster and more visible).

The face generator (:mod:`deid.generators.facegan`) works on crops aligned by the five
landmarks to the template it was trained with; here each face crop is warped to that
aligned square, its inner region is generated, and the result is warped back into the
crop's own pixels. Faces larger than the generator's 64 px are upsampled (bilinear): the
new face is softer than the frame around it, which is what a viewer notices first on large
faces; its mean colour is matched to the original face's so that lighting and skin tone
fit the scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from deid.attacks.base import Attack, AttackResult, Budget, perturbation_norms, quantize8
from deid.generators.base import GeneratorConfig, follow_attack
from deid.generators.facegan import FaceGenerator, z_for_tracks
from deid.geometry import similarity
from deid.models import WEIGHTS_DIR
from deid.targets import TargetMode, lookalike_targets

SHIPPED = WEIGHTS_DIR / "facegan-celeba.pt"
_LUMA = (0.299, 0.587, 0.114)


class ReplaceConfig(GeneratorConfig):
    """``attack: {name: replace, ...}``.

    Its target, unless ``attack.target`` names one, is ``lookalike``: each track's new face
    is steered to the identity deid's classifier already sees most in it, other than the
    original face's likeliest few (:data:`deid.targets.LOOKALIKE_AVOID`), which takes a third
    of the steps ``least-likely`` does.
    """

    default_target: ClassVar[TargetMode] = "lookalike"

    name: Literal["replace"] = "replace"
    generator: Path | None = Field(
        None, description="a face generator checkpoint (default: the shipped facegan-celeba.pt)"
    )
    seed: int = Field(0, description="seeds each track's latent: the same seed, the same faces")
    colour_match: Literal["luma", "rgb", "none"] = Field(
        "luma",
        description="match the new face to the old one's mean brightness (luma), mean colour "
        "per channel (rgb, the default until 2026-12-06: a blue cast in shade) or not at all",
    )
    region_scale: float = Field(
        1.0,
        ge=0.85,
        le=1.15,
        description="the replaced ellipse's radii over the generator's own region (its "
        "training jittered them by up to 12%)",
    )
    then: str | None = Field(
        "ifgsm",
        description="an attack run on the replaced faces (targeted); auto: advgan where a "
        "generator was trained against the classifier in use, graded, else ifgsm (3-4x "
        "faster in the pipeline, but its pattern shows as colour speckle on large faces); "
        "null: none",
    )
    then_params: dict[str, Any] = Field(
        default_factory=lambda: {
            "steps": 20,
            "eps": 16 / 255,
            "alpha": 2 / 255,
            "eot": {"enabled": True, "samples": 4, "margin": 2.0},
        },
        description="settings of the `then` attack (its defaults for the rest, EOT included)",
    )
    escalate_eps: Budget | None = Field(
        32 / 255,
        gt=0.0,
        le=1.0,
        description="a face whose targeted steps all ran without reaching their margin (most "
        "are small faces) gets as many steps again from there, within this L-inf distance of "
        "its generated face (larger than the `then` attack's eps); null: no second round",
    )

    @field_validator("colour_match", mode="before")
    @classmethod
    def _colour_match_bool(cls, v: Any) -> Any:
        # true / false, as the setting was until 2026-12-06: per-channel colour / none
        return {True: "rgb", False: "none"}.get(v, v) if isinstance(v, bool) else v


class ReplaceFaces:
    """The :class:`~deid.pipeline.protect.Generator` of ``--attack replace``.

    Called as an attack (``replace(model, x, target)``, on faces that are already aligned
    squares, as ``deid eval dataset`` hands them) it replaces every face (each its own
    latent), writes it to 8 bits and runs the ``then`` attack toward ``target`` (for the
    ``lookalike`` target the caller asks :meth:`lookalike` first); without
    ``then``, success means the target was reached anyway (the generated face is not aimed
    at anyone).
    """

    def __init__(self, cfg: ReplaceConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.gen = FaceGenerator.load(cfg.generator or SHIPPED, device)
        self.template = np.asarray(self.gen.meta.template, np.float64)
        self._then: Attack | None = None  # built on the first call as an attack (in the
        # pipeline, the GeneratorProtector runs `then` itself)

    def __call__(self, model: nn.Module, x: Tensor, target: Tensor) -> AttackResult:
        new = self._new_faces(x)
        if self.cfg.then and self._then is None:
            self._then = follow_attack(self.cfg.then, self.cfg.then_params)
        if self._then is not None:
            r = self._then(model, new, target)
            images, steps = r.images, r.steps
        else:
            images, steps = new, torch.zeros(len(x), dtype=torch.int64)
        with torch.no_grad():
            logits = model(images)
        return AttackResult(
            images=images,
            success=(logits.argmax(1) == target).cpu(),
            steps=steps.cpu(),
            logits=logits,
            norms=perturbation_norms(x, images),
        )

    @torch.no_grad()
    def _new_faces(self, x: Tensor) -> Tensor:
        """The 8-bit new faces of aligned squares (each face its own latent, by its index in
        the batch), grey on grey."""
        grey = x.shape[1] == 1
        x3 = x.expand(-1, 3, -1, -1) if grey else x
        nan = torch.full((len(x), 5, 2), float("nan"))
        new = self.generate(x3, nan, torch.arange(len(x), device=x.device))
        if grey:
            new = (new * torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, True)
        return quantize8(new)

    @torch.no_grad()
    def lookalike(self, model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
        """(N,) the ``lookalike`` targets of aligned faces as calls on batches of
        ``batch_size`` replace them: for each new face, the identity ``model`` sees most in
        it, other than the original face's likeliest few
        (:func:`deid.targets.lookalike_targets`)."""
        lp, original = [], []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            lp.append(torch.log_softmax(model(self._new_faces(xb)).float(), 1).cpu())
            original.append(model(xb).float().cpu())
        return lookalike_targets(torch.cat(lp), torch.cat(original), [-1] * len(x)).to(x.device)

    @torch.no_grad()
    def generate(self, crops: Tensor, landmarks: Tensor, track_ids: Tensor) -> Tensor:
        dev = crops.device
        if next(self.gen.parameters()).device != dev:
            self.gen.to(dev)  # the pipeline's device (--device)
        x = crops.float()
        n, _, h, w = x.shape
        gh, gw = self.gen.meta.size
        to_crop = torch.stack([self._theta(lm, (h, w)) for lm in landmarks.cpu().numpy()]).to(dev)
        # crop -> aligned square (what the generator was trained on)
        grid = F.affine_grid(to_crop, [n, 3, gh, gw], align_corners=False)
        aligned = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        mask = self.gen.mask(n, dev, self.cfg.region_scale)
        z = z_for_tracks(track_ids.cpu(), self.gen.meta.z_dim, self.cfg.seed).to(dev)
        face = self.gen(aligned, mask, z)
        if self.cfg.colour_match != "none":
            face = _match_mean(face, aligned, mask, self.cfg.colour_match)
        # aligned square -> crop pixels: invert the affine map
        back = F.affine_grid(_invert(to_crop), [n, 3, h, w], align_corners=False)
        face_c = F.grid_sample(
            face, back, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        mask_c = F.grid_sample(
            mask, back, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return (mask_c * face_c + (1 - mask_c) * x).clamp(0, 1)

    def _theta(self, lm: np.ndarray, hw: tuple[int, int]) -> Tensor:
        """(2, 3) affine map from the aligned square's normalised coords to the crop's."""
        h, w = hw
        gh, gw = self.gen.meta.size
        if not np.isfinite(lm).all():  # no landmarks: the crop is the aligned square
            return torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
        dst = self.template * np.array([gw, gh])
        minv = np.linalg.inv(similarity(lm, dst))  # aligned px -> crop px
        d_out = np.array([[gw / 2, 0, gw / 2], [0, gh / 2, gh / 2], [0, 0, 1]])
        n_in = np.array([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
        return torch.tensor((n_in @ minv @ d_out)[:2], dtype=torch.float32)


def _invert(theta: Tensor) -> Tensor:
    full = torch.cat(
        [theta, torch.tensor([0, 0, 1.0], device=theta.device).expand(len(theta), 1, 3)], 1
    )
    return torch.linalg.inv(full)[:, :2]


def _match_mean(face: Tensor, original: Tensor, mask: Tensor, mode: str = "luma") -> Tensor:
    """Shift the generated face's mean inside the mask to the original's: its mean
    brightness (``luma``: the same shift in R, G and B, so the generator's own colours stay),
    or its mean colour (``rgb``: per channel). The scene's lighting, not anyone's identity.

    ``rgb`` takes the colour of everything the mask covers, hair, collar and background
    included: in the shade of the pedestrian clip it gave the new faces a blue cast, which
    ``luma`` does not."""
    wsum = mask.sum((2, 3), keepdim=True).clamp_min(1e-6)
    shift = ((original - face) * mask).sum((2, 3), keepdim=True) / wsum
    if mode == "luma":
        shift = (shift * shift.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (face + shift).clamp(0, 1)


def build(cfg: ReplaceConfig) -> ReplaceFaces:
    """The registry's factory (the generator follows the crops to the pipeline's device)."""
    return ReplaceFaces(cfg)
