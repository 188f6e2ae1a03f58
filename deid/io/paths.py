"""Paths deid writes: temporary paths for atomic writes, and the one check of a command's writes.

Every command that writes files (``deid run``, ``batch``, ``report``, ``train``, ``data
prepare``, ``eval``, the demo clip and the service's job submission) lists what it reads and
the :class:`Artefact` s it will write, and calls :func:`check_writes` before any model loads or
any work starts. A command whose writes land on, in or around what it reads, or on or in each
other, is refused with an :class:`~deid.errors.OutputError` (exit code 2) naming both paths.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deid.errors import OutputError


def tmp_beside(path: Path, tag: str = "tmp") -> Path:
    """A hidden, unique temporary path in ``path``'s folder (same suffix, so encoders pick the
    same format): write there, then ``replace`` onto ``path`` for an atomic result."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}{path.suffix}")


def report_path(output: Path) -> Path:
    """Where the JSON report of ``output`` goes: ``out.mp4`` -> ``out.report.json``."""
    return output.with_name(output.stem + ".report.json")


@dataclass(frozen=True)
class Artefact:
    """One path a command will write.

    Attributes:
        role: what it is, as messages name it: ``output``, ``report``, ``contact sheet``, ...
        path: where it goes; it need not exist yet.
        folder: a folder the command fills (everything under it is the command's), else a
            file.
    """

    role: str
    path: Path
    folder: bool = False

    @property
    def noun(self) -> str:
        return f"{self.role} folder" if self.folder else self.role


def resolve(path: Path | str) -> Path:
    """``path`` absolute, with ``~``, symlinks and ``..`` resolved, also where its tail does
    not exist yet (what it will be once written)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _same_file(a: Path, b: Path) -> bool:
    """Two existing paths of one file (hard links included)."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _relation(a: Path, ra: Path, b: Path, rb: Path) -> str | None:
    """How ``a`` stands to ``b`` (``ra``, ``rb``: their resolved forms)."""
    if ra == rb or _same_file(a, b):
        return "is"
    if rb in ra.parents:
        return "is inside"
    if ra in rb.parents:
        return "contains"
    return None


def _expected(rel: str, a: Artefact) -> str:
    if rel == "is":
        return f"expected a different {a.role} path"
    return "expected a path outside it" if rel == "is inside" else "expected a path apart from it"


def check_writes(
    reads: Iterable[tuple[str, Path | str | None]],
    writes: Iterable[Artefact | None],
    probe: bool = True,
) -> None:
    """Refuse a command whose writes would clash, before it does any work.

    Rules, on paths resolved by :func:`resolve` (symlinks and ``..``; hard links where both
    exist):

    - no artefact is, lies inside or contains anything the command reads (an input file or
      folder, a report it renders, a dataset, a checkpoint);
    - no two artefacts are the same path or lie one inside the other (a report or a contact
      sheet inside a folder output could clash with a file the folder mirrors, so it must go
      beside it);
    - an artefact that exists is of its kind: a folder for ``folder=True``, else a file;
    - with ``probe``: the nearest existing folder on each artefact's path is a folder in which
      a file can be created (a temporary file is made and removed, so this holds for root and
      read-only file systems too).

    Args:
        reads: ``(role, path)`` of everything the command reads; ``None`` paths are skipped.
        writes: the artefacts; ``None`` entries (optional artefacts not asked for) are skipped.
        probe: try writing. The service skips it: its API may see the storage read-only
            while its workers write.

    Raises:
        OutputError: naming the artefact, what it clashes with and what was expected.
    """
    inputs = [(role, Path(p), resolve(p)) for role, p in reads if p is not None]
    arts = [(a, resolve(a.path)) for a in writes if a is not None]
    for i, (a, ra) in enumerate(arts):
        for role, p, rp in inputs:
            rel = _relation(a.path, ra, p, rp)
            if rel is not None:
                noun = f"{role} folder" if rp.is_dir() else role
                raise OutputError(a.path, f"the {a.noun} {rel} the {noun} {p}; {_expected(rel, a)}")
        for b, rb in arts[:i]:
            rel = _relation(a.path, ra, b.path, rb)
            if rel is not None:
                raise OutputError(
                    a.path, f"the {a.noun} {rel} the {b.noun} {b.path}; {_expected(rel, a)}"
                )
        if a.folder and ra.exists() and not ra.is_dir():
            raise OutputError(a.path, f"the {a.noun} is an existing file; expected a folder")
        if not a.folder and ra.is_dir():
            raise OutputError(a.path, f"the {a.noun} is an existing folder; expected a file path")
    if probe:
        tried: set[Path] = set()
        for a, ra in arts:
            _check_writable(a, ra, tried)


def _check_writable(a: Artefact, ra: Path, tried: set[Path]) -> None:
    """The nearest existing folder on ``a``'s path takes a new file."""
    folder = ra if a.folder else ra.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder in tried:
        return
    if not folder.is_dir():
        raise OutputError(a.path, f"{folder} is a file; expected a folder to write the {a.role} in")
    try:
        fd, name = tempfile.mkstemp(prefix=".deid-probe-", dir=folder)
    except OSError as e:
        raise OutputError(
            a.path, f"cannot write the {a.role}: {folder} is not writable ({e.strerror or e})"
        ) from None
    os.close(fd)
    Path(name).unlink()
    tried.add(folder)


@contextmanager
def writing(path: Path, role: str = "output") -> Iterator[None]:
    """Report a failed write of ``path`` (or of a temporary file for it) as an
    :class:`OutputError` naming ``path`` itself, not a traceback or a temporary name."""
    try:
        yield
    except OutputError as e:
        if e.path == path:
            raise
        cause = e.__cause__
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else e.reason
        raise OutputError(path, f"cannot write the {role} ({why})") from e
    except OSError as e:
        raise OutputError(path, f"cannot write the {role} ({e.strerror or e})") from e


def write_text(path: Path, text: str, role: str = "output") -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename),
    creating its folder; a failure is an :class:`OutputError` naming ``path``."""
    tmp = tmp_beside(path)
    try:
        with writing(path, role):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
