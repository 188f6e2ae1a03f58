"""One prepared script for a GPU machine: deid's per-stage speed at 720p and 1080p.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/gpu.py                       # on a GPU machine (device auto -> cuda)
    .venv/bin/python bench/gpu.py --device cpu --frames 5 --skip-deface   # the CPU dry run

It builds 720p and 1080p clips of the first ``--frames`` frames of the shared pedestrian clip
(``$DEID_DATA_DIR/scenes/pedestrians_walking_1080p.mp4``, as ``bench/pipeline.py`` does), then
for every protection mode in ``--modes`` that this checkout has (``default`` is the pipeline's
own configuration; ``advgan`` and ``replace`` are the one-pass modes, skipped with a line where
they are not registered) runs ``deid.pipeline.run`` in-process and prints, per clip and mode:
frames/s of the whole run and of each stage (detect, attack, encode, verify), faces/s, the
peak GPU memory (``torch.cuda.max_memory_allocated``) and the card's name. deface 1.5.0 runs on
the CPU in the same script (its own venv, ``bench/.venv-deface``) as the reference figure.

On CUDA the first clip of each mode is run twice and timed the second time, so that CUDA's
start-up (context, cuDNN autotuning, kernel loading) is not counted as frames/s; the warm-up's
seconds are printed beside it. Everything it writes stays in ``bench/out/``; ``--json OUT`` keeps
the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline as bench  # bench/pipeline.py: clips, deface, machine facts

MODES: dict[str, dict[str, Any] | None] = {
    "default": None,  # the pipeline's configuration as shipped (configs/default.yaml)
    # the same with the attack's gradient passes in float32 (the default, precision auto, uses
    # bfloat16 where the card has it): the speed it gains, and the success it keeps
    "default-float32": {"pipeline": {"precision": "float32"}},
    "advgan": {"attack": {"name": "advgan"}},
    # generated face, then targeted I-FGSM steps with EOT
    "replace": {"attack": {"name": "replace"}},
    "replace-only": {"attack": {"name": "replace", "then": None}},  # one forward pass
}


def settings_for(mode: str, device: str, classifier: str | None) -> Any:
    from deid.config import load_settings

    extra = MODES[mode] or {}
    overrides: dict[str, Any] = {
        "pipeline": {"device": device, **extra.get("pipeline", {})},
        **{k: dict(v) for k, v in extra.items() if k != "pipeline"},
    }
    if classifier:
        overrides["classifier"] = {"name": classifier}
    return load_settings(overrides=overrides)


def available(mode: str) -> bool:
    """Whether this checkout can run ``mode`` (the one-pass modes come with their issue)."""
    attack = (MODES[mode] or {}).get("attack")
    if attack is None:
        return True
    from deid.attacks import registry

    return attack["name"] in registry.ATTACKS


def gpu_facts(device: str) -> dict[str, Any]:
    import torch

    if device != "cuda":
        return {"card": None}
    props = torch.cuda.get_device_properties(0)
    return {
        "card": torch.cuda.get_device_name(0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def run_mode(clip: Path, label: str, mode: str, device: str, classifier: str | None) -> dict:
    import torch

    from deid.pipeline import run

    settings = settings_for(mode, device, classifier)
    out = bench.OUT_DIR / f"gpu_{mode}_{label}.mp4"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    report = run(clip, out, settings, progress=False)
    wall = time.perf_counter() - t
    row = bench.deid_row(
        report, wall, f"deid {mode}, device {device}, precision {settings.pipeline.precision}", out
    )
    row["mode"] = mode
    row["clip"] = label
    row["faces_per_s"] = bench.rate(row["faces"], wall)
    row["peak_gpu_mib"] = (
        round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None
    )
    bench.say(
        f"deid {mode} {label}: {wall:.2f} s, {row['fps']:.2f} frames/s, {row['faces']} faces"
        + (f", peak GPU {row['peak_gpu_mib']} MiB" if row["peak_gpu_mib"] is not None else "")
    )
    return row


def table(result: dict[str, Any]) -> str:
    f = bench._f
    g = result["gpu"]
    lines = [
        f"deid on {result['device']} ({g.get('card') or bench.cpu_model()}), "
        f"{result['frames']} frames of {bench.SOURCE}, {result['machine']['date_utc']}, "
        f"git {result['machine']['git']}",
        "",
        "| clip | tool / mode | frames/s | faces/s | detect f/s | attack f/s | encode f/s "
        "| verify f/s | verified as target | peak GPU MiB | warm-up s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in result["rows"]:
        if r.get("error"):
            lines.append(f"| {r['clip']} | {r['config']} | failed: {r['error'][:60]} |")
            continue
        st = r.get("stage_fps", {})
        lines.append(
            f"| {r['clip']} | {r['config']} | {f(r['fps'])} | {f(r.get('faces_per_s'))} "
            + " ".join(f"| {f(st.get(s))}" for s in bench.STAGES)
            + f" | {f(r['totals'].get('verified_target_rate'), 3)}"
            + f" | {r.get('peak_gpu_mib') or '—'} | {f(r.get('warmup_s'))} |"
        )
    for note in result["notes"]:
        lines.append(f"\n{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--frames", type=int, default=60, help="frames of each clip (default 60)")
    p.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    p.add_argument("--classifier", help="classifier name (default: the configuration's)")
    p.add_argument("--skip-deface", action="store_true", help="no deface reference row")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from deid.errors import ConfigError
    from deid.pipeline import resolve_device

    device = resolve_device(args.device).type
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"--modes: unknown {', '.join(unknown)}; expected some of {', '.join(MODES)}")
    bench.OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.json:
        from deid.io import Artefact, check_writes

        check_writes([], [Artefact("--json", args.json)])
    result: dict[str, Any] = {
        "device": device,
        "frames": args.frames,
        "machine": bench.machine_info(),
        "gpu": gpu_facts(device),
        "rows": [],
        "notes": [],
    }
    if device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
        result["notes"].append("CPU dry run: the figures say the script works, not how fast.")
    clips = bench.build_clips(args.frames)
    for mode in modes:
        if not available(mode):
            result["notes"].append(f"{mode}: not registered in this checkout, skipped.")
            bench.say(f"{mode}: not registered, skipped")
            continue
        for i, (label, clip) in enumerate(sorted(clips.items(), key=lambda kv: kv[0] != "720p")):
            warmup = None
            try:
                if i == 0 and device == "cuda":  # the first run pays CUDA's start-up
                    warmup = run_mode(clip, label, mode, device, args.classifier)["wall_s"]
                row = run_mode(clip, label, mode, device, args.classifier)
            except ConfigError as e:  # e.g. no generator trained for this classifier
                result["notes"].append(f"{mode}: cannot run here: {e}")
                bench.say(f"{mode}: cannot run here: {e}")
                break
            except Exception as e:  # noqa: BLE001 - a failed mode is a row, the others still run
                row = {"clip": label, "config": f"deid {mode}", "error": f"{type(e).__name__}: {e}"}
            row["warmup_s"] = warmup
            result["rows"].append(row)
    if not args.skip_deface:
        found = bench.ensure_deface()
        result["deface"] = found
        for label, clip in clips.items():
            if found:
                row = bench.run_deface(clip, args.frames, label)
                row["clip"] = label
                row["config"] = "deface 1.5.0 (CPU, whole command)"
                result["rows"].append(row)
    text = table(result)
    print(text)
    if args.json:
        from deid.io import write_text

        write_text(args.json, json.dumps(result, indent=2, default=str))
    return 1 if any(r.get("error") for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
