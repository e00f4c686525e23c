"""glibc malloc settings for the processes spikelens owns: the command's process (`cli.main`)
and the workers of a fleet's local pool (`fleet.PoolBackend`). One arena for every thread,
and freed memory kept for reuse rather than handed back to the kernel: on a machine where a
fresh page is dear (a virtual machine), the faults of the detector's temporaries were a
tenth of `analyze`'s time. Each setting is skipped where the user set the matching glibc
variable, and all of them off glibc. A library user's own process keeps glibc's defaults
(docs/performance.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

#: glibc's `mallopt` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
#: 32 MiB is the largest mmap threshold glibc accepts on 64-bit (half its heap size): the
#: 8 MB arrays of a 1M-step log and the detector's temporaries come from the heap, and only
#: larger ones are mapped on their own.
MMAP_THRESHOLD = 32 << 20
#: Up to 1 GiB of freed memory at the heap's top is kept, not trimmed.
TRIM_THRESHOLD = 1 << 30


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's `mallopt`, or None off Linux or where the C library has none (musl)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _user_tuned(*names: str) -> bool:
    return any(n in os.environ for n in names) or \
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def one_arena() -> None:
    """Let every thread allocate from glibc's main arena (as `MALLOC_ARENA_MAX=1` would).
    The detector scans a long grad norm on a second thread (`detect._start_side_passes`);
    with an arena of its own, the memory one thread frees cannot serve the other, and the
    two heaps add up: peak RSS of `analyze` on the 1M-step CSV 501-511 MB with two arenas,
    480-488 MB with one. The threads allocate a few large arrays, not many small objects,
    so they do not queue on the arena's lock."""
    mallopt = _mallopt()
    if mallopt is not None and not _user_tuned("MALLOC_ARENA_MAX"):
        mallopt(M_ARENA_MAX, 1)


def keep_freed_memory() -> None:
    """Reuse the memory the process frees instead of handing it back to the kernel and
    faulting it in again. By default glibc maps each array above a threshold (128 KB,
    raised as such arrays are freed, to 8 MB after the first 1M-point array) on its own and
    unmaps it on `free`, and trims the heap's free top above twice that: the detector's
    per-pass temporaries (8 MB each for a 1M-step log, thousands of them) come back as
    fresh pages every time, each a fault and a zeroing. `analyze` of the 1M-step CSV took
    148,000 page faults, 83,500 with both thresholds fixed, 2.90 -> 2.69 s in alternated
    fresh runs at the same peak RSS; a directory of 100 runs x 100k steps (pool workers)
    13.3 -> 11.8 s. The peak is the same because freed memory is reused, not added to."""
    mallopt = _mallopt()
    if mallopt is None or _user_tuned("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def tune() -> None:
    """Both settings, for a process spikelens owns; call it before the work allocates."""
    one_arena()
    keep_freed_memory()
