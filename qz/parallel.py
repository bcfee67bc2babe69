"""Splitting work across the cores by hand, where BLAS's own threads do badly.

BLAS (OpenBLAS, in NumPy's wheels) splits every matrix product across its
threads. That pays for the big products (projections, experts: 256+ rows) but
not for attention's many small per-head products (128 x 32 x 128 in the char
LM): there the threads spend their time handing work over, and the softmax
passes between the products run on one core. On the 2-core reference machine
attention ran slower with 2 BLAS threads than with 1.

`split_run(fn, n)` hands whole slices instead (batch rows of attention, row
blocks of an elementwise kernel) to threads, with BLAS single-threaded inside
each. NumPy's matmul and ufuncs and the Numba kernels (nogil) release the GIL,
so the slices really run at the same time. Each slice computes exactly what it
would compute alone, so results never depend on how the work was split.

One catch: after each product, OpenBLAS's idle threads spin (busy-wait) for
2^28 cycles, about 0.1 s, before they sleep. On 2 cores that spin holds the very
core a slice needs, and splitting then loses. So qz splits only where the spin
is short: OPENBLAS_THREAD_TIMEOUT=20 (2^20 cycles, about 0.3 ms) in the
environment before NumPy loads. That is opt-in, not qz's default, because
every product after a pause must then wake a sleeping thread: on the reference
machine (a virtual machine) the char-LM training step was a few per cent faster
in quiet hours (attention 30 -> 19 ms a step), and 10-25x slower while the host
was busy and each wake-up took about a millisecond.

Controlling BLAS's threads needs `threadpoolctl` (the one library that knows
where each NumPy build keeps its BLAS). Without it, with one core, with
OPENBLAS_NUM_THREADS=1, with a BLAS other than OpenBLAS, or with QZ_THREADS=1,
everything runs in the calling thread as before. `limit_threads(1)` is the
governor's `critical` mode (docs/spec.md §4): one BLAS thread and no splitting while held.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import InputError

_spin = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
_SHORT_SPIN = _spin.isdigit() and int(_spin) <= 22   # OpenBLAS reads it once, when NumPy loads it

try:  # optional: without it qz keeps BLAS's own threading and never splits
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - exercised where threadpoolctl is absent
    ThreadpoolController = None

__all__ = ["cores", "workers", "blas_threads", "split_run", "limit_threads"]

_lock = threading.RLock()      # one split region or limit change at a time
_blas_libs = None              # threadpoolctl controllers of the loaded BLAS, found once
_base_threads = None           # BLAS threads when qz first looked (the user's choice)
_limits: list[int] = []        # active limit_threads() values, innermost last
_pool, _pool_workers = None, 0
_cores = None


def cores() -> int:
    """CPUs this process may run on (read once)."""
    global _cores
    if _cores is None:
        try:
            _cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            _cores = os.cpu_count() or 1
    return _cores


def _libs():
    global _blas_libs, _base_threads
    if _blas_libs is None:
        _blas_libs = []
        if ThreadpoolController is not None:
            import numpy  # noqa: F401  (BLAS is loaded with NumPy)
            try:
                _blas_libs = list(ThreadpoolController().select(internal_api="openblas").lib_controllers)
            except Exception:  # a BLAS threadpoolctl cannot drive: leave threads alone
                _blas_libs = []
        _base_threads = min((lib.num_threads for lib in _blas_libs), default=None)
    return _blas_libs


def blas_threads():
    """Threads BLAS uses now, or None when qz cannot see or set them."""
    libs = _libs()
    return min(lib.get_num_threads() for lib in libs) if libs else None


def _set_blas(n):
    for lib in _libs():
        lib.set_num_threads(n)


def workers() -> int:
    """Threads split_run would use: cores, capped by BLAS's own setting, QZ_THREADS and limits."""
    if not _libs() or not _SHORT_SPIN:
        return 1
    n = min(cores(), _base_threads or 1)
    env = os.environ.get("QZ_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        n = min(n, int(env))
    if _limits:
        n = min(n, min(_limits))
    return max(1, n)


def split_run(fn, n: int, min_slice: int = 1) -> None:
    """Call fn(lo, hi) on consecutive slices covering range(n), on up to workers() threads.

    fn must write only its own slice of the outputs. Slices are at least min_slice long
    (small work is not worth a thread hand-over); a second split region that starts
    while one runs (another request thread) simply runs inline.
    """
    if n < 2 * min_slice:                                         # too little to share: no checks
        fn(0, n)
        return
    w = min(workers(), n // max(1, min_slice))
    if w < 2 or not _lock.acquire(blocking=False):
        fn(0, n)
        return
    global _pool, _pool_workers
    try:
        if _pool_workers < w - 1:
            _pool, _pool_workers = ThreadPoolExecutor(max_workers=w - 1, thread_name_prefix="qz-split"), w - 1
        edges = [n * i // w for i in range(w + 1)]
        prev = blas_threads()
        _set_blas(1)
        try:
            futures = [_pool.submit(fn, edges[i], edges[i + 1]) for i in range(1, w)]
            fn(edges[0], edges[1])                                # this thread takes the first slice
            for f in futures:
                f.result()                                        # re-raises a slice's error here
        finally:
            _set_blas(prev)
    finally:
        _lock.release()


@contextlib.contextmanager
def limit_threads(n):
    """At most n threads (BLAS and split_run) while held; nests; restores on exit. None: no limit
    (a governor plan's threads, so callers need no branch)."""
    if n is None:
        yield
        return
    if n < 1:
        raise InputError(f"limit_threads: n must be >= 1, got {n}")
    with _lock:
        _limits.append(int(n))
        _apply_limits()
    try:
        yield
    finally:
        with _lock:
            _limits.remove(int(n))
            _apply_limits()


def _apply_limits():
    # BLAS threads = the user's setting, capped by the tightest active limit
    if _libs() and _base_threads:
        _set_blas(min([_base_threads] + _limits))
