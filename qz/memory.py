"""Keep freed memory in the process instead of handing it back to the OS.

A training step allocates and frees many large temporaries (activations,
caches, gradients: tens of MB). glibc's malloc serves blocks above its mmap
threshold with fresh ``mmap`` calls and returns them with ``munmap``, so every
step pays page faults to touch the same memory again: measured on the kws
classifier, about 7,700 minor faults and 40 ms per NumPy-path step, against
0 faults and 26 ms once freed memory is kept (``scripts/bench_foundation.py
--allocator default`` vs ``tuned``).

``keep_freed_memory()`` raises the mmap and trim thresholds with ``mallopt``,
the same knobs as the environment variables ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``. It changes the whole process, so the library
never calls it by itself: the ``qz`` command does, for its own process.
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3   # from glibc's malloc.h


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc to serve blocks below threshold_bytes from the heap and keep them. True if applied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1
    ok &= mallopt(_M_TOP_PAD, 64 << 20) == 1
    return bool(ok)
