"""The Qingzhou-mini model: parameters, forward, loss and gradients (docs/spec.md §2, §7).

This file only composes the op pairs of ``ops.py`` and ``moe.py``; every
gradient is written next to its forward there. Parameters are a flat dict of
arrays keyed by the spec's names (``config.param_shapes``).

    logits, aux   = forward(params, cfg, inputs, top_k=None)
    loss, grads   = loss_and_grads(params, cfg, inputs, targets, aux_coef=0.0)

Shape letters: B batch, T time, d width, V outputs, N = B * T.
"""
from __future__ import annotations

import numpy as np

from . import ops, quant
from .config import Config, param_shapes
from .errors import InputError
from .moe import moe_backward, moe_forward
from .quant import act_qparams, observer_names

__all__ = ["init_params", "forward", "loss_and_grads", "loss_grads_logits", "forward_stats", "observe_ranges",
           "act_quant_params", "validate_inputs"]


# ----------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------
def init_params(cfg: Config, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Random parameters with the spec's names and shapes.

    Values are drawn in float64 and cast, so float32 and float64 models from one
    seed hold the same numbers up to rounding. Linear weights are N(0, 1/fan_in)
    so activations keep unit scale; the two projections that write into the
    residual stream (wo, w2) are further scaled by 1/sqrt(2 n_layers), as in
    GPT-2, so the stream does not grow with depth. Norm gains start at 1,
    biases at 0.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise InputError(f"dtype: expected float32 or float64, got {dtype}")
    rng = np.random.default_rng(seed)
    resid = 1.0 / np.sqrt(2 * cfg.n_layers)
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("attn_norm", "ffn_norm", "final_norm"):
            arr = np.ones(shape)
        elif leaf == "bias":
            arr = np.zeros(shape)
        elif name == "embed":
            arr = rng.standard_normal(shape)
        elif name == "pos":
            arr = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = shape[-2]
            std = 1.0 / np.sqrt(fan_in) * (resid if leaf in ("wo", "w2") else 1.0)
            arr = std * rng.standard_normal(shape)
        params[name] = arr.astype(dtype)
    return params


# ----------------------------------------------------------------------------
# input checks (one clear ValueError instead of an IndexError deep inside)
# ----------------------------------------------------------------------------
def validate_inputs(cfg: Config, inputs, targets=None, top_k=None):
    if top_k is not None and (isinstance(top_k, bool) or not 1 <= int(top_k) <= cfg.n_experts):
        raise InputError(f"top_k: must be in 1..{cfg.n_experts}, got {top_k!r}")
    inputs = np.asarray(inputs)
    if cfg.mode == "lm":
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise InputError(f"inputs: LM mode expects int token ids (B, T), got {inputs.dtype} {inputs.shape}")
        if inputs.size and (inputs.min() < 0 or inputs.max() >= cfg.vocab_size):
            raise InputError(f"inputs: token ids must be in 0..{cfg.vocab_size - 1}")
    else:
        if inputs.ndim != 3 or inputs.shape[2] != cfg.input_dim:
            raise InputError(f"inputs: classifier mode expects features (B, T, {cfg.input_dim}), got {inputs.shape}")
        if not np.issubdtype(inputs.dtype, np.floating):
            raise InputError(f"inputs: features must be floating point, got {inputs.dtype}")
        if not np.all(np.isfinite(inputs)):
            raise InputError("inputs: features contain NaN or Inf")
    B, T = inputs.shape[:2]
    if B == 0 or T == 0:
        raise InputError(f"inputs: empty batch, shape {inputs.shape}")
    if T > cfg.max_len:
        raise InputError(f"inputs: sequence length {T} is longer than max_len={cfg.max_len}")
    if targets is not None:
        targets = np.asarray(targets)
        want = (B, T) if cfg.mode == "lm" else (B,)
        if targets.shape != want or not np.issubdtype(targets.dtype, np.integer):
            raise InputError(f"targets: expected int array of shape {want}, got {targets.dtype} {targets.shape}")
        if targets.min() < 0 or targets.max() >= cfg.n_out:
            raise InputError(f"targets: labels must be in 0..{cfg.n_out - 1}")
    return inputs, targets


# ----------------------------------------------------------------------------
# one transformer block: x + attention(norm(x)), then x + moe(norm(x))
# ----------------------------------------------------------------------------
def _qin(x, name, aq, observed):
    """The activation entering a quantized layer at observer `name` (docs/spec.md §3.2).

    Float model (aq None): x itself. Fake-quant model: (x_c, scale), the integer codes
    and their scale (quant.act_codes), plus the clipped-STE mask for the backward.
    observed (a dict, or None): records the (min, max) this observer saw, before quantization."""
    if observed is not None:
        observed[name] = observed.stat(x)
    if aq is None:
        return x, None
    scale, zp = aq[name]
    x_c, mask = quant.act_codes(x, scale, zp)
    return (x_c, scale), mask


def _fq_backward(dx, mask):
    return dx if mask is None else quant.fake_quant_act_backward(dx, mask)


def _linear(x_in, w, b=None):
    """x @ W + b: float (ops.linear_forward), or fake-quant when w is a QWeight and x_in the
    (codes, scale) of _qin (quant.qlinear_forward). Both caches suit ops.linear_backward."""
    if isinstance(w, quant.QWeight):
        return quant.qlinear_forward(*x_in, w, b)
    return ops.linear_forward(x_in, w, b)


def block_forward(x, params, i, cfg, k, aq=None, observed=None):
    # x: (B, T, d) -> (B, T, d); aq: observer name -> (scale, zp), or None for the float model
    # (with aq, the quantized weights in params are QWeights: quant.quant_weights)
    p = f"blocks.{i}."
    B, T, d = x.shape
    a_in, c_n1 = ops.rmsnorm_forward(x, params[p + "attn_norm"])
    a_in_q, m_ain = _qin(a_in, p + "attn_in", aq, observed)
    # q, k and v from one matmul with [wq | wk | wv] (d, 3d): one BLAS call, not three
    wqkv = quant.cat_out(params[p + "wq"], params[p + "wk"], params[p + "wv"])
    qkv, c_qkv = _linear(a_in_q, wqkv)                            # (B, T, 3d)
    q, kk, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    o, c_att = ops.attention_forward(q, kk, v, cfg.n_heads, cfg.causal)
    o_q, m_aout = _qin(o, p + "attn_out", aq, observed)
    a_out, c_o = _linear(o_q, params[p + "wo"])
    x = x + a_out
    h, c_n2 = ops.rmsnorm_forward(x, params[p + "ffn_norm"])
    shared = None
    if cfg.n_shared_experts:
        shared = (params[p + "shared.w1"], params[p + "shared.w3"], params[p + "shared.w2"])
    in_q = mid_q = None
    if aq is not None:
        in_q, mid_q = aq[p + "ffn_in"], aq[p + "ffn_mid"]
    m, aux, stats, c_moe = moe_forward(h.reshape(B * T, d), params[p + "gate"], params[p + "w1"],
                                       params[p + "w3"], params[p + "w2"], k, shared, in_q, mid_q,
                                       observe=observed.stat if observed is not None else False)
    if observed is not None:
        observed[p + "ffn_in"], observed[p + "ffn_mid"] = stats.pop("ffn_in"), stats.pop("ffn_mid")
    x = x + m.reshape(B, T, d)
    return x, aux, stats, (c_n1, m_ain, c_qkv, c_att, m_aout, c_o, c_n2, c_moe)


def block_backward(dx, daux, cache, i):
    # dx: (B, T, d) -> dx (B, T, d), grads of block i
    c_n1, m_ain, c_qkv, c_att, m_aout, c_o, c_n2, c_moe = cache
    p = f"blocks.{i}."
    B, T, d = dx.shape
    grads = {}
    dh, moe_grads = moe_backward(dx.reshape(B * T, d), daux, c_moe)
    for name, g in moe_grads.items():
        grads[p + name] = g
    dx_n2, grads[p + "ffn_norm"] = ops.rmsnorm_backward(dh.reshape(B, T, d), c_n2)
    dx = dx + dx_n2                                               # residual: both paths
    do, grads[p + "wo"], _ = ops.linear_backward(dx, c_o)
    dq, dk, dv = ops.attention_backward(_fq_backward(do, m_aout), c_att)
    da_in, dwqkv, _ = ops.linear_backward(np.concatenate([dq, dk, dv], axis=-1), c_qkv)
    da_in = _fq_backward(da_in, m_ain)
    grads[p + "wq"], grads[p + "wk"], grads[p + "wv"] = (dwqkv[:, j * d:(j + 1) * d] for j in range(3))  # views
    dx_n1, grads[p + "attn_norm"] = ops.rmsnorm_backward(da_in, c_n1)
    return dx + dx_n1, grads


# ----------------------------------------------------------------------------
# the whole model
# ----------------------------------------------------------------------------
class _Observed(dict):
    """observer name -> statistic of this batch; .stat is the statistic (quant.minmax by default)."""
    def __init__(self, observe):
        super().__init__()
        self.stat = observe if callable(observe) else quant.minmax


def _forward(params, cfg, inputs, k, aq=None, observe=False):
    """aq: observer name -> (scale, zp) turns on fake-quant (weights and activations), else float.

    Returns logits, aux, per-layer routing stats, caches, and (with observe)
    the (min, max) each observer saw in this batch, else None.
    """
    dtype = params["pos"].dtype
    B, T = inputs.shape[:2]
    caches, observed = {}, (_Observed(observe) if observe else None)
    if aq is not None:
        params = quant.quant_weights(params)  # weight STE is the identity: grads apply to the float weights
    if cfg.mode == "lm":
        x, caches["embed"] = ops.embedding_forward(inputs, params["embed"])     # (B, T, d)
    else:
        x_in, caches["in_q"] = _qin(inputs.astype(dtype, copy=False), "in", aq, observed)
        x, caches["in_proj"] = _linear(x_in, params["in_proj.weight"], params["in_proj.bias"])
    x = x + params["pos"][:T]
    aux = dtype.type(0.0)
    stats = []
    for i in range(cfg.n_layers):
        x, aux_i, st, caches[i] = block_forward(x, params, i, cfg, k, aq, observed)
        aux = aux + aux_i
        stats.append(st)
    x, caches["final_norm"] = ops.rmsnorm_forward(x, params["final_norm"])
    if cfg.mode == "classifier":
        x, caches["pool"] = ops.mean_pool_forward(x)                         # (B, d)
    x, caches["head_q"] = _qin(x, "head_in", aq, observed)
    logits, caches["head"] = _linear(x, params["head.weight"], params["head.bias"])
    return logits, aux, stats, caches, observed


def _backward(dlogits, daux, caches, cfg, T):
    grads = {}
    dx, grads["head.weight"], grads["head.bias"] = ops.linear_backward(dlogits, caches["head"])
    dx = _fq_backward(dx, caches["head_q"])
    if cfg.mode == "classifier":
        dx = ops.mean_pool_backward(dx, caches["pool"])                      # (B, T, d)
    dx, grads["final_norm"] = ops.rmsnorm_backward(dx, caches["final_norm"])
    for i in reversed(range(cfg.n_layers)):
        dx, g = block_backward(dx, daux, caches[i], i)
        grads.update(g)
    dpos = np.zeros((cfg.max_len, cfg.d_model), dtype=dx.dtype)
    dpos[:T] = dx.sum(axis=0)
    grads["pos"] = dpos
    if cfg.mode == "lm":
        grads["embed"] = ops.embedding_backward(dx, caches["embed"])
    else:
        _, grads["in_proj.weight"], grads["in_proj.bias"] = ops.linear_backward(dx, caches["in_proj"])
    return grads


def act_quant_params(cfg, quant):
    """quant={"ranges": {observer: (lo, hi)}} -> {observer: (scale, zp)}; None stays None (float model)."""
    if quant is None:
        return None
    if not isinstance(quant, dict) or not isinstance(quant.get("ranges"), dict):
        raise InputError('quant: expected {"ranges": {observer name: (lo, hi)}} or None')
    ranges = quant["ranges"]
    aq = {}
    for name in observer_names(cfg):
        if name not in ranges:
            raise InputError(f"quant: no range for observer {name!r}")
        lo, hi = ranges[name]
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"quant: range of {name!r} is not finite: {(lo, hi)}")
        aq[name] = act_qparams(lo, hi)
    return aq


def forward(params, cfg: Config, inputs, top_k=None, quant=None):
    """Logits and the summed load-balancing loss (docs/spec.md §2.3, §7).

    LM mode: int ids (B, T) -> logits (B, T, vocab_size).
    Classifier mode: features (B, T, input_dim) -> logits (B, n_classes).
    """
    aq = act_quant_params(cfg, quant)
    inputs, _ = validate_inputs(cfg, inputs, top_k=top_k)
    k = cfg.top_k if top_k is None else int(top_k)
    logits, aux, _, _, _ = _forward(params, cfg, inputs, k, aq)
    return logits, aux


def forward_stats(params, cfg: Config, inputs, top_k=None, quant=None):
    """Like forward, plus per-layer routing stats: {'load': (E,), 'entropy': float}."""
    aq = act_quant_params(cfg, quant)
    inputs, _ = validate_inputs(cfg, inputs, top_k=top_k)
    k = cfg.top_k if top_k is None else int(top_k)
    logits, aux, stats, _, _ = _forward(params, cfg, inputs, k, aq)
    for st in stats:            # computed here only: forward() and training do not need it
        probs = st.pop("probs")
        st["entropy"] = float(-np.mean(np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=1)))
    return logits, aux, stats


def observe_ranges(params, cfg: Config, inputs, top_k=None, quant=None, stat=None):
    """(min, max) of every observed tensor (docs/spec.md §3.2) in one forward pass.

    With quant=None the float model is run with pass-through observers (the
    first batch of QAT); with ranges, the fake-quant model (later batches).
    stat: another statistic to record instead, e.g. quant.percentile_stat(99.99)."""
    inputs, _ = validate_inputs(cfg, inputs, top_k=top_k)
    k = cfg.top_k if top_k is None else int(top_k)
    return _forward(params, cfg, inputs, k, act_quant_params(cfg, quant), observe=stat or True)[4]


def loss_and_grads(params, cfg: Config, inputs, targets, aux_coef=0.0, top_k=None, quant=None):
    """Mean cross-entropy + aux_coef * aux, and its gradient for every parameter.

    Returns (loss: float, grads: dict with the same keys, shapes and dtypes as params).
    """
    loss, grads, _ = loss_grads_logits(params, cfg, inputs, targets, aux_coef, top_k, quant)
    return loss, grads


def loss_grads_logits(params, cfg: Config, inputs, targets, aux_coef=0.0, top_k=None, quant=None,
                      observed=None, soft_targets=None):
    """loss_and_grads plus the logits of the same forward pass (the trainer's accuracy needs them).

    observed: a dict to fill with each observer's (min, max) in this batch (QAT), or None.
    soft_targets: (B, V) class probabilities (mixup, label smoothing) to train toward instead of
    one-hot `targets`; the loss is then the cross-entropy -mean(sum(soft * log p)).
    """
    aq = act_quant_params(cfg, quant)
    inputs, targets = validate_inputs(cfg, inputs, targets, top_k=top_k)
    k = cfg.top_k if top_k is None else int(top_k)
    logits, aux, _, caches, seen = _forward(params, cfg, inputs, k, aq, observe=observed is not None)
    if observed is not None:
        observed.update(seen)
    V = logits.shape[-1]
    ce, ce_cache = ops.cross_entropy_forward(logits.reshape(-1, V), targets.reshape(-1))
    if soft_targets is not None:
        probs, soft = ce_cache[0], np.asarray(soft_targets, logits.dtype)
        if soft.shape != probs.shape:
            raise InputError(f"soft_targets: expected shape {probs.shape}, got {soft.shape}")
        ce = -np.mean(np.sum(soft * np.log(np.maximum(probs, np.finfo(probs.dtype).tiny)), axis=1))
        dlogits = ((probs - soft) / probs.shape[0]).astype(logits.dtype).reshape(logits.shape)
    else:
        dlogits = ops.cross_entropy_backward(logits.dtype.type(1.0), ce_cache).reshape(logits.shape)
    loss = float(ce) + float(aux_coef) * float(aux)
    grads = _backward(dlogits, logits.dtype.type(aux_coef), caches, cfg, inputs.shape[1])
    return loss, grads, logits
