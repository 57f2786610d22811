"""Memory while serving: the memory of large messages kept between batches (glibc's
allocator), and the cyclic garbage collector settled once serving starts.

A large input (a 600 KB tensor, say) is received into a buffer of its own size, and freed
once its batch is answered. glibc serves such a request with a fresh ``mmap`` while it is
above its mmap threshold (128 KiB at start; the threshold rises to the largest chunk freed
since), and gives the top of its heap back to the kernel whenever more than twice that
threshold is free there. So when several large inputs are in flight, every batch frees a
few MB at once, glibc trims it, and the next batch page-faults the same memory in again:
with 8 requests of 600 KB in flight that was three quarters of the container's CPU (perf:
``exc_page_fault`` under ``memmove``/``memset``, ``vms_clear_ptes`` on the trim), and the
container ran at half the rate of a zero-copy echo.

``keep_freed_memory(limit)`` sets glibc's thresholds so that allocations up to
``min(limit, 32 MiB)`` come from the heap and up to ``limit`` bytes of freed heap are kept
for the next batch; ``release_freed_memory()`` (``malloc_trim``) gives what is kept back to
the kernel, which the container does once it has served and then heard nothing for its
receive timeout (a second at most). What a
busy container keeps is thus bounded by ``limit`` above what it uses; an idle one keeps
nothing. Outside glibc (musl, macOS) both do nothing and say so.

``settle_gc()``, for a process about to serve (the frontend once started, a container once
its model is loaded): everything alive then goes out of the cyclic collector's sight, and
the collector runs after ``GC_THRESHOLD`` new container objects rather than 700.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import platform

__all__ = ["keep_freed_memory", "release_freed_memory", "settle_gc", "GC_THRESHOLD"]

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit systems)
_MAX_MMAP_THRESHOLD = 32 << 20

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def keep_freed_memory(limit: int) -> bool:
    """Keep up to ``limit`` bytes of freed heap for reuse, and serve allocations up to
    ``min(limit, 32 MiB)`` from the heap. ``limit`` 0 leaves glibc's defaults. True when
    glibc took the settings."""
    if limit <= 0:
        return False
    libc = _glibc()
    if libc is None:
        log.info("not glibc: freed memory is kept as the C library decides")
        return False
    mmap_threshold = min(limit, _MAX_MMAP_THRESHOLD)
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, min(limit, 2**31 - 1))
    )
    if not ok:
        log.warning("glibc refused the allocator settings (keep %d bytes)", limit)
    return ok


def release_freed_memory() -> None:
    """Give the freed memory kept by ``keep_freed_memory`` back to the kernel."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# The cyclic garbage collector's first threshold while serving (CPython's default is 700).
GC_THRESHOLD = 10_000


def settle_gc() -> None:
    """Once ready to serve: move everything alive now (modules, state, a loaded model) out of
    the collector's sight (``gc.freeze``) and let it run after 10,000 new container objects
    rather than 700. A request allocates a few short-lived objects; with CPython's defaults
    the collections were ~7% of the frontend's CPU at 64 connections (perf), and about 4k of
    the ~56k instructions of a batch-1 request in the container, whose older generations also
    hold the whole framework (torch, TensorFlow) a full collection walks. Cycles made from
    here on are still collected; the garbage of the start-up (a loader's cycles) is collected
    first, since nothing frozen ever is."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)
