"""The Mixture-of-Experts layer: top-k gate, SwiGLU experts, load-balancing loss.

docs/spec.md §2.3, for ``h`` of shape (N, d)::

    probs = softmax(h @ gate)                       (N, E)
    idx   = top_k experts by probs, ties to the lower index
    w     = probs[idx] / sum(probs[idx])            (N, K), renormalised
    moe(h)[n] = sum_j w[n, j] * expert_idx[n, j](h[n]) + sum_s shared_s(h[n])
    expert_e(u) = (silu(u @ w1[e]) * (u @ w3[e])) @ w2[e]
    aux   = E * sum_e frac_e * mean_n probs[n, e]   frac_e = slots to e / (N K), constant

Dispatch is a plain loop over experts on gathered rows: the N*K (token, slot)
pairs are sorted by expert once, so each expert sees one contiguous block of
rows, and experts that got no tokens are skipped.

route, dispatch and combine are written here in NumPy, as the definition;
``@accelerated`` runs their Numba-jitted twins (qz/kernels/jit.py) instead when
numba is installed.

Shape letters: N tokens, d width, E experts, K experts per token, f expert
hidden width, S shared experts, R = N * K routed rows.
"""
from __future__ import annotations

import numpy as np

from .kernels import accelerated
from .ops import softmax, swiglu_backward, swiglu_forward
from .quant import QWeight, act_codes, code_matmul, fake_quant_act_backward, minmax


# ----------------------------------------------------------------------------
# gate: softmax over all experts, top-k, renormalise over the k chosen
# ----------------------------------------------------------------------------
@accelerated
def route(logits, k):
    # logits: (N, E) -> probs (N, E), idx (N, k) best first, w (N, k) with rows summing to 1
    probs = softmax(logits)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k].astype(np.int64)   # ties: the lower index
    sel = np.take_along_axis(probs, idx, axis=1)
    return probs, idx, sel / sel.sum(axis=1, keepdims=True)


@accelerated
def route_grad(dw, dprobs_row, probs, idx, w):
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


def gate_forward(h, wg, k):
    # h: (N, d), wg: (d, E) -> w (N, K), idx (N, K), probs (N, E)
    probs, idx, w = route(h @ wg, k)
    return (w, idx, probs), (h, wg, probs, idx, w)


def gate_backward(dw, dprobs_row, cache):
    """dw: (N, K) from the combine; dprobs_row: (E,) from the aux loss (the same for every token)."""
    h, wg, probs, idx, w = cache
    dlogits = route_grad(dw, dprobs_row, probs, idx, w)               # (N, E)
    return dlogits @ wg.T, h.T @ dlogits                              # dh (N, d), dwg (d, E)


# ----------------------------------------------------------------------------
# load-balancing loss (Switch Transformer form)
# ----------------------------------------------------------------------------
def aux_loss_forward(probs, idx):
    # probs: (N, E), idx: (N, K) -> scalar
    N, E = probs.shape
    frac = (np.bincount(idx.reshape(-1), minlength=E) / idx.size).astype(probs.dtype)   # (E,) constant
    mean_p = np.add.reduce(probs, axis=0) / N                     # (E,) probs.mean(axis=0), 3x cheaper
    aux = E * np.dot(frac, mean_p)
    return aux, (frac, N)


def aux_loss_backward(daux, cache):
    """-> (E,): d aux / d probs[n, e] = E frac_e / N, the same row for every token n.

    Only the mean probabilities carry gradient; frac is a constant.
    """
    frac, N = cache
    E = frac.shape[0]
    return ((daux * E / N) * frac).astype(frac.dtype)


# ----------------------------------------------------------------------------
# experts: gather rows -> SwiGLU -> scatter, weighted by the gate
# ----------------------------------------------------------------------------
@accelerated
def dispatch(idx, E):
    """Group the N*K (token, slot) pairs by expert (the plan shared by training and the runtime).

    idx: (N, K) -> order (R,) slot of each row, bounds (E+1,) expert e owns rows
    bounds[e]:bounds[e+1], tok (R,) token of each row, pos (N, K) row of each slot."""
    N, K = idx.shape
    slots = idx.reshape(-1)                                       # slot n*K + j -> expert
    order = np.argsort(slots, kind="stable")                      # (R,) rows grouped by expert
    bounds = np.concatenate([[0], np.cumsum(np.bincount(slots, minlength=E))])
    tok = order // K                                              # (R,) token of each row
    pos = np.empty_like(order)
    pos[order] = np.arange(N * K)                                 # row of each (token, slot)
    return order, bounds, tok, pos.reshape(N, K)


@accelerated
def combine(rows, pos, w=None):
    # rows: (R, c) grouped by expert, pos: (N, K), w: (N, K) or None (plain sum) -> (N, c)
    g = rows[pos]                                                 # (N, K, c)
    return g.sum(axis=1) if w is None else np.sum(w[:, :, None] * g, axis=1)


@accelerated
def combine_grad(dout, rows, tok, ws):
    # dout: (N, c), rows: (R, c), tok/ws: (R,) -> drows (R, c), dws (R,)
    g = dout[tok]                                                 # (R, c) upstream per row
    return g * ws[:, None], np.sum(g * rows, axis=1)


def swiglu_inputs(x, w1, w3, e, a, b, rescale=None):
    """a = x @ w1[e] and b = x @ w3[e], SwiGLU's two inputs, written into a and b (rows, f).

    Two matmuls, not one with a fused [w1 | w3]: concatenating that matrix copies every
    expert's weights on every call (8 MB a layer in the char LM), and a and b in arrays of
    their own are what the SwiGLU kernel reads fastest (ops.swiglu). The runtime
    calls this too, so its fp32 logits round exactly as model.forward's.
    rescale (fake-quant model): (s1, s3), the per-channel factors of a and b; x and the weights
    are then codes, multiplied exactly (quant.code_matmul)."""
    if rescale is None:
        np.dot(x, w1[e], out=a)                                   # (rows, f)
        np.dot(x, w3[e], out=b)                                   # (rows, f)
    else:
        code_matmul(x, w1[e], out=a)
        code_matmul(x, w3[e], out=b)
        a *= rescale[0]
        b *= rescale[1]


def swiglu_inputs_backward(da, db, w1, w3, e, dx):
    """da, db (rows, f) -> dx (rows, d) = da w1[e]^T + db w3[e]^T, written into dx."""
    np.dot(da, w1[e].T, out=dx)
    dx += db @ w3[e].T


def experts_forward(h, w1, w3, w2, idx, w, mid_q=None, observe=False):
    # h: (N, d), w1/w3: (E, d, f), w2: (E, f, d), idx/w: (N, K) -> out (N, d)
    # Fake-quant model: h is (h_c, scale), the ffn_in codes (quant.act_codes) and their
    # scale; w1/w3/w2 are QWeights; mid_q is the ffn_mid (scale, zp). Each matmul then
    # runs on integer-valued floats and is rescaled per output channel, exactly as the
    # int8 runtime does (quant.qlinear_forward explains why).
    # (np.dot(..., out=block) writes each expert's rows in place: no temporary. For 2-D
    # operands np.dot is np.matmul's product with less overhead per call, which counts at a
    # dozen rows an expert: 4.8 vs 5.5 us at 12 x 64 x 128; with `spans` as Python ints the
    # kws batch-1 layer went 284 -> 251 us, bit for bit the same.)
    quantized = isinstance(w1, QWeight)
    if quantized:
        h, in_scale = h
    dt = h.dtype.type
    N, K = idx.shape
    w1_m, w3_m, w2_m = (w1.w_q, w3.w_q, w2.w_q) if quantized else (w1, w3, w2)   # what the matmuls read
    E, d, f = w1_m.shape
    order, bounds, tok, pos = dispatch(idx, E)
    spans = bounds.tolist()                                       # Python ints: cheaper to slice with
    u = h[tok]                                                    # (R, d) gathered
    a = np.empty((N * K, f), dtype=h.dtype)                       # (R, f) u @ w1[e], row block by block
    b = np.empty((N * K, f), dtype=h.dtype)                       # (R, f) u @ w3[e]
    for e in range(E):
        lo, hi = spans[e], spans[e + 1]
        if lo < hi:                                               # skip experts with no tokens
            rescale = None
            if quantized:
                rescale = (dt(in_scale) * w1.scale[e].reshape(-1), dt(in_scale) * w3.scale[e].reshape(-1))
            swiglu_inputs(u[lo:hi], w1_m, w3_m, e, a[lo:hi], b[lo:hi], rescale)
    m, sw_cache = swiglu_forward(a, b)                            # (R, f)
    mid_mask = mid_range = None
    if observe:
        mid_range = _stat(observe)(m)                             # what the ffn_mid observer sees
    if mid_q is not None:
        m_c, mid_mask = act_codes(m, *mid_q)
    y = np.empty((N * K, d), dtype=h.dtype)
    for e in range(E):
        lo, hi = spans[e], spans[e + 1]
        if lo < hi:
            if quantized:
                code_matmul(m_c[lo:hi], w2_m[e], out=y[lo:hi])
                y[lo:hi] *= dt(mid_q[0]) * w2.scale[e].reshape(-1)
            else:
                np.dot(m[lo:hi], w2_m[e], out=y[lo:hi])
    out = combine(y, pos, w)                              # (N, d): sum_j w[n,j] y[pos[n,j]]
    ws = w.reshape(-1)[order]                                     # (R,) gate weight of each row
    if quantized:
        # the backward is the float one on x_hat = x_c * scale and W_hat = w_q * s
        u, m, w1, w3, w2 = u * dt(in_scale), m_c * dt(mid_q[0]), w1.hat, w3.hat, w2.hat
    return out, (u, m, y, ws, tok, pos, bounds, sw_cache, w1, w3, w2, mid_mask, mid_range)


def experts_backward(dout, cache):
    # dout: (N, d) -> dh (N, d), dw (N, K), dw1, dw3 (E, d, f), dw2 (E, f, d)
    u, m, y, ws, tok, pos, bounds, sw_cache, w1, w3, w2, mid_mask, _ = cache
    spans = bounds.tolist()
    E = w1.shape[0]
    dy, dws = combine_grad(dout, y, tok, ws)          # (R, d), (R,)
    dw = dws[pos]                                                 # (N, K) d loss / d gate weight
    dm = np.empty_like(m)
    dw1, dw3, dw2 = np.empty_like(w1), np.empty_like(w3), np.empty_like(w2)
    for e in range(E):
        lo, hi = spans[e], spans[e + 1]
        if lo < hi:
            np.dot(dy[lo:hi], w2[e].T, out=dm[lo:hi])
            np.dot(m[lo:hi].T, dy[lo:hi], out=dw2[e])
        else:                                                     # an expert with no tokens: 0
            dw1[e], dw3[e], dw2[e] = 0.0, 0.0, 0.0
    if mid_mask is not None:
        dm = fake_quant_act_backward(dm, mid_mask)                # clipped STE
    da, db = swiglu_backward(dm, sw_cache)                        # (R, f) each
    du = np.empty_like(u)
    for e in range(E):
        lo, hi = spans[e], spans[e + 1]
        if lo < hi:
            swiglu_inputs_backward(da[lo:hi], db[lo:hi], w1, w3, e, du[lo:hi])
            np.dot(u[lo:hi].T, da[lo:hi], out=dw1[e])
            np.dot(u[lo:hi].T, db[lo:hi], out=dw3[e])
    dh = combine(du, pos)                                 # each token sums its K rows
    return dh, dw, dw1, dw3, dw2


# ----------------------------------------------------------------------------
# the whole layer
# ----------------------------------------------------------------------------
# ----------------------------------------------------------------------------
# shared experts: every token through all S of them with weight 1, so no routing:
# plain dense matmuls on all N rows (no sort, gather or combine)
# ----------------------------------------------------------------------------
def shared_forward(h, w1, w3, w2, mid_q=None, observe=False):
    # h: (N, d) -> out (N, d); w1/w3: (S, d, f), w2: (S, f, d); fake-quant as in experts_forward
    quantized = isinstance(w1, QWeight)
    if quantized:
        h, in_scale = h
    dt = h.dtype.type
    w1_m, w3_m, w2_m = (w1.w_q, w3.w_q, w2.w_q) if quantized else (w1, w3, w2)
    S, d, f = w1_m.shape
    out = None
    per, mid_range = [], None
    for s in range(S):
        a, b = np.empty((h.shape[0], f), dtype=h.dtype), np.empty((h.shape[0], f), dtype=h.dtype)  # (N, f)
        rescale = None
        if quantized:
            rescale = (dt(in_scale) * w1.scale[s].reshape(-1), dt(in_scale) * w3.scale[s].reshape(-1))
        swiglu_inputs(h, w1_m, w3_m, s, a, b, rescale)
        m, sw_cache = swiglu_forward(a, b)                        # (N, f)
        if observe:
            lo, hi = _stat(observe)(m)
            mid_range = (lo, hi) if mid_range is None else (min(lo, mid_range[0]), max(hi, mid_range[1]))
        mask = None
        if mid_q is not None:
            m_c, mask = act_codes(m, *mid_q)
            y = code_matmul(m_c, w2_m[s])
            y *= dt(mid_q[0]) * w2.scale[s].reshape(-1)
            m = m_c * dt(mid_q[0])                                # m_hat, for the backward
        else:
            y = m @ w2_m[s]                                       # (N, d)
        out = y if out is None else out + y                       # S = 1: no zero-filled sum
        per.append((m, sw_cache, mask))
    if quantized:
        h, w1, w3, w2 = h * dt(in_scale), w1.hat, w3.hat, w2.hat  # backward on x_hat and W_hat
    return out, (h, w1, w3, w2, per, mid_range)


def shared_backward(dout, cache):
    # dout: (N, d) -> dh (N, d), dw1, dw3 (S, d, f), dw2 (S, f, d)
    u, w1, w3, w2, per, _ = cache
    dh = None
    dw1, dw3, dw2 = np.empty_like(w1), np.empty_like(w3), np.empty_like(w2)
    for s, (m, sw_cache, mask) in enumerate(per):
        dm = dout @ w2[s].T                                       # (N, f)
        np.dot(m.T, dout, out=dw2[s])
        if mask is not None:
            dm = fake_quant_act_backward(dm, mask)
        da, db = swiglu_backward(dm, sw_cache)                    # (N, f) each
        du = np.empty_like(u)
        swiglu_inputs_backward(da, db, w1, w3, s, du)
        dh = du if dh is None else dh + du
        np.dot(u.T, da, out=dw1[s])
        np.dot(u.T, db, out=dw3[s])
    return dh, dw1, dw3, dw2


def _stat(observe):
    # observe: True (min, max) or an observer statistic (quant.minmax, quant.percentile_stat(p))
    return observe if callable(observe) else minmax


def moe_forward(h, wg, w1, w3, w2, k, shared=None, in_q=None, mid_q=None, observe=False):
    """h: (N, d) -> out (N, d), aux (scalar), stats; shared = (sw1, sw3, sw2) or None.

    in_q / mid_q: (scale, zp) of the ffn_in / ffn_mid observers (docs/spec.md §3.2), or None for
    the float model; with them the expert weights are QWeights. The gate always reads the
    unquantized h; the experts read fake-quant h.
    observe: also report the (min, max) of the experts' input and of their w2 input in stats
    (or, when observe is a function, its statistic; routed and shared experts' w2 inputs are
    combined as the widest of the two).
    """
    (w, idx, probs), gate_cache = gate_forward(h, wg, k)
    h_e, in_mask = h, None
    if in_q is not None:
        h_c, in_mask = act_codes(h, *in_q)
        h_e = (h_c, in_q[0])
    out, exp_cache = experts_forward(h_e, w1, w3, w2, idx, w, mid_q, observe)
    aux, aux_cache = aux_loss_forward(probs, idx)
    shared_cache = None
    if shared is not None:
        s_out, shared_cache = shared_forward(h_e, *shared, mid_q, observe)
        out += s_out                                              # out is combine's fresh array
    stats = {
        "load": np.bincount(idx.reshape(-1), minlength=wg.shape[1]),  # slots per expert
        "probs": probs,                                           # gate entropy: model.forward_stats
    }
    if observe:   # what the ffn_in / ffn_mid observers saw: the pre-quantization ranges
        mids = [exp_cache[-1]] + ([shared_cache[-1]] if shared_cache is not None else [])
        stats["ffn_in"] = _stat(observe)(h)
        stats["ffn_mid"] = (min(r[0] for r in mids), max(r[1] for r in mids))
    return out, aux, stats, (gate_cache, exp_cache, aux_cache, shared_cache, in_mask)


def moe_backward(dout, daux, cache):
    """-> dh (N, d) and a dict of parameter gradients keyed gate, w1, w3, w2, shared.*"""
    gate_cache, exp_cache, aux_cache, shared_cache, in_mask = cache
    dh_e, dw, dw1, dw3, dw2 = experts_backward(dout, exp_cache)
    grads = {"w1": dw1, "w3": dw3, "w2": dw2}
    if shared_cache is not None:
        dh_s, sdw1, sdw3, sdw2 = shared_backward(dout, shared_cache)
        dh_e += dh_s                                              # dh_e is combine's fresh array
        grads.update({"shared.w1": sdw1, "shared.w3": sdw3, "shared.w2": sdw2})
    if in_mask is not None:
        dh_e = fake_quant_act_backward(dh_e, in_mask)             # clipped STE on the experts' input
    dh_gate, grads["gate"] = gate_backward(dw, aux_loss_backward(daux, aux_cache), gate_cache)
    return dh_e + dh_gate, grads
