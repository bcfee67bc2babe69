"""The Numba-jitted twins of qz/ops.py's softmax, RMSNorm, SwiGLU and attention core: each
public name here is the twin of the same name there, with its signature (qz/kernels/__init__.py
says how they are swapped in).

Shapes: N rows, C columns, B batch, H heads, T time, D head dim, d = H * D, E experts,
K chosen per token, R = N * K routed rows, f expert width.
"""
from __future__ import annotations

import numpy as np

from .. import parallel
from .jit import _jit, fexp, prange


# ----------------------------------------------------------------------------
# softmax over the last axis (ops.softmax)
# ----------------------------------------------------------------------------
def _softmax_loop(x):
    # sums and constants in x's dtype: a bare 0.0 or 1.0 is a float64 in numba, and mixing it
    # in turns the float32 loops into float64 ones (half the lanes, and conversions)
    n, c = x.shape
    out = np.empty_like(x)
    zero, one = x.dtype.type(0.0), x.dtype.type(1.0)
    for i in prange(n):
        m = x[i, 0]
        for j in range(1, c):
            m = max(m, x[i, j])
        s = zero
        for j in range(c):
            e = fexp(x[i, j] - m)
            out[i, j] = e
            s += e
        inv = one / s
        for j in range(c):
            out[i, j] *= inv
    return out


softmax_jit = _jit(_softmax_loop)


def softmax(x):
    return softmax_jit(np.ascontiguousarray(x))


# ----------------------------------------------------------------------------
# RMSNorm (ops.rmsnorm, ops.rmsnorm_grad)
# ----------------------------------------------------------------------------
def _rmsnorm_forward_loop(x, g, eps):
    n, c = x.shape
    y = np.empty_like(x)
    rstd = np.empty(n, dtype=x.dtype)
    for i in prange(n):
        ss = 0.0
        for j in range(c):
            ss += x[i, j] * x[i, j]
        r = 1.0 / np.sqrt(ss / c + eps)
        rstd[i] = r
        for j in range(c):
            y[i, j] = x[i, j] * r * g[j]
    return y, rstd


def _rmsnorm_backward_loop(dy, x, g, rstd):
    n, c = x.shape
    dx = np.empty_like(x)
    for i in prange(n):
        r = rstd[i]
        dot = 0.0  # sum_j dxhat_j * xhat_j
        for j in range(c):
            dot += dy[i, j] * g[j] * x[i, j]
        mean = dot * r / c
        for j in range(c):
            dx[i, j] = r * (dy[i, j] * g[j] - x[i, j] * r * mean)
    # the gain's gradient sums over rows: a column reduction, done serially
    dg = np.zeros(c, dtype=np.float64)
    for i in range(n):
        r = rstd[i]
        for j in range(c):
            dg[j] += dy[i, j] * x[i, j] * r
    return dx, dg.astype(x.dtype)


rmsnorm_forward_jit = _jit(_rmsnorm_forward_loop)
rmsnorm_backward_jit = _jit(_rmsnorm_backward_loop)



def rmsnorm(x, g, eps):
    return rmsnorm_forward_jit(np.ascontiguousarray(x), g, x.dtype.type(eps))


def rmsnorm_grad(dy, x, g, rstd):
    return rmsnorm_backward_jit(np.ascontiguousarray(dy), x, g, rstd)


# ----------------------------------------------------------------------------
# SwiGLU's elementwise part (ops.swiglu, ops.swiglu_grad): one pass over a and b,
# each in an array of its own (R, f): each is one long contiguous stream (side by
# side in one (R, 2f) array, the same pass ran about half as fast). The backward
# recomputes the sigmoid from a: an exp costs less than writing and reading back an
# (R, f) array. Constants in the arrays' dtype (`one`): a bare 1.0 is a float64 in
# numba and turns float32 arithmetic into float64.
# ----------------------------------------------------------------------------
def _swiglu_forward_loop(a, b, m):
    # one pass: m = a * sigmoid(a) * b
    n, f = m.shape
    one = a.dtype.type(1.0)
    for i in prange(n):
        for j in range(f):
            x = a[i, j]
            s = one / (one + fexp(-x))          # exp(-x) = inf for x << 0: the right sigmoid 0
            m[i, j] = x * s * b[i, j]


def _swiglu_backward_loop(dm, a, b, da, db):
    n, f = dm.shape
    one = a.dtype.type(1.0)
    for i in prange(n):
        for j in range(f):
            x, y, g = a[i, j], b[i, j], dm[i, j]
            s = one / (one + fexp(-x))
            da[i, j] = g * y * s * (one + x * (one - s))
            db[i, j] = g * x * s


swiglu_forward_loop_jit = _jit(_swiglu_forward_loop)
swiglu_backward_loop_jit = _jit(_swiglu_backward_loop)
_ELEMENTWISE_SLICE = 1 << 17   # elements per thread slice: ~50 us of work, worth a hand-over


def _rows_per_elementwise_slice(f):
    return -(-_ELEMENTWISE_SLICE // max(1, f))


def swiglu_forward_jit(a, b):
    # with splitting on (qz.parallel, opt-in) row blocks go to separate threads; each writes its rows
    n, f = a.shape
    m = np.empty((n, f), dtype=a.dtype)
    parallel.split_run(lambda lo, hi: swiglu_forward_loop_jit(a[lo:hi], b[lo:hi], m[lo:hi]),
                       n, _rows_per_elementwise_slice(f))
    return m


def swiglu_backward_jit(dm, a, b):
    n, f = a.shape
    da, db = np.empty_like(a), np.empty_like(b)
    def rows(lo, hi):
        swiglu_backward_loop_jit(dm[lo:hi], a[lo:hi], b[lo:hi], da[lo:hi], db[lo:hi])

    parallel.split_run(rows, n, _rows_per_elementwise_slice(f))
    return da, db



def swiglu(a, b):
    return swiglu_forward_jit(np.ascontiguousarray(a), np.ascontiguousarray(b))


def swiglu_grad(dm, a, b):
    return swiglu_backward_jit(np.ascontiguousarray(dm), np.ascontiguousarray(a), np.ascontiguousarray(b))


# ----------------------------------------------------------------------------
# attention core (ops.attention, ops.attention_grad)
# ----------------------------------------------------------------------------
def _split(x, H):
    # (B, T, d) -> (B, H, T, D): ops.split_heads, which this layer cannot import (nothing imports upward)
    B, T, d = x.shape
    return x.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)


def _merge(x):
    # (B, H, T, D) -> (B, T, d)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)



def _attention_softmax_loop(s, scale, causal):
    # s: (M, T, T) raw scores -> softmax((s - rowmax) * scale) in place; causal: the
    # keys after the query get 0 (the spec's -inf mask) and are never exponentiated
    # (sums and constants in s's dtype, as in _softmax_loop)
    M, T, _ = s.shape
    zero, one = s.dtype.type(0.0), s.dtype.type(1.0)
    for mi in prange(M):
        for i in range(T):
            n = i + 1 if causal else T         # causal: keys 0..i only
            row = s[mi, i]
            mx = row[0]
            for j in range(1, n):
                mx = max(mx, row[j])
            tot = zero
            for j in range(n):
                e = fexp((row[j] - mx) * scale)
                row[j] = e
                tot += e
            inv = one / tot
            for j in range(n):
                row[j] *= inv
            for j in range(n, T):
                row[j] = zero
    return s


def _softmax_backward_scaled_loop(dp, p, scale):
    # dp, p: (M, T, T) -> ds = p * (dp - rowsum(dp * p)) * scale, written into dp
    # one row (1-D, contiguous) at a time; the sum in p's dtype (as in _softmax_loop)
    M, T, _ = p.shape
    zero = p.dtype.type(0.0)
    for mi in prange(M):
        for i in range(T):
            drow, prow = dp[mi, i], p[mi, i]
            dot = zero
            for j in range(T):
                dot += drow[j] * prow[j]
            for j in range(T):
                drow[j] = prow[j] * (drow[j] - dot) * scale
    return dp


attention_softmax_jit = _jit(_attention_softmax_loop)
softmax_backward_scaled_jit = _jit(_softmax_backward_scaled_loop)


def _rows_per_slice(T, d):
    # batch rows per thread slice: at least ~4M multiply-adds each (2 T x T x d products),
    # or a thread hand-over (tens of microseconds) costs more than it saves
    return max(1, -(-(1 << 22) // (2 * T * T * d)))


def attention_forward_jit(q, k, v, n_heads, causal):
    # The four T x T x D products are batched matmuls (BLAS beats a jitted loop
    # at D = 16..64). The softmax runs in place on the scores, one row at a time
    # while it sits in L1: max, exp (fexp) and sum, then normalise.
    # With splitting on (qz.parallel, opt-in), batch rows go to separate threads, BLAS
    # single-threaded in each: per-head products are too small to split well inside BLAS.
    B, T, d = q.shape
    scale = q.dtype.type(1.0 / np.sqrt(d // n_heads))
    p = np.empty((B, n_heads, T, T), dtype=q.dtype)               # (B, H, T, T)
    o = np.empty((B, T, d), dtype=q.dtype)

    def rows(lo, hi):
        qh, kh, vh = (_split(t[lo:hi], n_heads) for t in (q, k, v))
        s = p[lo:hi]
        np.matmul(qh, kh.swapaxes(-1, -2), out=s)                 # raw scores
        attention_softmax_jit(s.reshape(-1, T, T), scale, causal)  # a view: p is contiguous
        o[lo:hi] = _merge(s @ vh)

    parallel.split_run(rows, B, _rows_per_slice(T, d))
    return o, p


def attention_backward_jit(do, q, k, v, p, n_heads):
    B, T, d = q.shape
    scale = q.dtype.type(1.0 / np.sqrt(d // n_heads))
    dq, dk, dv = (np.empty((B, T, d), dtype=q.dtype) for _ in range(3))

    def rows(lo, hi):
        qh, kh, vh, doh = (_split(t[lo:hi], n_heads) for t in (q, k, v, do))
        pb = p[lo:hi]
        dv[lo:hi] = _merge(pb.swapaxes(-1, -2) @ doh)
        dp = doh @ vh.swapaxes(-1, -2)                             # (b, H, T, T), fresh
        ds = softmax_backward_scaled_jit(dp.reshape(-1, T, T), pb.reshape(-1, T, T), scale).reshape(dp.shape)
        dq[lo:hi] = _merge(ds @ kh)
        dk[lo:hi] = _merge(ds.swapaxes(-1, -2) @ qh)

    parallel.split_run(rows, B, _rows_per_slice(T, d))
    return dq, dk, dv




def attention(q, k, v, n_heads, causal):
    return attention_forward_jit(q, k, v, int(n_heads), bool(causal))


def attention_grad(do, q, k, v, p, n_heads):
    return attention_backward_jit(do, q, k, v, p, int(n_heads))
