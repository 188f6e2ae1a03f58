"""Throughput of the job service with 1 and 2 workers (the same job, the same settings).

Run from the repository root with the project's virtualenv, Redis at 127.0.0.1:6379::

    .venv/bin/python bench/service.py [--frames 24] [--chunk-frames 3] [--size 960x540]

It cuts the first N frames of ``$DEID_DATA_DIR/scenes/pedestrians_walking_1080p.mp4``,
downscaled, into ``bench/out/service/``, then for 1 and for 2 workers: starts that many
``deid worker`` processes (solo pool, ``OMP_NUM_THREADS=1``, each pinned to its own CPU core
with ``taskset`` when it exists), waits until they answer, submits the job and times it from
submission to SUCCESS (split, every chunk, plan and assembly; model loading is done before,
in the workers' start-up). Prints the frames/s of each run and their ratio (goal: >= 1.8),
and, before and after, the machine's own scaling at that moment: two single-thread torch
loops pinned to two cores against one (the best 2 workers could do while other processes
share the cores).
Uses Redis database 13 (flushed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "service"
URL = "redis://127.0.0.1:6379/13"
SOURCE = "scenes/pedestrians_walking_1080p.mp4"


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def data_dir() -> Path:
    return Path(os.environ.get("DEID_DATA_DIR", REPO.parent / "shared" / "data"))


def make_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    import cv2

    from deid.io import probe_video, read_frames, write_video

    src = data_dir() / SOURCE
    info = probe_video(src)
    out = []
    for i, f in enumerate(read_frames(src)):
        if i >= frames:
            break
        out.append(cv2.resize(f, size, interpolation=cv2.INTER_AREA))
    write_video(path, out, info.rate)
    return path


def env_for(args: argparse.Namespace) -> dict[str, str]:
    """The settings of the job, for the workers and the submitting client alike (so the models
    the workers load at start-up are the job's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEID_")}
    env.update(
        {
            "DEID_BROKER_URL": URL,
            "DEID_STORAGE_ROOTS": str(OUT),
            "DEID_PIPELINE__DEVICE": "cpu",
            "DEID_PIPELINE__THREADS": "1",
            "DEID_PIPELINE__CHUNK_FRAMES": str(args.chunk_frames),
            "DEID_ATTACK__STEPS": str(args.steps),
            "DEID_WORKER_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def start_workers(n: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    taskset = shutil.which("taskset")
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(n))
    cores_list = sorted(cores)
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "deid.cli", "worker", f"--hostname=bench{i}@deid"]
        if taskset and len(cores_list) >= n:
            cmd = [taskset, "-c", str(cores_list[i]), *cmd]
        log = (logs / f"worker{n}-{i}.log").open("wb")
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_ready(n: int, procs: list[subprocess.Popen[bytes]], timeout: float = 120) -> None:
    from deid.config import ServiceConfig
    from deid.service.celery_app import make_app

    app = make_app(ServiceConfig(broker_url=URL), name="deid-bench")
    want = {f"bench{i}@deid" for i in range(n)}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited during start-up (see bench/out/service/*.log)")
        if want <= {name for r in app.control.ping(timeout=0.5) or [] for name in r}:
            return
        time.sleep(0.3)
    raise TimeoutError(f"workers not ready after {timeout} s")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


CONTROL = """
import time, torch
torch.set_num_threads(1)
x, w = torch.randn(64, 256, 256), torch.randn(256, 256)
t, n = time.perf_counter(), 0
while time.perf_counter() - t < {seconds}:
    (x @ w).relu_()
    n += 1
print(n / (time.perf_counter() - t))
"""


def control(seconds: float = 6.0) -> float:
    """The machine's own scaling right now: 2 single-thread torch loops, each pinned to a
    core, against 1 (what 2 workers could gain at best while other load shares the cores)."""
    taskset = shutil.which("taskset")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(core: int) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-c", CONTROL.format(seconds=seconds)]
        if taskset:
            cmd = [taskset, "-c", str(core), *cmd]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)

    def rates(procs: list[subprocess.Popen[str]]) -> float:
        return sum(float(p.communicate()[0]) for p in procs)

    one = rates([start(0)])
    two = rates([start(0), start(1)])
    return two / one


def run(n: int, clip: Path, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from deid.config import load_settings
    from deid.service.client import Client

    redis.Redis.from_url(URL).flushdb()
    env = env_for(args)
    procs = start_workers(n, env, OUT)
    try:
        wait_ready(n, procs)
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in env.items() if k.startswith("DEID_")})
        try:
            client = Client(load_settings())
        finally:
            os.environ.clear()
            os.environ.update(saved)
        out = OUT / f"out-{n}.mp4"
        out.unlink(missing_ok=True)
        t = time.perf_counter()
        job = client.submit(clip, out)
        report = client.wait(job, timeout=3600)
        seconds = time.perf_counter() - t
    finally:
        stop(procs)
    frames = report["totals"]["frames"]
    return {
        "workers": n,
        "frames": frames,
        "chunks": report["video"]["chunks"],
        "faces": report["totals"]["faces"],
        "seconds": round(seconds, 2),
        "fps": round(frames / seconds, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--chunk-frames", type=int, default=3)
    ap.add_argument("--size", default="960x540", help="WxH of the clip")
    ap.add_argument("--steps", type=int, default=5, help="I-FGSM steps")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args()
    import redis

    try:
        redis.Redis.from_url(URL, socket_connect_timeout=1).ping()
    except redis.RedisError as e:
        sys.exit(f"bench/service.py: needs Redis at 127.0.0.1:6379 ({e})")
    OUT.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in args.size.lower().split("x"))
    clip = make_clip(OUT / "clip.mp4", args.frames, (w, h))
    load_before = os.getloadavg()
    say(f"clip: {args.frames} frames {w}x{h}, chunks of {args.chunk_frames}; load {load_before}")
    rows = []
    controls = [control()]
    say(f"machine scaling before (2 pinned torch loops / 1): {controls[0]:.2f}x")
    try:
        for n in (1, 2):
            say(f"{n} worker(s) ...")
            rows.append(run(n, clip, args))
            say(f"{n} worker(s): {rows[-1]}")
    finally:
        redis.Redis.from_url(URL).flushdb()
    controls.append(control())
    load_after = os.getloadavg()
    ratio = rows[1]["fps"] / rows[0]["fps"]
    print(f"| workers | frames | chunks | seconds | frames/s | ({w}x{h}, {args.steps} steps) |")
    print("|--:|--:|--:|--:|--:|--|")
    for r in rows:
        print(f"| {r['workers']} | {r['frames']} | {r['chunks']} | {r['seconds']} | {r['fps']} | |")
    same = (OUT / "out-1.mp4").read_bytes() == (OUT / "out-2.mp4").read_bytes()
    print(f"\n2 workers / 1 worker: {ratio:.2f}x (goal >= 1.8x); outputs identical: {same}")
    print(
        "machine scaling (2 single-thread torch loops pinned to 2 cores / 1 loop): "
        f"{controls[0]:.2f}x before, {controls[1]:.2f}x after"
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
        f"cores {os.cpu_count()}; taskset {'yes' if shutil.which('taskset') else 'no'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": rows,
                    "ratio": ratio,
                    "machine_scaling": controls,
                    "load": [load_before, load_after],
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
