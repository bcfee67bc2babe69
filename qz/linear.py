"""How a linear layer computes: float, fake-quant or integer (docs/spec.md §3).

The block (``model.block_forward``) is written once. Training, quantization-aware
training and the int8 runtime differ only in how each linear layer turns its input into
its output, so the block asks an object for that, one of three with the same methods:

    y, cache    = lin.linear(x, observer, W, b=None)               x (..., in) @ W (in, out) + b
    a, b, cache = lin.experts_in(h, tok, w, g, observer, bounds)   u @ w1[e] and u @ w3[e], u = h[tok]
    y, cache    = lin.experts_out(m, w, g, observer, bounds)       m @ w2[e]

``observer`` names the activation entering the layer (docs/spec.md §3.2): the float model
records its range there when asked (``observed``), the fake-quant model rounds it to uint8
codes there (``quant.act_codes``) and the integer runtime quantizes it there. The experts'
rows come grouped by expert (moe.dispatch): row r is token tok[r], and rows
bounds[e]:bounds[e+1] belong to expert e, whose weights are w[g + "w1"][e] ... (g:
"blocks.{i}." or "blocks.{i}.shared."). Float and FakeQuant have the matching backward
methods; the integer runtime does not train.

    Float       the float model, training and the fp32/fp16 runtime: plain matmuls
    FakeQuant   training with int8 fake-quant: integer-valued codes times integer-valued
                weights, rescaled per output channel, in the int8 kernel's order, so the
                result equals the runtime's bit for bit (quant.qlinear_forward)
    Int8        the runtime: uint8 codes times int8 weights into int32 (kernels.int8_*)
"""
from __future__ import annotations

import numpy as np

from . import kernels, ops
from .quant import act_codes, code_matmul, fake_quant_act_backward, int8_linear, minmax, qlinear_forward

__all__ = ["Float", "FakeQuant", "Int8", "Observed", "grouped_matmul", "grouped_matmul_backward",
           "gather_rows"]


class Observed(dict):
    """observer name -> the statistic of what it saw in one forward pass ((min, max) by default;
    stat may be another, e.g. quant.percentile_stat(99.99)). A name seen twice (the routed and
    the shared experts' ffn_mid) keeps the widest of the two."""

    def __init__(self, stat=None):
        super().__init__()
        self.stat = stat or minmax

    def see(self, name, x):
        lo, hi = self.stat(x)
        if name in self:
            lo, hi = min(lo, self[name][0]), max(hi, self[name][1])
        self[name] = (lo, hi)


# ----------------------------------------------------------------------------
# the loop over experts: each expert's block of rows times its matrix
# ----------------------------------------------------------------------------
def gather_rows(x, tok, bounds):
    # x: (N, c) -> the experts' rows (R, c): x[tok]; tok None (the shared experts, moe.every_token):
    # all of x for each of the S experts, in order (S = 1: x itself, nothing copied)
    if tok is not None:
        return x[tok]
    S = len(bounds) - 1
    return x if S == 1 else np.tile(x, (S, 1))


def grouped_matmul(u, w, bounds, scale=None):
    # u: (R, in) grouped by expert, w: (E, in, out) -> (R, out); rows of expert e times w[e].
    # scale (fake-quant): (s_act, w_scale (E, 1, out)); u and w are then integer-valued and each
    # block is multiplied exactly (quant.code_matmul) and rescaled per output channel.
    # np.dot(..., out=block) writes each expert's rows in place; for 2-D operands it is
    # np.matmul's product with less overhead per call, which counts at a dozen rows an expert.
    y = np.empty((u.shape[0], w.shape[2]), dtype=u.dtype)
    spans = bounds.tolist()                                       # Python ints: cheaper to slice with
    for e in range(w.shape[0]):
        lo, hi = spans[e], spans[e + 1]
        if lo == hi:
            continue                                              # an expert with no rows does no work
        if scale is None:
            np.dot(u[lo:hi], w[e], out=y[lo:hi])
        else:
            code_matmul(u[lo:hi], w[e], out=y[lo:hi])
            y[lo:hi] *= u.dtype.type(scale[0]) * scale[1][e].reshape(-1)
    return y


def grouped_matmul_backward(dy, u, w, bounds):
    # dy: (R, out) -> du (R, in) = dy_e w[e]^T, dw (E, in, out) = u_e^T dy_e (0 for an expert with no rows)
    du = np.empty_like(u)
    dw = np.empty_like(w)
    spans = bounds.tolist()
    for e in range(w.shape[0]):
        lo, hi = spans[e], spans[e + 1]
        if lo == hi:
            dw[e] = 0.0
            continue
        np.dot(dy[lo:hi], w[e].T, out=du[lo:hi])
        np.dot(u[lo:hi].T, dy[lo:hi], out=dw[e])
    return du, dw


# ----------------------------------------------------------------------------
# float
# ----------------------------------------------------------------------------
class Float:
    """The float model. observed: an Observed to record each observer's input range in, or None."""

    def __init__(self, observed=None):
        self.observed = observed

    def linear(self, x, observer, W, b=None):
        if self.observed is not None:                             # (tested here, not in see(): one call less)
            self.observed.see(observer, x)
        return ops.linear_forward(x, W, b)

    def linear_backward(self, dy, cache):
        return ops.linear_backward(dy, cache)                     # dx, dW, db

    def experts_in(self, h, tok, w, g, observer, bounds):
        if self.observed is not None:
            self.observed.see(observer, h)
        w1, w3 = w[g + "w1"], w[g + "w3"]
        u = gather_rows(h, tok, bounds)                           # (R, d)
        return grouped_matmul(u, w1, bounds), grouped_matmul(u, w3, bounds), (u, w1, w3, bounds, None)

    def experts_in_backward(self, da, db, cache):
        # -> du (R, d) = da w1^T + db w3^T (the gathered rows' gradient), dw1, dw3
        u, w1, w3, bounds, mask = cache
        du, dw1 = grouped_matmul_backward(da, u, w1, bounds)
        du_b, dw3 = grouped_matmul_backward(db, u, w3, bounds)
        du += du_b
        return (du if mask is None else fake_quant_act_backward(du, mask)), dw1, dw3

    def experts_out(self, m, w, g, observer, bounds):
        if self.observed is not None:
            self.observed.see(observer, m)
        w2 = w[g + "w2"]
        return grouped_matmul(m, w2, bounds), (m, w2, bounds, None)

    def experts_out_backward(self, dy, cache):
        m, w2, bounds, mask = cache
        dm, dw2 = grouped_matmul_backward(dy, m, w2, bounds)
        return (dm if mask is None else fake_quant_act_backward(dm, mask)), dw2


# ----------------------------------------------------------------------------
# fake-quant: the op pair act_codes / clipped STE at each observer, integer-valued matmuls
# ----------------------------------------------------------------------------
class FakeQuant(Float):
    """aq: observer name -> (scale, zp); the weights are QWeights (quant.quant_weights).
    The backward is the float one on x_hat = x_c * scale and W_hat, through the clipped STE."""

    def __init__(self, aq, observed=None):
        super().__init__(observed)
        self.aq = aq

    def codes(self, name, x):
        # the op pair's forward: (x_c, its scale, the STE mask); x_hat = x_c * scale
        if self.observed is not None:
            self.observed.see(name, x)
        scale, zp = self.aq[name]
        x_c, mask = act_codes(x, scale, zp)
        return x_c, x.dtype.type(scale), mask

    def linear(self, x, observer, W, b=None):
        x_c, scale, mask = self.codes(observer, x)
        y, cache = qlinear_forward(x_c, scale, W, b)
        return y, (cache, mask)

    def linear_backward(self, dy, cache):
        cache, mask = cache
        dx, dw, db = ops.linear_backward(dy, cache)
        return fake_quant_act_backward(dx, mask), dw, db

    def experts_in(self, h, tok, w, g, observer, bounds):
        h_c, scale, mask = self.codes(observer, h)                # each token quantized once
        w1, w3 = w[g + "w1"], w[g + "w3"]
        u_c = gather_rows(h_c, tok, bounds)                       # (R, d) codes
        a = grouped_matmul(u_c, w1.w_q, bounds, (scale, w1.scale))
        b = grouped_matmul(u_c, w3.w_q, bounds, (scale, w3.scale))
        return a, b, (u_c * scale, w1.hat, w3.hat, bounds, gather_rows(mask, tok, bounds))

    def experts_out(self, m, w, g, observer, bounds):
        m_c, scale, mask = self.codes(observer, m)
        w2 = w[g + "w2"]
        return grouped_matmul(m_c, w2.w_q, bounds, (scale, w2.scale)), (m_c * scale, w2.hat, bounds, mask)


# ----------------------------------------------------------------------------
# integer: the runtime's int8 layers (no backward)
# ----------------------------------------------------------------------------
class Int8:
    """act: observer name -> (scale, zp). Weights as quant.pack_qweight packs them; the
    experts' w1 | w3 fused into one (E, d, 2f) matrix "w13" (integer products are exact,
    so fusing changes no value): one kernel call reads the rows' codes once for both."""

    observed = None

    def __init__(self, act):
        self.act = act

    def linear(self, x, observer, W, b=None):
        scale, zp = self.act[observer]
        return int8_linear(x, W, scale, zp, b), None

    def experts_in(self, h, tok, w, g, observer, bounds):
        wq, s, colsum, w4 = w[g + "w13"]
        if tok is None:                                           # the shared experts: every row
            tok = np.tile(np.arange(len(h)), len(bounds) - 1)
        ab = kernels.int8_experts(h, tok, bounds, wq, colsum, s, *self.act[observer], w4)    # (R, 2f)
        f = ab.shape[1] // 2
        return ab[:, :f], ab[:, f:], None

    def experts_out(self, m, w, g, observer, bounds):
        wq, s, colsum, w4 = w[g + "w2"]
        rows = np.arange(len(m))                                  # m's rows are already grouped
        return kernels.int8_experts(m, rows, bounds, wq, colsum, s, *self.act[observer], w4), None
