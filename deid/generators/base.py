"""The generator seam: a network that makes a face's new pixels (a GAN replacement, say),
registered by name beside the attacks so that ``attack.name`` and ``--attack`` accept it.

:mod:`deid.pipeline.protect` runs a registered generator as the protection step
(:class:`~deid.pipeline.protect.GeneratorProtector`); this module holds only the contract
and the registry, so that a generator's module needs nothing of the pipeline.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import Field, create_model, field_validator
from torch import Tensor, nn

from deid.attacks.base import Attack, AttackConfigBase, AttackResult
from deid.attacks.registry import ATTACKS, attack_config, build_attack, register, unregister
from deid.errors import ConfigError
from deid.targets import TargetMode

log = logging.getLogger(__name__)

AUTO = "auto"
"""``then: auto``: :class:`AutoFollow`."""

AUTO_GRADES = (0.25, 0.5, 1.0)
"""``then: auto``'s AdvGAN tries its perturbation at these fractions (``grades``): a face
that is its target with a quarter of the pattern gets no more of it."""

AUTO_REFINE = {"steps": 5, "eot": {"enabled": True}, "refine_margin": None}
"""``then: auto``'s AdvGAN refines the faces it leaves short by EOT's margin with up to 5
I-FGSM steps with EOT (AdvGAN's own default before 2026-12-07, what replace's clip figures
were measured with), unless ``then_params`` say otherwise."""

AUTO_GRADE_MARGIN = 2.0
"""... if it wins by this much more than the margin: a fainter pattern survives H.264 less
well (on the pedestrian clip at crf 23, 85-98% of the faces read as their target on the
written file by the margin alone, 96.6-100% with this, in 9 runs; ``bench/replace_clip.py``)."""


@runtime_checkable
class Generator(Protocol):
    """Maps face crops to new faces.

    Shape:
        crops: (B, 3, H, W) float32 in [0, 1] (a batch of crops of different sizes is
            edge-padded at the bottom and right to the largest).
        landmarks: (B, 5, 2) float32 eyes, nose, mouth corners in crop pixels (x, y).
        track_ids: (B,) int64: the same id for the same person in every frame of a video
            (a generator keyed by it keeps a person's new face consistent).
        returns: (B, 3, H, W) float in [0, 1], the same shape.
    """

    def generate(self, crops: Tensor, landmarks: Tensor, track_ids: Tensor) -> Tensor: ...


class GeneratorConfig(AttackConfigBase):
    """The ``attack`` section when it names a generator: the fields every attack has
    (``batch_size``, ``target`` for a following attack) and ``then``."""

    default_target: ClassVar[TargetMode] = "least-likely"

    name: str
    then: str | None = Field(
        None, description="an attack run on the generated faces (its defaults, targeted)"
    )

    then_params: dict[str, Any] = Field(
        default_factory=dict, description="settings of the `then` attack (else its defaults)"
    )

    @field_validator("then")
    @classmethod
    def _then_is_an_attack(cls, v: str | None) -> str | None:
        if v is not None and v != AUTO and (v not in ATTACKS or v in GENERATORS):
            attacks = [n for n in ATTACKS if n not in GENERATORS]
            raise ValueError(f"unknown attack {v!r}; available: {sorted([AUTO, *attacks])}")
        return v


def follow_attack(then: str | None, params: Mapping[str, Any]) -> Attack | None:
    """The attack a generator's ``then`` names, targeted, with ``params`` over its defaults
    (None: no attack; ``auto``: :class:`AutoFollow`)."""
    if then is None:
        return None
    if then == AUTO:
        return AutoFollow(params)
    return build_attack(attack_config(then, targeted=True, **params))


class AutoFollow:
    """``then: auto``: AdvGAN where a shipped generator was trained against the classifier in
    use (its one pass, at the first of :data:`AUTO_GRADES` at which a face reaches its target
    by the margin and :data:`AUTO_GRADE_MARGIN`, then I-FGSM steps with EOT for the faces it
    left short), targeted I-FGSM otherwise; both with ``params`` (each takes the keys it
    knows: AdvGAN's ``steps`` are the refinement's, ``grades`` are AdvGAN's alone).

    The two report steps, eps and success alike, so what follows a ``then`` attack (the
    second round for faces whose steps ran out, fail closed) is the same for either; the
    choice is made once per classifier and logged (:meth:`resolve`).
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        from deid.attacks.advgan import AdvGANConfig
        from deid.attacks.ifgsm import IFGSMConfig

        for_ifgsm = {k: v for k, v in params.items() if k in IFGSMConfig.model_fields}
        for_advgan = {k: v for k, v in params.items() if k in AdvGANConfig.model_fields}
        unknown = sorted(set(params) - set(for_ifgsm) - set(for_advgan))
        if unknown:
            raise ConfigError(
                f"then: auto: unknown setting(s) {unknown}; expected settings of ifgsm or advgan"
            )
        for k, v in AUTO_REFINE.items():
            for_advgan.setdefault(k, v)
        for_advgan.setdefault("grades", list(AUTO_GRADES))
        for_advgan.setdefault("grade_margin", AUTO_GRADE_MARGIN)
        self.ifgsm = build_attack(attack_config("ifgsm", targeted=True, **for_ifgsm))
        self.advgan = build_attack(attack_config("advgan", targeted=True, **for_advgan))
        self.cfg = self.ifgsm.cfg  # type: ignore[attr-defined]  # steps, eps: the same
        self._chosen: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

    def resolve(self, model: nn.Module) -> str:
        """``advgan`` or ``ifgsm``: what runs against ``model`` (a FaceClassifier, bound or
        wrapped)."""
        from deid.attacks.advgan import generator_path, unwrap

        try:
            clf, _ = unwrap(model)
        except ConfigError:
            return "ifgsm"  # not one of deid's classifiers: no generator can match it
        name = self._chosen.get(clf)
        if name is None:
            try:
                path = generator_path(self.advgan.cfg.weights, clf)  # type: ignore[attr-defined]
                name = "advgan"
                log.info("then: auto -> advgan (%s)", path.name)
            except ConfigError:
                name = "ifgsm"
                log.info("then: auto -> ifgsm (no AdvGAN generator for this classifier)")
            self._chosen[clf] = name
        return name

    def attack_for(self, model: nn.Module) -> Attack:
        """The attack that runs against ``model`` (:meth:`resolve`)."""
        return self.advgan if self.resolve(model) == "advgan" else self.ifgsm

    def __call__(self, model: nn.Module, images: Tensor, targets: Tensor) -> AttackResult:
        return self.attack_for(model)(model, images, targets)


#: Builds a generator from its ``attack`` settings.
GeneratorFactory = Callable[[Any], Generator]

GENERATORS: dict[str, GeneratorFactory] = {}
"""Every registered generator by name (each is also an entry of the attack registry, so the
settings and ``--attack`` accept its name)."""


def register_generator(
    name: str, factory: GeneratorFactory, config: type[GeneratorConfig] | None = None
) -> None:
    """Make a generator available as ``attack.name: <name>`` (``deid run --attack <name>``).

    Args:
        name: the generator's name.
        factory: ``factory(cfg) -> Generator`` (``cfg``: its validated settings).
        config: its settings, a :class:`GeneratorConfig` subclass with
            ``name: Literal[<name>] = <name>``; None: no settings of its own.

    Raises:
        ValueError: the name is taken (by an attack or a generator).
    """
    if name in ATTACKS:
        raise ValueError(f"{name!r} is already registered ({ATTACKS[name].attack})")
    if config is None:
        config = create_model(  # type: ignore[call-overload]
            f"{name.title().replace('-', '')}GeneratorConfig",
            __base__=GeneratorConfig,
            name=(Literal[name], name),
        )
    GENERATORS[name] = factory
    try:
        register(factory, config)  # type: ignore[arg-type]
    except BaseException:
        del GENERATORS[name]
        raise


def unregister_generator(name: str) -> None:
    """Remove the generator called ``name`` (KeyError if there is none)."""
    del GENERATORS[name]
    unregister(name)
