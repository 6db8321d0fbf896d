"""Keep freed memory in the process instead of handing it back to the kernel each step.

glibc's malloc serves blocks above its mmap threshold (128 KiB at start, raised only as such
blocks are freed) with fresh `mmap`s and returns them on free, and it trims the heap top
above 128 KiB. A training step allocates and frees the same multi-MiB activations every
step, so by default each step faults every page of them in again, zero-filled by the kernel:
on the Diff-C input row (64 x 32 x 32 x 32 fp32 maps) ~8,500 page faults and 28 ms of system
time per step, 1.30x the step time (`python -m bench.allocator`, README). Raising both
thresholds keeps those pages mapped for the next step; what is kept is bounded by the peak
the step already needs.

This changes where memory comes from, never a value computed: outputs stay bit-identical.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are reused. 32 MiB is glibc's largest
# allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); larger blocks stay mmapped.
MMAP_THRESHOLD = 32 * 2**20
# Free heap-top memory beyond this goes back to the kernel (a step's working set stays).
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
