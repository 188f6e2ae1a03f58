"""What a process loads once and reuses for every job: settings, device, detector,
classifier, the protection step and the target mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deid import __version__
from deid.attacks import DEFAULT_TARGET
from deid.attacks.base import Attack
from deid.config import Settings
from deid.detect import Detector, build_detector
from deid.errors import ConfigError, DeidError
from deid.generators.base import AutoFollow
from deid.models import FaceClassifier, load_classifier
from deid.models.precision import resolve_precision
from deid.pipeline.protect import AttackProtector, ProtectContext, Protector, build_protector
from deid.targets import TARGET_MODES


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeidError(
            f"device {name!r} requested but CUDA is not available; use --device cpu or auto"
        )
    return torch.device(name)


@dataclass
class Resources:
    """What a process loads once and reuses for every job: models and the protection step.

    ``protector`` is what the pipeline calls on every batch of faces (an attack, or a
    generator); ``attack`` is the attack object when the protection step is an attack.
    """

    settings: Settings
    device: torch.device
    detector: Detector
    classifier: FaceClassifier
    protector: Protector
    target_mode: str | int
    #: built on first use by :attr:`track_detector`
    _track_detector: Detector | None = field(default=None, repr=False)

    @property
    def track_detector(self) -> Detector:
        """The detector video analysis and ``deid stream`` use: faces down to
        ``detector.track_score`` (:meth:`deid.config.DetectorConfig.for_tracks`), built on
        first use (``detector`` itself when the hysteresis is off)."""
        if self._track_detector is None:
            cfg = self.settings.detector.for_tracks()
            self._track_detector = (
                self.detector if cfg is self.settings.detector else build_detector(cfg, self.device)
            )
        return self._track_detector

    @property
    def attack(self) -> Attack | None:
        """The attack of the protection step (None for a generator without one)."""
        return self.protector.attack if isinstance(self.protector, AttackProtector) else None

    def context(
        self, targets: torch.Tensor, preds: torch.Tensor, memory: dict[Any, Any] | None
    ) -> ProtectContext:
        """What the protection step gets besides the crops: the faces' targets and
        identities, and ``memory``, kept by the caller per video chunk, stream or folder."""
        return ProtectContext(
            self.classifier,
            targets,
            preds,
            self.device,
            self.settings.attack.batch_size,
            self.target_mode,
            memory,
        )

    def header(self, kind: str, input: Path, output: Path) -> dict[str, Any]:
        """The fields every report starts with: what ran, on what, with which settings."""
        cls = self.classifier.meta
        return {
            "deid_version": __version__,
            "kind": kind,
            "input": str(input),
            "output": str(output),
            "device": str(self.device),
            "gradient_precision": self.classifier.gradient_precision,
            "classifier": {
                "name": self.settings.classifier.name,
                "dataset": cls.dataset,
                "accuracy": cls.accuracy.get("top1"),
            },
            "attack": self._attack_settings(),
            "target_mode": self.target_mode,
            "settings": self.settings.model_dump(mode="json"),
        }

    def _attack_settings(self) -> dict[str, Any]:
        """The attack's settings; ``then: auto`` with what it resolved to (``then_resolved``)."""
        out = self.settings.attack.model_dump()
        follow = getattr(self.protector, "then", None)
        if isinstance(follow, AutoFollow):
            out["then_resolved"] = follow.resolve(self.classifier)
        return out

    @classmethod
    def load(cls, settings: Settings) -> Resources:
        if settings.pipeline.threads:
            torch.set_num_threads(settings.pipeline.threads)
        device = resolve_device(settings.pipeline.device)
        detector = build_detector(settings.detector, device)
        classifier = load_classifier(settings.classifier.name, device)
        classifier.set_gradient_precision(resolve_precision(settings.pipeline.precision, device))
        protector = build_protector(settings.attack)
        mode = resolve_target(
            settings.attack.target, settings.attack.name, classifier.meta.class_names
        )
        return cls(settings, device, detector, classifier, protector, mode)


def resolve_target(target: str | int | None, attack: str, class_names: Sequence[str]) -> str | int:
    """The target mode, or a class id for a fixed identity given by id or name."""
    if target is None:
        return DEFAULT_TARGET[attack]
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        t = int(target)
        if not 0 <= t < len(class_names):
            raise ConfigError(f"attack.target: class id {t} out of range 0..{len(class_names) - 1}")
        return t
    if target in TARGET_MODES:
        return target
    if target in class_names:
        return list(class_names).index(target)
    raise ConfigError(
        f"attack.target: unknown target {target!r}; expected one of {list(TARGET_MODES)}, "
        f"a class id 0..{len(class_names) - 1} or a class name such as {class_names[0]!r}"
    )
