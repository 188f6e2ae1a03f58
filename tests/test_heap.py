"""deid.heap: freed large blocks that small live blocks pin in glibc's heap stay resident
(a long video's resident size crept with every frame) until :func:`deid.heap.trim` gives
their pages back."""

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
b = bytearray(8 << 20); del b  # glibc's threshold follows the largest block freed
big, pins = [], []
for _ in range(200):
    big.append(bytearray(1 << 20))  # 1 MB from the heap, written (zero-filled)
    pins.append(bytearray(1024))  # a small malloc block after each, kept
before = rss()
del big
if sys.argv[1] == "trimmed":
    from deid.heap import trim
    assert trim()
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
def test_trim_returns_freed_heap_pages_to_the_system() -> None:
    from deid.heap import trim

    if not trim():
        pytest.skip("not glibc")
    assert _released("plain") < 50  # MB: the heap keeps what the small blocks pin
    assert _released("trimmed") > 150  # of 200 MB freed
