"""``deid stream SRC DST``: the command line of :mod:`deid.pipeline.stream`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path

from deid.argtypes import SETTING_FLAGS, add_setting_flags, setting_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``deid stream SRC DST [--max-latency S] [--no-realtime] ...``."""
    p = sub.add_parser(
        "stream",
        help="de-identify a live feed (UDP/RTSP/RTMP URL, or a file played in real time)",
        description="De-identify SRC into DST frame by frame. SRC: a URL PyAV's FFmpeg opens "
        "(udp://, rtp://, rtsp://, rtmp://, http://; no srt:// in this build) or a video file, "
        "played at its own frame rate unless --no-realtime. DST: udp://HOST:PORT (MPEG-TS), "
        "rtsp://SERVER/PATH, rtmp://... or a file (.mp4, .mkv, .ts). A frame later than "
        "--max-latency is degraded (faces obscured without the attack) or, when even detection "
        "would not fit, dropped; no frame is sent without detection. Ends when the source "
        "ends, breaks or is idle for --idle-timeout s, or on Ctrl-C / SIGTERM (within a "
        "second, the output finished); prints the stream's figures as JSON at the end.",
    )
    p.add_argument("src", help="input URL or video file")
    p.add_argument("dst", help="output URL or video file")
    p.add_argument(
        "--config", help="YAML file or a name in configs/ (default: configs/default.yaml)"
    )
    add_setting_flags(p, "--classifier", "--attack", "--target", "--eps", "--steps")
    add_setting_flags(p, "--device", "--fallback")
    p.add_argument(
        "--max-latency",
        type=float,
        default=1.0,
        help="seconds from a frame's arrival to its sending (default 1.0)",
    )
    p.add_argument("--queue", type=int, default=8, help="frames per queue (default 8)")
    p.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="a file source: read as fast as the pipeline goes (every frame attacked)",
    )
    p.add_argument("--obscure-only", action="store_true", help="never attack: obscure every face")
    p.add_argument(
        "--idle-timeout", type=float, default=5.0, help="a URL quiet this long has ended (s)"
    )
    p.add_argument("--stats-every", type=float, default=5.0, help="seconds between stats logs")
    p.add_argument("--preset", default="ultrafast", help="x264 preset of the output")
    p.set_defaults(func=cmd_stream)


def cmd_stream(args: argparse.Namespace) -> int:
    from deid.config import load_settings
    from deid.io import Artefact, check_writes
    from deid.io.stream import StreamSink, check_protocol, is_url
    from deid.pipeline import Resources
    from deid.pipeline.stream import StreamOptions, run_stream

    if is_url(args.src):  # before the models load
        check_protocol(args.src, "input")
    StreamSink.format_of(args.dst)
    if not is_url(args.dst):
        reads = [] if is_url(args.src) else [("input", args.src)]
        check_writes(reads, [Artefact("output", Path(args.dst))])
    settings = load_settings(args.config, setting_overrides(args), flags=SETTING_FLAGS)
    opts = StreamOptions(
        max_latency=args.max_latency,
        queue=args.queue,
        realtime=args.realtime,
        idle_timeout=args.idle_timeout,
        stats_every=args.stats_every,
        obscure_only=args.obscure_only,
        preset=args.preset,
    )
    try:
        summary = run_stream(args.src, args.dst, Resources.load(settings), opts)
    except BaseException as e:
        _exit_if_busy(e)
        raise
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _exit_if_busy(e: BaseException) -> None:
    """Exit at once, the output being finished, on Ctrl-C or SIGTERM (so the stop takes well
    under a second: no interpreter and torch teardown), and on an error while a stream thread
    is still inside torch or a network read (a stop does not wait for the frame in hand; left
    to the interpreter's shutdown, such a thread aborts the process: ``terminate called
    without an active exception``). The message and exit code are those of
    :func:`deid.cli.main`."""
    known = {"KeyboardInterrupt": ("interrupted", 130), "Terminated": ("terminated (SIGTERM)", 143)}
    busy = [t for t in threading.enumerate() if t.name.startswith("deid-stream-") and t.is_alive()]
    if type(e).__name__ not in known and not busy:
        return
    what, code = known.get(type(e).__name__, (f"error: {e}", getattr(e, "exit_code", 1)))
    sys.stdout.flush()
    sys.stderr.write(f"deid: {what}\n")
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
