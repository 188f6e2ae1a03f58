"""``deid train advgan``'s presets and flags: plain data, no torch (building the command line
stays quick); :mod:`deid.generators.train_advgan` does the training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from deid.argtypes import fraction
from deid.errors import ConfigError


@dataclass(frozen=True)
class AdvGANRecipe:
    """How an AdvGAN generator is trained against one classifier.

    Attributes:
        eps: L-inf bound of the perturbation (pixels in [0, 1]).
        epochs, batch_size: passes over the classifier's training split, faces per step.
        lr, lr_d: Adam learning rates of the generator and the discriminator.
        lr_map: Adam learning rate of the generator's per-target perturbation maps.
        lr_identify: Adam learning rate of the generator's own identity guess
            (``own_source``).
        lambda_identify: weight of that guess's cross-entropy against the classifier's
            answer on the clean face (training only: no classifier pass when attacking).
        width, embed, scale, levels, source, own_source, full_maps, film_all: the generator
            (:class:`deid.generators.advgan.GeneratorMeta`).
        kappa: C&W margin: the target's logit must beat every other by this.
        lambda_gan: weight of the generator's GAN loss (non-saturating).
        lambda_hinge: weight of the hinge on the perturbation's RMS above ``hinge`` x eps.
        hinge: the RMS (a fraction of eps) the hinge lets pass free.
        d_steps: discriminator steps per generator step (k of the seed's minibatch algorithm).
        eot_copies: transformed copies per face (deid.attacks.eot), besides the 8-bit one.
        h264_copies: copies per face through a real H.264 round trip (deid's own writer
            and reader, :mod:`deid.attacks.codec`; straight-through gradient), each at a
            crf drawn uniformly from ``h264_crf`` (inclusive).
        augment: jitter the training faces a little (brightness, contrast, shifts). Off for
            the Yale B MLP: the jitter alone confuses it, so the generator learns less.
        sheet_every: a contact sheet of perturbed faces every this many epochs.
        precision: the frozen classifier's gradient passes in training (the adversarial
            loss's): ``float32``, or ``auto``
            (bfloat16 where the device has it natively, as an attack's gradient passes:
            :mod:`deid.models.precision`); the held-out figures are always float32's.
        zero_out: start the network's output layer at zero, so that training starts from
            the per-target maps alone (a universal perturbation per target) and the network
            learns the face-specific part on top; a random start adds noise that saturates
            the ``tanh`` and stalls the maps.
        warmup: the one-cycle schedule's warm-up (the first 10% of the steps rising from
            1/25 of each learning rate); off: 10% at the full rates, then the same cosine
            decay.
        cycle_momentum: the one-cycle schedule also cycles Adam's beta1 (0.95 -> 0.85 ->
            0.95, replacing the 0.5 the optimiser is built with); off: beta1 stays 0.5.
            For the CelebA CNN's per-target maps, either of the two (warm-up, cycled beta1)
            alone stalled training at 0% for 10 epochs where the maps without them learnt
            (README, AdvGAN).
    """

    eps: float = 16 / 255
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    lr_d: float = 2e-4
    lr_map: float = 0.02
    lr_identify: float = 1e-2
    lambda_identify: float = 1.0
    width: int = 16
    embed: int = 8
    scale: int = 2
    levels: int = 1
    source: bool = False
    own_source: bool = False
    full_maps: bool = False
    film_all: bool = False
    kappa: float = 3.0
    lambda_gan: float = 0.05
    lambda_hinge: float = 0.5
    hinge: float = 0.7
    d_steps: int = 1
    eot_copies: int = 2
    h264_copies: int = 0
    h264_crf: tuple[int, int] = (18, 28)
    augment: bool = True
    sheet_every: int = 5
    precision: str = "float32"
    zero_out: bool = False
    warmup: bool = True
    cycle_momentum: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.h264_crf
        if not 0 <= lo <= hi <= 51:
            raise ConfigError(f"h264_crf: expected 0 <= low <= high <= 51, got {self.h264_crf}")

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps_255"] = round(self.eps * 255, 3)
        return d


ADVGAN_RECIPES: dict[str, AdvGANRecipe] = {
    # 2026-12-06, second recipe: no network, the maps alone (one per target plus one per
    # source identity, Adam at 0.1): 99.0% / 97.2% (8-bit / crf 23) held out, and the MLP's
    # two passes are the whole cost; the first recipe's network (width 12 at 12x11, maps at
    # 0.02) gave 94.9% / 87.8%, the maps without the source ones 89.4%
    "yaleb-mlp": AdvGANRecipe(
        width=0,
        own_source=True,
        full_maps=True,
        lr=0.1,
        lr_map=0.1,
        epochs=80,
        augment=False,
        hinge=0.85,
        lambda_hinge=0.25,
    ),
    # 2026-12-06: the per-target maps alone (a universal perturbation per target, Adam at
    # 0.1) reach 50-68% held-out in 10-25 epochs; a randomly started network on top and
    # maps at Adam 0.02 stalled (0.2-0.45% after 10 epochs): the network starts at zero.
    # 2026-12-06, night: one strided level at 16x16 (the face pooled 4x) gave 69.3% after 36
    # epochs; three levels from 32x32, started on its maps, gained 7 points in 16 epochs;
    # from scratch 84.6% in 80 epochs (its training batches still rising), 87.3% in 120.
    # 2026-12-07: the one-cycle warm-up and the cycled beta1 each kept the maps at 0% for
    # the first epochs (a 10-epoch run: 0.3% held out; without them 55%); without them, and
    # FiLM at every level (embedding 16): 88.2% / 80.5% (8-bit / crf 23) in 120 epochs.
    # 2026-12-07, later (10-epoch probes from 55.2%: source maps 59.1%, kappa 5 58.8%, no GAN
    # loss 58.0%, hinge at 1.0 eps 26.5%, full-resolution maps 62.4%): full-resolution maps
    # and kappa 5 together, 120 epochs: 89.8% / 81.5%
    "celeba-cnn": AdvGANRecipe(
        width=16,
        embed=16,
        film_all=True,
        full_maps=True,
        kappa=5.0,
        warmup=False,
        cycle_momentum=False,
        scale=2,
        levels=3,
        epochs=120,
        eot_copies=1,
        lr_map=0.1,
        zero_out=True,
        augment=False,
        hinge=0.85,
        lambda_hinge=0.25,
        precision="auto",
    ),
}


def add_advgan_flags(p: Any) -> None:
    """``deid train advgan``'s flags (an argparse parser)."""
    g = p.add_argument_group("advgan (deid train advgan --classifier NAME)")
    g.add_argument(
        "--classifier",
        help="the classifier to fool: yaleb-mlp, celeba-cnn or a checkpoint path",
    )
    g.add_argument("--linf", type=fraction, help="L-inf bound of the perturbation (16/255)")
    g.add_argument("--lambda-gan", type=float, help="weight of the GAN loss")
    g.add_argument("--lambda-hinge", type=float, help="weight of the hinge on the norm")
    g.add_argument("--d-steps", type=int, help="discriminator steps per generator step (k)")
    g.add_argument(
        "--eot-copies", type=int, help="EOT-transformed copies of each face per step (preset's)"
    )
    g.add_argument(
        "--h264-copies",
        type=int,
        help="copies of each face per step through a real H.264 round trip (preset's)",
    )
    g.add_argument("--samples-dir", type=Path, help="contact sheets (default: beside -o)")


def advgan_recipe(classifier: str, args: Any) -> AdvGANRecipe:
    """The preset for ``classifier`` (its shipped name; a path gets the CelebA CNN's), with
    the flags' changes."""
    r = ADVGAN_RECIPES.get(classifier, ADVGAN_RECIPES["celeba-cnn"])
    changes = {
        k: v
        for k, v in {
            "eps": getattr(args, "linf", None),
            "epochs": getattr(args, "epochs", None),
            "lambda_gan": getattr(args, "lambda_gan", None),
            "lambda_hinge": getattr(args, "lambda_hinge", None),
            "d_steps": getattr(args, "d_steps", None),
            "eot_copies": getattr(args, "eot_copies", None),
            "h264_copies": getattr(args, "h264_copies", None),
        }.items()
        if v is not None
    }
    r = replace(r, **changes)
    if not 0.0 < r.eps <= 1.0:
        raise ConfigError(f"--linf must be in (0, 1] (e.g. 16/255), got {r.eps}")
    for flag, v, least in (
        ("--d-steps", r.d_steps, 0),
        ("--eot-copies", r.eot_copies, 0),
        ("--h264-copies", r.h264_copies, 0),
        ("--epochs", r.epochs, 1),
    ):
        if v < least:
            raise ConfigError(f"{flag} must be >= {least}, got {v}")
    return r
