"""Detector registry: name -> factory. ``detector.name`` in the settings picks one."""

from __future__ import annotations

from collections.abc import Callable

import torch

from deid.detect.base import Detector, DetectorSettings
from deid.detect.mtcnn import build_mtcnn
from deid.detect.turns import TurnedDetector
from deid.errors import ConfigError

#: Builds a detector from the ``detector`` settings on a torch device.
DetectorFactory = Callable[[DetectorSettings, torch.device], Detector]

DETECTORS: dict[str, DetectorFactory] = {
    "mtcnn": build_mtcnn,
}


def register_detector(name: str, factory: DetectorFactory) -> None:
    """Make a detector available as ``detector.name: <name>``.

    Call it before the settings are loaded (they refuse unknown names), e.g. on importing
    the module that defines the detector.

    Raises:
        ValueError: ``name`` is empty or already registered.
    """
    if not name:
        raise ValueError("detector name: expected a non-empty string")
    if name in DETECTORS:
        raise ValueError(f"detector {name!r} is already registered ({DETECTORS[name]!r})")
    DETECTORS[name] = factory


def build_detector(cfg: DetectorSettings, device: torch.device | str = "cpu") -> Detector:
    """The detector the settings describe: ``DETECTORS[cfg.name](cfg, device)``.

    Every part of deid that needs a detector builds it here (the pipeline and video job,
    template estimation, dataset preparation, the held-out evaluation).

    Raises:
        ConfigError: ``cfg.name`` is not registered.
        TypeError: the factory returned something that is not a :class:`Detector`.
    """
    if cfg.name not in DETECTORS:
        raise ConfigError(f"unknown detector {cfg.name!r}; available: {sorted(DETECTORS)}")
    det = DETECTORS[cfg.name](cfg, torch.device(device))
    if not isinstance(det, Detector):
        raise TypeError(
            f"detector {cfg.name!r}: its factory returned {type(det).__name__}, which lacks "
            "detect(frames, edge_pad=None) or too_small(shape)"
        )
    turns = getattr(cfg, "turns", None)
    if turns:
        det = TurnedDetector(det, turns)
    return det
