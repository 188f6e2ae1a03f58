"""Jobs of the service: what a job is, how it is checked at submission, and its steps.

A **video job** runs the steps of :mod:`deid.job` as separate tasks::

    split -> analyse (one task per chunk, in parallel) -> plan -> render (per chunk) -> assemble

and a **dataset job** (a folder) runs ``split -> shard (per group of files) -> collect`` over
:func:`deid.batch.process_file`. Each step is a function of the job's :class:`JobSpec` (which
every task message carries, so a task never needs Redis to know its paths) and of files in
the job's work folder beside the output. A step that finishes its stage's last chunk starts
the next stage. Celery is not imported here: :class:`Engine` is given a ``dispatch`` callable
(``workers.tasks`` sends a task; tests may call steps directly).

Guarantees:

- every chunk output is written atomically and a redelivered chunk whose output verifies is
  skipped (:func:`deid.job.chunk_ok`), so a chunk is computed once however often it is
  delivered, and a duplicate computation gives the same bytes;
- a chunk delivered more than ``service.max_deliveries`` times (it keeps killing its worker)
  fails the job with that reason instead of looping;
- the output appears only complete; a failed or cancelled job leaves nothing at the output
  path and removes its work folder;
- a finished (or cancelled) job is never changed again: late tasks see the final state and
  clean up after themselves.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deid.config import ServiceConfig, Settings, format_validation_error
from deid.errors import ConfigError, DeidError, InputError
from deid.service.state import JobStore
from deid.service.storage import check_path, read_json, remove_tree, work_dir, write_json

log = logging.getLogger(__name__)

VIDEO_STAGES = ("split", "analyse", "plan", "render", "assemble")
DATASET_STAGES = ("split", "shard", "collect")
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


class JobSpec(BaseModel):
    """Everything a task needs to run its step (JSON; travels in every task message)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: Literal["video", "dataset"]
    input: str
    output: str
    workdir: str
    settings: dict[str, Any] = Field(description="deid settings without the service section")
    shard_files: int = 16
    max_deliveries: int = 3
    soft_time_limit: int = 1800
    time_limit: int = 2100

    def resolved_settings(self) -> Settings:
        return Settings.model_validate(self.settings)


Dispatch = Callable[[str, JobSpec, int], None]
ResourcesFor = Callable[[JobSpec], Any]


# --------------------------------------------------------------------------------------------
# submission
# --------------------------------------------------------------------------------------------
def job_settings(settings: Settings) -> dict[str, Any]:
    """The settings a job carries: everything but the service section (broker, token)."""
    return settings.model_dump(mode="json", exclude={"service"})


def validate_settings(data: dict[str, Any]) -> Settings:
    """A job's settings from JSON (e.g. an HTTP body), with deid's field-by-field messages.

    Raises:
        ConfigError: unknown attack, eps out of range, unknown keys, ...
    """
    from pydantic import ValidationError

    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


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
        PathPolicyError, InputError, VideoDecodeError, OutputError, ConfigError: the job is
            refused (HTTP 4xx; CLI exit code 2) with a message naming what was expected.
    """
    from deid.batch import list_media
    from deid.io import Artefact, check_run, classify_input, probe_video

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
        probe_video(src)
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
            f"classifier.name: unknown classifier {name!r}; expected one of {list(SHIPPED)} "
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
    """

    def __init__(
        self,
        store: JobStore,
        dispatch: Dispatch,
        resources: ResourcesFor,
        before_step: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.resources = resources
        self.before_step = before_step  # fault injection in tests (after counting a delivery)
        self.who = f"{socket.gethostname()}:{os.getpid()}"

    # entry point ---------------------------------------------------------------------------
    def run(self, stage: str, spec: JobSpec, index: int = 0) -> str:
        """Run one step. Returns what happened: ``done``, ``skipped`` (job finished, cancelled
        or lost), ``failed``. Never raises for a job's own failure: the job is FAILED."""
        what = f"{stage}:{index}"
        state = self.store.state(spec.id)
        if state is None:
            log.warning("job %s: state lost (expired, or Redis restarted); drop %s", spec.id, what)
            remove_tree(Path(spec.workdir))
            return "skipped"
        if state in ("FAILED", "CANCELLED"):
            remove_tree(Path(spec.workdir))
            return "skipped"
        if state == "SUCCESS":
            return "skipped"
        n = self.store.delivery(spec.id, stage, index)
        if n > spec.max_deliveries:
            self.store.clear_running(spec.id, what)  # left by the delivery that died
            self.fail(
                spec,
                f"{self._describe(stage, spec, index)} was delivered {n} times without "
                f"finishing: it keeps crashing or killing its worker (poison chunk); "
                f"service.max_deliveries={spec.max_deliveries}",
            )
            return "failed"
        self.store.set_running(spec.id, what, f"{self.who}:{time.time():.3f}")
        try:
            if self.before_step is not None:
                self.before_step(stage, index)
            getattr(self, f"_{stage}")(spec, index, redelivered=n > 1)
            return "done"
        except JobCancelled:
            remove_tree(Path(spec.workdir))
            return "skipped"
        except Exception as e:  # a step's failure fails its job; the message names the step
            if isinstance(e, DeidError):
                log.warning("job %s: %s failed: %s", spec.id, what, e)
            else:
                log.exception("job %s: %s failed", spec.id, what)
            self.fail(spec, f"{self._describe(stage, spec, index)}: {_message(e)}")
            return "failed"
        finally:
            self.store.clear_running(spec.id, what)
            if self.store.state(spec.id) in (None, "FAILED", "CANCELLED"):
                remove_tree(Path(spec.workdir))

    def fail(self, spec: JobSpec, reason: str) -> None:
        self.store.add_error(spec.id, reason)
        if self.store.finish(spec.id, "FAILED", error=reason):
            log.error("job %s failed: %s", spec.id, reason)
        remove_tree(Path(spec.workdir))

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
        redelivered step may have died between claiming the transition and queueing)."""
        if self.store.once(spec.id, stage) or redelivered:
            self._check(spec, state=STAGE_STATE[stage], stage=stage)
            for i in range(count):
                self.dispatch(stage, spec, i)

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
        work.mkdir(parents=True, exist_ok=True)
        if spec.kind == "dataset":
            return self._split_dataset(spec, redelivered)
        from deid import job

        self._check(spec, state="SPLITTING", stage="split")
        chunk_frames = spec.resolved_settings().pipeline.chunk_frames
        layout_path = _layout_path(spec)
        if not layout_path.is_file():
            write_json(layout_path, job.split(Path(spec.input), chunk_frames))
        layout = read_json(layout_path)
        n = len(layout["chunks"])
        self._check(spec, frames_total=layout["frames"], chunks_total=n)
        self._advance(spec, "analyse", n, redelivered)

    def _analyse(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid import job

        layout = read_json(_layout_path(spec))
        chunk = job.Chunk.from_dict(layout["chunks"][index])
        out = _analysis_path(spec, index)
        if not _json_ok(out):
            result = job.analyse(Path(spec.input), layout, chunk, self.resources(spec))
            self._check(spec)
            write_json(out, result)
        if self._finish_chunk(spec, "analyse", index, chunk.frames, redelivered):
            self._advance(spec, "plan", 1, redelivered)

    def _plan(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid import job

        layout = read_json(_layout_path(spec))
        out = Path(spec.workdir) / "plan.json"
        if not _json_ok(out):
            analyses = [read_json(_analysis_path(spec, i)) for i in range(len(layout["chunks"]))]
            write_json(out, job.plan(layout, analyses, self.resources(spec)))
        self._advance(spec, "render", len(layout["chunks"]), redelivered)

    def _render(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid import job

        layout = read_json(_layout_path(spec))
        chunk = job.Chunk.from_dict(layout["chunks"][index])
        out = _segment_path(spec, index)
        if not job.chunk_ok(out, chunk):
            the_plan = read_json(Path(spec.workdir) / "plan.json")
            job.render(Path(spec.input), layout, the_plan, chunk, self.resources(spec), out)
            self._check(spec)
        if self._finish_chunk(spec, "render", index, chunk.frames, redelivered):
            self._advance(spec, "assemble", 1, redelivered)

    def _assemble(self, spec: JobSpec, index: int, redelivered: bool) -> None:
        from deid import job
        from deid.pipeline import report_path

        layout = read_json(_layout_path(spec))
        n = len(layout["chunks"])
        parts = [_segment_path(spec, i) for i in range(n)]
        reports = [read_json(job.segment_report_path(p)) for p in parts]
        analyses = [read_json(_analysis_path(spec, i)) for i in range(n)]
        the_plan = read_json(Path(spec.workdir) / "plan.json")
        output = Path(spec.output)
        res = self.resources(spec)
        self._check(spec, state="ASSEMBLING", stage="assemble")
        report = job.assemble(
            Path(spec.input), layout, parts, output, reports, res, the_plan, analyses
        )
        try:
            report["job"] = {"id": spec.id, "chunks": n}
            write_json(report_path(output), report)
            if not self.store.finish(spec.id, "SUCCESS", report=report):
                raise JobCancelled(spec.id)  # cancelled while joining: the output must not stay
        except BaseException:
            output.unlink(missing_ok=True)  # this job's output, just renamed into place
            report_path(output).unlink(missing_ok=True)
            raise
        remove_tree(Path(spec.workdir))

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
        from deid.batch import output_path, process_file

        files = read_json(Path(spec.workdir) / "shards.json")[index]
        out = Path(spec.workdir) / "shards" / f"{index:05d}.json"
        if not _json_ok(out):
            res = self.resources(spec)
            rows = []
            for rel in files:
                self._check(spec)
                src, dst = Path(spec.input) / rel, Path(spec.output) / output_path(Path(rel))
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
        self.store.finish(spec.id, "SUCCESS", report=report)
        remove_tree(Path(spec.workdir))


def _layout_path(spec: JobSpec) -> Path:
    return Path(spec.workdir) / "layout.json"


def _analysis_path(spec: JobSpec, index: int) -> Path:
    return Path(spec.workdir) / "analyse" / f"{index:05d}.json"


def _segment_path(spec: JobSpec, index: int) -> Path:
    from deid.job import segment_suffix

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
