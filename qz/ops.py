"""Forward/backward pairs for the dense ops of Qingzhou-mini (docs/spec.md §2.3).

Every op is two pure functions in the style of llm.c:

    out, cache = op_forward(...)
    grads...   = op_backward(dout, cache)

The cache holds exactly what the backward pass needs; nothing is stored on a
hidden object. ``dfoo`` always means d(loss)/d(foo). The backward functions
return fresh arrays; summing gradients of shared parameters is the model's job.

The arithmetic of the hot ops (softmax, RMSNorm, SwiGLU, the attention core) is
written here in NumPy, as the definition; ``@accelerated`` marks the ones with a
Numba-jitted twin in qz/kernels/jit.py, which runs instead when numba is installed.

Shape letters: B batch, T time, d model width, H heads, D = d / H head width,
N = B * T rows, V outputs (vocabulary or classes).
"""
from __future__ import annotations

import numpy as np

from .kernels import accelerated

EPS = 1e-5  # RMSNorm epsilon, docs/spec.md §2.3


# ----------------------------------------------------------------------------
# softmax over the last axis
# ----------------------------------------------------------------------------
@accelerated
def softmax(x):
    # x: (N, C) -> (N, C); subtract the row max so exp never overflows
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


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
@accelerated
def rmsnorm(x, g, eps):
    # x: (N, d), g: (d,) -> y (N, d), rstd (N,)
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + eps)
    rstd = rstd.astype(x.dtype, copy=False)
    return x * rstd[:, None] * g, rstd


@accelerated
def rmsnorm_grad(dy, x, g, rstd):
    # xhat = x * rstd; dxhat = dy * g
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat))   (the norm couples a row)
    xhat = x * rstd[:, None]
    dg = np.sum(dy * xhat, axis=0)
    dxhat = dy * g
    dx = rstd[:, None] * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx, dg


def rmsnorm_forward(x, g):
    # x: (..., d), g: (d,) -> y: (..., d); cache rstd for the backward pass
    x2 = x.reshape(-1, x.shape[-1])
    y, rstd = rmsnorm(x2, g, EPS)
    return y.reshape(x.shape), (x2, g, rstd, x.shape)


def rmsnorm_backward(dy, cache):
    x2, g, rstd, shape = cache
    dx, dg = rmsnorm_grad(dy.reshape(x2.shape), x2, g, rstd)
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
def split_heads(x, H):
    # (B, T, d) -> (B, H, T, D): head h owns columns h*D .. h*D + D - 1
    B, T, d = x.shape
    return x.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)


def merge_heads(x):
    # (B, H, T, D) -> (B, T, d)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


@accelerated
def attention(q, k, v, n_heads, causal):
    # q, k, v: (B, T, d) -> o (B, T, d), p (B, H, T, T)
    qh, kh, vh = split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads)
    T, D = qh.shape[-2], qh.shape[-1]
    s = (qh @ kh.swapaxes(-1, -2)) * q.dtype.type(1.0 / np.sqrt(D))   # (B, H, T, T)
    if causal:
        s = np.where(np.tri(T, dtype=bool), s, -np.inf)               # key j <= query i
    p = softmax(s.reshape(-1, T)).reshape(s.shape)
    return merge_heads(p @ vh), p


@accelerated
def attention_grad(do, q, k, v, p, n_heads):
    # dv = p^T do; dp = do v^T; ds = p * (dp - rowsum(dp * p)); dq = ds k; dk = ds^T q
    qh, kh, vh, doh = (split_heads(t, n_heads) for t in (q, k, v, do))
    scale = q.dtype.type(1.0 / np.sqrt(qh.shape[-1]))
    dv = p.swapaxes(-1, -2) @ doh
    dp = doh @ vh.swapaxes(-1, -2)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))           # masked p = 0 => ds = 0
    dq = (ds @ kh) * scale
    dk = (ds.swapaxes(-1, -2) @ qh) * scale
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


def attention_forward(q, k, v, n_heads, causal):
    # q, k, v: (B, T, d) -> o: (B, T, d)
    o, p = attention(q, k, v, n_heads, causal)                    # p: (B, H, T, T)
    return o, (q, k, v, p, n_heads)


def attention_backward(do, cache):
    q, k, v, p, n_heads = cache
    return attention_grad(do, q, k, v, p, n_heads)                # dq, dk, dv: (B, T, d)


# ----------------------------------------------------------------------------
# SwiGLU's gating: m = silu(a) * b, with a = u @ w1 and b = u @ w3
# ----------------------------------------------------------------------------
def sigmoid(a):
    # 1 / (1 + exp(-a)): for a << 0, exp overflows to inf and the result is the
    # correct 0, so only the overflow warning needs silencing
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


@accelerated
def swiglu(a, b):
    # a, b: (N, f) -> m (N, f)
    return a * sigmoid(a) * b


@accelerated
def swiglu_grad(dm, a, b):
    # dm: (N, f) -> da, db (N, f);  d silu(a)/da = sig * (1 + a * (1 - sig))
    sig = sigmoid(a)
    return dm * b * sig * (1.0 + a * (1.0 - sig)), dm * a * sig


def swiglu_forward(a, b):
    # a, b: (N, f) -> m: (N, f); the backward recomputes sigmoid(a) instead of caching it
    return swiglu(a, b), (a, b)


def swiglu_backward(dm, cache):
    # dm: (N, f) -> da, db: (N, f)
    a, b = cache
    return swiglu_grad(dm, a, b)


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
    probs = softmax(logits)                                       # (N, V)
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
