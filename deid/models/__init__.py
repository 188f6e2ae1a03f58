"""Identity classifiers: shipped checkpoints, loading and building; training presets.

Importing the package is cheap (no torch): the classifier classes load on first use, so the
command line can name presets and shipped checkpoints without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from deid.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from deid.models.classifier import BoundClassifier, ClassifierMeta, FaceClassifier

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = ("yaleb-mlp", "celeba-cnn", "yaleb-mlp-adv")
_LAZY = ("BoundClassifier", "ClassifierMeta", "FaceClassifier")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from deid.models import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'deid.models' has no attribute {name!r}")


def shipped_path(name: str) -> Path:
    """Path of a checkpoint that ships inside the package."""
    return WEIGHTS_DIR / f"{name}.pt"


def load_classifier(name_or_path: str | Path, device: torch.device | str = "cpu") -> FaceClassifier:
    """Load a shipped classifier by name (``yaleb-mlp``, ``celeba-cnn``, ``yaleb-mlp-adv``: the
    MLP adversarially trained) or a checkpoint path."""
    from deid.models.classifier import FaceClassifier

    s = str(name_or_path)
    if s in SHIPPED:
        path = shipped_path(s)
        if not path.is_file():
            raise CheckpointError(
                f"shipped checkpoint {s!r} is missing at {path}; reinstall deid or run "
                f"`deid train {s} -o {path}`"
            )
        return FaceClassifier.load(path, device)
    path = Path(s)
    if path.suffix in (".pt", ".pth") or path.exists():
        return FaceClassifier.load(path, device)
    raise CheckpointError(
        f"unknown classifier {s!r}; expected one of {list(SHIPPED)} or a checkpoint path (.pt)"
    )


__all__ = [
    "SHIPPED",
    "BoundClassifier",
    "ClassifierMeta",
    "FaceClassifier",
    "load_classifier",
    "shipped_path",
]
