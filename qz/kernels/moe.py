"""The Numba-jitted twins of qz/moe.py's routing, dispatch, combine: each public name here is the twin of
the same name there, with its signature (qz/kernels/__init__.py says how they are swapped in).

Shapes: N rows, C columns, B batch, H heads, T time, D head dim, d = H * D, E experts,
K chosen per token, R = N * K routed rows, f expert width.
"""
from __future__ import annotations

import numpy as np

from .jit import _jit, prange
from .ops import softmax_jit


# ----------------------------------------------------------------------------
# routing (moe.route, moe.route_grad)
# ----------------------------------------------------------------------------
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
    return route_jit(np.ascontiguousarray(logits), int(k))


def route_grad(dw, dprobs_row, probs, idx, w):
    return route_backward_jit(np.ascontiguousarray(dw), np.ascontiguousarray(dprobs_row), probs, idx, w)


# ----------------------------------------------------------------------------
# MoE dispatch (moe.dispatch): a stable sort of the slots by expert id; with ids in
# 0..E-1 a counting sort, O(N K), one pass to count and one to place
# ----------------------------------------------------------------------------
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
    return dispatch_jit(np.ascontiguousarray(idx, dtype=np.int64), int(E))


# ----------------------------------------------------------------------------
# MoE combine (moe.combine, moe.combine_grad)
# ----------------------------------------------------------------------------
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
    wt = w if w is not None else np.empty((1, 1), dtype=rows.dtype)
    return combine_jit(rows, pos, np.ascontiguousarray(wt), w is not None)


def combine_grad(dout, rows, tok, ws):
    return combine_backward_jit(np.ascontiguousarray(dout), rows, tok, ws)
