"""Keep freed CPU memory mapped between training steps (glibc), instead of handing it back every step.

glibc returns the free top of its heap to the kernel past a *trim threshold* and serves blocks above an *mmap
threshold* with fresh mappings, so each step page-faults back in the activations the last one freed: 11-18% of
fcvit_tiny's CPU step at batch 16 (docs/benchmarks.md). Raising both does what jemalloc or tcmalloc would.
``FCVIT_KEEP_FREED_MEMORY=0`` keeps glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: about 2 GiB of free heap top kept mapped

_DONE = [False]


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process (once); False where off, not Linux, or refused."""
    if _DONE[0]:
        return True
    if os.environ.get("FCVIT_KEEP_FREED_MEMORY", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mmap threshold first: setting either value switches glibc's dynamic adjustment off
    _DONE[0] = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _DONE[0]
