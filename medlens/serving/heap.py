"""A long-running, many-threaded server's memory: cap glibc's malloc arenas.

The service decodes and preprocesses uploads in up to 40 request threads. With glibc's defaults
each thread may get its own malloc arena (up to 8 per core), and each arena keeps and fragments
what its thread freed. :func:`cap_malloc_arenas` caps the arenas at two: the benchmark server's peak
went from 879 MB to 783 MB over the same load (bench_serve.py, 2 x 45 s, 2026-12-04). Tried and
left out: fixing the mmap threshold (flat, but torch then maps and faults in every activation
buffer anew: p50 2.3x the plain endpoint instead of 1.7x) and a thread calling ``malloc_trim``
every second (no change). Written by hand (``mallopt`` through ctypes): no library does this; a
no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8
ARENAS = 2


def cap_malloc_arenas() -> bool:
    """Cap this process's malloc arenas; True when the C library took the setting."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, ARENAS))
