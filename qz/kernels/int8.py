"""The int8 linear layer's kernels (docs/spec.md §3.3): the portable NumPy twin and its
exact Numba loops. qz/kernels/int8_simd.py holds the SIMD microkernels; the dispatch between
them is in qz/kernels/__init__.py.
"""
from __future__ import annotations

import numpy as np

from .jit import _jit_exact, nb


# ----------------------------------------------------------------------------
# int8 linear (docs/spec.md §3.3)
#   q   = clip(rint(x / a_scale + zp), 0, 255)                 uint8 codes
#   acc = sum_k q[n, k] * w[k, c] - zp * colsum(w)[c]          int32, exact
#   y   = acc * (a_scale * w_scale[c]) (+ b[c])                float32
# w is int8 in the spec's (in, out) layout. These kernels are compiled WITHOUT
# fast-math: the quantization and the rescale must round exactly as NumPy does,
# so that the int8 runtime equals the fake-quant model bit for bit.
# ----------------------------------------------------------------------------
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


if nb is not None:
    _int8_matmul_inner = int8_matmul_jit
    _quantize_codes = _jit_exact(_quantize_loop)
    int8_linear_jit = _jit_exact(_int8_linear_loop)
    int8_experts_jit = _jit_exact(_int8_experts_loop)
else:  # pragma: no cover
    int8_linear_jit = int8_experts_jit = None

