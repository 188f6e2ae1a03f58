"""bench/gpu.py, the script prepared for a GPU machine, in its CPU dry run.

It must run as it is when a GPU machine is lent, so its dry run is tested here: every mode
this checkout has yields a row with per-stage figures, and the JSON holds them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_dry_run_on_the_cpu(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "gpu.json"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu.py"),
            "--device",
            "cpu",
            "--frames",
            "2",
            "--skip-deface",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["gpu"]["card"] is None
    rows = [row for row in result["rows"] if row.get("mode") == "default"]
    assert sorted(row["clip"] for row in rows) == ["1080p", "720p"]
    for row in rows:
        assert row["frames"] == 2 and row["fps"] > 0
        assert set(row["stage_fps"]) == {"detect", "attack", "encode", "verify"}
        assert row["warmup_s"] is None  # a warm-up run only on CUDA
    # modes this checkout lacks, or cannot run with the classifier, are named, not dropped
    assert all(
        m in " ".join(result["notes"]) or any(row.get("mode") == m for row in result["rows"])
        for m in ("advgan", "replace")
    )
    assert "| 720p | deid default" in r.stdout
