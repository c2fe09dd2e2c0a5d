"""Process-wide settings for a long-running viworks service: the garbage collector, and
how the C allocator serves big buffers.

A backend holding a thousand agent links keeps about a million long-lived objects
(connections, TLS and WebSocket state, sessions). With CPython's default thresholds
(700, 10, 10) every 700 allocations start a young collection and every 7,000 a
middle one, and full collections walk every object: a large share of a busy
backend's CPU (docs/benchmarks.md, "Figures behind the code").
Nearly all of a command's allocations die young without cycles (reference counting
frees them), so collecting rarely loses nothing.
"""

from __future__ import annotations

import ctypes
import gc

# (young, middle, full): a young collection per 50,000 net container allocations
# (a few milliseconds), a middle one per 20 young, a full one per 10 middle, i.e.
# per 10 million allocations - cyclic garbage that reached the oldest generation
# is still freed within minutes under load.
THRESHOLDS = (50_000, 20, 10)


def tune_gc(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Collect once, move everything alive (modules, config, the built services) out of
    the collector's sight, and collect less often from now on. Call once at start-up,
    after the service is built."""
    gc.collect()
    # Start-up objects live as long as the process: never walk them again.
    gc.freeze()
    gc.set_threshold(*thresholds)


# glibc's mallopt(M_MMAP_THRESHOLD, bytes) (malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def release_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more from mmap, so
    that freeing it gives the memory back to the system. Call once at start-up.

    By default glibc raises that threshold to the size of each such block freed (up to
    32 MiB); from then on buffers of a MiB - agent frames, output chunks, an event
    stream's unsent data - come from the heap, and freed heap memory mostly stays with
    the process: a backend that dropped slow event-stream viewers stayed much larger
    (docs/benchmarks.md, "Figures behind the code"). Returns False where the C library
    has no mallopt (not glibc): nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
