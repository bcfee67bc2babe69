"""Hot loops: each kernel twice, a NumPy reference and a Numba-jitted twin.

This is the only module that imports numba. Numba is an accelerator, never a
requirement: when it is not installed, or when the environment sets
``QZ_NUMBA=0``, the public functions below run their NumPy reference, and
every result agrees with the jitted path to float tolerance
(``reference_tests/test_kernels.py`` checks each pair at awkward sizes).

The public name ``foo`` dispatches to ``foo_ref`` (NumPy) or ``foo_jit``
(Numba). Kernels keep the dtype they are given (float32 or float64); each jitted
kernel compiles once per dtype and is cached on disk (``cache=True``) so short
runs do not pay the compile time again.

Shapes: N rows, C columns (the last axis), B batch, H heads, T time, D head dim.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = [
    "NUMBA_AVAILABLE", "USE_NUMBA",
    "softmax", "rmsnorm_forward", "rmsnorm_backward",
    "swiglu_forward", "swiglu_backward",
    "attention_forward", "attention_backward", "topk_indices",
]

try:  # numba is optional
    import numba as _nb
    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by the numba-free CI run
    _nb = None
    NUMBA_AVAILABLE = False

# Read once at import: the choice is fixed for the process so a run never mixes
# paths. Tests call the *_ref / *_jit twins directly to compare them.
USE_NUMBA = NUMBA_AVAILABLE and os.environ.get("QZ_NUMBA", "1") != "0"
PARALLEL = os.environ.get("QZ_NUMBA_PARALLEL", "0") == "1"


def _jit(fn):
    """numba.njit(cache=True, parallel=True) when numba is importable, else None.

    fastmath lets LLVM reassociate the dot-product and row-sum reductions so
    they vectorise; results then differ from NumPy's by float rounding only.
    Outer loops use `prange`, which is a plain `range` without numba.
    """
    if _nb is None:
        return None
    return _nb.njit(cache=True, parallel=PARALLEL, fastmath=True, nogil=True)(fn)


prange = _nb.prange if _nb is not None else range


# ----------------------------------------------------------------------------
# softmax over the last axis
# ----------------------------------------------------------------------------
def softmax_ref(x):
    # x: (N, C) -> (N, C); subtract the row max so exp never overflows
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_loop(x):
    n, c = x.shape
    out = np.empty_like(x)
    for i in prange(n):
        m = x[i, 0]
        for j in range(1, c):
            m = max(m, x[i, j])
        s = 0.0
        for j in range(c):
            e = np.exp(x[i, j] - m)
            out[i, j] = e
            s += e
        inv = 1.0 / s
        for j in range(c):
            out[i, j] *= inv
    return out


softmax_jit = _jit(_softmax_loop)


def softmax(x):
    """Softmax over the last axis of a 2-D array."""
    if USE_NUMBA:
        return softmax_jit(np.ascontiguousarray(x))
    return softmax_ref(x)


# ----------------------------------------------------------------------------
# RMSNorm: y = x * rstd * g, rstd = 1 / sqrt(mean(x^2) + eps)
# ----------------------------------------------------------------------------
def rmsnorm_forward_ref(x, g, eps):
    # x: (N, C), g: (C,) -> y (N, C), rstd (N,)
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + eps)
    rstd = rstd.astype(x.dtype, copy=False)
    return x * rstd[:, None] * g, rstd


def rmsnorm_backward_ref(dy, x, g, rstd):
    # xhat = x * rstd; dxhat = dy * g
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))   (the norm couples a row)
    xhat = x * rstd[:, None]
    dg = np.sum(dy * xhat, axis=0)
    dxhat = dy * g
    dx = rstd[:, None] * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, dg


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


def rmsnorm_forward(x, g, eps):
    if USE_NUMBA:
        return rmsnorm_forward_jit(np.ascontiguousarray(x), g, x.dtype.type(eps))
    return rmsnorm_forward_ref(x, g, eps)


def rmsnorm_backward(dy, x, g, rstd):
    if USE_NUMBA:
        return rmsnorm_backward_jit(np.ascontiguousarray(dy), x, g, rstd)
    return rmsnorm_backward_ref(dy, x, g, rstd)


# ----------------------------------------------------------------------------
# SwiGLU's elementwise part: m = silu(a) * b, silu(a) = a * sigmoid(a)
# ----------------------------------------------------------------------------
def _sigmoid_ref(a):
    # 1 / (1 + exp(-a)): for a << 0, exp overflows to inf and the result is the
    # correct 0, so only the overflow warning needs silencing
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


def swiglu_forward_ref(a, b):
    # a, b: (N, f) -> m: (N, f)
    return a * _sigmoid_ref(a) * b


def swiglu_backward_ref(dm, a, b):
    # d silu(a)/da = sig * (1 + a * (1 - sig))
    sig = _sigmoid_ref(a)
    silu = a * sig
    db = dm * silu
    da = dm * b * sig * (1.0 + a * (1.0 - sig))
    return da, db


def _swiglu_forward_loop(a, b):
    n, f = a.shape
    m = np.empty_like(a)
    for i in prange(n):
        for j in range(f):
            x = a[i, j]
            m[i, j] = x / (1.0 + np.exp(-x)) * b[i, j]   # exp -> inf gives the right 0
    return m


def _swiglu_backward_loop(dm, a, b):
    n, f = a.shape
    da = np.empty_like(a)
    db = np.empty_like(a)
    for i in prange(n):
        for j in range(f):
            x = a[i, j]
            s = 1.0 / (1.0 + np.exp(-x))
            db[i, j] = dm[i, j] * x * s
            da[i, j] = dm[i, j] * b[i, j] * s * (1.0 + x * (1.0 - s))
    return da, db


swiglu_forward_jit = _jit(_swiglu_forward_loop)
swiglu_backward_jit = _jit(_swiglu_backward_loop)


def swiglu_forward(a, b):
    if USE_NUMBA:
        return swiglu_forward_jit(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return swiglu_forward_ref(a, b)


def swiglu_backward(dm, a, b):
    if USE_NUMBA:
        return swiglu_backward_jit(np.ascontiguousarray(dm), a, b)
    return swiglu_backward_ref(dm, a, b)


# ----------------------------------------------------------------------------
# Attention core: o = softmax(q k^T * scale [+ causal mask]) v, per (batch, head)
# ----------------------------------------------------------------------------
def attention_forward_ref(q, k, v, causal):
    # q, k, v: (B, H, T, D) -> o (B, H, T, D), p (B, H, T, T)
    T, D = q.shape[-2], q.shape[-1]
    scale = q.dtype.type(1.0 / np.sqrt(D))
    s = (q @ k.swapaxes(-1, -2)) * scale                          # (B, H, T, T)
    if causal:
        s = np.where(np.tri(T, dtype=bool), s, -np.inf)           # key j <= query i
    p = softmax_ref(s.reshape(-1, T)).reshape(s.shape)
    return p @ v, p


def attention_backward_ref(do, q, k, v, p):
    # dv = p^T do; dp = do v^T; ds = p * (dp - rowsum(dp * p)); dq = ds k; dk = ds^T q
    D = q.shape[-1]
    scale = q.dtype.type(1.0 / np.sqrt(D))
    dv = p.swapaxes(-1, -2) @ do
    dp = do @ v.swapaxes(-1, -2)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))       # masked p = 0 => ds = 0
    dq = (ds @ k) * scale
    dk = (ds.swapaxes(-1, -2) @ q) * scale
    return dq, dk, dv


def _attention_forward_loop(q, k, v, causal):
    B, H, T, D = q.shape
    scale = 1.0 / np.sqrt(D)
    o = np.zeros_like(q)
    p = np.zeros((B, H, T, T), dtype=q.dtype)
    for bh in prange(B * H):  # (batch, head) pairs are independent
        b, h = bh // H, bh % H
        for i in range(T):
            jmax = i + 1 if causal else T        # causal: keys 0..i only
            m = -np.inf
            for j in range(jmax):
                s = 0.0
                for c in range(D):
                    s += q[b, h, i, c] * k[b, h, j, c]
                s *= scale
                p[b, h, i, j] = s
                m = max(m, s)
            tot = 0.0
            for j in range(jmax):
                e = np.exp(p[b, h, i, j] - m)
                p[b, h, i, j] = e
                tot += e
            inv = 1.0 / tot
            for j in range(jmax):
                pij = p[b, h, i, j] * inv
                p[b, h, i, j] = pij
                for c in range(D):
                    o[b, h, i, c] += pij * v[b, h, j, c]
    return o, p


def _attention_backward_loop(do, q, k, v, p):
    B, H, T, D = q.shape
    scale = 1.0 / np.sqrt(D)
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        dp = np.empty(T, dtype=np.float64)
        for i in range(T):
            # dp_j = do_i . v_j ; rowdot = sum_j p_ij dp_j
            rowdot = 0.0
            for j in range(T):
                pij = p[b, h, i, j]
                s = 0.0
                for c in range(D):
                    s += do[b, h, i, c] * v[b, h, j, c]
                    dv[b, h, j, c] += pij * do[b, h, i, c]
                dp[j] = s
                rowdot += pij * s
            for j in range(T):
                # masked keys have p = 0, so ds = 0 there
                ds = p[b, h, i, j] * (dp[j] - rowdot) * scale
                for c in range(D):
                    dq[b, h, i, c] += ds * k[b, h, j, c]
                    dk[b, h, j, c] += ds * q[b, h, i, c]
    return dq, dk, dv


attention_forward_jit = _jit(_attention_forward_loop)
attention_backward_jit = _jit(_attention_backward_loop)


def attention_forward(q, k, v, causal):
    if USE_NUMBA:
        return attention_forward_jit(np.ascontiguousarray(q), np.ascontiguousarray(k),
                                     np.ascontiguousarray(v), bool(causal))
    return attention_forward_ref(q, k, v, causal)


def attention_backward(do, q, k, v, p):
    if USE_NUMBA:
        return attention_backward_jit(np.ascontiguousarray(do), np.ascontiguousarray(q),
                                      np.ascontiguousarray(k), np.ascontiguousarray(v), p)
    return attention_backward_ref(do, q, k, v, p)


# ----------------------------------------------------------------------------
# Top-k routing: the k largest entries per row, ties to the lower index
# ----------------------------------------------------------------------------
def topk_indices_ref(probs, k):
    # probs: (N, E) -> idx (N, k), best first. A stable sort of -probs keeps
    # equal values in index order, which is exactly SPEC §2.3's tie rule.
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k].astype(np.int64)


def _topk_loop(probs, k):
    n, e = probs.shape
    idx = np.empty((n, k), dtype=np.int64)
    taken = np.zeros(e, dtype=np.bool_)
    for i in range(n):
        taken[:] = False
        for j in range(k):
            best = -1
            for c in range(e):  # strict '>' keeps the lower index on a tie
                if not taken[c] and (best < 0 or probs[i, c] > probs[i, best]):
                    best = c
            taken[best] = True
            idx[i, j] = best
    return idx


topk_indices_jit = _jit(_topk_loop)


def topk_indices(probs, k):
    if USE_NUMBA:
        return topk_indices_jit(np.ascontiguousarray(probs), int(k))
    return topk_indices_ref(probs, k)
