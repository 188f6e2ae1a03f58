"""Attack registry: name -> (class, config). The config union is what settings validate."""

from __future__ import annotations

from typing import Union

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

ATTACKS: dict[str, tuple[type, type[AttackConfigBase]]] = {
    "ifgsm": (IFGSM, IFGSMConfig),
    "realistic": (Realistic, RealisticConfig),
    "conceal": (Conceal, ConcealConfig),
    # the attack library (issue 5)
    "fgsm": (FGSM, FGSMConfig),
    "illc": (ILLC, ILLCConfig),
    "pgd": (PGD, PGDConfig),
    "mifgsm": (MIFGSM, MIFGSMConfig),
    "cw": (CW, CWConfig),
    "lbfgs": (LBFGS, LBFGSConfig),
    "deepfool": (DeepFool, DeepFoolConfig),
    "jsma": (JSMA, JSMAConfig),
    "spsa": (SPSA, SPSAConfig),
    "feature": (FeatureAdversary, FeatureAdversaryConfig),
    "ead": (EAD, EADConfig),
    "vat": (VAT, VATConfig),
    "onepixel": (OnePixel, OnePixelConfig),
    "universal": (Universal, UniversalConfig),
}

# Discriminated on `name` (see deid.config.Settings).
AttackConfig = Union[  # noqa: UP007
    IFGSMConfig,
    RealisticConfig,
    ConcealConfig,
    FGSMConfig,
    ILLCConfig,
    PGDConfig,
    MIFGSMConfig,
    CWConfig,
    LBFGSConfig,
    DeepFoolConfig,
    JSMAConfig,
    SPSAConfig,
    FeatureAdversaryConfig,
    EADConfig,
    VATConfig,
    OnePixelConfig,
    UniversalConfig,
]

# Which target each attack picks when the config does not say.
DEFAULT_TARGET = {
    "ifgsm": "least-likely",
    "realistic": "nearest",
    "conceal": "least-likely",
    "fgsm": "least-likely",
    "illc": "least-likely",
    "pgd": "least-likely",
    "mifgsm": "least-likely",
    "cw": "nearest",
    "lbfgs": "nearest",
    "deepfool": "nearest",
    "jsma": "nearest",
    "spsa": "least-likely",
    "feature": "least-likely",
    "ead": "nearest",
    "vat": "nearest",
    "onepixel": "nearest",
    "universal": "nearest",
}


def default_attack() -> IFGSMConfig:
    # as configs/default.yaml: with EOT, so faces stay de-identified after H.264 encoding
    return IFGSMConfig(eot={"enabled": True})


def attack_config(name: str, **params: object) -> AttackConfigBase:
    """Validated config of the attack called ``name``."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return ATTACKS[name][1](**params)


def build_attack(cfg: AttackConfigBase) -> Attack:
    """The attack object for a config."""
    name = getattr(cfg, "name", None)
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return ATTACKS[name][0](cfg)
