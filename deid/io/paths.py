"""Temporary paths for atomic writes."""

from __future__ import annotations

import secrets
from pathlib import Path


def tmp_beside(path: Path, tag: str = "tmp") -> Path:
    """A hidden, unique temporary path in ``path``'s folder (same suffix, so encoders pick the
    same format): write there, then ``replace`` onto ``path`` for an atomic result."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}{path.suffix}")
