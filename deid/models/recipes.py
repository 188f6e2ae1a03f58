"""Training presets and ``deid train``'s flags: plain data, no torch (so that building the
command line stays quick); :mod:`deid.models.train` does the training.

Presets, each a complete recipe: ``yaleb-mlp`` (the seed's MLP on grayscale Extended
Yale B), ``yaleb-cnn`` (a small ResNet on the same data: a second architecture for the
transferability tables) and ``celeba-cnn`` (a small ResNet on RGB CelebA identities).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from deid.argtypes import fraction
from deid.errors import ConfigError


@dataclass
class Recipe:
    """A training preset."""

    dataset: str
    arch: str
    arch_params: dict[str, Any]
    input_size: tuple[int, int]
    norm: str  # "per_image" | "channel"
    epochs: int
    batch_size: int
    optimizer: str  # "adamw" | "sgd"
    lr: float
    weight_decay: float
    label_smoothing: float
    warmup_epochs: int = 2
    ema: float = 0.0
    aug: dict[str, float] = field(default_factory=dict)
    resolution: str = "48x42"  # Yale B only: which shared file to read
    min_std: float | None = None  # per_image only: floor on each image's std


RECIPES: dict[str, Recipe] = {
    "yaleb-mlp": Recipe(
        dataset="yaleb",
        arch="mlp",
        arch_params={"hidden": [256], "dropout": 0.2},
        input_size=(48, 42),
        norm="per_image",
        epochs=60,
        batch_size=64,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        label_smoothing=0.3,
        aug={"brightness": 0.4, "gamma": 0.4, "noise": 0.03},
    ),
    "yaleb-cnn": Recipe(
        dataset="yaleb",
        arch="resnet",
        arch_params={"widths": [16, 32, 64], "blocks": [1, 1, 1], "dropout": 0.2, "stem_stride": 2},
        input_size=(48, 42),
        norm="per_image",
        epochs=30,
        batch_size=64,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=5e-4,
        label_smoothing=0.1,
        aug={"brightness": 0.4, "gamma": 0.4, "noise": 0.03, "shift": 0.04},
    ),
    "celeba-cnn": Recipe(
        dataset="celeba",
        arch="resnet",
        arch_params={
            "widths": [32, 64, 128, 256],
            "blocks": [2, 2, 2, 1],
            "dropout": 0.3,
            "stem_stride": 2,
        },
        input_size=(64, 64),
        norm="channel",
        epochs=80,
        batch_size=64,
        optimizer="sgd",
        lr=0.1,
        weight_decay=5e-4,
        label_smoothing=0.1,
        warmup_epochs=3,
        ema=0.999,
        aug={
            "brightness": 0.3,
            "contrast": 0.3,
            "saturation": 0.3,
            "gray": 0.1,
            "flip": 0.5,
            "shift": 0.08,
            "rotate": 12.0,
            "scale": 0.12,
            "erase": 0.3,
            "noise": 0.02,
        },
    ),
}


@dataclass(frozen=True)
class Adversarial:
    """Adversarial-training settings (recorded in the checkpoint's ``training.adversarial``).

    Attributes:
        mode: ``goodfellow`` (the seed's adversarial objective J') or ``kurakin`` (Kurakin et
            al.'s minibatch algorithm).
        eps: L-inf size of the one-step perturbation, in [0, 1] pixel units (e.g. 8/255).
        c: goodfellow: weight of the clean loss; ``1 - c`` weighs the adversarial one.
        k: kurakin: adversarial examples per minibatch of m (``None``: m // 2, the paper's
            choice; capped at m).
        lam: kurakin: lambda, the weight of the adversarial examples in the loss (the paper
            uses 0.3).
        method: how the adversarial examples are made: ``fgsm`` (ascent on the true label's
            cross-entropy) or ``step-ll`` (descent towards the least-likely class, the
            paper's choice). Goodfellow's J' is defined with ``fgsm``.
        steps: kurakin: sign steps per adversarial example: 1 is the paper's one-step method;
            more make iterative ones (I-FGSM / iter. l.l., steps of ``max(eps/4, 1/255)``
            projected onto the eps-ball), at ``steps`` times the cost.
    """

    mode: Literal["goodfellow", "kurakin"]
    eps: float = 8 / 255
    c: float = 0.5
    k: int | None = None
    lam: float = 0.3
    method: Literal["fgsm", "step-ll"] = "fgsm"
    steps: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("goodfellow", "kurakin"):
            raise ConfigError(
                f"adversarial mode {self.mode!r} unknown; expected 'goodfellow' or 'kurakin'"
            )
        if not 0.0 < self.eps <= 1.0:
            raise ConfigError(f"adversarial eps must be in (0, 1] (e.g. 8/255), got {self.eps}")
        if not 0.0 <= self.c <= 1.0:
            raise ConfigError(f"goodfellow c must be in [0, 1], got {self.c}")
        if self.k is not None and self.k < 0:
            raise ConfigError(f"kurakin k must be >= 0 (adversarial per batch), got {self.k}")
        if self.lam < 0.0:
            raise ConfigError(f"kurakin lambda must be >= 0, got {self.lam}")
        if self.method not in ("fgsm", "step-ll"):
            raise ConfigError(f"adversarial method {self.method!r}; expected 'fgsm' or 'step-ll'")
        if self.mode == "goodfellow" and self.method != "fgsm":
            raise ConfigError("goodfellow's J' is defined with FGSM; use --adv-method fgsm")
        if self.steps < 1 or (self.mode == "goodfellow" and self.steps != 1):
            raise ConfigError(
                f"adversarial steps must be >= 1 (goodfellow: 1, its FGSM step), got {self.steps}"
            )

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        if self.mode == "goodfellow":
            d.pop("k"), d.pop("lam"), d.pop("steps")
        else:
            d.pop("c")
        d["eps_255"] = round(self.eps * 255, 3)
        return d


def subset_part(text: str) -> tuple[int, int]:
    """``--subset I/N`` -> (I, N): part I of N."""
    try:
        i, n = (int(v) for v in text.split("/", 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return i, n


def add_training_flags(p: Any) -> None:
    """``deid train``'s adversarial-training and subset flags (an argparse parser)."""
    g = p.add_argument_group("adversarial training")
    g.add_argument(
        "--adversarial",
        choices=["goodfellow", "kurakin"],
        help="goodfellow: J' = c J(x) + (1-c) J(x + eps sign(grad J)); "
        "kurakin: k adversarial of m per minibatch, loss weighted by lambda",
    )
    g.add_argument("--eps", type=fraction, default=8 / 255, help="L-inf step, e.g. 8/255")
    g.add_argument("--c", type=float, default=0.5, help="goodfellow: weight of the clean loss")
    g.add_argument("--k", type=int, help="kurakin: adversarial examples per batch (default m/2)")
    g.add_argument(
        "--lambda", dest="lam", type=float, default=0.3, help="kurakin: adversarial weight"
    )
    g.add_argument(
        "--adv-method",
        choices=["fgsm", "step-ll"],
        help="kurakin: one-step least-likely (default) or FGSM; goodfellow: fgsm",
    )
    g.add_argument(
        "--adv-steps",
        type=int,
        default=1,
        help="kurakin: steps per adversarial example (1: one-step; more: iterative)",
    )
    p.add_argument(
        "--subset",
        type=subset_part,
        help="I/N: train on part I of N disjoint per-identity parts of the training split",
    )


def training_options(args: Any) -> dict[str, Any]:
    """``train_classifier`` keyword arguments from :func:`add_training_flags`' flags."""
    adv = None
    changed = [
        flag
        for flag, value, default in [
            ("--eps", args.eps, 8 / 255),
            ("--c", args.c, 0.5),
            ("--k", args.k, None),
            ("--lambda", args.lam, 0.3),
            ("--adv-method", args.adv_method, None),
            ("--adv-steps", args.adv_steps, 1),
        ]
        if value != default
    ]
    if changed and not getattr(args, "adversarial", None):
        raise ConfigError(f"{', '.join(changed)} only apply with --adversarial goodfellow|kurakin")
    if getattr(args, "adversarial", None):
        method = args.adv_method or ("fgsm" if args.adversarial == "goodfellow" else "step-ll")
        adv = Adversarial(
            mode=args.adversarial,
            eps=args.eps,
            c=args.c,
            k=args.k,
            lam=args.lam,
            method=method,
            steps=args.adv_steps,
        )
    return {"adversarial": adv, "subset": getattr(args, "subset", None)}
