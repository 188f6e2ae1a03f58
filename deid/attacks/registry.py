"""Attack registry: name -> (class, config), one :func:`register` line per attack.

An attack's module declares everything about it: the config (a pydantic model with a
``name: Literal[...]`` field and a ``default_target`` class attribute) and the class, built
as ``cls(cfg)``. Everything else is derived from the registrations: :data:`ATTACKS`,
:data:`DEFAULT_TARGET`, the discriminated union that :class:`deid.config.Settings`
validates (:data:`AttackConfig`) and the list of attacks in ``deid run --help``.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from pydantic import ValidationError

from deid.attacks.advgan import AdvGAN, AdvGANConfig
from deid.attacks.base import Attack, AttackConfigBase
from deid.attacks.conceal import Conceal, ConcealConfig
from deid.attacks.cw import CW, CWConfig
from deid.attacks.deepfool import DeepFool, DeepFoolConfig
from deid.attacks.ead import EAD, EADConfig
from deid.attacks.feature import FeatureAdversary, FeatureAdversaryConfig
from deid.attacks.fgsm import FGSM, FGSMConfig
from deid.attacks.ifgsm import IFGSM, IFGSMConfig
from deid.attacks.illc import ILLC, ILLCConfig
from deid.attacks.jsma import JSMA, JSMAConfig
from deid.attacks.lbfgs import LBFGS, LBFGSConfig
from deid.attacks.mifgsm import MIFGSM, MIFGSMConfig
from deid.attacks.onepixel import OnePixel, OnePixelConfig
from deid.attacks.pgd import PGD, PGDConfig
from deid.attacks.realistic import Realistic, RealisticConfig
from deid.attacks.spsa import SPSA, SPSAConfig
from deid.attacks.universal import Universal, UniversalConfig
from deid.attacks.vat import VAT, VATConfig
from deid.errors import ConfigError
from deid.targets import TARGET_MODES, TargetMode


class Registered(NamedTuple):
    """One registry entry (unpacks as ``cls, cfg_cls = ATTACKS[name]``)."""

    attack: Callable[[Any], Attack]
    config: type[AttackConfigBase]


ATTACKS: dict[str, Registered] = {}
"""Every registered attack by name, in registration order."""


def register(attack: Callable[[Any], Attack], config: type[AttackConfigBase]) -> None:
    """Add an attack: ``config`` names it (its ``name`` field's default) and gives its
    ``default_target``; ``attack(cfg)`` builds it.

    Raises:
        TypeError: ``config`` has no ``name`` default or no valid ``default_target``.
        ValueError: the name is taken.
    """
    field = config.model_fields.get("name")
    name = field.default if field is not None else None
    if not isinstance(name, str) or not name:
        raise TypeError(f"{config.__name__}: expected a field `name: Literal[...] = 'NAME'`")
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered ({ATTACKS[name].attack})")
    target = getattr(config, "default_target", None)
    if target not in TARGET_MODES:
        raise TypeError(
            f"{config.__name__}.default_target: expected one of {list(TARGET_MODES)}, "
            f"got {target!r}"
        )
    ATTACKS[name] = Registered(attack, config)
    _refresh()


def config_union() -> Any:
    """``Union[<every registered config>]``, which :class:`deid.config.Settings` discriminates
    on ``name``."""
    return typing.Union[tuple(e.config for e in ATTACKS.values())]  # noqa: UP007


def _refresh() -> None:
    """Keep what is built from the registry current after a registration."""
    global AttackConfig
    AttackConfig = config_union()
    # deid.config.Settings built its validator from the union when it was imported (after the
    # built-in registrations): a later registration rebuilds it (the field keeps its
    # discriminator). Before deid.config is imported there is nothing to do.
    settings = getattr(sys.modules.get("deid.config"), "Settings", None)
    if settings is not None:
        settings.model_fields["attack"].annotation = AttackConfig
        settings.model_rebuild(force=True)


def unregister(name: str) -> None:
    """Remove the attack called ``name`` (KeyError if there is none)."""
    del ATTACKS[name]
    _refresh()


register(IFGSM, IFGSMConfig)
register(Realistic, RealisticConfig)
register(Conceal, ConcealConfig)
# the attack library (issue 5)
register(FGSM, FGSMConfig)
register(ILLC, ILLCConfig)
register(PGD, PGDConfig)
register(MIFGSM, MIFGSMConfig)
register(CW, CWConfig)
register(LBFGS, LBFGSConfig)
register(DeepFool, DeepFoolConfig)
register(JSMA, JSMAConfig)
register(SPSA, SPSAConfig)
register(FeatureAdversary, FeatureAdversaryConfig)
register(EAD, EADConfig)
register(VAT, VATConfig)
register(OnePixel, OnePixelConfig)
register(Universal, UniversalConfig)
# one forward pass of a trained generator (issue 13)
register(AdvGAN, AdvGANConfig)

AttackConfig = config_union()
"""The union of the registered configs (Settings' ``attack`` field type); kept current by
:func:`register`."""


class _DefaultTargets(Mapping[str, TargetMode]):
    """Name -> the target an attack picks when its config does not say (a live view of the
    configs' ``default_target``)."""

    def __getitem__(self, name: str) -> TargetMode:
        return ATTACKS[name].config.default_target

    def __iter__(self) -> Iterator[str]:
        return iter(ATTACKS)

    def __len__(self) -> int:
        return len(ATTACKS)

    def __repr__(self) -> str:
        return repr(dict(self))


DEFAULT_TARGET: Mapping[str, TargetMode] = _DefaultTargets()


def pipeline_attacks() -> list[str]:
    """The registered attacks that can run targeted, as the pipeline runs them (``deid run
    --attack``), in registration order."""
    names = []
    for name, entry in ATTACKS.items():
        try:
            entry.config(targeted=True)
        except ValidationError:
            continue
        names.append(name)
    return names


def default_attack() -> IFGSMConfig:
    # as configs/default.yaml: with EOT, so faces stay de-identified after H.264 encoding
    return IFGSMConfig(eot={"enabled": True})


def attack_config(name: str, **params: object) -> AttackConfigBase:
    """Validated config of the attack called ``name``."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return ATTACKS[name].config(**params)


def build_attack(cfg: AttackConfigBase) -> Attack:
    """The attack object for a config."""
    name = getattr(cfg, "name", None)
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return ATTACKS[name].attack(cfg)
