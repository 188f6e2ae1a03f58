"""Exception types. Each carries the data a caller needs to act on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def rebuild_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> Any:
    """An exception of ``cls`` with its message ``args`` and attributes, made without calling
    its ``__init__`` (whose parameters may differ from ``args``)."""
    e = cls.__new__(cls)
    BaseException.__init__(e, *args)
    e.__dict__.update(state)
    return e


class DeidError(Exception):
    """Base class of every error deid raises on purpose.

    It pickles with its attributes whatever its constructor takes, so an error raised in a
    worker process (``pipeline.workers``) reaches the caller as itself.
    """

    exit_code = 2

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_exception, (type(self), self.args, dict(self.__dict__)))


class PathError(DeidError):
    """A path that cannot be used: ``path`` and the ``reason``; the message is ``<path>:
    <reason>``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.shown(path)}: {reason}")

    @staticmethod
    def shown(path: Path | str) -> str:
        """The path as the message writes it."""
        return str(path)


class InputError(PathError):
    """The input path is missing, unreadable or of the wrong kind."""


class VideoDecodeError(InputError):
    """A file that should be a video could not be decoded."""


class OutputError(PathError):
    """The output path is not acceptable (same as input, inside input, unwritable)."""


class ConfigError(DeidError):
    """A configuration value is unknown or out of range."""


class ShapeError(DeidError):
    """A tensor does not have the expected shape."""

    def __init__(self, name: str, actual: tuple[int, ...], expected: str) -> None:
        self.actual = actual
        self.expected = expected
        super().__init__(f"{name}: expected shape {expected}, got {tuple(actual)}")


class CheckpointError(DeidError):
    """A classifier checkpoint is missing, unknown or malformed."""


class DataError(DeidError):
    """A dataset file is missing or does not have the expected layout."""


class PartialFailure(DeidError):
    """Some inputs of a multi-file job failed; the others were written."""

    exit_code = 3

    def __init__(self, failed: list[tuple[str, str]], report: dict[str, Any] | None = None) -> None:
        self.failed = failed
        self.report = report  # the run's report, when there is one (a service job's)
        super().__init__(
            f"{len(failed)} input(s) failed: " + "; ".join(f"{p}: {r}" for p, r in failed[:5])
        )
