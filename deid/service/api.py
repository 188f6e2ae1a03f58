"""The HTTP job API (``deid serve``): a small FastAPI app over :class:`deid.service.client.Client`.

    POST   /jobs              queue a job            -> 201 JobStatus
    GET    /jobs              recent jobs            -> [JobStatus]
    GET    /jobs/{id}         state and progress     -> JobStatus
    DELETE /jobs/{id}         cancel                 -> JobStatus
    GET    /jobs/{id}/report  the finished job's report (409 while it runs or if it failed)
    GET    /health            broker reachable, workers online (503 if not)

The OpenAPI schema is at ``/openapi.json`` (and ``/docs``). With ``service.token`` set, every
route but ``/health`` needs ``Authorization: Bearer <token>``. A refused submission answers
4xx with the reason: 403 for a path outside the storage roots, 400 for a bad input or output,
422 for a bad request body or invalid settings (unknown attack, eps out of range).
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from deid import __version__
from deid.config import Settings, load_settings
from deid.errors import ConfigError, DeidError
from deid.service.state import BrokerUnavailable, JobNotFound
from deid.service.storage import PathPolicyError, check_path

log = logging.getLogger(__name__)


class JobRequest(BaseModel):
    """A job to queue. Paths are absolute paths under the service's storage roots."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(description="a video file or a folder of images/videos")
    output: str = Field(description="the output video file or folder")
    config: str | None = Field(
        None, description="a name in configs/ (e.g. celeba-cnn) or a YAML file under a root"
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description='overrides, e.g. {"attack": {"name": "ifgsm", "eps": 0.0314}}',
        examples=[{"attack": {"eps": "8/255", "steps": 10}, "pipeline": {"chunk_frames": 120}}],
    )


class JobStatus(BaseModel):
    id: str
    state: Literal[
        "PENDING",
        "SPLITTING",
        "ANALYSING",
        "PLANNING",
        "RENDERING",
        "ASSEMBLING",
        "RUNNING",
        "COLLECTING",
        "SUCCESS",
        "FAILED",
        "CANCELLED",
    ]
    stage: str | None = None
    kind: Literal["video", "dataset"]
    input: str
    output: str
    unit: Literal["frame", "file"]
    frames_total: int = 0
    frames_analysed: int = 0
    frames_done: int = 0
    chunks_total: int = 0
    chunks_analysed: int = 0
    chunks_done: int = 0
    progress: float = Field(0.0, ge=0, le=1)
    error: str | None = None
    errors: list[str] = Field(default_factory=list)
    running: dict[str, str] = Field(default_factory=dict)
    created: float | None = None
    updated: float | None = None


class Health(BaseModel):
    ok: bool
    broker: bool
    workers: list[str]
    version: str


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "bad input or output"},
    401: {"model": Problem, "description": "missing or wrong bearer token"},
    403: {"model": Problem, "description": "path outside the storage roots"},
    404: {"model": Problem, "description": "no such job"},
    503: {"model": Problem, "description": "broker unreachable"},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: YAML + environment)."""
    from deid.service.client import Client

    settings = settings or load_settings()
    client = Client(settings)
    # an empty token (DEID_SERVICE__TOKEN= in a compose file) means no token
    token = (settings.service.token.get_secret_value() if settings.service.token else "") or None
    bearer = HTTPBearer(auto_error=False, description="service.token, if one is set")

    def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "expected Authorization: Bearer <service.token>")

    app = FastAPI(
        title="deid job service",
        version=__version__,
        description="De-identify faces in drone videos and image datasets, on Celery workers.",
    )
    app.state.client = client

    @app.exception_handler(DeidError)
    async def _deid_error(request: Request, exc: DeidError) -> JSONResponse:
        if isinstance(exc, PathPolicyError):
            code = 403
        elif isinstance(exc, JobNotFound):
            code = 404
        elif isinstance(exc, BrokerUnavailable):
            code = 503
        elif isinstance(exc, ConfigError):
            code = 422
        else:
            code = 400
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.post("/jobs", status_code=201, response_model=JobStatus, responses=ERRORS)
    def submit(req: JobRequest, _: None = Depends(auth)) -> dict[str, Any]:
        config = req.config
        if config and ("/" in config or config.endswith((".yaml", ".yml"))):
            config = str(check_path(config, settings.service.storage_roots))
        job_settings = load_settings(config, req.settings)
        job_id = client.submit(req.input, req.output, settings=job_settings)
        return client.status(job_id)

    @app.get("/jobs", response_model=list[JobStatus], responses=ERRORS)
    def jobs(limit: int = 20, _: None = Depends(auth)) -> list[dict[str, Any]]:
        return client.jobs(limit)

    @app.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def status(job_id: str, _: None = Depends(auth)) -> dict[str, Any]:
        return client.status(job_id)

    @app.delete("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def cancel(job_id: str, _: None = Depends(auth)) -> dict[str, Any]:
        return client.cancel(job_id)

    @app.get(
        "/jobs/{job_id}/report",
        responses={**ERRORS, 409: {"model": Problem, "description": "job not finished or failed"}},
    )
    def report(job_id: str, _: None = Depends(auth)) -> dict[str, Any]:
        st = client.status(job_id)
        if st["state"] != "SUCCESS":
            raise HTTPException(409, f"job {job_id} is {st['state']}: {st['error'] or 'running'}")
        return client.result(job_id)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health() -> Any:
        broker = client.store.ping()
        workers: list[str] = []
        if broker:
            try:
                workers = client.workers(timeout=1.0)
            except Exception:  # a broker that answers PING but not the control channel
                log.warning("worker ping failed", exc_info=True)
        body = {"ok": broker and bool(workers), "broker": broker, "workers": workers}
        body["version"] = __version__
        return JSONResponse(body, status_code=200 if body["ok"] else 503)

    return app
