"""Python client of the deid job service: ``submit``, ``status``, ``wait``, ``cancel``, ``result``.

    from deid.service import client
    job = client.submit("/data/in/flight.mp4", "/data/out/flight.mp4", config="celeba-cnn")
    report = client.wait(job)             # raises JobFailed with the reason if the job fails
    client.status(job)["frames_done"]

Jobs run on ``deid worker`` processes (any number, on any machine that reaches the broker and
sees the storage roots at the same paths). Job state lives in Redis (``service.broker_url``)
with a TTL, so a client may disconnect and come back with the job id. The module-level
functions use a :class:`Client` built from the environment's settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deid.config import Settings, load_settings
from deid.errors import PartialFailure
from deid.service.jobs import JobFailed, JobSpec, initial_fields, new_job
from deid.service.state import DONE, INT_FIELDS, TERMINAL, JobNotFound, JobStore
from deid.service.storage import remove_work

log = logging.getLogger(__name__)

__all__ = [
    "Client",
    "JobFailed",
    "JobNotFound",
    "PartialFailure",
    "cancel",
    "jobs",
    "result",
    "status",
    "submit",
    "wait",
]

PUBLIC_FIELDS = (
    "id",
    "state",
    "stage",
    "kind",
    "input",
    "output",
    *INT_FIELDS,  # the counters
    "error",
    "errors",
    "running",
    "created",
    "updated",
)


def public_status(raw: dict[str, Any]) -> dict[str, Any]:
    """What ``status`` shows of a job (no settings, no report), with ``progress`` in [0, 1]."""
    out = {k: raw.get(k) for k in PUBLIC_FIELDS}
    out["error"] = out["error"] or None
    total = int(raw.get("frames_total") or 0)
    if raw.get("state") in DONE:
        progress = 1.0
    elif not total:
        progress = 0.0
    elif raw.get("kind") == "video":  # analyse and render each count for half
        progress = (int(raw.get("frames_analysed") or 0) + int(raw["frames_done"] or 0)) / (
            2 * total
        )
    else:
        progress = int(raw.get("frames_done") or 0) / total
    out["progress"] = round(min(progress, 1.0), 4)
    out["unit"] = "file" if raw.get("kind") == "dataset" else "frame"
    return out


class Client:
    """Submits and follows jobs.

    Args:
        settings: deid settings (the ``service`` section names the broker and storage
            roots); default: :func:`deid.config.load_settings` (YAML + environment).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        svc = self.settings.service
        self.store = JobStore(svc.broker_url, svc.job_ttl)
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from deid.service.celery_app import make_app

            self._app = make_app(self.settings.service, name="deid-client")
        return self._app

    def submit(
        self,
        input: Path | str,
        output: Path | str,
        config: Path | str | None = None,
        overrides: dict[str, Any] | None = None,
        settings: Settings | None = None,
    ) -> str:
        """Check and queue a job; return its id.

        The job's settings are fixed here: ``settings``, or ``config`` (a YAML path or a name
        in ``configs/``) + the environment + ``overrides`` (a nested dict, e.g.
        ``{"attack": {"eps": 8/255}}``).

        Raises:
            PathPolicyError, InputError, VideoDecodeError, OutputError, ConfigError: refused.
            BrokerUnavailable: Redis cannot be reached.
        """
        if settings is None:
            settings = load_settings(config, overrides) if (config or overrides) else None
        job_settings = settings or self.settings
        spec = new_job(input, output, job_settings, self.settings.service)
        return self.enqueue(spec)

    def enqueue(self, spec: JobSpec) -> str:
        """Record a checked job and queue its first step."""
        self.store.create(spec.id, initial_fields(spec))
        try:
            self.app.send_task("deid.split", args=[spec.model_dump(mode="json"), 0])
        except Exception as e:  # the job must not sit PENDING forever
            self.store.finish(spec.id, "FAILED", error=f"could not queue the job: {e}")
            raise
        log.info("job %s queued: %s -> %s", spec.id, spec.input, spec.output)
        return spec.id

    def status(self, job_id: str) -> dict[str, Any]:
        """State, stage, frames done/total, chunks, errors, progress.

        Raises:
            JobNotFound: unknown, expired, or lost with a broker restart.
        """
        return public_status(self.store.get(job_id))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the job finishes; return its report.

        Redis being briefly unreachable (a restart) is waited out; a job whose state is gone
        afterwards raises :class:`JobNotFound`.

        Raises:
            JobFailed: the job FAILED or was CANCELLED (the message has the reason).
            PartialFailure: a dataset job ended PARTIAL: some files failed, the others are
                written (as ``deid batch``); the report is ``err.report`` (and
                :meth:`result`).
            JobNotFound: the job's state is gone.
            TimeoutError: still running after ``timeout`` seconds.
        """
        from deid.service.state import BrokerUnavailable

        deadline = None if timeout is None else time.monotonic() + timeout
        unreachable_since: float | None = None
        while True:
            try:
                st = self.status(job_id)
                unreachable_since = None
            except BrokerUnavailable:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > 60:
                    raise
                st = None
            if st is not None:
                if on_update is not None:
                    on_update(st)
                if st["state"] in TERMINAL:
                    if st["state"] == "SUCCESS":
                        return self.result(job_id)
                    if st["state"] == "PARTIAL":
                        report = self.result(job_id)
                        failed = [(f["file"], f["error"]) for f in report["failed_inputs"]]
                        raise PartialFailure(failed, report=report)
                    raise JobFailed(f"job {job_id} {st['state']}: {st['error'] or 'no reason'}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: its queued chunks are dropped, running ones stop at their next
        check, its work folder is removed. A finished job is left as it is."""
        raw = self.store.get(job_id)
        if self.store.finish(job_id, "CANCELLED", error="cancelled"):
            spec = raw.get("spec") or {}
            if spec.get("workdir"):
                roots = self.settings.service.storage_roots
                remove_work(Path(spec["workdir"]), job_id, roots)
            log.info("job %s cancelled", job_id)
        return self.status(job_id)

    def result(self, job_id: str) -> dict[str, Any]:
        """The report of a finished job (SUCCESS, or PARTIAL: see ``failed_inputs``).

        Raises:
            JobFailed: the job failed or was cancelled, or has not finished yet.
        """
        raw = self.store.get(job_id)
        if raw["state"] not in DONE:
            reason = raw.get("error") or "not finished yet"
            raise JobFailed(f"job {job_id} is {raw['state']}: {reason}")
        return raw["report"] or {}

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent jobs, newest first."""
        return [public_status(j) for j in self.store.list(limit)]

    def workers(self, timeout: float = 1.0) -> list[str]:
        """Names of the workers that answer a ping."""
        replies = self.app.control.ping(timeout=timeout) or []
        return sorted(name for r in replies for name in r)


_default: Client | None = None


def _client() -> Client:
    global _default
    if _default is None:
        _default = Client()
    return _default


def submit(
    input: Path | str,
    output: Path | str,
    config: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Queue a job (see :meth:`Client.submit`); returns its id."""
    return _client().submit(input, output, config, overrides)


def status(job_id: str) -> dict[str, Any]:
    """See :meth:`Client.status`."""
    return _client().status(job_id)


def wait(job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """See :meth:`Client.wait`."""
    return _client().wait(job_id, timeout)


def cancel(job_id: str) -> dict[str, Any]:
    """See :meth:`Client.cancel`."""
    return _client().cancel(job_id)


def result(job_id: str) -> dict[str, Any]:
    """See :meth:`Client.result`."""
    return _client().result(job_id)


def jobs(limit: int = 20) -> list[dict[str, Any]]:
    """See :meth:`Client.jobs`."""
    return _client().jobs(limit)
