"""The HTTP job API (``deid serve``): a small FastAPI app over :class:`deid.service.client.Client`.

    POST   /jobs              queue a job            -> 201 JobStatus
    GET    /jobs              recent jobs            -> [JobStatus]
    GET    /jobs/{id}         state and progress     -> JobStatus
    DELETE /jobs/{id}         cancel                 -> JobStatus
    GET    /jobs/{id}/report  the finished job's report (409 while it runs or if it failed)
    GET    /health            broker reachable, workers online (503 if not)

The OpenAPI schema is at ``/openapi.json`` (and ``/docs``). With ``service.token`` set, every
route but ``/health`` needs ``Authorization: Bearer <token>``. A refused submission answers
4xx with the reason: 403 for a path outside the storage roots, 400 for a bad input or output
(or a path no file system takes: a NUL byte, too long), 413 for a body over
``service.max_request_bytes``, 422 for a bad request body or invalid settings (unknown
attack, eps out of range). Error messages name fields and rules; they never echo a value of
the request or a line of a config file.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deid import __version__
from deid.config import Settings, load_settings, redact_value
from deid.errors import ConfigError, DeidError
from deid.service.state import DONE, JOB_ID, BadJobId, BrokerUnavailable, JobNotFound
from deid.service.storage import (
    NAME_MAX,
    PATH_MAX,
    BadPathError,
    PathPolicyError,
    check_config_path,
)

log = logging.getLogger(__name__)

# Bounds of a job's ``settings`` overrides (deid's own settings nest 3 deep and have a few
# dozen fields; a real override is far inside these).
SETTINGS_DEPTH = 6
SETTINGS_ITEMS = 500
SETTINGS_STRING = 1024
JobId = Annotated[str, Path(pattern=f"^{JOB_ID.pattern}$", description="32 hex digits")]


class JobRequest(BaseModel):
    """A job to queue. Paths are absolute paths under the service's storage roots."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(max_length=PATH_MAX, description="a video file or a folder of images/videos")
    output: str = Field(max_length=PATH_MAX, description="the output video file or folder")
    config: str | None = Field(
        None,
        max_length=PATH_MAX,
        description="a name in configs/ (e.g. celeba-cnn) or an absolute .yaml path under a root",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description='overrides, e.g. {"attack": {"name": "ifgsm", "eps": 0.0314}}',
        examples=[{"attack": {"eps": "8/255", "steps": 10}, "pipeline": {"chunk_frames": 120}}],
    )

    @field_validator("settings")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        if "service" in v:
            raise ValueError(
                "the service section (broker, storage roots, token, limits) is the server's; "
                "a job may not set it"
            )
        items = 0

        def walk(node: Any, depth: int) -> None:
            nonlocal items
            items += 1
            if depth > SETTINGS_DEPTH:
                raise ValueError(f"nested more than {SETTINGS_DEPTH} levels deep")
            if items > SETTINGS_ITEMS:
                raise ValueError(f"more than {SETTINGS_ITEMS} keys and values")
            if isinstance(node, str) and len(node) > SETTINGS_STRING:
                raise ValueError(f"a string longer than {SETTINGS_STRING} characters")
            if isinstance(node, dict):
                for k, x in node.items():
                    if len(k) > NAME_MAX:
                        raise ValueError(f"a key longer than {NAME_MAX} characters")
                    walk(x, depth + 1)
            elif isinstance(node, list):
                for x in node:
                    walk(x, depth + 1)

        walk(v, 0)
        return v


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
        "PARTIAL",
        "FAILED",
        "CANCELLED",
    ] = Field(description="PARTIAL: a dataset job finished, some of its files failed (errors)")
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
    413: {"model": Problem, "description": "request body over service.max_request_bytes"},
    503: {"model": Problem, "description": "broker unreachable"},
}

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 unread.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a body
    without one (chunked) is counted as it arrives and refused at the first byte over. The
    body is buffered (at most ``limit`` bytes) and handed on whole.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                return await _refuse(scope, send, 400, "invalid Content-Length")
            if too_big:
                return await _refuse(scope, send, 413, self._message())
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _refuse(scope, send, 413, self._message())
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect

        await self.app(scope, replay, send)

    def _message(self) -> str:
        return f"request body larger than {self.limit} bytes (service.max_request_bytes)"


async def _refuse(scope: MutableMapping[str, Any], send: Any, status: int, detail: str) -> None:
    async def nothing() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await JSONResponse({"detail": detail}, status_code=status)(scope, nothing, send)


# The HTTP status of a refused request, by the error deid raised (the first that matches; any
# other DeidError: 400). BadPathError before PathPolicyError, of which it is a kind.
ERROR_STATUS: tuple[tuple[type[DeidError], int], ...] = (
    (BadPathError, 400),
    (PathPolicyError, 403),
    (BadJobId, 422),
    (JobNotFound, 404),
    (BrokerUnavailable, 503),
    (ConfigError, 422),
)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default echoes each bad value (``input``): where and what only
    detail = [
        {"loc": [str(p)[:64] for p in e.get("loc", ())], "msg": _redacted_msg(e)}
        for e in exc.errors()[:20]
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _deid_error(request: Request, exc: DeidError) -> JSONResponse:
    code = next((code for kind, code in ERROR_STATUS if isinstance(exc, kind)), 400)
    return JSONResponse({"detail": str(exc)}, status_code=code)


def _bearer_auth(token: str | None) -> Callable[..., None]:
    """The dependency every route but ``/health`` takes: with a ``token``, a request must
    carry ``Authorization: Bearer <token>`` (401 otherwise)."""
    bearer = HTTPBearer(auto_error=False, description="service.token, if one is set")

    def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "expected Authorization: Bearer <service.token>")

    return auth


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: YAML + environment)."""
    from deid.service.client import Client

    settings = settings or load_settings()
    client = Client(settings)
    # an empty token (DEID_SERVICE__TOKEN= in a compose file) means no token
    token = (settings.service.token.get_secret_value() if settings.service.token else "") or None
    auth = _bearer_auth(token)

    app = FastAPI(
        title="deid job service",
        version=__version__,
        description="De-identify faces in drone videos and image datasets, on Celery workers.",
    )
    app.state.client = client
    app.add_middleware(BodyLimit, limit=settings.service.max_request_bytes)
    app.exception_handler(RequestValidationError)(_invalid_request)
    app.exception_handler(DeidError)(_deid_error)

    @app.post("/jobs", status_code=201, response_model=JobStatus, responses=ERRORS)
    def submit(req: JobRequest, _: None = Depends(auth)) -> dict[str, Any]:
        config = None
        if req.config is not None:  # a shipped name or a YAML file under a root, nothing else
            config = check_config_path(req.config, settings.service.storage_roots)
        job_settings = load_settings(config, req.settings, redact=True)
        job_id = client.submit(req.input, req.output, settings=job_settings)
        return client.status(job_id)

    @app.get("/jobs", response_model=list[JobStatus], responses=ERRORS)
    def jobs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 20, _: None = Depends(auth)
    ) -> list[dict[str, Any]]:
        return client.jobs(limit)

    @app.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def status(job_id: JobId, _: None = Depends(auth)) -> dict[str, Any]:
        return client.status(job_id)

    @app.delete("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def cancel(job_id: JobId, _: None = Depends(auth)) -> dict[str, Any]:
        return client.cancel(job_id)

    @app.get(
        "/jobs/{job_id}/report",
        responses={**ERRORS, 409: {"model": Problem, "description": "job not finished or failed"}},
    )
    def report(job_id: JobId, _: None = Depends(auth)) -> dict[str, Any]:
        st = client.status(job_id)
        if st["state"] not in DONE:
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


def _redacted_msg(error: dict[str, Any]) -> str:
    """A request validation error's message without the value sent."""
    msg = str(error.get("msg", ""))
    value = error.get("input")
    if isinstance(value, str) and value:
        msg = redact_value(msg, value)
    return msg[:300]
