"""The Qingzhou-mini model: parameters, forward, loss and gradients (docs/spec.md §2, §7).

This file only composes the op pairs of ``ops.py`` and ``moe.py``; every
gradient is written next to its forward there. Parameters are a flat dict of
arrays keyed by the spec's names (``config.param_shapes``). The block is written
once, here: how its linear layers compute (float, fake-quant, the runtime's int8)
is an argument, ``lin`` (``linear.py``).

    logits, aux   = forward(params, cfg, inputs, top_k=None)
    loss, grads   = loss_and_grads(params, cfg, inputs, targets, aux_coef=0.0)

Shape letters: B batch, T time, d width, V outputs, N = B * T.
"""
from __future__ import annotations

import numpy as np

from . import ops, quant
from .config import Config, param_shapes
from .errors import InputError
from .linear import FakeQuant, Float, Observed
from .moe import moe_backward, moe_forward
from .quant import act_qparams, observer_names
from .streams import stream

__all__ = ["init_params", "forward", "loss_and_grads", "loss_grads_logits", "forward_stats", "observe_ranges",
           "act_quant_params", "validate_inputs", "weights", "block_forward", "block_backward", "run",
           "budget_of"]


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
    rng = stream(seed, "init")
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
def validate_inputs(cfg: Config, inputs, targets=None, top_k=None, expert_budget=None):
    if top_k is not None and (isinstance(top_k, bool) or not 1 <= int(top_k) <= cfg.n_experts):
        raise InputError(f"top_k: must be in 1..{cfg.n_experts}, got {top_k!r}")
    if expert_budget is not None and (isinstance(expert_budget, bool)
                                      or not isinstance(expert_budget, (int, np.integer))
                                      or not 1 <= expert_budget <= cfg.n_experts):
        raise InputError(f"expert_budget: must be in 1..{cfg.n_experts}, got {expert_budget!r}")
    inputs = np.asarray(inputs)
    if cfg.mode == "lm":
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise InputError(f"inputs: LM mode expects int token ids (B, T), "
                             f"got {inputs.dtype} {inputs.shape}")
        if inputs.size and (inputs.min() < 0 or inputs.max() >= cfg.vocab_size):
            raise InputError(f"inputs: token ids must be in 0..{cfg.vocab_size - 1}")
    else:
        if inputs.ndim != 3 or inputs.shape[2] != cfg.input_dim:
            raise InputError(f"inputs: classifier mode expects features (B, T, {cfg.input_dim}), "
                             f"got {inputs.shape}")
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
            raise InputError(f"targets: expected int array of shape {want}, "
                             f"got {targets.dtype} {targets.shape}")
        if targets.min() < 0 or targets.max() >= cfg.n_out:
            raise InputError(f"targets: labels must be in 0..{cfg.n_out - 1}")
    return inputs, targets


# ----------------------------------------------------------------------------
# one transformer block: x + attention(norm(x)), then x + moe(norm(x)). The one
# block of qz: training (float and fake-quant), the int8/fp16 runtime and KV-cache
# generation all run it; `lin` (qz/linear.py) says how its linear layers compute.
# ----------------------------------------------------------------------------
def weights(params, cfg, quantized=False):
    """The parameters as the block reads them: q|k|v of each block as one (d, 3d) matrix
    ("blocks.{i}.wqkv": one matmul, not three); quantized: every quantized matrix a QWeight
    (quant.quant_weights; its STE is the identity, so gradients apply to the float weights)."""
    w = quant.quant_weights(params) if quantized else dict(params)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        w[p + "wqkv"] = quant.cat_out(w[p + "wq"], w[p + "wk"], w[p + "wv"])
    return w


def block_forward(x, w, i, cfg, k, lin, kv=None, train=True, budget=None):
    # x: (B, T, d) -> (B, T', d), aux, routing stats, cache; w: weights(...) or the runtime's
    # kv: None, or generation's KV-cache step kv(i, q, k, v) -> o (B, T', d): attention over the
    # cached keys, for the last T' positions (T' = T, or 1 when only the last one is wanted)
    # train=False (serving): no aux loss or routing stats (aux 0, stats None)
    # budget: the expert budget (moe.moe_forward): None, m, or this layer's (B, E) allowed experts
    p = f"blocks.{i}."
    B, T, d = x.shape
    a_in, c_n1 = ops.rmsnorm_forward(x, w[p + "attn_norm"])
    qkv, c_qkv = lin.linear(a_in, p + "attn_in", w[p + "wqkv"])  # (B, T, 3d)
    q, kk, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    if kv is None:
        o, c_att = ops.attention_forward(q, kk, v, cfg.n_heads, cfg.causal)   # (B, T, d)
    else:
        o, c_att = kv(i, q, kk, v), None
        x = x[:, T - o.shape[1]:]                                 # the residual of those positions
    a_out, c_o = lin.linear(o, p + "attn_out", w[p + "wo"])
    x = x + a_out
    h, c_n2 = ops.rmsnorm_forward(x, w[p + "ffn_norm"])
    m, aux, stats, c_moe = moe_forward(h.reshape(-1, d), w, p, k, cfg.n_shared_experts, lin, train, budget, B)
    x = x + m.reshape(x.shape)
    return x, aux, stats, (c_n1, c_qkv, c_att, c_o, c_n2, c_moe)


def block_backward(dx, daux, cache, i, lin):
    # dx: (B, T, d) -> dx (B, T, d), grads of block i
    c_n1, c_qkv, c_att, c_o, c_n2, c_moe = cache
    p = f"blocks.{i}."
    B, T, d = dx.shape
    grads = {}
    dh, moe_grads = moe_backward(dx.reshape(B * T, d), daux, c_moe, lin)
    for name, g in moe_grads.items():
        grads[p + name] = g
    dx_n2, grads[p + "ffn_norm"] = ops.rmsnorm_backward(dh.reshape(B, T, d), c_n2)
    dx = dx + dx_n2                                               # residual: both paths
    do, grads[p + "wo"], _ = lin.linear_backward(dx, c_o)
    dq, dk, dv = ops.attention_backward(do, c_att)
    da_in, dwqkv, _ = lin.linear_backward(np.concatenate([dq, dk, dv], axis=-1), c_qkv)
    # views of dwqkv, no copies
    grads[p + "wq"], grads[p + "wk"], grads[p + "wv"] = (dwqkv[:, j * d:(j + 1) * d] for j in range(3))
    dx_n1, grads[p + "attn_norm"] = ops.rmsnorm_backward(da_in, c_n1)
    return dx + dx_n1, grads


# ----------------------------------------------------------------------------
# the whole model
# ----------------------------------------------------------------------------
def run(w, cfg, inputs, k, lin, train=True, budget=None):
    """docs/spec.md §2.3 on weights as the block reads them -> logits, aux, per-layer routing
    stats, caches. Training calls it through _forward, the runtime (runtime.infer) directly,
    with train=False: no aux loss, and no backward follows, so each block's caches go as soon
    as it returns (held for every layer, the intermediates cost fresh memory: 1.5x the time
    of an LM batch of 8)."""
    dtype = w["pos"].dtype
    T = inputs.shape[1]
    caches = {}
    if cfg.mode == "lm":
        x, caches["embed"] = ops.embedding_forward(inputs, w["embed"])          # (B, T, d)
    else:
        x, caches["in_proj"] = lin.linear(inputs.astype(dtype, copy=False), "in", w["in_proj.weight"],
                                          w["in_proj.bias"])
    x = x + w["pos"][:T]
    aux = dtype.type(0.0)
    stats = []
    for i in range(cfg.n_layers):
        x, aux_i, st, cache = block_forward(x, w, i, cfg, k, lin, train=train, budget=budget)
        caches[i] = cache if train else None
        aux = aux + aux_i
        stats.append(st)
    x, caches["final_norm"] = ops.rmsnorm_forward(x, w["final_norm"])
    if cfg.mode == "classifier":
        x, caches["pool"] = ops.mean_pool_forward(x)                         # (B, d)
    logits, caches["head"] = lin.linear(x, "head_in", w["head.weight"], w["head.bias"])
    return logits, aux, stats, caches


def _forward(params, cfg, inputs, k, aq=None, observe=False, budget=None):
    """aq: observer name -> (scale, zp) turns on fake-quant (weights and activations), else float.
    observe: True, or a statistic (quant.percentile_stat(p)), records what each observer saw.

    Returns logits, aux, per-layer routing stats, caches, the Observed (or None), and lin."""
    observed = Observed(observe if callable(observe) else None) if observe else None
    lin = FakeQuant(aq, observed) if aq is not None else Float(observed)
    logits, aux, stats, caches = run(weights(params, cfg, aq is not None), cfg, inputs, k, lin, budget=budget)
    return logits, aux, stats, caches, observed, lin


def _backward(dlogits, daux, caches, cfg, T, lin):
    grads = {}
    dx, grads["head.weight"], grads["head.bias"] = lin.linear_backward(dlogits, caches["head"])
    if cfg.mode == "classifier":
        dx = ops.mean_pool_backward(dx, caches["pool"])                      # (B, T, d)
    dx, grads["final_norm"] = ops.rmsnorm_backward(dx, caches["final_norm"])
    for i in reversed(range(cfg.n_layers)):
        dx, g = block_backward(dx, daux, caches[i], i, lin)
        grads.update(g)
    dpos = np.zeros((cfg.max_len, cfg.d_model), dtype=dx.dtype)
    dpos[:T] = dx.sum(axis=0)
    grads["pos"] = dpos
    if cfg.mode == "lm":
        grads["embed"] = ops.embedding_backward(dx, caches["embed"])
    else:
        _, grads["in_proj.weight"], grads["in_proj.bias"] = lin.linear_backward(dx, caches["in_proj"])
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


def budget_of(cfg, expert_budget):
    """The budget the block applies: None for none or E (docs/spec.md §4: m = E is off), else m."""
    return None if expert_budget is None or int(expert_budget) >= cfg.n_experts else int(expert_budget)


def forward(params, cfg: Config, inputs, top_k=None, quant=None, expert_budget=None):
    """Logits and the summed load-balancing loss (docs/spec.md §2.3, §4, §7).

    LM mode: int ids (B, T) -> logits (B, T, vocab_size).
    Classifier mode: features (B, T, input_dim) -> logits (B, n_classes).
    expert_budget m: each input (row of the batch) uses only its m experts of highest mean gate
    probability, per layer; top_k is clipped to m.
    """
    aq = act_quant_params(cfg, quant)
    inputs, _ = validate_inputs(cfg, inputs, top_k=top_k, expert_budget=expert_budget)
    k = cfg.top_k if top_k is None else int(top_k)
    logits, aux = _forward(params, cfg, inputs, k, aq, budget=budget_of(cfg, expert_budget))[:2]
    return logits, aux


def forward_stats(params, cfg: Config, inputs, top_k=None, quant=None, expert_budget=None):
    """Like forward, plus per-layer routing stats: {'load': (E,), 'entropy': float} (and
    'allowed' (B, E), each input's allowed experts, under an expert budget)."""
    aq = act_quant_params(cfg, quant)
    inputs, _ = validate_inputs(cfg, inputs, top_k=top_k, expert_budget=expert_budget)
    k = cfg.top_k if top_k is None else int(top_k)
    logits, aux, stats = _forward(params, cfg, inputs, k, aq, budget=budget_of(cfg, expert_budget))[:3]
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


def loss_and_grads(params, cfg: Config, inputs, targets, aux_coef=0.0, top_k=None, quant=None,
                   expert_budget=None):
    """Mean cross-entropy + aux_coef * aux, and its gradient for every parameter.

    Returns (loss: float, grads: dict with the same keys, shapes and dtypes as params).
    Under an expert budget the allowed experts are a choice, like top-k's: no gradient flows
    through which experts are allowed, only through the probabilities of those chosen.
    """
    loss, grads, _ = loss_grads_logits(params, cfg, inputs, targets, aux_coef, top_k, quant,
                                       expert_budget=expert_budget)
    return loss, grads


def loss_grads_logits(params, cfg: Config, inputs, targets, aux_coef=0.0, top_k=None, quant=None,
                      observed=None, soft_targets=None, expert_budget=None):
    """loss_and_grads plus the logits of the same forward pass (the trainer's accuracy needs them).

    observed: a dict to fill with each observer's (min, max) in this batch (QAT), or None.
    soft_targets: (B, V) class probabilities (mixup, label smoothing) to train toward instead of
    one-hot `targets`; the loss is then the cross-entropy -mean(sum(soft * log p)).
    """
    aq = act_quant_params(cfg, quant)
    inputs, targets = validate_inputs(cfg, inputs, targets, top_k=top_k, expert_budget=expert_budget)
    k = cfg.top_k if top_k is None else int(top_k)
    logits, aux, _, caches, seen, lin = _forward(params, cfg, inputs, k, aq, observe=observed is not None,
                                                 budget=budget_of(cfg, expert_budget))
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
    grads = _backward(dlogits, logits.dtype.type(aux_coef), caches, cfg, inputs.shape[1], lin)
    return loss, grads, logits
