"""Reuse freed host memory on CPU training steps instead of mapping it afresh from the kernel.

glibc's malloc serves every buffer over 32 MB (the tiny model's activations at 256 frames) with
its own ``mmap`` and unmaps it when freed, so each step page-faults and zero-fills ~1 GB of
activations anew: 8-20 thousand page faults and 10-33 ms of kernel time per VIVI step at tiny
scale. With mmap off and the heap not trimmed, freed buffers stay in the heap and the next step
reuses them: no page faults, ~9% more peak memory, and the training loop 9-10% faster on 2 cores
once the heap has grown, after its first steps (benchmarks/results/step-overhead, session 9).
jemalloc and tcmalloc, the allocators PyTorch suggests for CPU training, keep freed memory the
same way; this needs nothing installed. The setting is process-wide; ``VIVI_MALLOC=default``
keeps glibc's own.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
M_MMAP_MAX = -4
_NO_TRIM = 2**31 - 1  # mallopt takes an int: return free heap top to the kernel only past 2 GB


def reuse_freed_memory() -> bool:
    """Switch glibc's malloc to keep and reuse freed memory; False (and nothing changed) where
    the C library is not glibc (macOS, musl) or ``VIVI_MALLOC=default`` is set."""
    if os.environ.get("VIVI_MALLOC", "") == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, _NO_TRIM) == 1
