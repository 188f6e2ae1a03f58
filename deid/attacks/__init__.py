"""Adversarial attacks behind one interface: ``attack(model, images, targets) -> AttackResult``."""

from deid.attacks.base import AttackResult, is_success, perturbation_norms
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
from deid.attacks.query import QueryModel
from deid.attacks.realistic import Realistic, RealisticConfig
from deid.attacks.registry import ATTACKS, DEFAULT_TARGET, attack_config, build_attack
from deid.attacks.spsa import SPSA, SPSAConfig
from deid.attacks.universal import Universal, UniversalConfig
from deid.attacks.vat import VAT, VATConfig

__all__ = [
    "ATTACKS",
    "CW",
    "DEFAULT_TARGET",
    "EAD",
    "FGSM",
    "IFGSM",
    "ILLC",
    "JSMA",
    "LBFGS",
    "MIFGSM",
    "PGD",
    "SPSA",
    "VAT",
    "AttackResult",
    "CWConfig",
    "Conceal",
    "ConcealConfig",
    "DeepFool",
    "DeepFoolConfig",
    "EADConfig",
    "FGSMConfig",
    "FeatureAdversary",
    "FeatureAdversaryConfig",
    "IFGSMConfig",
    "ILLCConfig",
    "JSMAConfig",
    "LBFGSConfig",
    "MIFGSMConfig",
    "OnePixel",
    "OnePixelConfig",
    "PGDConfig",
    "QueryModel",
    "Realistic",
    "RealisticConfig",
    "SPSAConfig",
    "Universal",
    "UniversalConfig",
    "VATConfig",
    "attack_config",
    "build_attack",
    "is_success",
    "perturbation_norms",
]
