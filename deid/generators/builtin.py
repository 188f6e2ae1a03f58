"""The generators that ship with deid, registered by name (imported by :mod:`deid.config`,
so every settings file knows their names)."""

from __future__ import annotations

from deid.generators.base import GENERATORS, register_generator
from deid.generators.replace import ReplaceConfig, build

if "replace" not in GENERATORS:
    register_generator("replace", build, ReplaceConfig)
