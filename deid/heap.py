"""Keep a long video's resident memory flat: give glibc's free heap pages back.

glibc serves an allocation above its *mmap threshold* with its own ``mmap`` and a smaller one
from its heap; the threshold moves up to the largest block freed (up to 32 MB), so after the
first batch the large, varying-size tensors of MTCNN's pyramid come from the heap. Freed,
they stay resident wherever a live block sits above them, and the process's resident size
creeps with every frame: 1077 -> 1379 MB over 48 frames of 1080p detection (one torch
thread). :func:`trim` after each batch (glibc's ``malloc_trim``, which returns the free
pages inside the heap too) keeps it at 937-938 MB at the same speed (75.7 s against 76.1 s
for the 48 frames); fixing the mmap threshold instead (256 KB to 16 MB) also kept it flat
but cost 6-10% of detection time (each new mapping's pages are zeroed again).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def trim() -> bool:
    """Give the C heap's free pages back to the system; False where that is not possible
    (the C library is not glibc)."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
