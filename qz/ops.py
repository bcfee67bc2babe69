"""Forward/backward pairs for the dense ops of Qingzhou-mini (docs/spec.md §2.3).

Every op is two pure functions in the style of llm.c:

    out, cache = op_forward(...)
    grads...   = op_backward(dout, cache)

The cache holds exactly what the backward pass needs; nothing is stored on a
hidden object. ``dfoo`` always means d(loss)/d(foo). The backward functions
return fresh arrays; summing gradients of shared parameters is the model's job.

Shape letters: B batch, T time, d model width, H heads, D = d / H head width,
N = B * T rows, V outputs (vocabulary or classes).
"""
from __future__ import annotations

import numpy as np

from . import kernels

EPS = 1e-5  # RMSNorm epsilon, docs/spec.md §2.3


# ----------------------------------------------------------------------------
# linear: y = x @ W (+ b), weights stored (in, out)
# ----------------------------------------------------------------------------
def matmul(x, w):
    """x (..., in) @ w (in, out) -> (..., out) as ONE 2-D GEMM over all leading axes.

    NumPy runs a 3-D @ 2-D product as one BLAS call per leading index, each too
    small to use both cores well: (32, 49, 64) @ (64, 192) took 972 us that way and
    329 us as a (1568, 64) @ (64, 192) product (PyTorch folds the axes the same way)."""
    if x.ndim == 2:
        return x @ w
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def linear_forward(x, w, b=None):
    # x: (..., in), w: (in, out), b: (out,) -> y: (..., out)
    y = matmul(x, w)
    if b is not None:
        y = y + b
    return y, (x, w, b is not None)


def linear_backward(dy, cache):
    # dx = dy W^T; dW = x^T dy summed over every leading axis; db = sum dy
    x, w, has_b = cache
    dx = matmul(dy, w.T)
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    dw = x2.T @ dy2
    db = dy2.sum(axis=0) if has_b else None
    return dx, dw, db


# ----------------------------------------------------------------------------
# RMSNorm: y = x / sqrt(mean(x^2) + eps) * g
# ----------------------------------------------------------------------------
def rmsnorm_forward(x, g):
    # x: (..., d), g: (d,) -> y: (..., d); cache rstd for the backward pass
    x2 = x.reshape(-1, x.shape[-1])
    y, rstd = kernels.rmsnorm_forward(x2, g, EPS)
    return y.reshape(x.shape), (x2, g, rstd, x.shape)


def rmsnorm_backward(dy, cache):
    x2, g, rstd, shape = cache
    dx, dg = kernels.rmsnorm_backward(dy.reshape(x2.shape), x2, g, rstd)
    return dx.reshape(shape), dg


# ----------------------------------------------------------------------------
# embedding lookup (LM mode): x = table[ids]
# ----------------------------------------------------------------------------
def embedding_forward(ids, table):
    # ids: (B, T) int, table: (V, d) -> x: (B, T, d)
    return table[ids], (ids, table.shape)


def embedding_backward(dx, cache):
    # rows used several times get the sum of their gradients: sort the positions by
    # id, then one reduceat sums each id's run (np.add.at does the same, ~10x slower)
    ids, shape = cache
    ids = ids.reshape(-1)
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    starts = np.flatnonzero(np.r_[True, sids[1:] != sids[:-1]])  # first position of each id
    dtable = np.zeros(shape, dtype=dx.dtype)
    dtable[sids[starts]] = np.add.reduceat(dx.reshape(-1, shape[1])[order], starts, axis=0)
    return dtable


# ----------------------------------------------------------------------------
# multi-head attention core: softmax(q k^T / sqrt(D) [causal]) v, per head
# (the projections wq, wk, wv, wo are linear ops composed by the model)
# ----------------------------------------------------------------------------
def attention_forward(q, k, v, n_heads, causal):
    # q, k, v: (B, T, d) -> o: (B, T, d); head h owns columns h*D .. h*D + D - 1
    o, p = kernels.attention_forward(q, k, v, n_heads, causal)   # p: (B, H, T, T)
    return o, (q, k, v, p, n_heads)


def attention_backward(do, cache):
    q, k, v, p, n_heads = cache
    return kernels.attention_backward(do, q, k, v, p, n_heads)   # dq, dk, dv: (B, T, d)


# ----------------------------------------------------------------------------
# SwiGLU's gating: m = silu(a) * b, with a = u @ w1 and b = u @ w3
# ----------------------------------------------------------------------------
def swiglu_forward(a, b):
    # a, b: (N, f) -> m: (N, f); the backward recomputes sigmoid(a) (kernels.swiglu_forward)
    return kernels.swiglu_forward(a, b), (a, b)


def swiglu_backward(dm, cache):
    # dm: (N, f) -> da, db: (N, f)
    a, b = cache
    return kernels.swiglu_backward(dm, a, b)


# ----------------------------------------------------------------------------
# mean over time (classifier mode)
# ----------------------------------------------------------------------------
def mean_pool_forward(x):
    # x: (B, T, d) -> (B, d)
    return x.mean(axis=1), x.shape


def mean_pool_backward(dy, cache):
    B, T, d = cache
    return np.broadcast_to(dy[:, None, :] / T, (B, T, d)).astype(dy.dtype)


# ----------------------------------------------------------------------------
# softmax cross-entropy, mean over rows
# ----------------------------------------------------------------------------
def cross_entropy_forward(logits, targets):
    # logits: (N, V), targets: (N,) int -> loss (scalar of logits' dtype)
    probs = kernels.softmax(logits)                               # (N, V)
    n = logits.shape[0]
    picked = probs[np.arange(n), targets]
    # log of a probability that underflowed to 0 would be -inf: clamp at the tiny
    loss = -np.mean(np.log(np.maximum(picked, np.finfo(logits.dtype).tiny)))
    return loss.astype(logits.dtype), (probs, targets)


def cross_entropy_backward(dloss, cache):
    # d mean(-log softmax(z)[t]) / dz = (softmax(z) - onehot(t)) / N
    probs, targets = cache
    n = probs.shape[0]
    dlogits = probs.copy()
    dlogits[np.arange(n), targets] -= 1.0
    dlogits *= dloss / n
    return dlogits
