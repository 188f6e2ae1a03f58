"""A video job's chunks in worker processes (``pipeline.workers``), for ``deid run``.

The service spreads a job's chunks over Celery workers; an in-process run can do the same
on one machine: each chunk is analysed, and later rendered, by one of ``workers`` processes
that load the models once and run torch with their share of the CPUs. It is for machines
with more cores than torch's threads use well (MTCNN's small convolutions); on this
project's 2-core machine one process already keeps 1.8 cores busy, and two gave no gain
(README "Speed").

The chunks are the job's own (``pipeline.chunk_frames``), each seeded from its first frame,
so the output is the same, byte for byte, whatever the number of workers (tested). Workers
are fresh interpreters (``spawn``): nothing of the caller's threads or CUDA state is copied.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from deid.config import Settings

log = logging.getLogger(__name__)

_RES: list[Any] = []  # the worker's Resources, loaded once by _start


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool_size(asked: int | None, chunks: int) -> int:
    """Worker processes for a job of ``chunks`` chunks: ``asked`` (None: one per usable CPU),
    at most one per chunk; 1 means the job runs in the caller's process."""
    n = usable_cpus() if asked is None else asked
    return max(1, min(n, chunks))


def worker_settings(settings: Settings, workers: int) -> Settings:
    """A worker's settings: the CPUs shared out (torch threads, the judge's processes) where
    the user left them to deid."""
    share = max(1, usable_cpus() // workers)
    p = settings.pipeline
    update = {
        "threads": p.threads or share,
        "judge_workers": p.judge_workers or share,
        "workers": 1,
    }
    return settings.model_copy(update={"pipeline": p.model_copy(update=update)})


def _start(settings: dict[str, Any]) -> None:
    from deid.pipeline.resources import Resources

    _RES.append(Resources.load(Settings.model_validate(settings)))


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(*args, res=_RES[0])


class ChunkPool:
    """``workers`` processes, each with the models loaded, that analyse and render chunks."""

    def __init__(self, settings: Settings, workers: int) -> None:
        own = worker_settings(settings, workers)
        self._ex = ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_start,
            initargs=(own.model_dump(mode="json"),),
        )
        log.info("%d worker processes, %d torch thread(s) each", workers, own.pipeline.threads or 0)

    def map(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[Any, ...]],
        chunks: Sequence[Any],
        on_chunk: Callable[[Any], None],
    ) -> list[Any]:
        """``fn(*args, res=<the worker's Resources>)`` for each ``args`` of ``calls`` (one per
        chunk; ``fn`` a module-level function), in order; ``on_chunk(chunk)`` as each ends."""
        futures = [self._ex.submit(_call, fn, args) for args in calls]
        return self._results(futures, chunks, on_chunk)

    @staticmethod
    def _results(
        futures: list[Future[Any]], chunks: Sequence[Any], on_chunk: Callable[[Any], None]
    ) -> list[Any]:
        try:
            out = []
            for f, c in zip(futures, chunks, strict=True):
                out.append(f.result())  # in order: the first failure is the earliest chunk's
                on_chunk(c)
            return out
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)
