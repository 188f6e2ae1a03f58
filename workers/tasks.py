"""Celery tasks: thin shells over :class:`deid.service.jobs.Engine` (the logic lives in deid).

One task per step (``deid.split``, ``deid.analyse``, ``deid.plan``, ``deid.render``,
``deid.assemble``, ``deid.shard``, ``deid.collect``); each takes the job spec (JSON) and a
chunk index. Models load once per worker process, after the fork (``worker_process_init``),
and are cached per distinct job settings, so CUDA is never initialised in a parent process.

Every worker also runs a sweeper thread (started with the worker, ``worker_ready``): every
``service.heartbeat_interval`` it hands the steps of dead workers on
(:func:`deid.service.jobs.reclaim_dead_steps`, through :func:`restore_task`), and every
``service.orphan_sweep_interval`` (first at start) it removes the work folders of jobs that
Redis lost (:func:`deid.service.jobs.sweep_orphaned_work`); a Redis lock lets one worker at a
time do each.

Test hook: the environment variable ``DEID_FAULT`` (e.g. ``render:1=exit``,
``analyse:*=sleep:2``) makes the named step crash its worker process (``os._exit``) or sleep
before it starts. It exists for the fault tests; leave it unset in production.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import signals

from deid.config import load_settings
from deid.errors import DeidError
from deid.service.jobs import (
    Engine,
    JobCancelled,
    JobSpec,
    reclaim_dead_steps,
    sweep_orphaned_work,
)
from deid.service.state import JobStore
from deid.service.storage import remove_work
from workers.celery_app import app

log = logging.getLogger(__name__)

# Settings a worker imposes on every job it runs (``deid worker --device/--threads``).
WORKER_DEVICE_ENV = "DEID_WORKER_DEVICE"
WORKER_THREADS_ENV = "DEID_WORKER_THREADS"
FAULT_ENV = "DEID_FAULT"
MAX_CACHED_RESOURCES = 2

_resources: OrderedDict[str, Any] = OrderedDict()


class ChunkTimeLimit(DeidError):
    """A step ran past ``service.soft_time_limit``; its job fails with this reason."""


_engine: Engine | None = None
_pool = ""


# --------------------------------------------------------------------------------------------
# per-process state
# --------------------------------------------------------------------------------------------
def worker_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A job's settings with the worker's device and thread count imposed."""
    data = json.loads(json.dumps(data))
    pipe = data.setdefault("pipeline", {})
    if os.environ.get(WORKER_DEVICE_ENV):
        pipe["device"] = os.environ[WORKER_DEVICE_ENV]
    if os.environ.get(WORKER_THREADS_ENV):
        pipe["threads"] = int(os.environ[WORKER_THREADS_ENV])
    return data


def resources_for(settings: dict[str, Any]) -> Any:
    """Models for these settings, loaded once per process (a small LRU of settings)."""
    from deid.config import Settings
    from deid.pipeline import Resources

    data = worker_settings(settings)
    key = json.dumps(data, sort_keys=True)
    if key in _resources:
        _resources.move_to_end(key)
        return _resources[key]
    t = time.perf_counter()
    res = Resources.load(Settings.model_validate(data))
    log.info(
        "loaded models for %s on %s in %.1f s",
        data["classifier"]["name"],
        res.device,
        time.perf_counter() - t,
    )
    _resources[key] = res
    while len(_resources) > MAX_CACHED_RESOURCES:
        _resources.popitem(last=False)
    return res


def _roots() -> list[Path]:
    return [Path(r) for r in app.conf.deid_storage_roots]


def engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = Engine(
            JobStore(app.conf.broker_url, int(app.conf.deid_job_ttl)),
            dispatch,
            lambda spec: resources_for(spec.settings),
            before_step=_fault if os.environ.get(FAULT_ENV) else None,
            roots=_roots(),
            heartbeat=(
                float(app.conf.deid_heartbeat_interval),
                float(app.conf.deid_heartbeat_ttl),
            ),
        )
    return _engine


def dispatch(stage: str, spec: JobSpec, index: int) -> None:
    app.send_task(f"deid.{stage}", args=[spec.model_dump(mode="json"), index])


def restore_task(task_id: str) -> bool:
    """Put a task's unacknowledged message back at the head of its queue, now.

    kombu's Redis transport keeps each delivered, unacknowledged message in its ``unacked``
    hash until it is acknowledged, and restores it itself once ``visibility_timeout`` has
    passed; this does the same for one message (kombu's own ``restore_by_tag``, which also
    removes it from the hash, so it is not restored a second time). Returns False when no
    held message has this task id (it was acknowledged, or is already back in the queue).
    """
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        qos = channel.qos
        with channel.conn_or_acquire() as client:
            for tag, raw in client.hscan_iter(qos.unacked_key):
                try:
                    headers = json.loads(raw)[0].get("headers") or {}
                except (ValueError, TypeError, IndexError, AttributeError):
                    continue
                if headers.get("id") == task_id:
                    qos.restore_by_tag(tag, client=client)
                    return True
    return False


def _sweep_forever() -> None:
    """The sweeper thread: dead workers' steps every heartbeat interval, orphaned work
    folders every ``orphan_sweep_interval`` (first at once)."""
    interval = float(app.conf.deid_heartbeat_interval)
    every = float(app.conf.deid_orphan_sweep_interval)
    min_age = float(app.conf.task_time_limit) + 60  # any step of a lost job has ended
    store = JobStore(app.conf.broker_url, int(app.conf.deid_job_ttl))
    roots = _roots()
    next_orphans = 0.0
    while True:
        try:
            if store.lock("reclaim", 0.9 * interval):
                reclaim_dead_steps(store, restore_task)
            if time.monotonic() >= next_orphans:
                next_orphans = time.monotonic() + every
                if roots and store.lock("orphans", 0.9 * every):
                    sweep_orphaned_work(store, roots, min_age)
        except DeidError as e:  # Redis unreachable for a while: try again next time
            log.warning("sweep skipped: %s", e)
        except Exception:
            log.exception("sweep failed")
        time.sleep(interval)


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _pool
    _pool = str(getattr(sender, "pool_cls", "") or "")


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    """In the worker's main process, once it consumes: start the sweeper thread."""
    threading.Thread(target=_sweep_forever, name="deid-sweeper", daemon=True).start()


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    """After the fork (or in the solo worker itself): load the default models once."""
    global _engine
    _engine = None
    _resources.clear()
    if os.environ.get("DEID_WORKER_PRELOAD", "1") != "1":
        return
    try:
        from deid.service.jobs import job_settings

        resources_for(job_settings(load_settings()))
    except Exception:  # a job names its own settings; a failed warm-up is not fatal
        log.warning("could not preload the default models", exc_info=True)


@signals.task_postrun.connect
def _memory_cap(**_: Any) -> None:
    """Solo pool: Celery's worker_max_memory_per_child only acts on prefork children, so a
    solo worker over the cap shuts down warmly after its task (a supervisor restarts it)."""
    if "solo" not in _pool.lower():
        return
    cap = app.conf.worker_max_memory_per_child
    if cap and _rss_kib() > cap:
        log.warning("resident memory %d KiB > %d KiB: worker shuts down", _rss_kib(), cap)
        os.kill(os.getpid(), signal.SIGTERM)


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm") as f:  # noqa: PTH123
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


# --------------------------------------------------------------------------------------------
# limits and faults
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def time_limits(soft: int, hard: int, what: str) -> Iterator[None]:
    """Soft and hard time limits that also hold in the solo pool (Celery's own need prefork).

    Soft: :class:`ChunkTimeLimit` is raised in the task (the job fails with that reason).
    Hard: the worker process exits; the chunk is delivered again, and counted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_soft(signum: int, frame: Any) -> None:
        raise ChunkTimeLimit(f"ran past the soft time limit of {soft} s (service.soft_time_limit)")

    def on_hard() -> None:
        log.error("%s ran past the hard time limit of %d s: exiting", what, hard)
        os._exit(70)

    old = signal.signal(signal.SIGALRM, on_soft)
    signal.setitimer(signal.ITIMER_REAL, soft)
    killer = threading.Timer(hard, on_hard)
    killer.daemon = True
    killer.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        killer.cancel()


@contextlib.contextmanager
def cancel_watch(job_id: str, interval: float = 1.0) -> Iterator[None]:
    """Stop a running step within about ``interval`` seconds of its job being cancelled (or
    failed by another chunk, or lost): a thread polls the job's state and interrupts the
    task with :class:`JobCancelled` (SIGUSR2 to the main thread; temporary files are removed
    by the steps' own cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    done = threading.Event()
    main = threading.main_thread().ident
    store = JobStore(app.conf.broker_url, int(app.conf.deid_job_ttl))

    def on_signal(signum: int, frame: Any) -> None:
        if not done.is_set():
            raise JobCancelled(job_id)

    def watch() -> None:
        while not done.wait(interval):
            try:
                state = store.state(job_id)
            except DeidError:  # broker unreachable: the step's own writes will tell
                continue
            if state in (None, "FAILED", "CANCELLED"):
                log.info("job %s is %s: interrupting its running step", job_id, state or "gone")
                signal.pthread_kill(main, signal.SIGUSR2)  # type: ignore[arg-type]
                return

    old = signal.signal(signal.SIGUSR2, on_signal)
    watcher = threading.Thread(target=watch, name=f"cancel-watch-{job_id[:8]}", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR2, old)


def _fault(stage: str, index: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        where, _, action = item.partition("=")
        st, _, idx = where.partition(":")
        if st == stage and idx in ("*", str(index)):
            if action == "exit":
                log.error("DEID_FAULT: %s:%d exits its worker", stage, index)
                os._exit(13)
            if action.startswith("sleep:"):
                time.sleep(float(action[6:]))


def _run(task: Any, stage: str, spec: dict[str, Any], index: int) -> str:
    job = JobSpec.model_validate(spec)
    what = f"job {job.id} {stage} {index}"
    t = time.perf_counter()
    try:
        with time_limits(job.soft_time_limit, job.time_limit, what), cancel_watch(job.id):
            out = engine().run(stage, job, index, task=task.request.id)
    except JobCancelled:  # interrupted outside the step itself (in its bookkeeping)
        remove_work(Path(job.workdir), job.id, _roots())
        out = "skipped"
    log.info("%s: %s in %.2f s", what, out, time.perf_counter() - t)
    return out


# --------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------
@app.task(name="deid.split", bind=True)
def split(self: Any, spec: dict[str, Any], index: int = 0) -> str:
    """Probe the input and cut it into chunks (or a folder into shards)."""
    return _run(self, "split", spec, index)


@app.task(name="deid.analyse", bind=True)
def analyse(self: Any, spec: dict[str, Any], index: int) -> str:
    """Detect and classify one chunk's faces."""
    return _run(self, "analyse", spec, index)


@app.task(name="deid.plan", bind=True)
def plan(self: Any, spec: dict[str, Any], index: int = 0) -> str:
    """Track faces over the whole video; one target per track."""
    return _run(self, "plan", spec, index)


@app.task(name="deid.render", bind=True)
def render(self: Any, spec: dict[str, Any], index: int) -> str:
    """Attack, paste, encode and verify one chunk."""
    return _run(self, "render", spec, index)


@app.task(name="deid.assemble", bind=True)
def assemble(self: Any, spec: dict[str, Any], index: int = 0) -> str:
    """Join the chunks with the input's audio; the job's report."""
    return _run(self, "assemble", spec, index)


@app.task(name="deid.shard", bind=True)
def shard(self: Any, spec: dict[str, Any], index: int) -> str:
    """De-identify one shard of a dataset job's files."""
    return _run(self, "shard", spec, index)


@app.task(name="deid.collect", bind=True)
def collect(self: Any, spec: dict[str, Any], index: int = 0) -> str:
    """Merge a dataset job's shards into its manifest and report."""
    return _run(self, "collect", spec, index)
