"""Storage policy and files of the job service: paths under storage roots, work folders, JSON.

Every path a job reads or writes lies under one of ``service.storage_roots`` (shared storage
that the API, the clients and all workers see at the same paths). A path with ``..``, a path
outside every root, and a path whose symlinks lead out of its root are refused when the job
is submitted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deid.errors import DeidError
from deid.io import tmp_beside


class PathPolicyError(DeidError):
    """A job path is not allowed: outside the storage roots, ``..``, or a symlink out."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured: set DEID_STORAGE_ROOTS)"


def check_path(path: Path | str, roots: Sequence[Path]) -> Path:
    """The absolute, symlink-free form of ``path`` if it lies under one of ``roots``.

    ``path`` itself need not exist (an output), but the part of it that exists is resolved,
    so a symlink anywhere on the way that leads out of the root is caught.

    Raises:
        PathPolicyError: no roots, a relative path, a ``..`` component, or a path (after
            resolving symlinks) outside every root.
    """
    p = Path(path)
    if not roots:
        raise PathPolicyError(p, f"no storage roots allowed; expected {_roots_text(roots)}")
    if not p.is_absolute():
        raise PathPolicyError(p, f"expected an absolute path under {_roots_text(roots)}")
    if ".." in p.parts:
        raise PathPolicyError(p, "'..' is not allowed in job paths")
    real = Path(os.path.realpath(p))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if real == root_real:
            raise PathPolicyError(p, "expected a file or folder inside the root, not the root")
        if root_real in real.parents:
            return real
    if any(Path(r) in p.parents or Path(os.path.realpath(r)) in p.parents for r in roots):
        raise PathPolicyError(p, f"a symlink leads out of the storage roots (to {real})")
    raise PathPolicyError(
        p, f"outside the storage roots; expected a path under {_roots_text(roots)}"
    )


def work_dir(output: Path, job_id: str) -> Path:
    """The job's temporary folder, beside its output (same file system: renames are atomic)."""
    return output.parent / f".deid-job-{job_id}"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_beside(path)
    try:
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def remove_tree(path: Path) -> None:
    """Remove a job's work folder (ignores a folder that is already gone)."""
    shutil.rmtree(path, ignore_errors=True)
