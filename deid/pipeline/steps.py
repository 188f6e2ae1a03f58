"""Running a list of named steps, as paperless-ngx's consumer does: the order reads in one
place, cleanup runs in ``finally``, and a failure names its step.

A :class:`~deid.errors.DeidError` (a refused input, an unwritable output, ...) already says
what went wrong in the user's terms: it passes through unchanged (the step is logged and
noted on the exception). Anything else is a fault of a step and is raised as
:class:`StepFailed`, whose message names the step, with the original as its cause.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from deid.errors import DeidError, rebuild_exception

log = logging.getLogger(__name__)

C = TypeVar("C")


class StepFailed(Exception):
    """A step raised something other than a :class:`DeidError`.

    Attributes:
        step: the step's name (``render``, ``verify``, ...).
        cause: the exception it raised (also ``__cause__``).
    """

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"step {step!r} failed: {type(cause).__name__}: {cause}")

    def __reduce__(self) -> tuple[Any, ...]:
        # from a worker process: the cause as its text (it may not pickle)
        state = {
            **self.__dict__,
            "cause": RuntimeError(f"{type(self.cause).__name__}: {self.cause}"),
        }
        return (rebuild_exception, (type(self), self.args, state))


@dataclass(frozen=True)
class Step(Generic[C]):
    """One named step of a run: ``run(context)`` reads and writes the run's context."""

    name: str
    run: Callable[[C], None]


def run_steps(steps: Sequence[Step[C]], ctx: C, cleanup: Callable[[C], None] | None = None) -> C:
    """Run ``steps`` in order on ``ctx``; ``cleanup(ctx)`` afterwards, whatever happens.

    Raises:
        DeidError: as a step raised it (noted with the step's name).
        StepFailed: a step raised another exception (interrupts pass through).
    """
    try:
        for step in steps:
            log.debug("step %s", step.name)
            try:
                step.run(ctx)
            except StepFailed:
                raise  # a step of a step: already named
            except DeidError as e:
                e.add_note(f"(in step {step.name!r})")
                log.debug("step %s: %s", step.name, e)
                raise
            except Exception as e:
                raise StepFailed(step.name, e) from e
    finally:
        if cleanup is not None:
            cleanup(ctx)
    return ctx


class Timer:
    """Seconds spent per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t

    def rounded(self) -> dict[str, float]:
        """Seconds per stage, to the millisecond (as reports give them)."""
        return {k: round(v, 3) for k, v in self.seconds.items()}
