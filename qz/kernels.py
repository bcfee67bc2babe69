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

Shapes: N rows, C columns (the last axis), B batch, H heads, T time, D head dim,
d = H * D, E experts, K chosen per token, R = N * K routed rows, f expert width.
"""
from __future__ import annotations

import os
import types as _types

import numpy as np

from . import parallel

__all__ = [
    "NUMBA_AVAILABLE", "USE_NUMBA",
    "softmax", "rmsnorm_forward", "rmsnorm_backward",
    "swiglu_forward", "swiglu_backward", "attention_forward", "attention_backward",
    "route", "route_backward", "combine", "combine_backward",
    "int8_matmul", "int8_linear", "int8_experts", "int8_pack", "int8_pack_vnni", "int8_pack_avx2",
    "VNNI", "AVX2",
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
    """numba.njit(cache=True) when numba is importable, else None.

    The fast-math flags let LLVM reassociate the dot-product and row-sum
    reductions so they vectorise (results differ from NumPy's by rounding
    only); the no-NaN/no-Inf flags are left out on purpose, because the
    causal mask uses -inf and a diverging run must show its NaNs.
    error_model="numpy": 1/0 gives inf as in NumPy instead of raising.
    Outer loops use `prange`: serial unless QZ_NUMBA_PARALLEL=1, because on a
    2-core machine numba's threads and OpenBLAS's threads fight for the cores.
    """
    if _nb is None:
        return None
    return _nb.njit(cache=True, parallel=PARALLEL, fastmath=_FASTMATH, nogil=True, error_model="numpy")(fn)


_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
prange = _nb.prange if _nb is not None else range


# ----------------------------------------------------------------------------
# exp that vectorises. Inside a jitted loop, numba's exp is a call into libm,
# one element at a time: LLVM turns calls into SIMD only with Intel's SVML, which
# the PyPI llvmlite lacks. So the float32 kernels use `fexp`, Cephes' expf
# written out: exp(x) = 2^n exp(r) with n = round(x / ln 2), |r| <= ln(2) / 2,
# exp(r) by a degree-7 polynomial (error about 1 ulp), 2^n built by writing n + 127
# into the exponent bits. Plain arithmetic, compares and a bitcast: LLVM runs
# 16 lanes at once (AVX-512), and an exp no longer needs its own pass over memory.
# float64 keeps libm's exp (the float64 path is for gradient checks, not speed).
# Below -86.5, exp(x) < 3e-38 (near the smallest normal float) and fexp gives 0.
# ----------------------------------------------------------------------------
def fexp(x):
    """exp(x); in jitted code, the vectorisable version above for float32."""
    return np.exp(x)


if _nb is not None:
    from llvmlite import ir as _llir
    from numba.extending import intrinsic as _nb_intrinsic
    from numba.extending import overload as _nb_overload

    @_nb_intrinsic
    def _pow2f(typingctx, n):
        """2.0 ** n as float32 for an integer n in -126..127: n + 127 in the exponent bits."""
        def codegen(context, builder, signature, args):
            i32 = _llir.IntType(32)
            e = builder.add(builder.trunc(args[0], i32), _llir.Constant(i32, 127))
            return builder.bitcast(builder.shl(e, _llir.Constant(i32, 23)), _llir.FloatType())
        return _nb.types.float32(n), codegen

    @_nb_overload(fexp, jit_options={"fastmath": {"contract"}})
    def _fexp_overload(x):
        if x != _nb.types.float32:
            return lambda x: np.exp(x)

        def expf(x):
            lo, hi = np.float32(-86.5), np.float32(88.72283)   # n - 1 stays in -126..127
            xc = x if x > lo else lo                                  # NaN also lands here...
            xc = xc if xc < hi else hi
            n = np.floor(xc * np.float32(1.44269504) + np.float32(0.5))
            r = (xc - n * np.float32(0.693359375)) + n * np.float32(2.12194440e-4)  # ln 2 in two parts
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * (r * r) + r + np.float32(1.0)
            y = (p * np.float32(2.0)) * _pow2f(np.int32(n) - 1)       # n <= 128: 2 * 2^(n-1); no subnormal step
            y = y if x > lo else np.float32(0.0)
            y = y if x <= hi else np.float32(np.inf)
            return y if x == x else x                                 # ...and leaves as NaN
        return expf


# ----------------------------------------------------------------------------
# softmax over the last axis
# ----------------------------------------------------------------------------
def softmax_ref(x):
    # x: (N, C) -> (N, C); subtract the row max so exp never overflows
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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
# SwiGLU's elementwise part: m = silu(a) * b, silu(a) = a * sigmoid(a), with
# a = u @ w1 and b = u @ w3 in two arrays of their own (R, f). Kept apart, each
# is one long contiguous stream: side by side in one (R, 2f) array, the same
# pass ran about half as fast (the memory streams restart at every row). The
# backward recomputes the sigmoid from a instead of caching it: an exp costs
# less than writing and reading back an (R, f) array, and inference never
# needs it. Constants are made in the arrays' dtype (`one`): a bare 1.0 is a
# float64 in numba and turns float32 arithmetic into float64.
# ----------------------------------------------------------------------------
def sigmoid_ref(a):
    # 1 / (1 + exp(-a)): for a << 0, exp overflows to inf and the result is the
    # correct 0, so only the overflow warning needs silencing
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


def swiglu_forward_ref(a, b):
    # a, b: (R, f) -> m (R, f)
    return a * sigmoid_ref(a) * b


def swiglu_backward_ref(dm, a, b):
    # dm: (R, f) -> da, db (R, f);  d silu(a)/da = sig * (1 + a * (1 - sig))
    sig = sigmoid_ref(a)
    return dm * b * sig * (1.0 + a * (1.0 - sig)), dm * a * sig


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
    parallel.split_run(lambda lo, hi: swiglu_backward_loop_jit(dm[lo:hi], a[lo:hi], b[lo:hi], da[lo:hi], db[lo:hi]),
                       n, _rows_per_elementwise_slice(f))
    return da, db


def swiglu_forward(a, b):
    if USE_NUMBA:
        return swiglu_forward_jit(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return swiglu_forward_ref(a, b)


def swiglu_backward(dm, a, b):
    if USE_NUMBA:
        return swiglu_backward_jit(np.ascontiguousarray(dm), np.ascontiguousarray(a), np.ascontiguousarray(b))
    return swiglu_backward_ref(dm, a, b)


# ----------------------------------------------------------------------------
# Attention core on (B, T, d) arrays, head h in columns h*D .. h*D + D - 1:
# o = softmax(q k^T / sqrt(D) [+ causal mask]) v per (batch, head)
# ----------------------------------------------------------------------------
def _split(x, H):
    # (B, T, d) -> (B, H, T, D)
    B, T, d = x.shape
    return x.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)


def _merge(x):
    # (B, H, T, D) -> (B, T, d)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def attention_forward_ref(q, k, v, n_heads, causal):
    # q, k, v: (B, T, d) -> o (B, T, d), p (B, H, T, T)
    qh, kh, vh = _split(q, n_heads), _split(k, n_heads), _split(v, n_heads)
    T, D = qh.shape[-2], qh.shape[-1]
    s = (qh @ kh.swapaxes(-1, -2)) * q.dtype.type(1.0 / np.sqrt(D))   # (B, H, T, T)
    if causal:
        s = np.where(np.tri(T, dtype=bool), s, -np.inf)               # key j <= query i
    p = softmax_ref(s.reshape(-1, T)).reshape(s.shape)
    return _merge(p @ vh), p


def attention_backward_ref(do, q, k, v, p, n_heads):
    # dv = p^T do; dp = do v^T; ds = p * (dp - rowsum(dp * p)); dq = ds k; dk = ds^T q
    qh, kh, vh, doh = (_split(t, n_heads) for t in (q, k, v, do))
    scale = q.dtype.type(1.0 / np.sqrt(qh.shape[-1]))
    dv = p.swapaxes(-1, -2) @ doh
    dp = doh @ vh.swapaxes(-1, -2)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))           # masked p = 0 => ds = 0
    dq = (ds @ kh) * scale
    dk = (ds.swapaxes(-1, -2) @ qh) * scale
    return _merge(dq), _merge(dk), _merge(dv)


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


def attention_forward(q, k, v, n_heads, causal):
    if USE_NUMBA:
        return attention_forward_jit(q, k, v, int(n_heads), bool(causal))
    return attention_forward_ref(q, k, v, n_heads, causal)


def attention_backward(do, q, k, v, p, n_heads):
    if USE_NUMBA:
        return attention_backward_jit(do, q, k, v, p, int(n_heads))
    return attention_backward_ref(do, q, k, v, p, n_heads)


# ----------------------------------------------------------------------------
# Routing: softmax over experts, top-k (ties to the lower index), renormalise
# ----------------------------------------------------------------------------
def topk_indices_ref(probs, k):
    # probs: (N, E) -> idx (N, k), best first. A stable sort of -probs keeps
    # equal values in index order, which is exactly docs/spec.md §2.3's tie rule.
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k].astype(np.int64)


def route_ref(logits, k):
    # logits: (N, E) -> probs (N, E), idx (N, k), w (N, k) with rows of w summing to 1
    probs = softmax_ref(logits)
    idx = topk_indices_ref(probs, k)
    sel = np.take_along_axis(probs, idx, axis=1)
    return probs, idx, sel / sel.sum(axis=1, keepdims=True)


def route_backward_ref(dw, dprobs_row, probs, idx, w):
    """dw: (N, k) -> dlogits (N, E). dprobs_row: (E,) added to every row's dprobs (the aux loss).

    renormalisation  w_j = p_j / S, S = sum_i p_i  =>  dp_j = (dw_j - sum_i dw_i w_i) / S
    top-k gather     dp_j goes back to column idx_j; the other columns get only dprobs_row
    softmax          dz = p * (dp - sum_e dp_e p_e)
    """
    N = probs.shape[0]
    S = np.take_along_axis(probs, idx, axis=1).sum(axis=1, keepdims=True)
    dsel = (dw - np.sum(dw * w, axis=1, keepdims=True)) / S
    dp = np.tile(dprobs_row, (N, 1)).astype(probs.dtype)
    dp[np.arange(N)[:, None], idx] += dsel      # indices within a row are distinct
    return probs * (dp - np.sum(dp * probs, axis=1, keepdims=True))


def _route_loop(logits, k):
    n, e = logits.shape
    probs = softmax_jit(logits)
    idx = np.empty((n, k), dtype=np.int64)
    w = np.empty((n, k), dtype=logits.dtype)
    for i in range(n):
        tot = 0.0
        for j in range(k):
            best = -1
            for c in range(e):  # strict '>' keeps the lower index on a tie
                if best >= 0 and not probs[i, c] > probs[i, best]:
                    continue
                seen = False
                for jj in range(j):
                    if idx[i, jj] == c:
                        seen = True
                if not seen:
                    best = c
            idx[i, j] = best
            w[i, j] = probs[i, best]
            tot += probs[i, best]
        for j in range(k):
            w[i, j] /= tot
    return probs, idx, w


def _route_backward_loop(dw, dprobs_row, probs, idx, w):
    n, e = probs.shape
    k = idx.shape[1]
    dlogits = np.empty_like(probs)
    dp = np.empty(e, dtype=probs.dtype)
    for i in range(n):
        S = 0.0
        wdot = 0.0
        for j in range(k):
            S += probs[i, idx[i, j]]
            wdot += dw[i, j] * w[i, j]
        for c in range(e):
            dp[c] = dprobs_row[c]
        for j in range(k):
            dp[idx[i, j]] += (dw[i, j] - wdot) / S
        pdot = 0.0
        for c in range(e):
            pdot += dp[c] * probs[i, c]
        for c in range(e):
            dlogits[i, c] = probs[i, c] * (dp[c] - pdot)
    return dlogits


route_jit = _jit(_route_loop)
route_backward_jit = _jit(_route_backward_loop)


def route(logits, k):
    if USE_NUMBA:
        return route_jit(np.ascontiguousarray(logits), int(k))
    return route_ref(logits, k)


def route_backward(dw, dprobs_row, probs, idx, w):
    if USE_NUMBA:
        return route_backward_jit(np.ascontiguousarray(dw), np.ascontiguousarray(dprobs_row), probs, idx, w)
    return route_backward_ref(dw, dprobs_row, probs, idx, w)


# ----------------------------------------------------------------------------
# MoE dispatch: group the N*K (token, slot) pairs by expert. A stable sort of
# the slots by expert id; with ids in 0..E-1 that is a counting sort, O(N K),
# in one pass to count and one to place (the NumPy twin needs seven calls).
# ----------------------------------------------------------------------------
def dispatch_ref(idx, E):
    # idx: (N, K) expert ids -> order (R,), bounds (E+1,), tok (R,), pos (N, K)
    N, K = idx.shape
    slots = idx.reshape(-1)                                       # slot n*K + j -> expert
    order = np.argsort(slots, kind="stable")                      # (R,) rows grouped by expert
    bounds = np.concatenate([[0], np.cumsum(np.bincount(slots, minlength=E))])
    tok = order // K                                              # (R,) token of each row
    pos = np.empty_like(order)
    pos[order] = np.arange(N * K)                                 # row of each (token, slot)
    return order, bounds, tok, pos.reshape(N, K)


def _dispatch_loop(idx, E):
    N, K = idx.shape
    bounds = np.zeros(E + 1, dtype=np.int64)
    for n in range(N):                          # count: expert e's block ends at bounds[e + 1]
        for j in range(K):
            bounds[idx[n, j] + 1] += 1
    for e in range(E):
        bounds[e + 1] += bounds[e]
    nxt = bounds[:E].copy()                     # next free row of each expert's block
    order = np.empty(N * K, dtype=np.int64)
    tok = np.empty(N * K, dtype=np.int64)
    pos = np.empty((N, K), dtype=np.int64)
    for n in range(N):                          # place, in slot order: a stable sort
        for j in range(K):
            e = idx[n, j]
            r = nxt[e]
            nxt[e] = r + 1
            order[r] = n * K + j
            tok[r] = n
            pos[n, j] = r
    return order, bounds, tok, pos


dispatch_jit = _jit(_dispatch_loop)


def dispatch(idx, E):
    if USE_NUMBA:
        return dispatch_jit(np.ascontiguousarray(idx, dtype=np.int64), int(E))
    return dispatch_ref(idx, E)


# ----------------------------------------------------------------------------
# MoE combine: the routed rows are stored grouped by expert; pos[n, j] is the
# row holding token n's j-th choice, tok[r] the token of row r.
# ----------------------------------------------------------------------------
def combine_ref(rows, pos, w):
    # rows: (R, c), pos: (N, K), w: (N, K) or None (plain sum) -> (N, c)
    g = rows[pos]                                                    # (N, K, c)
    return g.sum(axis=1) if w is None else np.sum(w[:, :, None] * g, axis=1)


def combine_backward_ref(dout, rows, tok, ws):
    # dout: (N, c), rows: (R, c), tok/ws: (R,) -> drows (R, c), dws (R,)
    g = dout[tok]                                                    # (R, c) upstream per row
    return g * ws[:, None], np.sum(g * rows, axis=1)


def _combine_loop(rows, pos, w, weighted):
    n, K = pos.shape
    c = rows.shape[1]
    out = np.zeros((n, c), dtype=rows.dtype)
    one = rows.dtype.type(1.0)                  # not 1.0: a float64 weight makes the sum float64
    for i in prange(n):
        for j in range(K):
            r = pos[i, j]
            wij = w[i, j] if weighted else one
            for col in range(c):
                out[i, col] += wij * rows[r, col]
    return out


def _combine_backward_loop(dout, rows, tok, ws):
    R, c = rows.shape
    drows = np.empty_like(rows)
    dws = np.empty(R, dtype=rows.dtype)
    zero = rows.dtype.type(0.0)
    for r in prange(R):
        t = tok[r]
        s = zero
        for col in range(c):
            g = dout[t, col]
            drows[r, col] = ws[r] * g
            s += g * rows[r, col]
        dws[r] = s
    return drows, dws


combine_jit = _jit(_combine_loop)
combine_backward_jit = _jit(_combine_backward_loop)


def combine(rows, pos, w=None):
    if USE_NUMBA:
        wt = w if w is not None else np.empty((1, 1), dtype=rows.dtype)
        return combine_jit(rows, pos, np.ascontiguousarray(wt), w is not None)
    return combine_ref(rows, pos, w)


def combine_backward(dout, rows, tok, ws):
    if USE_NUMBA:
        return combine_backward_jit(np.ascontiguousarray(dout), rows, tok, ws)
    return combine_backward_ref(dout, rows, tok, ws)


# ----------------------------------------------------------------------------
# int8 linear (docs/spec.md §3.3)
#   q   = clip(rint(x / a_scale + zp), 0, 255)                 uint8 codes
#   acc = sum_k q[n, k] * w[k, c] - zp * colsum(w)[c]          int32, exact
#   y   = acc * (a_scale * w_scale[c]) (+ b[c])                float32
# w is int8 in the spec's (in, out) layout. These kernels are compiled WITHOUT
# fast-math: the quantization and the rescale must round exactly as NumPy does,
# so that the int8 runtime equals the fake-quant model bit for bit.
# ----------------------------------------------------------------------------
def _jit_exact(fn):
    """numba.njit(cache=True) without fast-math: IEEE rounding, no FMA contraction."""
    if _nb is None:
        return None
    return _nb.njit(cache=True, nogil=True, error_model="numpy")(fn)


def int8_matmul_ref(q, w, colsum, zp):
    # (N, K) u8, (K, C) s8 -> (N, C) int32; exact integer arithmetic.
    # NumPy has no BLAS for integers, so the twin multiplies in float64: every
    # product and partial sum is an integer below 2**53, hence exact, and dgemm is
    # ~50x faster than NumPy's integer matmul loop.
    acc = (q.astype(np.float64) @ w.astype(np.float64)).astype(np.int32)
    return acc - np.int32(zp) * colsum.astype(np.int32)[None, :]


def _int8_matmul_loop(q, w, colsum, zp):
    # "axpy" order: for each input k, add q[n, k] * (row k of w) to a row of int32
    # accumulators; the inner loop runs over contiguous output channels, so LLVM
    # vectorises it (widen int8 -> int32, vpmulld, vpaddd). Four activation rows
    # share each weight row load. (A dot-product order, one output at a time, needs
    # a horizontal sum per output and measured 2x slower at these sizes.)
    n, k = q.shape
    c = w.shape[1]
    out = np.empty((n, c), dtype=np.int32)
    acc = np.empty((4, c), dtype=np.int32)
    for i0 in range(0, n, 4):
        m = min(4, n - i0)
        for r in range(4):
            for j in range(c):
                acc[r, j] = -np.int32(zp) * colsum[j]
        if m == 4:
            for t in range(k):
                q0, q1 = np.int32(q[i0, t]), np.int32(q[i0 + 1, t])
                q2, q3 = np.int32(q[i0 + 2, t]), np.int32(q[i0 + 3, t])
                for j in range(c):
                    wv = np.int32(w[t, j])
                    acc[0, j] += q0 * wv
                    acc[1, j] += q1 * wv
                    acc[2, j] += q2 * wv
                    acc[3, j] += q3 * wv
        else:
            for r in range(m):
                for t in range(k):
                    qt = np.int32(q[i0 + r, t])
                    for j in range(c):
                        acc[r, j] += qt * np.int32(w[t, j])
        for r in range(m):
            for j in range(c):
                out[i0 + r, j] = acc[r, j]
    return out


int8_matmul_jit = _jit_exact(_int8_matmul_loop)


def quantize_act_ref(x, a_scale, zp):
    # x: (N, K) float32 -> uint8 codes
    return np.clip(np.rint(x / np.float32(a_scale) + np.float32(zp)), 0, 255).astype(np.uint8)


def int8_linear_ref(x, w, colsum, w_scale, a_scale, zp, bias=None):
    # x: (N, K) float32, w: (K, C) int8 -> (N, C) float32
    acc = int8_matmul_ref(quantize_act_ref(x, a_scale, zp), w, colsum, zp)
    y = acc.astype(np.float32) * (np.float32(a_scale) * w_scale)
    return y if bias is None else y + bias


def _quantize_loop(x, a_scale, zp):
    # x: (N, K) float32 -> uint8 codes, rounded exactly as quantize_act_ref (no fast-math)
    n, k = x.shape
    q = np.empty((n, k), dtype=np.uint8)
    for i in range(n):
        for t in range(k):
            r = np.rint(x[i, t] / a_scale + zp)
            q[i, t] = np.uint8(min(max(r, np.float32(0.0)), np.float32(255.0)))
    return q


def _int8_linear_loop(x, w, colsum, w_scale, a_scale, zp, bias, has_bias):
    # quantize, accumulate and rescale in one pass: no uint8 or int32 temporaries
    # cross into Python. Same roundings as int8_linear_ref, in the same order.
    n, k = x.shape
    q = _quantize_codes(x, a_scale, zp)
    acc = _int8_matmul_inner(q, w, colsum, zp)
    c = w.shape[1]
    y = np.empty((n, c), dtype=np.float32)
    for j in range(c):
        v = a_scale * w_scale[j]
        for i in range(n):
            yv = np.float32(acc[i, j]) * v
            y[i, j] = yv + bias[j] if has_bias else yv
    return y


def _int8_experts_loop(x, tok, bounds, w, colsum, w_scale, a_scale, zp):
    # x: (N, K) float32 token rows; tok: (R,) token of each routed row, grouped by
    # expert (expert e owns rows bounds[e]:bounds[e+1]); w: (E, K, C) int8
    # -> (R, C) float32. Each token is quantized once, however many experts read it.
    n, k = x.shape
    q = _quantize_codes(x, a_scale, zp)
    c = w.shape[2]
    y = np.empty((tok.shape[0], c), dtype=np.float32)
    for e in range(w.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        if lo == hi:
            continue                                   # no tokens for this expert
        rows = np.empty((hi - lo, k), dtype=np.uint8)
        for r in range(hi - lo):
            rows[r] = q[tok[lo + r]]
        acc = _int8_matmul_inner(rows, w[e], colsum[e], zp)
        for j in range(c):
            v = a_scale * w_scale[e, j]
            for r in range(hi - lo):
                y[lo + r, j] = np.float32(acc[r, j]) * v
    return y


def int8_experts_ref(x, tok, bounds, w, colsum, w_scale, a_scale, zp):
    q = quantize_act_ref(x, a_scale, zp)[tok]
    y = np.empty((len(tok), w.shape[2]), np.float32)
    for e in range(w.shape[0]):
        lo, hi = bounds[e], bounds[e + 1]
        if lo < hi:
            acc = int8_matmul_ref(q[lo:hi], w[e], colsum[e], zp)
            y[lo:hi] = acc.astype(np.float32) * (np.float32(a_scale) * w_scale[e])
    return y


if _nb is not None:
    _int8_matmul_inner = int8_matmul_jit
    _quantize_codes = _jit_exact(_quantize_loop)
    int8_linear_jit = _jit_exact(_int8_linear_loop)
    int8_experts_jit = _jit_exact(_int8_experts_loop)
else:  # pragma: no cover
    int8_linear_jit = int8_experts_jit = None


# ----------------------------------------------------------------------------
# SIMD microkernels for the int8 linear layer. LLVM does not find good code for
# it from the loops above (it widens to int32 and uses vpmulld, or a dot-product
# order, and keeps the accumulators in memory), so the inner tile is written as
# LLVM IR through a numba intrinsic: 4 activation rows x NV vectors of output
# channels, the accumulators in registers (entry-block allocas that LLVM
# promotes), over the whole input. Weights are repacked once, at load, so that
# one vector load reads G consecutive inputs of each of its lanes' channels:
#
#   VNNI (AVX-512 VNNI): vpdpbusd, 64 u8 x s8 products summed into 16 int32
#        lanes per instruction. G = 4: weights (K/4, C, 4), codes as 4 bytes.
#   AVX2 (no VNNI): vpmaddwd, 16 i16 x i16 products summed in pairs into 8 int32
#        lanes. G = 2: weights (K/2, C, 2) int8, sign-extended to i16 in the
#        register (vpmovsxbw), so memory stays one byte a weight; codes as two
#        uint16 in an int32, broadcast. A code (0..255) times a weight (-128..127)
#        fits in i16 x i16, and a pair of products in int32: no saturation
#        (vpmaddubsw, the u8 x s8 instruction, saturates a pair at 32767).
#
# Both add integers, so they equal the loops above bit for bit. Used where the
# CPU has the instructions; QZ_INT8_VNNI=0 / QZ_INT8_AVX2=0 turn them off.
# ----------------------------------------------------------------------------
VNNI_W = 32                                   # output channels per VNNI tile (2 x 16 lanes)
AVX2_W = 16                                   # output channels per AVX2 tile (2 x 8 lanes)


def _host_features():
    try:
        import llvmlite.binding as llvm
        return llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - an llvmlite without the query: stay on the portable loop
        return {}


def _cpu_has_vnni():
    if _nb is None or os.environ.get("QZ_INT8_VNNI", "1") == "0":
        return False
    feats = _host_features()
    return bool(feats.get("avx512vnni") and feats.get("avx512bw") and feats.get("avx512f"))


def _cpu_has_avx2():
    if _nb is None or os.environ.get("QZ_INT8_AVX2", "1") == "0":
        return False
    return bool(_host_features().get("avx2"))


VNNI = USE_NUMBA and _cpu_has_vnni()
AVX2 = USE_NUMBA and not VNNI and _cpu_has_avx2()   # the VNNI kernel wins where both run


def _pack_groups(w, g, width):
    # w (..., K, C) int8 -> (..., K/g, Cp, g) flattened; K padded to a multiple of g and C to one
    # of width, with zero weights (they add nothing)
    *lead, k, c = w.shape
    kg, cp = (k + g - 1) // g, (c + width - 1) // width * width
    wp = np.zeros((*lead, kg * g, cp), np.int8)
    wp[..., :k, :c] = w
    wp = wp.reshape(*lead, kg, g, cp).swapaxes(-1, -2)           # (..., K/g, Cp, g)
    return np.ascontiguousarray(wp).reshape(*lead, -1)


def int8_pack_vnni(w):
    """w (..., K, C) int8 -> (..., K4 * Cp * 4) int8 in vpdpbusd order (K4 = ceil(K / 4), Cp: C to 32s)."""
    return _pack_groups(w, 4, VNNI_W)


def int8_pack_avx2(w):
    """w (..., K, C) int8 -> (..., K2 * Cp * 2) int8 in vpmaddwd order (K2 = ceil(K / 2), Cp: C to 16s)."""
    return _pack_groups(w, 2, AVX2_W)


def int8_pack(w):
    """The weights in the order this CPU's int8 microkernel reads, or None (the portable loop)."""
    if VNNI:
        return int8_pack_vnni(w)
    if AVX2:
        return int8_pack_avx2(w)
    return None


if VNNI or AVX2:
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cg
    from numba.extending import intrinsic as _intrinsic

    if VNNI:   # group of 4 codes, 16 int32 lanes, 2 vectors a tile
        _G, _LANES, _MADD = 4, 16, "llvm.x86.avx512.vpdpbusd.512"
        _TILE_W = VNNI_W
    else:      # group of 2 codes, 8 int32 lanes, 2 vectors a tile
        _G, _LANES, _MADD = 2, 8, "llvm.x86.avx2.pmadd.wd"
        _TILE_W = AVX2_W
    _NV = _TILE_W // _LANES

    class _Ops:
        """The IR steps both kernels below share, for this CPU's instruction."""

        def __init__(self, builder):
            self.b = builder
            self.acc_t = _ir.VectorType(_ir.IntType(32), _LANES)               # int32 accumulators
            # operands: vpdpbusd reads 4 bytes a lane as i32 lanes; vpmaddwd reads <16 x i16>
            self.op_t = self.acc_t if _G == 4 else _ir.VectorType(_ir.IntType(16), 2 * _LANES)
            args = [self.acc_t] * 3 if _G == 4 else [self.op_t] * 2
            self.fn = _cg.get_or_insert_function(builder.module, _ir.FunctionType(self.acc_t, args), _MADD)
            self.undef = _ir.Constant(self.acc_t, _ir.Undefined)
            self.zeros = _ir.Constant(self.acc_t, [0] * _LANES)

        def codes(self, ptr):
            """The group of codes at ptr (one int32) in every lane."""
            b = self.b
            one = b.insert_element(self.undef, b.load(ptr, align=4), _ir.Constant(_ir.IntType(32), 0))
            return b.shuffle_vector(one, self.undef, self.zeros)

        def weights(self, ptr):
            """One vector of packed weights at byte pointer ptr (AVX2: sign-extended to i16, vpmovsxbw)."""
            b = self.b
            if _G == 4:
                return b.load(b.bitcast(ptr, self.acc_t.as_pointer()), align=1)
            raw = b.load(b.bitcast(ptr, _ir.VectorType(_ir.IntType(8), 2 * _LANES).as_pointer()), align=1)
            return b.sext(raw, self.op_t)

        def madd(self, acc, a, w):
            """acc + each lane's sum of code x weight products."""
            if _G == 4:
                return self.b.call(self.fn, [acc, a, w])                        # vpdpbusd adds into acc
            return self.b.add(acc, self.b.call(self.fn, [self.b.bitcast(a, self.op_t), w]))

    def _tile_codegen(context, builder, signature, args):
        """One tile: out[ooff + r * ldo + LANES v + l] (int32) = sum over t < kg of the products of
        row r0 + r's code group t and lane l of vector v's weights, r < 4, v < NV. q32: int32 view
        of the codes, one group an element (ldq a row); w: packed int8, the tile's group t at
        woff + t * wstride, vector v 4 LANES bytes further (G bytes a lane)."""
        qv, r0v, ldqv, wv, woffv, wsv, kgv, outv, ooffv, ldov = args
        qa = context.make_array(signature.args[0])(context, builder, qv)
        wa = context.make_array(signature.args[3])(context, builder, wv)
        oa = context.make_array(signature.args[7])(context, builder, outv)
        i64 = _ir.IntType(64)
        ops = _Ops(builder)
        accs = []
        for _ in range(4 * _NV):
            a = _cg.alloca_once(builder, ops.acc_t)                # entry-block alloca: promoted to a register
            builder.store(_ir.Constant(ops.acc_t, None), a)
            accs.append(a)
        with _cg.for_range(builder, kgv) as loop:
            t = loop.index
            base = builder.add(woffv, builder.mul(t, wsv))
            wvec = [ops.weights(builder.gep(wa.data, [builder.add(base, _ir.Constant(i64, _LANES * _G * v))]))
                    for v in range(_NV)]
            for r in range(4):
                a = ops.codes(builder.gep(qa.data, [builder.add(builder.mul(builder.add(r0v, _ir.Constant(i64, r)),
                                                                            ldqv), t)]))
                for v in range(_NV):
                    acc = accs[r * _NV + v]
                    builder.store(ops.madd(builder.load(acc), a, wvec[v]), acc)
        for r in range(4):
            for v in range(_NV):
                at = builder.add(builder.add(ooffv, builder.mul(_ir.Constant(i64, r), ldov)), _ir.Constant(i64, _LANES * v))
                op = builder.gep(oa.data, [at])
                builder.store(builder.load(accs[r * _NV + v]), builder.bitcast(op, ops.acc_t.as_pointer()), align=4)
        return context.get_dummy_value()

    def _row_codegen(context, builder, signature, args):
        """One row in the other loop order: for each input group t, for each output vector v,
        out[ooff + LANES v + l] += the products of row r's code group t and lane l's weights.
        The accumulators live in `out` (L1) and the weights stream in memory order, once: with
        one row there is nothing to share a weight load with, and a padded 4-row tile did 4x the
        work down 2 KB strides (a decode step ran 1.5x slower than the portable loop)."""
        qv, rv, ldqv, wv, kgv, cpv, outv, ooffv = args
        qa = context.make_array(signature.args[0])(context, builder, qv)
        wa = context.make_array(signature.args[3])(context, builder, wv)
        oa = context.make_array(signature.args[6])(context, builder, outv)
        i64 = _ir.IntType(64)
        ops = _Ops(builder)
        nvec = builder.udiv(cpv, _ir.Constant(i64, _LANES))
        with _cg.for_range(builder, kgv) as outer:
            t = outer.index
            a = ops.codes(builder.gep(qa.data, [builder.add(builder.mul(rv, ldqv), t)]))
            base = builder.mul(builder.mul(t, cpv), _ir.Constant(i64, _G))
            with _cg.for_range(builder, nvec) as inner:
                v = inner.index
                w = ops.weights(builder.gep(wa.data, [builder.add(base, builder.mul(v, _ir.Constant(i64, _LANES * _G)))]))
                op = builder.gep(oa.data, [builder.add(ooffv, builder.mul(v, _ir.Constant(i64, _LANES)))])
                optr = builder.bitcast(op, ops.acc_t.as_pointer())
                builder.store(ops.madd(builder.load(optr, align=4), a, w), optr, align=4)
        return context.get_dummy_value()

    @_intrinsic
    def _simd_tile(typingctx, q32, r0, ldq, w, woff, wstride, kg, out, ooff, ldo):
        return _nb.types.void(q32, r0, ldq, w, woff, wstride, kg, out, ooff, ldo), _tile_codegen

    @_intrinsic
    def _simd_row(typingctx, q32, r, ldq, w, kg, cp, out, ooff):
        # one row, all Cp outputs, added into out[ooff:ooff + Cp] (see _row_codegen)
        return _nb.types.void(q32, r, ldq, w, kg, cp, out, ooff), _row_codegen

    @_nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _quantize_padded(x, rows, a_scale, zp, kg):
        # x rows `rows` -> uint8 codes, 4 rows per tile and K padded to kg groups with zero codes
        # (x zero weights = 0); as int32 groups: 4 codes (VNNI) or 2 codes widened to uint16 (AVX2)
        n, k = rows.shape[0], x.shape[1]
        q = np.zeros(((n + 3) // 4 * 4, kg * _G), dtype=np.uint8)
        for i in range(n):
            src = rows[i]
            for t in range(k):
                r = np.rint(x[src, t] / a_scale + zp)
                q[i, t] = np.uint8(min(max(r, np.float32(0.0)), np.float32(255.0)))
        if _G == 4:
            return q.reshape(-1).view(np.int32)
        return q.astype(np.uint16).reshape(-1).view(np.int32)

    @_nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _simd_rescale(q32, n, w, kg, colsum, w_scale, a_scale, zp, bias, has_bias, y, y0):
        # y[y0 + i, :] = (acc[i, :] - zp colsum) * (a_scale * w_scale) (+ bias), tile by tile
        c = y.shape[1]
        cp = w.shape[0] // (kg * _G)
        rows = q32.shape[0] // kg
        acc = np.empty((rows, cp), dtype=np.int32)                # tiles land here, then one rescale pass
        full = n // 4 * 4
        for i0 in range(0, full, 4):
            for j0 in range(0, cp, _TILE_W):
                _simd_tile(q32, np.int64(i0), np.int64(kg), w, np.int64(j0 * _G), np.int64(cp * _G), np.int64(kg),
                           acc.reshape(-1), np.int64(i0 * cp + j0), np.int64(cp))
        for i in range(full, n):                                  # the 1-3 rows left, one at a time
            acc[i, :] = 0
            _simd_row(q32, np.int64(i), np.int64(kg), w, np.int64(kg), np.int64(cp), acc.reshape(-1), np.int64(i * cp))
        izp = np.int32(zp)
        for i in range(n):
            for j in range(c):
                yv = np.float32(acc[i, j] - izp * colsum[j]) * (a_scale * w_scale[j])
                y[y0 + i, j] = yv + bias[j] if has_bias else yv

    def _as_path(fn):
        """fn under a name of this path's own (int8_linear_avx2, ...), then jitted and cached.
        Numba names a cache file after the function and keys it by the CPU, not by the globals
        the code froze: without this, QZ_INT8_VNNI=0 on a VNNI CPU would load the VNNI build."""
        name = fn.__name__.replace("simd", "vnni" if VNNI else "avx2")
        g = _types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        g.__qualname__ = name
        return _nb.njit(cache=True, nogil=True, error_model="numpy")(g)

    def int8_linear_simd(x, wp, colsum, w_scale, a_scale, zp, bias, has_bias):
        n, k = x.shape
        kg = (k + _G - 1) // _G
        y = np.empty((n, colsum.shape[0]), dtype=np.float32)
        q32 = _quantize_padded(x, np.arange(n), a_scale, zp, kg)
        _simd_rescale(q32, n, wp, kg, colsum, w_scale, a_scale, zp, bias, has_bias, y, 0)
        return y

    def int8_experts_simd(x, tok, bounds, wp, colsum, w_scale, a_scale, zp):
        kg = (x.shape[1] + _G - 1) // _G
        y = np.empty((tok.shape[0], colsum.shape[1]), dtype=np.float32)
        for e in range(wp.shape[0]):
            lo, hi = bounds[e], bounds[e + 1]
            if lo == hi:
                continue
            q32 = _quantize_padded(x, tok[lo:hi], a_scale, zp, kg)   # this expert's rows, gathered
            _simd_rescale(q32, hi - lo, wp[e], kg, colsum[e], w_scale[e], a_scale, zp, w_scale[e], False, y, lo)
        return y

    int8_linear_simd, int8_experts_simd = _as_path(int8_linear_simd), _as_path(int8_experts_simd)
else:
    int8_linear_simd = int8_experts_simd = None


def int8_matmul(q, w, colsum, zp):
    if USE_NUMBA:
        return int8_matmul_jit(np.ascontiguousarray(q), w, colsum, np.int32(zp))
    return int8_matmul_ref(q, w, colsum, zp)


def int8_linear(x, w, colsum, w_scale, a_scale, zp, bias=None, w4=None):
    """y = int8 linear layer of x (N, K) float32 with w (K, C) int8; see the block comment.
    w4: the same weights packed by int8_pack (used where the CPU has VNNI or AVX2)."""
    if USE_NUMBA and (VNNI or AVX2) and w4 is not None:
        b = bias if bias is not None else w_scale
        return int8_linear_simd(np.ascontiguousarray(x, np.float32), w4, colsum, w_scale, np.float32(a_scale),
                                np.float32(zp), b, bias is not None)
    if USE_NUMBA:
        b = bias if bias is not None else w_scale
        return int8_linear_jit(np.ascontiguousarray(x, np.float32), w, colsum, w_scale, np.float32(a_scale),
                               np.float32(zp), b, bias is not None)
    return int8_linear_ref(x, w, colsum, w_scale, a_scale, zp, bias)


def int8_experts(x, tok, bounds, w, colsum, w_scale, a_scale, zp, w4=None):
    """Every expert's int8 linear layer on its routed rows, in one call: -> (R, C) float32."""
    if USE_NUMBA and (VNNI or AVX2) and w4 is not None:
        return int8_experts_simd(np.ascontiguousarray(x, np.float32), tok, bounds, w4, colsum, w_scale,
                                 np.float32(a_scale), np.float32(zp))
    if USE_NUMBA:
        return int8_experts_jit(np.ascontiguousarray(x, np.float32), tok, bounds, w, colsum, w_scale,
                                np.float32(a_scale), np.float32(zp))
    return int8_experts_ref(x, tok, bounds, w, colsum, w_scale, a_scale, zp)
