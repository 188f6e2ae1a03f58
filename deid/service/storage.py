"""Storage policy and files of the job service: paths under storage roots, work folders, JSON.

Every path a job reads or writes lies under one of ``service.storage_roots`` (shared storage
that the API, the clients and all workers see at the same paths). A path with ``..``, a path
outside every root, and a path whose symlinks lead out of its root are refused when the job
is submitted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deid.errors import ConfigError, PathError
from deid.io import tmp_beside
from deid.service.state import JOB_ID

# Linux's limits (PATH_MAX and NAME_MAX of <limits.h>, in bytes): longer paths never open.
PATH_MAX = 4096
NAME_MAX = 255
CONFIG_SUFFIXES = (".yaml", ".yml")
MAX_CONFIG_BYTES = 1 << 20
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PathPolicyError(PathError):
    """A job path is not allowed: outside the storage roots, ``..``, or a symlink out."""

    @staticmethod
    def shown(path: Path | str) -> str:
        """A request's path, shortened and with unprintable characters escaped."""
        return shorten(str(path))


class BadPathError(PathPolicyError):
    """A path no file system takes: a NUL byte, too long, or not encodable (HTTP 400)."""


def shorten(text: str, n: int = 160) -> str:
    """``text`` for a message: at most about ``n`` characters, unprintable ones escaped."""
    if len(text) > n:
        text = f"{text[: n // 2]}...{text[-n // 4 :]}"
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text


def check_path_syntax(path: Path | str) -> None:
    """Refuse, before any file system call, a path that cannot name a file.

    Raises:
        BadPathError: a NUL byte, a path over :data:`PATH_MAX` bytes or a component over
            :data:`NAME_MAX` bytes, or characters with no byte encoding.
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise BadPathError(text, "a path may not contain a NUL byte")
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        raise BadPathError(text, "not a valid file name (no byte encoding)") from None
    if len(raw) > PATH_MAX:
        raise BadPathError(text, f"path too long ({len(raw)} bytes; at most {PATH_MAX})")
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        raise BadPathError(
            text, f"file name too long ({longest} bytes in one component; at most {NAME_MAX})"
        )


def _roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots) or "(none configured: set DEID_STORAGE_ROOTS)"


def check_path(path: Path | str, roots: Sequence[Path]) -> Path:
    """The absolute, symlink-free form of ``path`` if it lies under one of ``roots``.

    ``path`` itself need not exist (an output), but the part of it that exists is resolved,
    so a symlink anywhere on the way that leads out of the root is caught.

    Raises:
        BadPathError: a path that cannot name a file (NUL byte, too long), before any file
            system call.
        PathPolicyError: no roots, a relative path, a ``..`` component, or a path (after
            resolving symlinks) outside every root.
    """
    check_path_syntax(path)
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


def check_config_path(config: str, roots: Sequence[Path]) -> Path:
    """The YAML file a job's ``config`` names: a config shipped in ``configs/`` (by name, e.g.
    ``celeba-cnn``) or an absolute ``.yaml`` path under the storage roots. Nothing else is
    opened: not a name relative to the server's working directory, not a file of another kind.

    Raises:
        ConfigError: not a shipped name nor an absolute YAML path, or a file too large.
        BadPathError, PathPolicyError: a YAML path outside the storage roots (or not a path).
    """
    from deid.config import CONFIG_DIR

    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    expected = (
        f"expected a config name ({', '.join(names)}) or an absolute {'/'.join(CONFIG_SUFFIXES)} "
        "path under the storage roots"
    )
    if _CONFIG_NAME.fullmatch(config) and not config.endswith(CONFIG_SUFFIXES):
        if config in names:
            return CONFIG_DIR / f"{config}.yaml"
        raise ConfigError(f"config: unknown name {config!r}; {expected}")
    if not (config.startswith("/") and config.endswith(CONFIG_SUFFIXES)):
        raise ConfigError(f"config: {expected}")
    path = check_path(config, roots)
    if not path.is_file():
        raise ConfigError(f"config: file not found: {shorten(config)}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {shorten(config)} is larger than {MAX_CONFIG_BYTES} bytes")
    return path


def work_dir(output: Path, job_id: str) -> Path:
    """The job's temporary folder, beside its output (same file system: renames are atomic)."""
    return output.parent / f"{WORK_PREFIX}{job_id}"


# Work folders lie beside their outputs, anywhere under the roots; each one is also listed in
# ``<root>/.deid-work/<job id>.json`` (its path and the broker of its job), so that the work
# folder of a job whose state Redis lost can be found and removed without walking the roots.
WORK_PREFIX = ".deid-job-"
WORK_REGISTRY = ".deid-work"


def work_marker(workdir: Path, job_id: str, roots: Sequence[Path]) -> Path | None:
    """Where a work folder is listed: in the registry of the root that holds it (None: no
    configured root holds it)."""
    real = Path(os.path.realpath(workdir))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if root_real in real.parents:
            return root_real / WORK_REGISTRY / f"{job_id}.json"
    return None


def register_work(workdir: Path, job_id: str, roots: Sequence[Path], broker: str) -> bool:
    """List a work folder in its root's registry (before the folder is made). Returns False
    if it could not be listed (no root holds it, or the root is read-only): the job runs
    all the same, only a sweep could not find its folder after losing Redis."""
    marker = work_marker(workdir, job_id, roots)
    if marker is None:
        return False
    try:
        write_json(marker, {"workdir": str(workdir), "broker": broker})
    except OSError:
        return False
    return True


def touch_work(workdir: Path, job_id: str, roots: Sequence[Path]) -> None:
    """Note that a step of the job starts now (the registry entry's mtime)."""
    marker = work_marker(workdir, job_id, roots)
    if marker is not None:
        with contextlib.suppress(OSError):
            os.utime(marker)


def remove_work(workdir: Path, job_id: str, roots: Sequence[Path]) -> None:
    """Remove a job's work folder and its registry entry."""
    remove_tree(workdir)
    marker = work_marker(workdir, job_id, roots)
    if marker is not None:
        with contextlib.suppress(OSError):
            marker.unlink(missing_ok=True)


def registered_work(roots: Sequence[Path]) -> list[tuple[str, Path, dict[str, Any], float]]:
    """Every registry entry under ``roots``: (job id, entry, its JSON, seconds since its job
    last started a step). Unreadable entries are left out."""
    out = []
    for root in roots:
        registry = Path(root) / WORK_REGISTRY
        try:
            entries = sorted(registry.glob("*.json"))
        except OSError:
            continue
        for entry in entries:
            if not JOB_ID.fullmatch(entry.stem):
                continue
            try:
                age = time.time() - entry.stat().st_mtime
                data = read_json(entry)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                out.append((entry.stem, entry, data, age))
    return out


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
