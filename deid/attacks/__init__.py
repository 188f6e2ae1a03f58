"""Adversarial attacks behind one interface: ``attack(model, images, targets) -> AttackResult``."""

from deid.attacks.base import AttackResult, is_success, perturbation_norms
from deid.attacks.conceal import Conceal, ConcealConfig
from deid.attacks.ifgsm import IFGSM, IFGSMConfig
from deid.attacks.realistic import Realistic, RealisticConfig
from deid.attacks.registry import ATTACKS, DEFAULT_TARGET, attack_config, build_attack

__all__ = [
    "ATTACKS",
    "DEFAULT_TARGET",
    "IFGSM",
    "AttackResult",
    "Conceal",
    "ConcealConfig",
    "IFGSMConfig",
    "Realistic",
    "RealisticConfig",
    "attack_config",
    "build_attack",
    "is_success",
    "perturbation_norms",
]
