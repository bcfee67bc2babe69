"""Fake quantization with straight-through gradients, and observers (docs/spec.md §3.1-3.2).

Conventions (each an explicit argument or constant, never a hidden default):

* weights: symmetric, per output channel, int8 in [-127, 127] (narrow range,
  so +-max is exactly representable and 0 is exactly 0);
  s[c] = max_k |W[k, c]| / 127, and s = 1 for an all-zero channel (the one
  place that guards 0/0: ``weight_scales``). For a stack of experts (E, in,
  out) each expert has its own scales; ``embed`` and ``pos`` have one scale
  per row. The scales are constants to the backward pass, so the weight STE
  is the identity: dW = dW_hat.
* activations: asymmetric, per tensor, uint8 in [0, 255] with a zero point,
  from an observed range (lo, hi) that is first widened to contain 0.
* rounding: ``np.rint`` (half to even) everywhere.

The clipped STE at the boundary (PyTorch's rule): with r = rint(x / scale + zp),
the gradient passes where 0 <= r <= 255 and is 0 where r < 0 or r > 255. So an
input that rounds exactly onto 0 or 255 (the edges themselves) still passes
its gradient; one that rounds to -1 or 256 does not.

Shapes: N rows, C channels.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import kernels
from .errors import InputError
from .ops import matmul

__all__ = ["QMIN_W", "QMAX_W", "QMAX_A", "weight_scales", "quantize_weight", "fake_quant_weight",
           "act_qparams", "fake_quant_act_forward", "fake_quant_act_backward",
           "EMA", "observe_update", "observer_names", "WEIGHT_AXES", "fake_quant_params",
           "pack_linear", "pack_qweight", "int8_linear", "minmax_update", "precision_sizes",
           "QWeight", "split_weight", "code_matmul", "EXACT_F32_IN", "minmax", "percentile_stat",
           "mean_update", "quant_weights", "act_codes", "qlinear_forward", "cat_out"]

QMIN_W, QMAX_W = -127, 127        # int8, narrow range
QMAX_A = 255                      # uint8
_round = np.rint                  # half to even; the one rounding function (tests swap in a surrogate)


# ----------------------------------------------------------------------------
# weights: symmetric, per output channel (or per row)
# ----------------------------------------------------------------------------
def weight_scales(w, axis):
    """max |w| / 127 reduced over `axis` (kept as a broadcastable dim); 1 for an all-zero channel,
    and for one whose max is so small (subnormal) that max / 127 rounds to 0 in w's dtype."""
    s = (np.max(np.abs(w), axis=axis, keepdims=True) / QMAX_W).astype(w.dtype)
    return np.where(s > 0, s, 1).astype(w.dtype)


def quantize_weight(w, axis):
    """-> (w_q int8, w_scale): w ~= w_q * w_scale. axis: the reduced (input) axis."""
    s = weight_scales(w, axis)
    return np.clip(_round(w / s), QMIN_W, QMAX_W).astype(np.int8), s


def fake_quant_weight(w, axis):
    """w_hat = rint(w / s) * s in w's dtype; its gradient is passed through unchanged (identity STE)."""
    return split_weight(w, axis).hat


class QWeight(NamedTuple):
    """A fake-quant weight kept in two parts, W_hat = w_q * scale.

    w_q holds the int8 values as floats of the model's dtype (integers up to 127
    are exact in float32); scale is broadcastable against it (a kept input axis).
    Keeping the parts apart lets the fake-quant forward do the integer kernel's
    arithmetic exactly (see qlinear_forward)."""
    w_q: np.ndarray
    scale: np.ndarray

    @property
    def hat(self):
        return (self.w_q * self.scale).astype(self.w_q.dtype)


def split_weight(w, axis):
    """w -> QWeight(clip(rint(w / s), -127, 127), s), both in w's dtype."""
    s = weight_scales(w, axis)
    return QWeight(np.clip(_round(w / s), QMIN_W, QMAX_W).astype(w.dtype), s)


# Which axis each quantized parameter reduces over to get its scales:
# linear weights (in, out) and expert stacks (E, in, out) reduce over `in`
# (axis -2: one scale per output channel); embed and pos reduce over the
# width (axis -1: one scale per row). Everything else stays float.
WEIGHT_AXES = {"in_proj.weight": -2, "wq": -2, "wk": -2, "wv": -2, "wo": -2, "w1": -2, "w3": -2, "w2": -2,
               "shared.w1": -2, "shared.w3": -2, "shared.w2": -2, "head.weight": -2, "embed": -1, "pos": -1}


def weight_axis(name):
    """The reduction axis for a parameter name, or None if it stays float."""
    if name in WEIGHT_AXES:
        return WEIGHT_AXES[name]
    leaf = name.split(".", 2)[-1] if name.startswith("blocks.") else name
    return WEIGHT_AXES.get(leaf)


def quant_weights(params):
    """The weights of the fake-quant model: a QWeight for every quantized matrix, W_hat for
    the row-quantized lookup tables (embed, pos: they are added, not multiplied), and
    the float parameters (norms, biases, gates) unchanged."""
    out = {}
    for name, p in params.items():
        axis = weight_axis(name)
        if axis is None:
            out[name] = p
        elif axis == -1:
            out[name] = fake_quant_weight(p, axis)
        else:
            out[name] = split_weight(p, axis)
    return out


def cat_out(*ws):
    """Concatenate weights along the output axis (fused q|k|v, w1|w3): floats or QWeights.
    Per-output-channel scales concatenate too, so fusing does not change the quantization."""
    if isinstance(ws[0], QWeight):
        return QWeight(np.concatenate([w.w_q for w in ws], axis=-1),
                       np.concatenate([w.scale for w in ws], axis=-1))
    return np.concatenate(ws, axis=-1)


def fake_quant_params(params):
    """Every quantized parameter replaced by its fake-quant value; the rest (norms, biases, gates) as is."""
    out = {}
    for name, p in params.items():
        axis = weight_axis(name)
        out[name] = p if axis is None else fake_quant_weight(p, axis)
    return out


def precision_sizes(params):
    """Bytes of the model at each precision, and bits per quantized weight including scales.

    fp32: every parameter as float32. fp16: every parameter as float16.
    int8 (docs/spec.md §3.3): quantized weights 1 byte each plus one float32 scale per
    output channel (per row for embed and pos, per expert per channel for expert
    stacks); norms, biases and the gate stay float32.
    """
    total = sum(p.size for p in params.values())
    q_weights = q_scales = kept = 0
    for name, p in params.items():
        axis = weight_axis(name)
        if axis is None:
            kept += p.size
        else:
            q_weights += p.size
            q_scales += p.size // p.shape[axis]
    int8 = q_weights + 4 * q_scales + 4 * kept
    return {"fp32_bytes": 4 * total, "fp16_bytes": 2 * total, "int8_bytes": int8,
            "int8_bits_per_quantized_weight": round(8 * (q_weights + 4 * q_scales) / max(q_weights, 1), 3),
            "int8_vs_fp32": round(int8 / (4 * total), 4), "fp16_vs_fp32": 0.5}


# ----------------------------------------------------------------------------
# activations: asymmetric, per tensor, uint8 with a zero point
# ----------------------------------------------------------------------------
def act_qparams(lo, hi):
    """(scale, zero_point) from an observed range, widened to contain 0 so that 0 is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / QMAX_A
    if scale == 0.0:
        scale = 1.0
    zp = float(np.clip(np.rint(-lo / scale), 0, QMAX_A))
    return scale, zp


def act_codes(x, scale, zp):
    """x -> (x_c, mask): x_c = clip(rint(x / scale + zp), 0, 255) - zp, the centred integer
    codes as floats of x's dtype (so x_hat = x_c * scale), and the clipped-STE mask."""
    r = _round(x / x.dtype.type(scale) + x.dtype.type(zp))
    mask = (r >= 0) & (r <= QMAX_A)                    # edges 0 and 255 included: gradient passes
    return (np.clip(r, 0, QMAX_A) - x.dtype.type(zp)).astype(x.dtype), mask


def fake_quant_act_forward(x, scale, zp):
    # x: any shape -> x_hat (same shape and dtype); cache the pass-through mask
    x_c, mask = act_codes(x, scale, zp)
    return (x_c * x.dtype.type(scale)).astype(x.dtype), mask


def fake_quant_act_backward(dx_hat, mask):
    # clipped STE: identity inside the representable range, 0 outside
    return dx_hat * mask


EXACT_F32_IN = 516    # 516 * 255 * 127 < 2**24: float32 sums this many code products exactly


def code_matmul(x_c, w_q, out=None):
    """x_c (rows, in) @ w_q (in, out) for integer-valued floats (activation codes minus their zero
    point, weight codes), exactly: the int32 accumulator of the int8 runtime. In float32 every partial
    sum is an exact integer while in <= EXACT_F32_IN; a wider layer sums in float64 (exact to 2**53)
    and rounds once to float32, as the runtime converts its accumulator. Writes into `out` if given."""
    if x_c.dtype == np.float32 and x_c.shape[-1] > EXACT_F32_IN:
        y = matmul(x_c.astype(np.float64), w_q.astype(np.float64)).astype(np.float32)
        if out is None:
            return y
        out[...] = y
        return out
    if out is None:
        return matmul(x_c, w_q)
    return np.dot(x_c, w_q, out=out)


def qlinear_forward(x_c, a_scale, qw, b=None):
    """The fake-quant linear layer x_hat @ W_hat (+ b), in the integer kernel's order:

        y = (x_c @ w_q) * (a_scale * w_scale) (+ b)

    x_c and w_q are integer-valued floats, so the matmul is exact (code_matmul:
    float32 for in <= 516, where 516 * 255 * 127 < 2**24, float64 beyond), and
    the rescale is the same float multiply the int8 runtime does on
    its int32 accumulators. That makes the fake-quant model and the int8
    runtime agree bit for bit, not just to rounding: with rounding differences a
    value near a .5 tie can land on different sides in the two models, and that
    one-step flip then propagates to the logits (pytorch/pytorch #88800).

    In real arithmetic y == x_hat @ W_hat, so the cache is ops.linear's
    (x_hat, W_hat, has_bias) and ops.linear_backward is the backward pass.
    x_c: (..., in), qw: QWeight with w_q (in, out), scale (1, out) -> y (..., out)
    """
    dt = x_c.dtype.type
    y = code_matmul(x_c, qw.w_q)                                # one 2-D GEMM, exact (ops.matmul)
    y *= dt(a_scale) * qw.scale.reshape(-1)
    if b is not None:
        y += b
    return y, ((x_c * dt(a_scale)).astype(x_c.dtype), qw.hat, b is not None)


# ----------------------------------------------------------------------------
# the real int8 linear layer (docs/spec.md §3.3)
# ----------------------------------------------------------------------------
def pack_linear(w):
    """W (in, out) float32 -> the integer kernel's operands (see pack_qweight)."""
    return pack_qweight(split_weight(np.asarray(w, np.float32), axis=-2))


def pack_qweight(qw, lean=False):
    """QWeight (..., in, out) -> (w int8 (..., in, out), w_scale float32 (..., out), colsum int32 (..., out),
    w4: the same int8 weights in the order of this CPU's SIMD microkernel (kernels.int8_pack: VNNI
    or AVX2), or None where there is none).

    colsum folds the activation zero point in once: sum_k (q_k - zp) w_kc =
    sum_k q_k w_kc - zp colsum_c. The scales are the fake-quant model's own
    float32 values, bit for bit. Leading axes: one set per expert.
    lean: keep one copy of the weights, the layout this process's kernels read (the runtime)."""
    w = np.ascontiguousarray(qw.w_q).astype(np.int8)
    colsum = w.astype(np.int32).sum(axis=-2).astype(np.int32)
    w4 = kernels.int8_pack(w)
    if lean and w4 is not None and kernels.USE_NUMBA:
        w = None                      # only the SIMD kernel will read these weights
    return w, np.ascontiguousarray(np.squeeze(qw.scale, axis=-2)).astype(np.float32), colsum, w4


def int8_linear(x, packed, scale, zp, bias=None):
    """y = x_hat @ W_hat (+ b), computed as integers (docs/spec.md §3.3):
    acc[c] = sum_k q[k] Wq[k, c] - zp colsum[c] (int32), y = acc * scale * s[c] (+ b).

    x: (..., in) float32; returns (..., out) float32, equal bit for bit to
    qlinear_forward (the fake-quant layer) on the same input (kernels.int8_linear)."""
    w, s, colsum, w4 = packed
    lead = x.shape[:-1]
    y = kernels.int8_linear(x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False), w, colsum, s,
                            scale, zp, None if bias is None else bias.astype(np.float32, copy=False), w4)
    return y.reshape(*lead, -1)


# ----------------------------------------------------------------------------
# observers: the first batch sets (lo, hi), later batches move them by an EMA
# ----------------------------------------------------------------------------
EMA = 0.01


def observer_names(cfg):
    """The observed tensors of docs/spec.md §3.2, in forward order."""
    names = ["in"] if cfg.mode == "classifier" else []
    for i in range(cfg.n_layers):
        names += [f"blocks.{i}.attn_in", f"blocks.{i}.attn_out", f"blocks.{i}.ffn_in", f"blocks.{i}.ffn_mid"]
    return names + ["head_in"]


def minmax(x):
    """The statistic the EMA and min/max observers see in a batch: (min, max)."""
    return float(x.min()), float(x.max())


def percentile_stat(p):
    """A percentile observer's statistic: the (100 - p)th and pth percentiles of the batch,
    so the few most extreme values (outliers that would stretch the grid) clip."""
    if not 50.0 < float(p) <= 100.0:
        raise InputError(f"percentile: expected a value in (50, 100], got {p}")

    def stat(x):
        lo, hi = np.percentile(x, [100.0 - float(p), float(p)])
        return float(lo), float(hi)
    return stat


def mean_update(ranges, batch_ranges, n_seen):
    """The percentile observer's calibration: the running mean of per-batch ranges
    (n_seen batches already averaged into `ranges`)."""
    out = dict(ranges)
    for name, (blo, bhi) in batch_ranges.items():
        lo, hi = out.get(name, (0.0, 0.0))
        out[name] = ((lo * n_seen + float(blo)) / (n_seen + 1), (hi * n_seen + float(bhi)) / (n_seen + 1))
    return out


def minmax_update(ranges, batch_minmax):
    """The min/max observer of post-training calibration: the widest range seen so far."""
    out = dict(ranges)
    for name, (bmin, bmax) in batch_minmax.items():
        lo, hi = out.get(name, (float(bmin), float(bmax)))
        out[name] = (min(lo, float(bmin)), max(hi, float(bmax)))
    return out


def observe_update(ranges, batch_minmax, ema=EMA):
    """New ranges dict: a name seen for the first time takes the batch's (min, max);
    a known one moves toward it by `ema`."""
    out = dict(ranges)
    for name, (bmin, bmax) in batch_minmax.items():
        if name not in out:
            out[name] = (float(bmin), float(bmax))
        else:
            lo, hi = out[name]
            out[name] = (lo + ema * (float(bmin) - lo), hi + ema * (float(bmax) - hi))
    return out
