"""qz.parallel: split_run covers its range exactly once, results never depend on the
split, limit_threads caps BLAS and splitting and restores them."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qz import kernels, ops, parallel



@pytest.fixture
def split_on(monkeypatch):
    # Splitting is only switched off for speed when NumPy loaded OpenBLAS before qz could
    # shorten its spin (pytest's plugins import NumPy first); results do not depend on it.
    monkeypatch.setattr(parallel, "_SHORT_SPIN", True)
    if parallel.workers() < 2:
        pytest.skip("needs 2 cores and threadpoolctl")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), min_slice=st.integers(1, 64))
def test_split_run_covers_range_once(n, min_slice):
    seen = np.zeros(n, dtype=np.int64)
    slices, lock = [], threading.Lock()

    def fn(lo, hi):
        with lock:
            slices.append((lo, hi))
        seen[lo:hi] += 1

    old, parallel._SHORT_SPIN = parallel._SHORT_SPIN, True          # split wherever it can
    try:
        parallel.split_run(fn, n, min_slice)
    finally:
        parallel._SHORT_SPIN = old
    assert np.all(seen == 1)
    assert all(hi - lo >= min(min_slice, n) for lo, hi in slices)   # never a sliver, unless n is one


def test_split_run_reraises_a_slice_error():
    def fn(lo, hi):
        if hi == 100:                 # the last slice: in a pool thread when split
            raise ValueError("slice failed")

    with pytest.raises(ValueError, match="slice failed"):
        parallel.split_run(fn, 100, 10)
    seen = []
    parallel.split_run(lambda lo, hi: seen.append(hi - lo), 100, 10)   # the pool still works
    assert sum(seen) == 100


def test_split_run_uses_two_threads_with_single_threaded_blas(split_on):
    names, blas = set(), []

    def fn(lo, hi):
        names.add(threading.current_thread().name)
        blas.append(parallel.blas_threads())

    before = parallel.blas_threads()
    parallel.split_run(fn, 10, 1)
    assert len(names) == 2 and blas == [1, 1]
    assert parallel.blas_threads() == before                      # restored


def test_qz_threads_1_turns_splitting_off(split_on, monkeypatch):
    monkeypatch.setenv("QZ_THREADS", "1")
    assert parallel.workers() == 1
    names = set()
    parallel.split_run(lambda lo, hi: names.add(threading.current_thread().name), 100, 1)
    assert names == {threading.current_thread().name}


def test_without_threadpoolctl_everything_runs_inline(monkeypatch):
    monkeypatch.setattr(parallel, "_blas_libs", [])               # as if threadpoolctl were absent
    assert parallel.workers() == 1 and parallel.blas_threads() is None
    with parallel.limit_threads(1):                                # nothing to limit: still fine
        assert parallel.workers() == 1


def test_limit_threads_caps_and_restores():
    base = parallel.blas_threads()
    with parallel.limit_threads(1):
        assert parallel.workers() == 1
        if base is not None:
            assert parallel.blas_threads() == 1
        with parallel.limit_threads(1):                            # nests
            assert parallel.workers() == 1
        assert parallel.workers() == 1                             # the outer limit still holds
    assert parallel.blas_threads() == base
    with pytest.raises(ValueError):
        with parallel.limit_threads(0):
            pass


@pytest.mark.skipif(not kernels.USE_NUMBA, reason="the split runs in the jitted kernels")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_and_swiglu_same_split_or_not(split_on, monkeypatch, dtype):
    # each slice computes exactly what it would alone: bit-identical results
    rng = np.random.default_rng(0)
    B, T, d, H = 32, 64, 64, 4                                  # 2 slices of 16 rows
    q, k, v, do = (rng.standard_normal((B, T, d)).astype(dtype) for _ in range(4))
    a, b, dm = (rng.standard_normal((4096, 64)).astype(dtype) for _ in range(3))

    def run():
        o, p = ops.attention(q, k, v, H, True)
        m = ops.swiglu(a, b)
        return (o, p, *ops.attention_grad(do, q, k, v, p, H), m, *ops.swiglu_grad(dm, a, b))

    split = run()
    monkeypatch.setenv("QZ_THREADS", "1")
    alone = run()
    for a, b in zip(split, alone):
        np.testing.assert_array_equal(a, b)
