"""Helpers of the service tests: real Redis databases, real `deid worker` processes, clips."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REDIS_HOST = "127.0.0.1"
# DEID_TEST_REDIS_PORT points the suite at another Redis (e.g. a private one started with
# `--databases 32` when the shared one has only 16 databases).
REDIS_PORT = int(os.environ.get("DEID_TEST_REDIS_PORT", "6379"))
# This suite's databases on the shared Redis: flushed before and after. DEID_TEST_REDIS_DB moves
# them (DB and DB + 1), so that two checkouts can run the service tests side by side.
DB = int(os.environ.get("DEID_TEST_REDIS_DB", "11"))
POISON_DB = DB + 1
# Ports of the throw-away redis-servers of the fault tests (6390 and 6391 for DB 11).
PRIVATE_PORT = 6390 + 2 * (DB - 11)

# Limits short enough for a test (production: minutes); soft < hard < visibility is enforced.
FAST_LIMITS = {
    "DEID_SERVICE__SOFT_TIME_LIMIT": "20",
    "DEID_SERVICE__TIME_LIMIT": "25",
    "DEID_SERVICE__VISIBILITY_TIMEOUT": "30",
    "DEID_SERVICE__RESTORE_INTERVAL": "1",
}
# The jobs' settings: small and quick, deterministic.
JOB_OVERRIDES: dict[str, Any] = {
    "classifier": {"name": "celeba-cnn"},
    "attack": {"name": "ifgsm", "steps": 5},
    "pipeline": {"device": "cpu", "chunk_frames": 4, "threads": 1},
}


def redis_url(db: int = DB, port: int = REDIS_PORT) -> str:
    return f"redis://{REDIS_HOST}:{port}/{db}"


def redis_available(port: int = REDIS_PORT) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=REDIS_HOST, port=port, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def face_clip(path: Path, frames: int = 12, size: tuple[int, int] = (128, 192)) -> Path:
    """A short clip of a real face (scikit-image's astronaut, shared data) moving right by
    4 px a frame, so it is in every frame and crosses every chunk boundary."""
    import cv2

    from deid.io import read_image, write_video
    from tests.conftest import SCENES

    src = SCENES / "astronaut_single_face.png"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    h, w = size
    face = cv2.resize(read_image(src)[0:300, 100:400], (h - 8, h - 8), interpolation=cv2.INTER_AREA)
    out = []
    for i in range(frames):
        f = np.full((h, w, 3), 90, np.uint8)
        x = min(10 + 4 * i, w - face.shape[1])
        f[4 : 4 + face.shape[0], x : x + face.shape[1]] = face
        out.append(f)
    write_video(path, out, 10)
    return path


def reference_output(clip: Path, settings: Any, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The single-process result (deid.pipeline.video.run_video, what `deid run` does) for a
    clip and a job's settings, computed once per test session (both service test modules
    use it)."""
    import hashlib
    import json

    from deid.pipeline import Resources
    from deid.pipeline import video as job
    from deid.service.jobs import job_settings

    key = hashlib.sha256(
        clip.read_bytes() + json.dumps(job_settings(settings), sort_keys=True).encode()
    ).hexdigest()[:16]
    out = cache / f"ref-{key}.mp4"
    rep = out.with_suffix(".json")
    if not (out.is_file() and rep.is_file()):
        report = job.run_video(clip, out, Resources.load(settings), progress=False)
        rep.write_text(json.dumps(report))
    return out, json.loads(rep.read_text())


def decoded(path: Path) -> np.ndarray:
    from deid.io import read_frames

    return np.stack(list(read_frames(path)))


def worker_env(url: str, root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEID_")}
    if "DEID_DATA_DIR" in os.environ:
        env["DEID_DATA_DIR"] = os.environ["DEID_DATA_DIR"]
    env.update(
        {
            "DEID_BROKER_URL": url,
            "DEID_STORAGE_ROOTS": str(root),
            "DEID_PIPELINE__DEVICE": "cpu",
            "DEID_WORKER_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
            **FAST_LIMITS,
            **(extra or {}),
        }
    )
    return env


class WorkerPool:
    """Real `deid worker` processes (solo pool unless told otherwise), restarted on demand."""

    def __init__(
        self,
        url: str,
        root: Path,
        logs: Path,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        name: str = "w",
    ) -> None:
        self.url, self.root, self.logs = url, root, logs
        self.env = worker_env(url, root, extra_env)
        self.args = args
        self.name = name
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, n: int, wait: bool = True) -> None:
        for i in range(n):
            host = f"{self.name}{i}@deid-test"
            p = self.procs.get(host)
            if p is not None and p.poll() is None:
                continue
            log = (self.logs / f"{self.name}{i}.log").open("ab")
            self.procs[host] = subprocess.Popen(
                [sys.executable, "-m", "deid.cli", "worker", f"--hostname={host}", *self.args],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready(list(self.procs))

    def wait_ready(self, hosts: list[str], timeout: float = 60) -> None:
        import redis

        from deid.config import ServiceConfig
        from deid.service.celery_app import make_app

        app = make_app(ServiceConfig(broker_url=self.url), name="deid-test")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for host, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"worker {host} exited: {self.tail(host)}")
            try:
                up = {n for r in app.control.ping(timeout=0.5) or [] for n in r}
            except redis.ConnectionError:  # a pooled connection to a restarted Redis: again
                up = set()
            if set(hosts) <= up:
                return
            time.sleep(0.3)
        raise TimeoutError(f"workers {hosts} not up after {timeout} s: {self.tail(hosts[0])}")

    def tail(self, host: str, n: int = 3000) -> str:
        path = self.logs / f"{host.split('@')[0]}.log"
        return path.read_text(errors="replace")[-n:] if path.is_file() else ""

    def pid_of(self, who: str) -> int:
        """The pid in a job's ``running`` entry (``host:pid:time``)."""
        return int(who.split(":")[1])

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT)  # cold shutdown: the tests are over
        for p in self.procs.values():
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


class PrivateRedis:
    """A throw-away redis-server on another port (no persistence), stopped by its pid."""

    def __init__(self, port: int, logs: Path) -> None:
        self.port = port
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                REDIS_HOST,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=(self.logs / f"redis-{self.port}.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not redis_available(self.port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def wait_for(cond: Any, timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout} s")
