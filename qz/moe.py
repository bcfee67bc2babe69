"""The Mixture-of-Experts layer: top-k gate, SwiGLU experts, load-balancing loss.

SPEC §2.3, for ``h`` of shape (N, d)::

    probs = softmax(h @ gate)                       (N, E)
    idx   = top_k experts by probs, ties to the lower index
    w     = probs[idx] / sum(probs[idx])            (N, K), renormalised
    moe(h)[n] = sum_j w[n, j] * expert_idx[n, j](h[n]) + sum_s shared_s(h[n])
    expert_e(u) = (silu(u @ w1[e]) * (u @ w3[e])) @ w2[e]
    aux   = E * sum_e frac_e * mean_n probs[n, e]   frac_e = slots to e / (N K), constant

Dispatch is a plain loop over experts on gathered rows: the N*K (token, slot)
pairs are sorted by expert once, so each expert sees one contiguous block of
rows, and experts that got no tokens are skipped.

Shape letters: N tokens, d width, E experts, K experts per token, f expert
hidden width, S shared experts, R = N * K routed rows.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .ops import swiglu_backward, swiglu_forward


# ----------------------------------------------------------------------------
# gate: softmax over all experts, top-k, renormalise over the k chosen
# ----------------------------------------------------------------------------
def gate_forward(h, wg, k):
    # h: (N, d), wg: (d, E) -> w (N, K), idx (N, K), probs (N, E)
    probs = kernels.softmax(h @ wg)                               # (N, E)
    idx = kernels.topk_indices(probs, k)                          # (N, K)
    sel = np.take_along_axis(probs, idx, axis=1)                  # (N, K)
    denom = sel.sum(axis=1, keepdims=True)                        # (N, 1)
    w = sel / denom                                               # (N, K)
    return (w, idx, probs), (h, wg, probs, idx, w, denom)


def gate_backward(dw, dprobs, cache):
    """dw: (N, K) from the combine; dprobs: (N, E) from the aux loss, or None.

    Three steps back through the three forward steps:
    renormalisation  w_j = p_j / S, S = sum_i p_i  =>  dp_j = (dw_j - sum_i dw_i w_i) / S
    top-k gather     scatter dp_j back to column idx_j (the others get only dprobs)
    softmax          dz = p * (dp - sum_e dp_e p_e)
    """
    h, wg, probs, idx, w, denom = cache
    N = probs.shape[0]
    dsel = (dw - np.sum(dw * w, axis=1, keepdims=True)) / denom   # (N, K)
    dp = np.zeros_like(probs) if dprobs is None else dprobs.copy()
    dp[np.arange(N)[:, None], idx] += dsel    # indices in a row are distinct
    dlogits = probs * (dp - np.sum(dp * probs, axis=1, keepdims=True))  # (N, E)
    dh = dlogits @ wg.T                                           # (N, d)
    dwg = h.T @ dlogits                                           # (d, E)
    return dh, dwg


# ----------------------------------------------------------------------------
# load-balancing loss (Switch Transformer form)
# ----------------------------------------------------------------------------
def aux_loss_forward(probs, idx):
    # probs: (N, E), idx: (N, K) -> scalar
    N, E = probs.shape
    frac = np.bincount(idx.reshape(-1), minlength=E) / idx.size   # (E,) constant
    frac = frac.astype(probs.dtype)
    aux = E * np.sum(frac * probs.mean(axis=0))
    return aux, (frac, N)


def aux_loss_backward(daux, cache):
    # only the mean probabilities carry gradient: d aux / d probs[n, e] = E frac_e / N
    frac, N = cache
    E = frac.shape[0]
    row = (daux * E / N) * frac                                   # (E,)
    return np.broadcast_to(row, (N, E)).astype(frac.dtype)


# ----------------------------------------------------------------------------
# experts: gather rows -> SwiGLU -> scatter, weighted by the gate
# ----------------------------------------------------------------------------
def experts_forward(h, w1, w3, w2, idx, w):
    # h: (N, d), w1/w3: (E, d, f), w2: (E, f, d), idx/w: (N, K) -> out (N, d)
    N, K = idx.shape
    E, d, f = w1.shape
    slots = idx.reshape(-1)                                       # slot r = n * K + j
    order = np.argsort(slots, kind="stable")                      # (R,) grouped by expert
    bounds = np.concatenate([[0], np.cumsum(np.bincount(slots, minlength=E))])
    tok = order // K                                              # token of each sorted row
    u = h[tok]                                                    # (R, d) gathered
    a = np.empty((N * K, f), dtype=h.dtype)
    b = np.empty((N * K, f), dtype=h.dtype)
    for e in range(E):
        lo, hi = bounds[e], bounds[e + 1]
        if lo == hi:
            continue                                              # no tokens for e
        a[lo:hi] = u[lo:hi] @ w1[e]
        b[lo:hi] = u[lo:hi] @ w3[e]
    m, sw_cache = swiglu_forward(a, b)                            # (R, f)
    y = np.empty((N * K, d), dtype=h.dtype)
    for e in range(E):
        lo, hi = bounds[e], bounds[e + 1]
        if lo < hi:
            y[lo:hi] = m[lo:hi] @ w2[e]
    ws = w.reshape(-1)[order]                                     # (R,) gate weight per row
    out = _unsort_sum(y * ws[:, None], order, N, K)               # (N, d)
    return out, (u, m, y, ws, order, bounds, tok, sw_cache, w1, w3, w2, N, K)


def experts_backward(dout, cache):
    # dout: (N, d) -> dh (N, d), dw (N, K), dw1, dw3, dw2
    u, m, y, ws, order, bounds, tok, sw_cache, w1, w3, w2, N, K = cache
    E = w1.shape[0]
    dy_row = dout[tok]                                            # (R, d) upstream per row
    dws = np.sum(dy_row * y, axis=1)                              # (R,) d loss / d gate weight
    dw = np.empty(N * K, dtype=dout.dtype)
    dw[order] = dws
    dy = dy_row * ws[:, None]                                     # (R, d)
    dm = np.empty_like(m)
    dw1, dw3, dw2 = np.zeros_like(w1), np.zeros_like(w3), np.zeros_like(w2)
    for e in range(E):
        lo, hi = bounds[e], bounds[e + 1]
        if lo == hi:
            continue
        dm[lo:hi] = dy[lo:hi] @ w2[e].T
        dw2[e] = m[lo:hi].T @ dy[lo:hi]
    da, db = swiglu_backward(dm, sw_cache)                        # (R, f) each
    du = np.empty_like(u)
    for e in range(E):
        lo, hi = bounds[e], bounds[e + 1]
        if lo == hi:
            continue
        du[lo:hi] = da[lo:hi] @ w1[e].T + db[lo:hi] @ w3[e].T
        dw1[e] = u[lo:hi].T @ da[lo:hi]
        dw3[e] = u[lo:hi].T @ db[lo:hi]
    dh = _unsort_sum(du, order, N, K)                             # each token sums its K rows
    return dh, dw.reshape(N, K), dw1, dw3, dw2


def _unsort_sum(rows, order, N, K):
    # rows: (R, c) in expert order -> (N, c): put each row back in its slot, sum the K slots
    slot_rows = np.empty_like(rows)
    slot_rows[order] = rows
    return slot_rows.reshape(N, K, -1).sum(axis=1)


# ----------------------------------------------------------------------------
# the whole layer
# ----------------------------------------------------------------------------
def moe_forward(h, wg, w1, w3, w2, k, shared=None):
    """h: (N, d) -> out (N, d), aux (scalar), stats; shared = (sw1, sw3, sw2) or None."""
    N = h.shape[0]
    (w, idx, probs), gate_cache = gate_forward(h, wg, k)
    out, exp_cache = experts_forward(h, w1, w3, w2, idx, w)
    aux, aux_cache = aux_loss_forward(probs, idx)
    shared_cache = None
    if shared is not None:
        # shared experts: every token goes to all S of them with weight 1
        S = shared[0].shape[0]
        sidx = np.broadcast_to(np.arange(S), (N, S))
        s_out, shared_cache = experts_forward(h, *shared, sidx, np.ones((N, S), h.dtype))
        out = out + s_out
    stats = {
        "load": np.bincount(idx.reshape(-1), minlength=w1.shape[0]),  # slots per expert
        "entropy": float(-np.mean(np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=1))),
    }
    return out, aux, stats, (gate_cache, exp_cache, aux_cache, shared_cache)


def moe_backward(dout, daux, cache):
    """-> dh (N, d) and a dict of parameter gradients keyed gate, w1, w3, w2, shared.*"""
    gate_cache, exp_cache, aux_cache, shared_cache = cache
    dh, dw, dw1, dw3, dw2 = experts_backward(dout, exp_cache)
    dprobs = aux_loss_backward(daux, aux_cache) if daux != 0 else None
    dh_gate, dwg = gate_backward(dw, dprobs, gate_cache)
    dh = dh + dh_gate
    grads = {"gate": dwg, "w1": dw1, "w3": dw3, "w2": dw2}
    if shared_cache is not None:
        dh_s, _, sdw1, sdw3, sdw2 = experts_backward(dout, shared_cache)
        dh = dh + dh_s
        grads.update({"shared.w1": sdw1, "shared.w3": sdw3, "shared.w2": sdw2})
    return dh, grads
