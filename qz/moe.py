"""The Mixture-of-Experts layer: top-k gate, SwiGLU experts, load-balancing loss.

docs/spec.md §2.3, for ``h`` of shape (N, d)::

    probs = softmax(h @ gate)                       (N, E)
    idx   = top_k experts by probs, ties to the lower index
    w     = probs[idx] / sum(probs[idx])            (N, K), renormalised
    moe(h)[n] = sum_j w[n, j] * expert_idx[n, j](h[n]) + sum_s shared_s(h[n])
    expert_e(u) = (silu(u @ w1[e]) * (u @ w3[e])) @ w2[e]
    aux   = E * sum_e frac_e * mean_n probs[n, e]   frac_e = slots to e / (N K), constant

The experts run on gathered rows: the N*K (token, slot) pairs are sorted by
expert once (dispatch), each expert multiplies its contiguous block of rows
(linear.grouped_matmul: the one loop over experts; an expert that got no token
does no work), and combine adds each token's K rows back, weighted by the gate.
How those matmuls compute (float, fake-quant, int8) is the `lin` argument
(qz/linear.py); everything else here is the same for training and the runtime.

route, dispatch and combine are written here in NumPy, as the definition;
``@accelerated`` runs their Numba-jitted twins (qz/kernels/moe.py) instead when
numba is installed.

Shape letters: N tokens, d width, E experts, K experts per token, f expert
hidden width, S shared experts, R = N * K routed rows.
"""
from __future__ import annotations

import numpy as np

from .kernels import accelerated
from .linear import gather_rows
from .ops import softmax, swiglu_backward, swiglu_forward


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


def allowed_experts(probs, requests, m):
    """The expert budget (docs/spec.md §4): probs (N, E), N = requests x T tokens in request order
    -> allowed (requests, E) bool: each request's m experts of highest mean gate probability over
    its tokens, ties to the lower index. A function of the request's own tokens only."""
    R, E = requests, probs.shape[1]
    mean = probs.reshape(R, -1, E).mean(axis=1)                   # (R, E)
    top = np.argsort(-mean, axis=1, kind="stable")[:, :m]
    allowed = np.zeros((R, E), dtype=bool)
    np.put_along_axis(allowed, top, True, axis=1)
    return allowed


def route_within(probs, k, allowed):
    # probs: (N, E), allowed: (R, E) per request (N = R x T) -> idx, w (N, k): each token's top k
    # among its request's allowed experts (k at most their number), renormalised over the k
    rows = np.repeat(allowed, probs.shape[0] // allowed.shape[0], axis=0)      # (N, E)
    k = min(k, int(allowed.sum(axis=1).min()))
    masked = np.where(rows, probs, -1.0)                          # probabilities are >= 0
    idx = np.argsort(-masked, axis=-1, kind="stable")[:, :k].astype(np.int64)
    sel = np.take_along_axis(probs, idx, axis=1)
    return idx, sel / sel.sum(axis=1, keepdims=True)


def gate_forward(h, wg, k, budget=None, requests=1):
    # h: (N, d), wg: (d, E) -> (w (N, K), idx (N, K), probs (N, E), allowed), cache
    # budget: None; an int m, each of the `requests` (h: requests x T rows) may use its m experts
    # of highest mean probability; or their (requests, E) bool mask, chosen before. allowed: the mask
    if budget is None:
        probs, idx, w = route(h @ wg, k)
        allowed = None
    else:                                                         # the softmax stays over all E
        probs = softmax(h @ wg)
        allowed = (allowed_experts(probs, requests, int(budget)) if np.isscalar(budget)
                   else np.asarray(budget, dtype=bool))
        idx, w = route_within(probs, k, allowed)
    return (w, idx, probs, allowed), (h, wg, probs, idx, w)


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


def every_token(N, S):
    """The plan of the shared experts: every token to each of the S, in token order, weight 1.
    Rows s N .. s N + N - 1 are expert s's; tok None: nothing to gather (linear.gather_rows) and
    nothing to combine but the S blocks' sum (sum_blocks)."""
    return None, np.arange(S + 1) * N, None, None


def sum_blocks(y, S):
    # y: (S N, c), S blocks of N rows -> (N, c), their sum (S = 1: y itself)
    return y if S == 1 else y.reshape(S, -1, y.shape[1]).sum(axis=0)


def experts_forward(h, plan, gw, w, g, p, lin):
    # h: (N, d), plan: dispatch(idx, E) of the chosen experts idx (N, K), gw (N, K) their gate
    # weights -> out (N, d): out[n] = sum_j gw[n, j] * expert_idx[n, j](h[n]); gw None: weight 1
    # w: the weights, g their prefix ("blocks.{i}." or "blocks.{i}.shared."), p the observers'
    # ("blocks.{i}."); lin: how the matmuls compute (qz/linear.py: float, fake-quant, int8)
    order, bounds, tok, pos = plan                                # rows grouped by expert
    a, b, c_in = lin.experts_in(h, tok, w, g, p + "ffn_in", bounds)   # (R, f): u @ w1[e], u @ w3[e]
    m, c_sw = swiglu_forward(a, b)                                # (R, f)
    y, c_out = lin.experts_out(m, w, g, p + "ffn_mid", bounds)    # (R, d): m @ w2[e]
    if tok is None:                                               # the shared experts
        out = sum_blocks(y, len(bounds) - 1)
    else:
        out = combine(y, pos, gw)                                 # (N, d): sum_j gw[n,j] y[pos[n,j]]
    return out, (c_in, c_sw, c_out, y, gw, order, bounds, tok, pos)


def experts_backward(dout, cache, lin):
    # dout: (N, d) -> dh (N, d), dgw (N, K) or None, (dw1, dw3 (E, d, f), dw2 (E, f, d))
    c_in, c_sw, c_out, y, gw, order, bounds, tok, pos = cache
    if gw is None:
        dy, dgw = gather_rows(dout, tok, bounds), None            # weight 1: each row its token's dout
    else:
        ws = gw.reshape(-1)[order]                                # (R,) gate weight of each row
        dy, dws = combine_grad(dout, y, tok, ws)                  # (R, d), (R,)
        dgw = dws[pos]                                            # (N, K) d loss / d gate weight
    dm, dw2 = lin.experts_out_backward(dy, c_out)                 # (R, f)
    da, db = swiglu_backward(dm, c_sw)                            # (R, f) each
    du, dw1, dw3 = lin.experts_in_backward(da, db, c_in)          # (R, d)
    dh = sum_blocks(du, len(bounds) - 1) if tok is None else combine(du, pos)   # each token sums its rows
    return dh, dgw, (dw1, dw3, dw2)


# ----------------------------------------------------------------------------
# the whole layer: gate, routed experts, shared experts (every token to all S of
# them with weight 1: the same expert loop, with no gate), load-balancing loss
# ----------------------------------------------------------------------------
def moe_forward(h, w, p, k, n_shared, lin, train=True, budget=None, requests=1):
    """h: (N, d) -> out (N, d), aux (scalar), stats {'load': (E,), 'probs': (N, E)}.

    w: the parameters (model.block_forward's), p = "blocks.{i}."; lin: how the experts'
    matmuls compute (qz/linear.py). The gate always reads the unquantized h.
    train=False (serving): aux is 0 and stats None, neither computed.
    budget (docs/spec.md §4): None; an int m < E, each of the `requests` (h's rows are
    requests x T tokens) then uses only its m allowed experts (allowed_experts); or a
    (requests, E) bool array of allowed experts chosen before (generation keeps the prompt's).
    With a budget, stats has 'allowed' (also when serving)."""
    (gw, idx, probs, allowed), gate_cache = gate_forward(h, w[p + "gate"], k, budget, requests)
    E = probs.shape[1]
    out, exp_cache = experts_forward(h, dispatch(idx, E), gw, w, p, p, lin)
    shared_cache = None
    if n_shared:
        plan = every_token(h.shape[0], n_shared)
        s_out, shared_cache = experts_forward(h, plan, None, w, p + "shared.", p, lin)
        out += s_out                                              # out is combine's fresh array
    if not train:
        return out, 0.0, (None if allowed is None else {"allowed": allowed}), None
    aux, aux_cache = aux_loss_forward(probs, idx)
    stats = {"load": np.bincount(idx.reshape(-1), minlength=E),   # slots per expert
             "probs": probs}                                      # gate entropy: model.forward_stats
    if allowed is not None:
        stats["allowed"] = allowed
    return out, aux, stats, (gate_cache, exp_cache, aux_cache, shared_cache)


def moe_backward(dout, daux, cache, lin):
    """-> dh (N, d) and a dict of parameter gradients keyed gate, w1, w3, w2, shared.*"""
    gate_cache, exp_cache, aux_cache, shared_cache = cache
    dh, dgw, (dw1, dw3, dw2) = experts_backward(dout, exp_cache, lin)
    grads = {"w1": dw1, "w3": dw3, "w2": dw2}
    if shared_cache is not None:
        dh_s, _, (sdw1, sdw3, sdw2) = experts_backward(dout, shared_cache, lin)
        dh += dh_s                                                # dh is combine's fresh array
        grads.update({"shared.w1": sdw1, "shared.w3": sdw3, "shared.w2": sdw2})
    dh_gate, grads["gate"] = gate_backward(dgw, aux_loss_backward(daux, aux_cache), gate_cache)
    return dh + dh_gate, grads
