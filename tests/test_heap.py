"""deid.heap: with glibc's mmap threshold fixed, freed large blocks leave the process (a
long video's resident memory stays flat); by default they stay in a heap that small live
blocks pin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))
if sys.argv[1] == "fixed":
    from deid.heap import fix_mmap_threshold
    assert fix_mmap_threshold() and fix_mmap_threshold()  # once, then a no-op
b = bytearray(8 << 20); del b  # glibc's threshold follows the largest block freed
big, pins = [], []
for _ in range(200):
    big.append(bytearray(1 << 20))  # 1 MB, written (zero-filled)
    pins.append(bytearray(1024))  # a small malloc block after each, kept
before = rss()
del big
print(before - rss())
"""


def _released(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_fixed_threshold_returns_freed_frames_to_the_system() -> None:
    from deid.heap import fix_mmap_threshold

    if not fix_mmap_threshold():
        pytest.skip("not glibc")
    assert _released("plain") < 50  # MB: the heap keeps what the small blocks pin
    assert _released("fixed") > 150  # of 200 MB freed
