"""The allocator policy of a process that runs key blocks on several threads: keep freed memory.

A 4e6-bit block allocates and frees tens of MB in pieces of 0.1-10 MB (the simulated link's
views, the frames and their copies, the sifted keys, Cascade's permuted copies). glibc's malloc
gives such pieces back to the kernel when they are freed: a piece above the mmap threshold is
unmapped, a thread's arena deletes a heap that empties, and a heap whose free top passes the trim
threshold is shrunk. The next block then takes the same memory back as fresh pages: a page fault
and a page of zeroing per 4 KiB, ~2 us each on this project's machines. One thread alone
(`pipeline.run_local`) escapes most of it, as glibc raises the main arena's thresholds after the
first large free; a node's engine threads, each with an arena of its own, do not.

`keep_freed_memory` sets, once, what glibc lets a program set (`mallopt`): one arena for every
thread (big pieces are few, so its lock is not contended), pieces up to 32 MiB from the heap, and
freed memory kept while the heap's free top is under 256 MiB. It must run before the process's
threads first allocate (a thread keeps the arena it got), so a node process calls it first
thing; the process's resident size then stays near its peak instead of following each block.
`SDQKD_MALLOC=system` keeps glibc's defaults (to compare, or on a host short of memory). With
another C library nothing is set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading

log = logging.getLogger("sdqkd.engine")

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 * 1024 * 1024
ENV = "SDQKD_MALLOC"

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Applies the policy once per process; whether it is in force (False: not glibc, or
    SDQKD_MALLOC=system)."""
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def _apply() -> bool:
    if os.environ.get(ENV, "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    for param, value in ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:  # 1: success
            # e.g. AddressSanitizer's allocator in glibc's place: it keeps its own policy
            log.info("mallopt(%d, %d) refused: freed memory is left to the allocator's own policy", param, value)
            return False
    return True
