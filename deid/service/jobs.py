"""Jobs of the service: what a job is, how it is checked at submission, and its steps.

A **video job** runs the steps of :mod:`deid.pipeline.video` as separate tasks::

    split -> analyse (one task per chunk, in parallel) -> plan -> render (per chunk) -> assemble

and a **dataset job** (a folder) runs ``split -> shard (per group of files) -> collect`` over
:func:`deid.batch.process_file`. Each step is a function of the job's :class:`JobSpec` (which
every task message carries, so a task never needs Redis to know its paths) and of files in
the job's work folder beside the output. A step that finishes its stage's last chunk starts
the next stage. Celery is not imported here: :class:`Engine` is given a ``dispatch`` callable
(``workers.tasks`` sends a task; tests may call steps directly).

Guarantees:

- every chunk output is written atomically and a redelivered chunk whose output verifies is
  skipped (:func:`deid.pipeline.video.chunk_ok`), so a chunk is computed once however often it is
  delivered, and a duplicate computation gives the same bytes;
- a chunk delivered more than ``service.max_deliveries`` times (it keeps killing its worker)
  fails the job with that reason instead of looping; a delivery of a chunk that is already
  done (a late duplicate) is not held against it;
- a running step beats a heartbeat into Redis; when its worker dies (SIGKILL, a lost
  machine), :func:`reclaim_dead_steps` sees the heartbeat expire within
  ``service.heartbeat_ttl`` and has the step's own queue message delivered again at once,
  instead of after the broker's ``visibility_timeout``;
- the output appears only complete; a failed or cancelled job leaves nothing at the output
  path and removes its work folder;
- a finished (or cancelled) job is never changed again: late tasks see the final state and
  clean up after themselves; a work folder whose job Redis lost is removed by
  :func:`sweep_orphaned_work`;
- a dataset job some of whose files failed ends ``PARTIAL`` (``deid batch``'s exit code 3),
  not ``SUCCESS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deid.config import ServiceConfig, Settings
from deid.errors import ConfigError, DeidError, InputError
from deid.service.state import DONE, JOB_ID, TERMINAL, JobStore, safe_url
from deid.service.storage import (
    WORK_PREFIX,
    PathPolicyError,
    check_path,
    read_json,
    register_work,
    registered_work,
    remove_tree,
    remove_work,
    shorten,
    touch_work,
    work_dir,
    write_json,
)

log = logging.getLogger(__name__)

CHUNK_STAGES = ("analyse", "render", "shard")  # one task per chunk, recorded by mark_done
# The state a job is in while a stage's tasks run.
STAGE_STATE = {
    "split": "SPLITTING",
    "analyse": "ANALYSING",
    "plan": "PLANNING",
    "render": "RENDERING",
    "assemble": "ASSEMBLING",
    "shard": "RUNNING",
    "collect": "COLLECTING",
}


class JobFailed(DeidError):
    """A job ended in FAILED (or CANCELLED): the message gives the stage and the reason."""

    exit_code = 3


class JobCancelled(Exception):
    """Raised inside a step when its job was cancelled (or finished) meanwhile."""


def _service_default(name: str) -> Any:
    """The default of ``service.<name>`` (:class:`deid.config.ServiceConfig`)."""
    return ServiceConfig.model_fields[name].default


class JobSpec(BaseModel):
    """Everything a task needs to run its step (JSON; travels in every task message)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=f"^{JOB_ID.pattern}$")
    kind: Literal["video", "dataset"]
    input: str
    output: str
    workdir: str
    settings: dict[str, Any] = Field(description="deid settings without the service section")
    # The service's limits, as they were when the job was submitted (new_job); a spec built
    # without them gets the service's defaults.
    shard_files: int = _service_default("shard_files")
    max_deliveries: int = _service_default("max_deliveries")
    soft_time_limit: int = _service_default("soft_time_limit")
    time_limit: int = _service_default("time_limit")

    def resolved_settings(self) -> Settings:
        return Settings.model_validate(self.settings)

    @model_validator(mode="after")
    def _workdir_is_the_jobs(self) -> JobSpec:
        # a worker removes the work folder a message names: only ever the job's own
        if self.workdir != str(work_dir(Path(self.output), self.id)):
            raise ValueError("workdir must be the job's own folder beside its output")
        return self


Dispatch = Callable[[str, JobSpec, int], None]
ResourcesFor = Callable[[JobSpec], Any]


# --------------------------------------------------------------------------------------------
# submission
# --------------------------------------------------------------------------------------------
def job_settings(settings: Settings) -> dict[str, Any]:
    """The settings a job carries: everything but the service section (broker, token)."""
    return settings.model_dump(mode="json", exclude={"service"})


def new_job(
    input: Path | str,
    output: Path | str,
    settings: Settings,
    service: ServiceConfig,
    job_id: str | None = None,
) -> JobSpec:
    """Check a job before it is queued; return its spec.

    Checks: both paths under the storage roots (no ``..``, no symlink out of a root); the
    input exists and is a decodable video (probed) or a folder with images/videos; what the
    job writes (the output, with a video suffix for a video; its report; its work folder) is
    not, does not hold and does not lie inside the input, nor each other (the check `deid
    run` makes, :func:`deid.io.check_run`, without trying to write: the API may see the
    storage read-only); the settings are valid and name a known classifier.

    Raises:
        PathPolicyError, InputError, VideoDecodeError, OutputError, ConfigError,
            JudgeMissingError (strict privacy without the judge's extra): the job is
            refused (HTTP 4xx; CLI exit code 2) with a message naming what was expected.
    """
    from deid.batch import list_media
    from deid.io import Artefact, check_run, check_video, classify_input
    from deid.pipeline.verify import check_judge

    check_judge(settings)  # strict privacy needs the judge: refused before anything else
    roots = service.storage_roots
    src = check_path(input, roots)
    dst = check_path(output, roots)
    if not src.exists():
        raise InputError(src, "file not found; expected a video file or a folder of images")
    job_id = job_id or uuid.uuid4().hex
    work = Artefact("work folder", work_dir(dst, job_id), folder=True)
    if src.is_dir():
        kind: Literal["video", "dataset"] = "dataset"
        if not list_media(src):
            raise InputError(src, "no images or videos found in this folder")
    else:
        if classify_input(src) != "video":
            raise InputError(src, "expected a video file or a folder (single images: deid run)")
        kind = "video"
    check_run(src, dst, extra=[work], probe=False)
    if kind == "video":
        check_video(src)  # decodes, and every frame has its own timestamp
    _check_classifier(settings.classifier.name, roots)
    return JobSpec(
        id=job_id,
        kind=kind,
        input=str(src),
        output=str(dst),
        workdir=str(work.path),
        settings=job_settings(settings),
        shard_files=service.shard_files,
        max_deliveries=service.max_deliveries,
        soft_time_limit=service.soft_time_limit,
        time_limit=service.time_limit,
    )


def _check_classifier(name: str, roots: list[Path]) -> None:
    """A shipped classifier name, or a checkpoint file under the storage roots."""
    from deid.errors import CheckpointError
    from deid.models import SHIPPED, shipped_path

    if name in SHIPPED:
        if not shipped_path(name).is_file():
            raise CheckpointError(f"shipped checkpoint {name!r} is missing on this machine")
        return
    if not name.endswith((".pt", ".pth")):
        raise ConfigError(
            f"classifier.name: unknown classifier {shorten(name)!r}; expected one of "
            f"{list(SHIPPED)} "
            "or a checkpoint path (.pt) under the storage roots"
        )
    path = check_path(name, roots)
    if not path.is_file():
        raise CheckpointError(f"classifier checkpoint not found: {path}")


def initial_fields(spec: JobSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind,
        "input": spec.input,
        "output": spec.output,
        "stage": "queued",
        "spec": spec.model_dump(mode="json"),
        "frames_total": 0,
        "frames_analysed": 0,
        "frames_done": 0,
        "chunks_total": 0,
        "chunks_analysed": 0,
        "chunks_done": 0,
    }


# --------------------------------------------------------------------------------------------
# steps
# --------------------------------------------------------------------------------------------
class Engine:
    """Runs one step of a job and starts the next stage when a stage is complete.

    Args:
        store: the job state.
        dispatch: ``dispatch(stage, spec, index)`` queues a task.
        resources: ``resources(spec)`` -> :class:`deid.pipeline.Resources` for the job's
            settings (a worker caches them per process).
        before_step: called with ``(stage, index)`` once a delivery is counted, before the
            step runs (the workers' fault injection for tests).
        roots: the storage roots, whose registries list the work folders (see
            :func:`deid.service.storage.register_work`); none: work folders are not listed.
        heartbeat: ``(interval, ttl)`` seconds of the heartbeat a running step beats
            (``service.heartbeat_interval``, ``service.heartbeat_ttl``).
    """

    def __init__(
        self,
        store: JobStore,
        dispatch: Dispatch,
        resources: ResourcesFor,
        before_step: Callable[[str, int], None] | None = None,
        roots: Sequence[Path] = (),
        heartbeat: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.resources = resources
        self.before_step = before_step  # fault injection in tests (after counting a delivery)
        self.roots = list(roots)
        self.heartbeat = heartbeat
        self.who = f"{socket.gethostname()}:{os.getpid()}"

    # entry point ---------------------------------------------------------------------------
    def run(self, stage: str, spec: JobSpec, index: int = 0, task: str | None = None) -> str:
        """Run one step (``task``: the id of the queue message that delivered it, which
        :func:`reclaim_dead_steps` delivers again if this worker dies). Returns what happened:
        ``done``, ``skipped`` (job finished, cancelled or lost), ``failed``. Never raises for a
        job's own failure: the job is FAILED."""
        what = f"{stage}:{index}"
        state = self.store.state(spec.id)
        if state is None:
            log.warning("job %s: state lost (expired, or Redis restarted); drop %s", spec.id, what)
            self._remove_work(spec)
            return "skipped"
        if state in ("FAILED", "CANCELLED"):
            self._remove_work(spec)
            return "skipped"
        if state in DONE:
            return "skipped"
        # A chunk already recorded as done is delivered again when a worker was taken for dead
        # but finished after all, or when the broker's visibility timeout restores a message
        # that was already redelivered: it is checked and skipped, never a poison delivery.
        done = stage in CHUNK_STAGES and self.store.is_done(spec.id, stage, index)
        n = self.store.delivery(spec.id, stage, index)
        if n > spec.max_deliveries and not done:
            self.store.clear_running(spec.id, what)  # left by the delivery that died
            self.fail(
                spec,
                f"{self._describe(stage, spec, index)} was delivered {n} times without "
                f"finishing: it keeps crashing or killing its worker (poison chunk); "
                f"service.max_deliveries={spec.max_deliveries}",
            )
            return "failed"
        who = f"{self.who}:{time.time():.3f}"
        with self._beating():
            self.store.set_running(spec.id, what, who, task)
            touch_work(Path(spec.workdir), spec.id, self.roots)
            try:
                if self.before_step is not None:
                    self.before_step(stage, index)
                getattr(self, f"_{stage}")(spec, index, redelivered=n > 1 or done)
                return "done"
            except JobCancelled:
                self._remove_work(spec)
                return "skipped"
            except Exception as e:  # a step's failure fails its job; the message names the step
                if isinstance(e, DeidError):
                    log.warning("job %s: %s failed: %s", spec.id, what, e)
                else:
                    log.exception("job %s: %s failed", spec.id, what)
                self.fail(spec, f"{self._describe(stage, spec, index)}: {_message(e)}")
                return "failed"
            finally:
                self.store.clear_running(spec.id, what, who)
                if self.store.state(spec.id) in (None, "FAILED", "CANCELLED"):
                    self._remove_work(spec)

    def fail(self, spec: JobSpec, reason: str) -> None:
        self.store.add_error(spec.id, reason)
        if self.store.finish(spec.id, "FAILED", error=reason):
            log.error("job %s failed: %s", spec.id, reason)
        self._remove_work(spec)

    @contextlib.contextmanager
    def _beating(self) -> Iterator[None]:
        """While the step runs, a thread tells Redis every ``interval`` seconds that this
        process is alive (the key outlives it by ``ttl``; it is left to expire, as another
        step of this process may be beating too)."""
        interval, ttl = self.heartbeat
        self.store.heartbeat(self.who, ttl)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    self.store.heartbeat(self.who, ttl)
                except DeidError:  # Redis away for a moment: the next beat may get through
                    log.warning("heartbeat of %s not sent: Redis unreachable", self.who)

        beater = threading.Thread(target=beat, name="deid-heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()

    def _remove_work(self, spec: JobSpec) -> None:
        remove_work(Path(spec.workdir), spec.id, self.roots)

    # helpers -------------------------------------------------------------------------------
    def _describe(self, stage: str, spec: JobSpec, index: int) -> str:
        if stage in ("analyse", "render"):
            try:
                c = read_json(_layout_path(spec))["chunks"][index]
                return f"{stage} chunk {index} (frames {c['start']}-{c['stop'] - 1})"
            except (OSError, ValueError, KeyError, IndexError):
                return f"{stage} chunk {index}"
        if stage == "shard":
            return f"shard {index}"
        return stage

    def _check(self, spec: JobSpec, **fields: Any) -> None:
        """Update fields while the job runs; raise :class:`JobCancelled` if it is over."""
        if self.store.update(spec.id, **fields) != 1:
            raise JobCancelled(spec.id)

    def _advance(self, spec: JobSpec, stage: str, count: int, redelivered: bool) -> None:
        """Queue ``count`` tasks of ``stage`` exactly once (again after a crash: a
        redelivered step may have died between claiming the transition and queueing them
        all, which the ``<stage>:queued`` flag, set once they are, tells)."""
        claimed = self.store.once(spec.id, stage)
        if claimed or (redelivered and not self.store.flag(spec.id, f"{stage}:queued")):
            self._check(spec, state=STAGE_STATE[stage], stage=stage)
            for i in range(count):
                self.dispatch(stage, spec, i)
            self.store.once(spec.id, f"{stage}:queued")

    def _finish_chunk(
        self, spec: JobSpec, stage: str, index: int, frames: int, redelivered: bool
    ) -> bool:
        """Record a chunk as done; True when it was the stage's last."""
        first, done = self.store.mark_done(spec.id, stage, index)
        counters = {
            "analyse": ("frames_analysed", "chunks_analysed"),
            "render": ("frames_done", "chunks_done"),
            "shard": ("frames_done", "chunks_done"),
        }[stage]
        if first:
            self.store.incr(spec.id, **{counters[0]: frames, counters[1]: 1})
        total = int(self.store.get(spec.id)["chunks_total"])
        return done >= total and (first or redelivered)

    # video ---------------------------------------------------------------------------------
    def _split(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        work = Path(spec.workdir)
        if not register_work(work, spec.id, self.roots, safe_url(self.store.url)):
            log.warning(
                "job %s: work folder %s not listed under a storage root (this worker's roots: "
                "%s): if Redis loses the job, no sweep will find it",
                spec.id,
                work,
                self.roots,
            )
        work.mkdir(parents=True, exist_ok=True)
        if spec.kind == "dataset":
            return self._split_dataset(spec, redelivered)
        from deid.pipeline import video

        self._check(spec, state="SPLITTING", stage="split")
        chunk_frames = spec.resolved_settings().pipeline.chunk_frames
        layout_path = _layout_path(spec)
        if not layout_path.is_file():
            write_json(layout_path, video.split(Path(spec.input), chunk_frames))
        layout = read_json(layout_path)
        n = len(layout["chunks"])
        self._check(spec, frames_total=layout["frames"], chunks_total=n)
        self._advance(spec, "analyse", n, redelivered)

    def _analyse(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid.pipeline import video

        layout = read_json(_layout_path(spec))
        chunk = video.Chunk.from_dict(layout["chunks"][index])
        out = _analysis_path(spec, index)
        if not _json_ok(out):
            result = video.analyse(Path(spec.input), layout, chunk, self.resources(spec))
            self._check(spec)
            write_json(out, result)
        if self._finish_chunk(spec, "analyse", index, chunk.frames, redelivered):
            self._advance(spec, "plan", 1, redelivered)

    def _plan(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid.pipeline import video

        layout = read_json(_layout_path(spec))
        out = Path(spec.workdir) / "plan.json"
        if not _json_ok(out):
            analyses = [read_json(_analysis_path(spec, i)) for i in range(len(layout["chunks"]))]
            write_json(out, video.plan(layout, analyses, self.resources(spec)))
        self._advance(spec, "render", len(layout["chunks"]), redelivered)

    def _render(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid.pipeline import video

        layout = read_json(_layout_path(spec))
        chunk = video.Chunk.from_dict(layout["chunks"][index])
        out = _segment_path(spec, index)
        if not video.chunk_ok(out, chunk):
            the_plan = read_json(Path(spec.workdir) / "plan.json")
            video.render(Path(spec.input), layout, the_plan, chunk, self.resources(spec), out)
            self._check(spec)
        if self._finish_chunk(spec, "render", index, chunk.frames, redelivered):
            self._advance(spec, "assemble", 1, redelivered)

    def _assemble(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid.pipeline import report_path, video, write_report

        layout = read_json(_layout_path(spec))
        n = len(layout["chunks"])
        parts = [_segment_path(spec, i) for i in range(n)]
        reports = [read_json(video.segment_report_path(p)) for p in parts]
        analyses = [read_json(_analysis_path(spec, i)) for i in range(n)]
        the_plan = read_json(Path(spec.workdir) / "plan.json")
        output = Path(spec.output)
        res = self.resources(spec)
        self._check(spec, state="ASSEMBLING", stage="assemble")
        report = video.assemble(
            Path(spec.input), layout, parts, output, reports, res, the_plan, analyses
        )
        try:
            report["job"] = {"id": spec.id, "chunks": n}
            write_report(output, report)
            if not self.store.finish(spec.id, "SUCCESS", report=report):
                if self.store.state(spec.id) == "SUCCESS":
                    return  # a duplicate delivery finished first, with the same bytes: keep
                raise JobCancelled(spec.id)  # cancelled while joining: the output must not stay
        except BaseException:
            output.unlink(missing_ok=True)  # this job's output, just renamed into place
            report_path(output).unlink(missing_ok=True)
            raise
        self._remove_work(spec)

    # dataset -------------------------------------------------------------------------------
    def _split_dataset(self, spec: JobSpec, redelivered: bool) -> None:
        from deid.batch import list_media

        self._check(spec, state="SPLITTING", stage="split")
        path = Path(spec.workdir) / "shards.json"
        if not path.is_file():
            src = Path(spec.input)
            files = [str(p.relative_to(src)) for p in list_media(src)]
            k = spec.shard_files
            write_json(path, [files[i : i + k] for i in range(0, len(files), k)])
        shards = read_json(path)
        self._check(
            spec, frames_total=sum(len(s) for s in shards), chunks_total=len(shards), unit="file"
        )
        self._advance(spec, "shard", len(shards), redelivered)

    def _shard(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid.batch import failed_row, output_path, process_file

        files = read_json(Path(spec.workdir) / "shards.json")[index]
        out = Path(spec.workdir) / "shards" / f"{index:05d}.json"
        # a file of the folder (or a folder of the output) may be a symlink: it must not lead
        # out of the storage roots (or, on a worker without roots, out of the job's folders)
        allowed = self.roots or [Path(spec.input), Path(spec.output)]
        if not _json_ok(out):
            res = self.resources(spec)
            rows = []
            for rel in files:
                self._check(spec)
                src, dst = Path(spec.input) / rel, Path(spec.output) / output_path(Path(rel))
                try:
                    check_path(src, allowed)
                    check_path(dst, allowed)
                except PathPolicyError as e:
                    rows.append(failed_row(src, dst, e.reason))
                    continue
                rows.append(process_file(src, dst, res))
            write_json(out, rows)
        if self._finish_chunk(spec, "shard", index, len(files), redelivered):
            self._advance(spec, "collect", 1, redelivered)

    def _collect(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid.batch import MANIFEST, write_manifest
        from deid.pipeline import report_path

        n = len(read_json(Path(spec.workdir) / "shards.json"))
        shards = Path(spec.workdir) / "shards"
        rows = [r for i in range(n) for r in read_json(shards / f"{i:05d}.json")]
        output = Path(spec.output)
        output.mkdir(parents=True, exist_ok=True)
        write_manifest(output / MANIFEST, rows)
        failed = [r for r in rows if r["status"] == "failed"]
        for r in failed:
            self.store.add_error(spec.id, f"{r['path']}: {r['error']}")
        report = {
            "kind": "dataset",
            "input": spec.input,
            "output": spec.output,
            "job": {"id": spec.id, "shards": n},
            "totals": {
                "files": len(rows),
                "done": sum(r["status"] == "done" for r in rows),
                "failed": len(failed),
                "faces": sum(int(r["faces"] or 0) for r in rows),
                "deidentified": sum(int(r["deidentified"] or 0) for r in rows),
                "obscured": sum(int(r["obscured"] or 0) for r in rows),
            },
            "failed_inputs": [{"file": r["path"], "error": r["error"]} for r in failed],
            "files": rows,
        }
        write_json(report_path(output), report)
        if failed:  # as `deid batch`: the others are written, and the job says what failed
            self.store.finish(
                spec.id,
                "PARTIAL",
                report=report,
                error=f"{len(failed)} of {len(rows)} files failed (see errors)",
            )
        else:
            self.store.finish(spec.id, "SUCCESS", report=report)
        self._remove_work(spec)


# --------------------------------------------------------------------------------------------
# sweeps (run periodically by the workers: workers.tasks)
# --------------------------------------------------------------------------------------------
def reclaim_dead_steps(store: JobStore, restore: Callable[[str], bool]) -> list[str]:
    """Deliver again, now, the steps whose worker stopped beating its heartbeat.

    A step's running entry names its worker (``host:pid``); a worker that is SIGKILLed or
    loses its machine stops refreshing its heartbeat key, which expires after
    ``service.heartbeat_ttl``. Each such entry is removed (compare-and-delete: one sweeper
    acts, and never on the entry of a delivery that took over) and ``restore(task_id)`` puts
    the step's own unacknowledged queue message back at the head of the queue, so it is
    delivered (and counted) once more, exactly as the broker would after its visibility
    timeout, and not a second time then. A worker that was only slow and finishes after all
    writes the same bytes (chunk outputs are atomic and deterministic) and is counted once.

    Returns ``"<job> <stage>:<index>"`` for each step handed on.
    """
    out = []
    for job_id in store.running_jobs():
        running = store.running(job_id)
        if not running:
            store.forget_if_idle(job_id)
            continue
        for what, who in running.items():
            holder = who.rsplit(":", 1)[0]
            if store.alive(holder):
                continue
            task = store.running_task(job_id, what)
            if not store.clear_running(job_id, what, who):
                continue  # it finished, or another sweeper took it
            if store.state(job_id) in (None, *TERMINAL):
                continue
            restored = bool(task) and restore(task)  # type: ignore[arg-type]
            log.warning(
                "job %s: %s: its worker %s stopped beating its heartbeat (dead); %s",
                job_id,
                what,
                holder,
                "delivered again now"
                if restored
                else "its message is no longer held (already queued again or acknowledged)",
            )
            out.append(f"{job_id} {what}")
    return out


def sweep_orphaned_work(store: JobStore, roots: Sequence[Path], min_age: float) -> list[Path]:
    """Remove the work folders of jobs that will never run another step.

    A job whose state Redis lost (a restart without persistence) lost its queued steps too,
    so no step comes to remove its work folder. The registries under ``roots`` list every
    work folder with its broker; one is removed when its job is unknown to this broker (or
    finished) and no step of it started for ``min_age`` seconds (more than the hard time
    limit: a step still running when the state was lost has ended by then). Entries of
    another broker (another deployment sharing the storage) are left alone.
    """
    removed = []
    me = safe_url(store.url)
    for job_id, entry, data, age in registered_work(roots):
        if age < min_age or data.get("broker") != me:
            continue
        if store.state(job_id) not in (None, *TERMINAL):
            continue
        workdir = Path(str(data.get("workdir", "")))
        try:  # only ever a folder named for the job, under a root, not through a symlink
            real = check_path(workdir, roots)
        except PathPolicyError as e:
            log.warning("work folder %s of job %s not removed: %s", workdir, job_id, e)
            continue
        if workdir.name == real.name == f"{WORK_PREFIX}{job_id}":
            remove_tree(real)
        entry.unlink(missing_ok=True)
        log.warning(
            "job %s: unknown to Redis or finished; removed its work folder %s", job_id, workdir
        )
        removed.append(workdir)
    return removed


def _layout_path(spec: JobSpec) -> Path:
    return Path(spec.workdir) / "layout.json"


def _analysis_path(spec: JobSpec, index: int) -> Path:
    return Path(spec.workdir) / "analyse" / f"{index:05d}.json"


def _segment_path(spec: JobSpec, index: int) -> Path:
    from deid.pipeline.video import segment_suffix

    return Path(spec.workdir) / "render" / f"{index:05d}{segment_suffix(Path(spec.output))}"


def _json_ok(path: Path) -> bool:
    """A step's JSON output exists and parses (written atomically, so it is whole)."""
    try:
        read_json(path)
        return True
    except (OSError, ValueError):
        return False


def _message(e: BaseException) -> str:
    if type(e).__name__ == "SoftTimeLimitExceeded":  # Celery's own (prefork pool)
        return "ran past the soft time limit (service.soft_time_limit)"
    text = str(e) or type(e).__name__
    return text if isinstance(e, DeidError) else f"{type(e).__name__}: {text}"
