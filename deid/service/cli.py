"""Command line of the service: ``deid submit|status|wait|cancel|jobs|worker|serve``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("deid")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the service's subcommands on ``deid``'s subparsers."""
    from deid.argtypes import ATTACK_FLAGS, add_setting_flags

    p = sub.add_parser("submit", help="queue a job on the service; prints its id")
    p.add_argument("input", type=Path, help="video file or folder of images (under a root)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file or folder")
    p.add_argument("--config", help="YAML file or a name in configs/")
    add_setting_flags(p, *ATTACK_FLAGS, "--fallback", "--strict", "--no-verify", "--chunk-frames")
    p.add_argument("--wait", action="store_true", help="then wait for it (progress bar)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="a job's state, frames done/total, chunks, errors")
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("wait", help="wait for a job, with a progress bar")
    p.add_argument("id")
    p.add_argument("--timeout", type=float, help="seconds (default: no limit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("cancel", help="cancel a job (its remaining chunks stop)")
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("jobs", help="recent jobs")
    p.add_argument("-n", "--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("worker", help="run a Celery worker (solo pool: one per GPU)")
    p.add_argument("--device", help="cpu, cuda or cuda:N for every job this worker runs")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="tasks at once (1: solo pool; more: a prefork pool of CPU processes)",
    )
    p.add_argument("--pool", choices=["solo", "prefork", "threads"], help="override the pool")
    p.add_argument("--threads", type=int, help="torch CPU threads per task")
    p.add_argument("--hostname", help="worker name (default celery@<host>)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--config", help="YAML file or a name in configs/ (for the service section)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="the HTTP job API (FastAPI; OpenAPI at /docs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config", help="YAML file or a name in configs/")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address without service.token (anyone who reaches it "
        "can queue jobs on the storage roots)",
    )
    p.set_defaults(func=cmd_serve)


def _client(config: str | None = None) -> Any:
    from deid.config import load_settings
    from deid.service.client import Client

    return Client(load_settings(config))


def _absolute(p: Path) -> Path:
    """Absolute, keeping symlinks and ``..`` as given (the path policy must see them)."""
    return p if p.is_absolute() else Path.cwd() / p


def cmd_submit(args: argparse.Namespace) -> int:
    from deid.argtypes import SETTING_FLAGS, setting_overrides
    from deid.config import load_settings

    settings = load_settings(args.config, setting_overrides(args), flags=SETTING_FLAGS)
    client = _client()
    job_id = client.submit(_absolute(args.input), _absolute(args.output), settings=settings)
    sys.stdout.write(job_id + "\n")
    sys.stdout.flush()
    if args.wait:
        return _wait(client, job_id, None, quiet=False)
    return 0


def _line(st: dict[str, Any]) -> str:
    unit = st["unit"] + "s"
    text = (
        f"{st['id']}  {st['state']:<10} {st['stage'] or '':<9} "
        f"{st['frames_done']}/{st['frames_total']} {unit} done"
    )
    if st["kind"] == "video":
        text += f", {st['frames_analysed']} analysed"
    text += f"; chunks {st['chunks_done']}/{st['chunks_total']}"
    if st["error"]:
        text += f"; error: {st['error']}"
    return text


def cmd_status(args: argparse.Namespace) -> int:
    st = _client().status(args.id)
    if args.json:
        sys.stdout.write(json.dumps(st, indent=1) + "\n")
        return 0
    sys.stdout.write(_line(st) + "\n")
    sys.stdout.write(f"  {st['kind']}: {st['input']} -> {st['output']}\n")
    for e in st["errors"]:
        sys.stdout.write(f"  error: {e}\n")
    for what, who in sorted(st["running"].items()):
        sys.stdout.write(f"  running {what} on {who.rsplit(':', 1)[0]}\n")
    return 0


def _wait(client: Any, job_id: str, timeout: float | None, quiet: bool) -> int:
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=job_id[:8], disable=quiet, bar_format="{l_bar}{bar}| {postfix}")

    def update(st: dict[str, Any]) -> None:
        bar.n = int(1000 * st["progress"])
        bar.set_postfix_str(
            f"{st['state'].lower()}: {st['frames_done']}/{st['frames_total']} {st['unit']}s"
        )
        bar.refresh()

    from deid.errors import PartialFailure

    failure: PartialFailure | None = None
    try:
        report = client.wait(job_id, timeout=timeout, on_update=update)
    except PartialFailure as e:  # as `deid batch`: the summary, then exit code 3
        report, failure = e.report or {}, e
    finally:
        bar.close()
    t = report.get("totals", {})
    state = "PARTIAL" if failure else "SUCCESS"
    sys.stdout.write(f"{job_id} {state}: {report.get('output')} {json.dumps(t)}\n")
    if failure is not None:
        raise failure
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    return _wait(_client(), args.id, args.timeout, args.quiet)


def cmd_cancel(args: argparse.Namespace) -> int:
    st = _client().cancel(args.id)
    sys.stdout.write(_line(st) + "\n")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    rows = _client().jobs(args.limit)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return 0
    for st in rows:
        sys.stdout.write(_line(st) + f"  {st['output']}\n")
    if not rows:
        sys.stdout.write("no jobs\n")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from deid.config import load_settings

    settings = load_settings(args.config)
    if args.device:
        os.environ["DEID_WORKER_DEVICE"] = args.device
    if args.threads:
        os.environ["DEID_WORKER_THREADS"] = str(args.threads)
    from deid.service.celery_app import QUEUE
    from workers.celery_app import configure

    app = configure(settings.service)
    import workers.tasks  # noqa: F401  (registers the tasks)

    pool = args.pool or ("solo" if args.concurrency == 1 else "prefork")
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={args.concurrency}",
        f"--loglevel={args.loglevel}",
        f"--queues={QUEUE}",
        "--without-gossip",
        "--without-mingle",
        "--task-events",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def check_serve_security(host: str, token: str | None, insecure: bool) -> None:
    """Refuse an API without a token on a non-loopback address, unless ``insecure``; warn
    whenever there is no token.

    Raises:
        ConfigError: no token, a non-loopback ``host`` and not ``insecure`` (exit code 2).
    """
    from deid.errors import ConfigError

    if token:
        return
    if not is_loopback(host) and not insecure:
        raise ConfigError(
            f"refusing to serve the API on {host} without a token: anyone who reaches it could "
            "queue jobs that read and write the storage roots. Set service.token "
            "(DEID_SERVICE__TOKEN; docker-compose: DEID_TOKEN), serve on 127.0.0.1, or pass "
            "--insecure on a network you trust"
        )
    log.warning(
        "the API on %s has no token (service.token): %s",
        host,
        "anyone who reaches this address can queue jobs (--insecure)"
        if not is_loopback(host)
        else "any local user can queue jobs",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from deid.config import load_settings
    from deid.service.api import create_app

    settings = load_settings(args.config)
    token = settings.service.token.get_secret_value() if settings.service.token else ""
    check_serve_security(args.host, token, args.insecure)
    uvicorn.run(create_app(settings), host=args.host, port=args.port)
    return 0
