"""The generator seam: a network that makes a face's new pixels (a GAN replacement, say),
registered by name beside the attacks so that ``attack.name`` and ``--attack`` accept it.

:mod:`deid.pipeline.protect` runs a registered generator as the protection step
(:class:`~deid.pipeline.protect.GeneratorProtector`); this module holds only the contract
and the registry, so that a generator's module needs nothing of the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import Field, create_model, field_validator
from torch import Tensor

from deid.attacks.base import AttackConfigBase
from deid.attacks.registry import ATTACKS, register, unregister
from deid.targets import TargetMode


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
        if v is not None and (v not in ATTACKS or v in GENERATORS):
            attacks = [n for n in ATTACKS if n not in GENERATORS]
            raise ValueError(f"unknown attack {v!r}; available: {sorted(attacks)}")
        return v


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
