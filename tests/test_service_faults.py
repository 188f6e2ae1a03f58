"""The service under faults and load, with real Redis and real `deid worker` processes:
a worker SIGKILLed mid-chunk, Redis restarted mid-job (and the work folder of the job it
lost), cancel, 20 jobs at once, a poison chunk that keeps killing its worker."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.service_support import (
    DB,
    JOB_OVERRIDES,
    POISON_DB,
    PRIVATE_PORT,
    PrivateRedis,
    WorkerPool,
    decoded,
    face_clip,
    flush,
    redis_available,
    redis_url,
    reference_output,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not redis_available(), reason="no Redis at 127.0.0.1:6379"),
]

URL = redis_url(DB)
# Chunks here take 1-3 s (10+ s on a loaded machine): the limits leave room for that. The
# visibility timeout is production's (20 min): a dead worker's chunk must come back through
# its heartbeat expiring (short here: 4 s; production 30 s), not through the broker.
LIMITS = {
    "soft_time_limit": 25,
    "time_limit": 28,
    "visibility_timeout": 1200,
    "restore_interval": 1,
    "heartbeat_interval": 0.5,
    "heartbeat_ttl": 4,
}
LIMITS_ENV = {f"DEID_SERVICE__{k.upper()}": str(v) for k, v in LIMITS.items()}


def make_client(url: str, root: Path, **service: Any) -> Any:
    from deid.config import load_settings
    from deid.service.client import Client

    svc = {"broker_url": url, "storage_roots": [str(root)], **LIMITS, **service}
    return Client(load_settings(overrides={**JOB_OVERRIDES, "service": svc}))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def pool(root: Path, logs: Path) -> Any:
    flush(URL)
    p = WorkerPool(URL, root, logs, LIMITS_ENV)
    p.start(2)
    yield p
    p.stop()
    flush(URL)


@pytest.fixture(scope="module")
def client(pool: WorkerPool, root: Path) -> Any:
    return make_client(URL, root)


@pytest.fixture(scope="module")
def clip(root: Path) -> Path:
    return face_clip(root / "in" / "clip.mp4", frames=12)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*")]


def test_sigkill_mid_chunk_another_worker_finishes_it(
    pool: WorkerPool,
    client: Any,
    clip: Path,
    root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = root / "kill" / "clip.mp4"
    job_id = client.submit(clip, out)

    def rendering() -> Any:
        running = client.status(job_id)["running"]
        for what, who in running.items():
            if what.startswith("render:") and time.time() - float(who.rsplit(":", 1)[1]) > 0.3:
                return what, who
        return None

    what, who = wait_for(rendering, 90, "a render chunk running", poll=0.05)
    pid = pool.pid_of(who)
    assert pid in {p.pid for p in pool.procs.values()}
    os.kill(pid, signal.SIGKILL)  # the worker dies with the chunk unacknowledged
    t_kill = time.monotonic()
    report = client.wait(job_id, timeout=120)
    recovered = time.monotonic() - t_kill
    assert pool.alive() == 1
    deliveries = client.store.r.hgetall(client.store.key(job_id, "deliveries"))
    assert deliveries[what] == "2", deliveries  # delivered again, to the surviving worker
    # every frame exactly once, in order, equal to the single-process result
    ref, _ = reference_output(clip, client.settings, tmp_path_factory.getbasetemp())
    got, want = decoded(out), decoded(ref)
    assert got.shape == want.shape == (12, 128, 192, 3)
    assert np.array_equal(got, want)
    assert report["totals"]["frames"] == 12 and report["coverage"]["protected"] == [1] * 12
    assert not leftovers(root / "kill")
    print(f"chunk {what} of a killed worker redone; job done {recovered:.1f} s after the kill")
    pool.start(2)  # back to two workers for the next tests


def test_a_dead_workers_chunk_runs_again_within_seconds_not_after_the_visibility_timeout(
    pool: WorkerPool,
    client: Any,
    clip: Path,
    root: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A solo worker SIGKILLed mid-chunk: its heartbeat expires (4 s here), a sweeping worker
    puts the chunk's own message back, and the other worker runs it: long before the broker's
    visibility timeout (1200 s, as in production), with the output byte-identical to the
    single-process run, and neither `deid status` nor the job state showing the dead worker.
    The message is not left with the broker, which would deliver it a third time later."""
    assert client.settings.service.visibility_timeout == 1200
    out = root / "dead" / "clip.mp4"
    job_id = client.submit(clip, out)

    def rendering() -> Any:
        for what, who in client.status(job_id)["running"].items():
            if what.startswith("render:") and time.time() - float(who.rsplit(":", 1)[1]) > 0.3:
                return what, who
        return None

    what, who = wait_for(rendering, 90, "a render chunk running", poll=0.05)
    pid = pool.pid_of(who)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    deliveries = client.store.key(job_id, "deliveries")
    wait_for(lambda: client.store.r.hget(deliveries, what) == "2", 110, f"{what} delivered again")
    rerun = time.monotonic() - t_kill
    holders = [pool.pid_of(w) for w in client.status(job_id)["running"].values()]
    assert pid not in holders, holders  # the dead worker's entry went with its chunk
    report = client.wait(job_id, timeout=120)
    done = time.monotonic() - t_kill
    assert rerun < 120, rerun
    ref, _ = reference_output(clip, client.settings, tmp_path_factory.getbasetemp())
    assert out.read_bytes() == ref.read_bytes()  # every frame once, as the single process
    assert report["totals"]["frames"] == 12 and report["coverage"]["protected"] == [1] * 12
    assert client.store.r.hgetall(deliveries)[what] == "2"
    st = client.status(job_id)
    assert st["state"] == "SUCCESS" and st["running"] == {}
    assert client.store.r.hlen("unacked") == 0  # nothing left for the visibility timeout
    from deid.cli import main

    monkeypatch.setenv("DEID_BROKER_URL", URL)
    assert main(["status", job_id]) == 0
    assert f":{pid}" not in capsys.readouterr().out
    assert not leftovers(root / "dead")
    print(f"{what} of a SIGKILLed worker ran again {rerun:.1f} s after the kill; done {done:.1f} s")
    pool.start(2)


def test_cancel_mid_job_stops_its_chunks_and_removes_temp_files(
    pool: WorkerPool, client: Any, clip: Path, root: Path
) -> None:
    out = root / "cancel" / "clip.mp4"
    job_id = client.submit(clip, out)
    spec = client.store.get(job_id)["spec"]
    wait_for(lambda: client.status(job_id)["chunks_analysed"] >= 1, 60, "one chunk analysed")
    assert Path(spec["workdir"]).is_dir()
    t = time.monotonic()
    st = client.cancel(job_id)
    assert st["state"] == "CANCELLED" and st["error"] == "cancelled"
    # the chunk that was running ends, the queued ones are dropped: idle within seconds
    wait_for(lambda: not client.status(job_id)["running"], 15, "running chunks to stop")
    time.sleep(1.0)
    stopped = time.monotonic() - t
    st = client.status(job_id)
    assert st["state"] == "CANCELLED"
    assert st["chunks_done"] < st["chunks_total"] or st["chunks_total"] == 0
    assert not out.exists() and not Path(spec["workdir"]).exists()
    assert not leftovers(root / "cancel")
    print(f"cancelled job idle {stopped:.1f} s after cancel")
    assert stopped < 15


def test_twenty_jobs_at_once_all_complete(
    pool: WorkerPool, client: Any, root: Path, tmp_path: Path
) -> None:
    from deid.service.client import Client

    folder = root / "many"
    clips = [face_clip(folder / f"in{i:02d}.mp4", frames=4, size=(64, 96)) for i in range(20)]
    fast = Client(
        client.settings.model_copy(
            update={
                "pipeline": client.settings.pipeline.model_copy(
                    update={"verify": False, "chunk_frames": 4}
                )
            }
        )
    )
    t = time.monotonic()
    ids = [fast.submit(c, folder / f"out{i:02d}.mp4") for i, c in enumerate(clips)]
    reports = [fast.wait(j, timeout=240) for j in ids]
    seconds = time.monotonic() - t
    assert [r["totals"]["frames"] for r in reports] == [4] * 20
    assert all(fast.status(j)["state"] == "SUCCESS" for j in ids)
    for i in range(20):
        assert len(decoded(folder / f"out{i:02d}.mp4")) == 4
    assert not leftovers(folder)
    print(f"20 jobs (4 frames each) on 2 workers in {seconds:.1f} s")


def test_poison_chunk_fails_its_job_after_the_redelivery_cap(
    root: Path, logs: Path, clip: Path
) -> None:
    from deid.service.client import JobFailed

    url = redis_url(POISON_DB)
    flush(url)
    # prefork (one child): a child that dies is replaced and its chunk requeued at once
    env = {**LIMITS_ENV, "DEID_FAULT": "render:1=exit", "DEID_WORKER_PRELOAD": "0"}
    poisoned = WorkerPool(
        url, root, logs, env, args=("--concurrency=1", "--pool=prefork"), name="poison"
    )
    try:
        poisoned.start(1)
        client = make_client(url, root, max_deliveries=2)
        client.settings.pipeline.verify = False  # quicker chunks; the cap is what is tested
        out = root / "poison" / "clip.mp4"
        job_id = client.submit(clip, out)
        with pytest.raises(JobFailed, match=r"render chunk 1 \(frames 4-7\) was delivered 3 times"):
            client.wait(job_id, timeout=120)
        st = client.status(job_id)
        assert st["state"] == "FAILED" and "poison" in st["error"]
        deliveries = client.store.r.hgetall(client.store.key(job_id, "deliveries"))
        assert deliveries["render:1"] == "3"
        assert poisoned.alive() == 1  # the worker itself survives its children
        wait_for(lambda: not client.status(job_id)["running"], 30, "other chunks to end")
        assert not out.exists() and not leftovers(root / "poison")
    finally:
        poisoned.stop()
        flush(url)


def test_redis_restart_mid_job_fails_clearly_and_the_service_recovers(
    root: Path, logs: Path, clip: Path
) -> None:
    from deid.service.client import JobFailed
    from deid.service.state import JobNotFound

    port = PRIVATE_PORT
    if redis_available(port):
        pytest.skip(f"port {port} already has a Redis")
    server = PrivateRedis(port, logs)
    server.start()
    url = redis_url(0, port)
    # each analyse chunk sleeps 1.5 s first, so the restart lands while one is in flight
    workers = WorkerPool(url, root, logs, {**LIMITS_ENV, "DEID_FAULT": "analyse:*=sleep:1.5"})
    try:
        workers.start(1)
        client = make_client(url, root)
        out = root / "restart" / "clip.mp4"
        job_id = client.submit(clip, out)
        workdir = Path(client.store.get(job_id)["spec"]["workdir"])
        wait_for(lambda: client.status(job_id)["running"], 60, "a chunk running", poll=0.05)
        server.stop()  # Redis dies with every queued chunk and the job's state...
        time.sleep(1.0)
        server.start()  # ...and comes back empty (no persistence, as deployed)
        with pytest.raises((JobNotFound, JobFailed)) as err:
            client.wait(job_id, timeout=60)
        assert "not found" in str(err.value) or "FAILED" in str(err.value)
        # never a partial file at the final path; the in-flight chunk cleans up after itself
        assert not out.exists()
        wait_for(lambda: not workdir.exists(), 30, "the lost job's work folder to go")
        assert not leftovers(root / "restart")
        # the same worker reconnects and runs the next job
        short = face_clip(root / "restart" / "short.mp4", frames=4, size=(64, 96))
        again = client.submit(short, root / "restart" / "again.mp4")
        assert client.wait(again, timeout=120)["totals"]["frames"] == 4
    finally:
        workers.stop()
        server.stop()


def test_the_work_folder_of_a_job_redis_lost_is_removed_by_a_sweep(
    root: Path, logs: Path, clip: Path
) -> None:
    """Redis restarts while no step of a job runs (its worker died too): no step will ever come
    to remove the job's work folder. The next worker's sweep does, once no step of the job
    started for longer than the hard time limit; a live job's folder is left alone."""
    port = PRIVATE_PORT + 1
    if redis_available(port):
        pytest.skip(f"port {port} already has a Redis")
    server = PrivateRedis(port, logs)
    server.start()
    url = redis_url(0, port)
    # analyse chunks sleep long: the job sits with its work folder made and no step running
    env = {**LIMITS_ENV, "DEID_FAULT": "analyse:*=sleep:60", "DEID_WORKER_PRELOAD": "0"}
    workers = WorkerPool(url, root, logs, env, name="orphan")
    try:
        workers.start(1)
        client = make_client(url, root)
        out = root / "orphan" / "clip.mp4"
        job_id = client.submit(clip, out)
        workdir = Path(client.store.get(job_id)["spec"]["workdir"])
        wait_for(lambda: client.status(job_id)["running"], 60, "a chunk running", poll=0.05)
        assert workdir.is_dir()
        os.kill(next(iter(workers.procs.values())).pid, signal.SIGKILL)
        server.stop()
        server.start()  # empty: the job's state and its queued steps are gone
        time.sleep(1.0)
        assert workdir.is_dir()
        # another job's folder, whose step started a moment ago, is not an orphan (yet)
        live = root / "orphan" / (".deid-job-" + "f" * 32)
        live.mkdir()
        registry = Path(os.path.realpath(root)) / ".deid-work"
        registry.mkdir(exist_ok=True)
        broker = redis_url(0, port)
        (registry / f"{'f' * 32}.json").write_text(
            json.dumps({"workdir": str(live), "broker": broker})
        )
        # the lost job's last step started over an hour ago (more than the hard time limit)
        old = time.time() - 3600
        for entry in registry.glob("*.json"):
            if entry.stem == job_id:
                os.utime(entry, (old, old))
        workers.start(1)  # the next worker sweeps as it starts
        wait_for(lambda: not workdir.exists(), 30, "the lost job's work folder to go")
        assert not (registry / f"{job_id}.json").exists()
        assert live.is_dir() and (registry / f"{'f' * 32}.json").is_file()
        assert not out.exists()
    finally:
        workers.stop()
        server.stop()
