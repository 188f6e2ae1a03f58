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


def _python(script: str, arg: str) -> str:
    """stdout of ``script`` run with ``arg`` in a fresh interpreter (a clean environment)."""
    return subprocess.run(
        [sys.executable, "-c", script, arg],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    ).stdout


def _released(mode: str) -> int:
    return int(_python(SCRIPT, mode).strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_trim_returns_freed_heap_pages_to_the_system() -> None:
    from deid.heap import trim

    if not trim():
        pytest.skip("not glibc")
    assert _released("plain") < 50  # MB: the heap keeps what the small blocks pin
    assert _released("trimmed") > 150  # of 200 MB freed


HUGE = """
import os, sys
if sys.argv[1] != "unset":
    os.environ["THP_MEM_ALLOC_ENABLE"] = sys.argv[1]
import deid, torch
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB, touched
with open("/proc/self/smaps_rollup") as f:
    huge = next(int(l.split()[1]) for l in f if l.startswith("AnonHugePages"))
print(os.environ["THP_MEM_ALLOC_ENABLE"], huge // 1024)
"""


def _huge(value: str) -> tuple[str, int]:
    flag, mb = _python(HUGE, value).split()
    return flag, int(mb)


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_large_tensors_get_huge_pages_unless_the_user_says_no() -> None:
    """Importing deid asks PyTorch's CPU allocator for transparent huge pages (MTCNN's
    pyramid tensors then fault in 2 MB at a time); a user's THP_MEM_ALLOC_ENABLE=0 is kept."""
    flag, mb = _huge("unset")
    assert flag == "1"
    if THP.exists() and "[never]" not in THP.read_text():
        assert mb >= 32, mb  # most of the 64 MB tensor
    flag, mb = _huge("0")
    assert flag == "0" and mb < 32
