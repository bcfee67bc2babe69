"""Text generation from a byte-level language model, with a KV cache (docs/spec.md §2.3, §3.3, §4).

A request runs in two phases on a runtime ``Model`` (fp32, fp16 or int8):

    prefill      the prompt once through every block, as ``runtime.infer`` does, storing
                 each layer's keys and values in a cache preallocated to max_len; the
                 last block's outputs only at the last position (its logits are the
                 only ones wanted)
    decode step  ONE new token through every block: x = embed[id] + pos[t]; its query
                 attends over the cached keys and its own; its k, v are appended

Both run the model's one block (``model.block_forward``) with the runtime's linear
layers (``runtime.linear_mode``) and the attention going through the cache, so an int8
model quantizes its activations exactly as ``infer`` does. Prefill is ``infer``'s
computation up to its last block, whose
last position is computed as a decode step is (``prefill(every_position=True)``
is ``infer``, bit for bit). A decode step differs from ``infer`` on the same
prefix only in how the float attention of the last query is summed (one row
here, a whole (T, T) block there): about 1e-7 relative in fp32. In an int8
model such a difference can, rarely, move an activation across a rounding
boundary of its uint8 code; see the tests.

Beyond max_len. Positions are learned and absolute (``pos`` has max_len rows), so
the cache cannot slide. The cache holds at most max_len tokens; when the next
token does not fit, the window restarts at the last ``max_len // 2`` tokens (the
new one included), which are re-prefilled. Cost: one prefill of max_len // 2
tokens every max_len - max_len // 2 + 1 new tokens, so about one extra token of
prefill work per generated token (plus that prefill's (M/2)^2 attention), where
re-running the whole window would cost max_len tokens per token; the price is a
context that drops to max_len // 2 tokens right after each refill.

KV cache precision. ``fp32`` (default) stores k and v as float32. ``int8``
stores, per layer, token and head, symmetric int8 codes in [-127, 127] with one
float32 scale = max|x| / 127 over the head's D values (1 for an all-zero vector,
``quant.weight_scales``), rounding half to even: each stored value is within
scale / 2 = max|x| / 254 of the true one, 1.125 bytes per value at D = 32
instead of 4. Only decode steps read the codes; prefill attends to its exact k, v.

A cache is built from one model's activations, so it belongs to one precision:
the governor's plan (``plan_fn``) is therefore read once per request, never
between tokens.

Shape letters: B batch, T time, t cached tokens, M = max_len, L layers, d width,
H heads, D = d / H head width, V vocabulary.
"""
from __future__ import annotations

import codecs
import resource
import time
from dataclasses import dataclass

import numpy as np

from . import ops, parallel, quant, runtime
from .errors import InputError
from .export import PRECISIONS
from .model import block_forward, budget_of, validate_inputs

__all__ = ["KV_CACHES", "KVCache", "new_cache", "prefill", "decode_step", "attend", "Decoder",
           "sample", "Completion", "complete", "metrics_line", "generate", "encode", "decode"]

KV_CACHES = ("fp32", "int8")


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------
# the KV cache: preallocated to max_len, written in place
# ----------------------------------------------------------------------------
@dataclass
class KVCache:
    """Keys and values of every layer; positions 0 .. length - 1 are filled."""
    k: np.ndarray                     # (L, B, H, M, D) float32, or int8 codes
    v: np.ndarray                     # (L, B, H, M, D)
    k_scale: np.ndarray | None        # (L, B, H, M) float32, int8 cache only
    v_scale: np.ndarray | None
    length: int = 0
    allowed: list | None = None       # under an expert budget: each layer's (B, E) allowed experts,
                                      # chosen from the prompt at prefill, kept for the request


def new_cache(cfg, batch: int = 1, kv_cache: str = "fp32") -> KVCache:
    """An empty cache for `batch` sequences of up to cfg.max_len tokens."""
    if kv_cache not in KV_CACHES:
        raise InputError(f"kv_cache: expected one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
    H = cfg.n_heads
    shape = (cfg.n_layers, batch, H, cfg.max_len, cfg.d_model // H)
    if kv_cache == "fp32":
        return KVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32), None, None)
    return KVCache(np.zeros(shape, np.int8), np.zeros(shape, np.int8),
                   np.ones(shape[:-1], np.float32), np.ones(shape[:-1], np.float32))


def _store(cache, i, k, v, t0):
    # k, v: (B, T, d) -> layer i, positions t0 .. t0 + T - 1
    H, T = cache.k.shape[2], k.shape[1]
    for buf, sbuf, x in ((cache.k, cache.k_scale, k), (cache.v, cache.v_scale, v)):
        xh = ops.split_heads(x, H)                                         # (B, H, T, D)
        if sbuf is None:
            buf[i, :, :, t0:t0 + T] = xh
        else:                                                     # per (token, head) symmetric int8
            q, s = quant.quantize_weight(xh, axis=-1)             # (B, H, T, D) int8, (B, H, T, 1)
            buf[i, :, :, t0:t0 + T], sbuf[i, :, :, t0:t0 + T] = q, s[..., 0]


def _load(cache, i, t):
    # -> keys, values of layer i at positions 0 .. t - 1: (B, H, t, D) float32
    if cache.k_scale is None:
        return cache.k[i, :, :, :t], cache.v[i, :, :, :t]        # views, no copy
    return (cache.k[i, :, :, :t] * cache.k_scale[i, :, :, :t, None],
            cache.v[i, :, :, :t] * cache.v_scale[i, :, :, :t, None])


def attend(q, k, v):
    """One query per sequence against t keys: q (B, H, 1, D), k, v (B, H, t, D) -> (B, H, 1, D).

    The steps of ops.attention for its last row: raw scores, minus their
    max (exp cannot overflow), times 1/sqrt(D), exp, normalised. No mask: every
    cached key is in the query's past."""
    s = q @ k.swapaxes(-1, -2)                                    # (B, H, 1, t)
    s = (s - s.max(axis=-1, keepdims=True)) * np.float32(1.0 / np.sqrt(q.shape[-1]))
    p = np.exp(s)
    p *= np.float32(1.0) / p.sum(axis=-1, keepdims=True)
    return p @ v                                                  # (B, H, 1, D)


# ----------------------------------------------------------------------------
# prefill and decode steps: the model's block (model.block_forward), with its
# attention going through the cache
# ----------------------------------------------------------------------------
def _head(model, lin, x):
    # x: (B, d) -> logits (B, V); or (B, T, d) -> (B, T, V)
    x, _ = ops.rmsnorm_forward(x, model.w["final_norm"])
    return lin.linear(x, "head_in", model.w["head.weight"], model.w["head.bias"])[0]


def _moe_k(model, moe_top_k):
    E = model.cfg.n_experts
    if moe_top_k is None:
        return model.cfg.top_k
    if isinstance(moe_top_k, bool) or not 1 <= int(moe_top_k) <= E:
        raise InputError(f"moe_top_k: must be in 1..{E}, got {moe_top_k!r}")
    return int(moe_top_k)


def prefill(model, ids, cache: KVCache, moe_top_k=None, every_position=False, expert_budget=None,
            allowed=None):
    """Run ids (B, T) from position 0, filling the cache; -> logits of the last position (B, V).

    Only the last position's logits are asked for, so the last block computes k and v at every
    position (the cache needs them) but its query, attention, wo, MoE, the final norm and the
    head at the last position only, as llama.cpp does for the tokens whose logits are not
    requested: a quarter of a 4-block prefill's expert work is skipped. That last query
    attends over the block's exact keys and values by `attend`, as a decode step does, so the
    logits equal the full forward's to the decode tolerance and the cache bit for bit.
    every_position=True runs the last block and the head on every position instead: then the
    logits equal runtime.infer(model, ids, moe_top_k)[:, -1] bit for bit (a BLAS product's
    bits can depend on its row count, so the head must see the same rows as infer's).
    expert_budget m (docs/spec.md §4): each sequence's allowed experts are chosen per layer from
    the whole prompt (so the last block runs every position) and kept in the cache for the
    decode steps; `allowed` (the list a previous prefill kept) reuses a request's sets at a refill."""
    cfg = model.cfg
    if cfg.mode != "lm" or not cfg.causal:
        raise InputError("prefill: a KV cache needs a causal language model")
    ids, _ = validate_inputs(cfg, ids, top_k=moe_top_k, expert_budget=expert_budget)
    budget = budget_of(cfg, expert_budget) if allowed is None else allowed
    every_position = every_position or budget is not None
    k = _moe_k(model, moe_top_k)
    B, T = ids.shape
    H = cfg.n_heads
    if B != cache.k.shape[1]:
        raise InputError(f"prefill: {B} sequences for a cache of batch {cache.k.shape[1]}")
    lin = runtime.linear_mode(model)

    def kv(i, q, kk, vv):                                         # (B, T, d) each -> o
        _store(cache, i, kk, vv, 0)
        if i == cfg.n_layers - 1 and not every_position:          # from here on, the last position only
            o = attend(ops.split_heads(q[:, -1:], H), ops.split_heads(kk, H), ops.split_heads(vv, H))
            return ops.merge_heads(o)                             # (B, 1, d)
        return ops.attention_forward(q, kk, vv, H, True)[0]       # (B, T, d); prefill attends exactly

    x = model.w["embed"][ids] + model.w["pos"][:T]                # (B, T, d)
    cache.allowed = [] if budget is not None else None
    for i in range(cfg.n_layers):
        layer = budget[i] if isinstance(budget, list) else budget
        x, _, stats, _ = block_forward(x, model.w, i, cfg, k, lin, kv, train=False, budget=layer)
        if budget is not None:
            cache.allowed.append(stats["allowed"])                # (B, E), kept for the decode steps
    cache.length = T
    if every_position:   # the head on every row too: the same GEMM as infer's, so the same bits
        return _head(model, lin, x)[:, -1]                        # (B, V)
    return _head(model, lin, x[:, -1])                            # (B, V)


def decode_step(model, ids, cache: KVCache, moe_top_k=None):
    """One new token per sequence, ids (B,), at position cache.length; -> logits (B, V)."""
    cfg, t = model.cfg, cache.length
    if t >= cfg.max_len:
        raise InputError(f"decode_step: the cache is full ({t} = max_len tokens); prefill a shorter window")
    ids = np.asarray(ids).reshape(-1, 1)                          # (B, 1)
    ids, _ = validate_inputs(cfg, ids, top_k=moe_top_k)
    k = _moe_k(model, moe_top_k)
    H = cfg.n_heads
    lin = runtime.linear_mode(model)

    def kv(i, q, kk, vv):                                         # (B, 1, d) each -> o (B, 1, d)
        _store(cache, i, kk, vv, t)
        keys, vals = _load(cache, i, t + 1)                       # (B, H, t + 1, D)
        return ops.merge_heads(attend(ops.split_heads(q, H), keys, vals))

    x = model.w["embed"][ids] + model.w["pos"][t]                 # (B, 1, d)
    for i in range(cfg.n_layers):                                 # the prompt's allowed experts, if any
        budget = cache.allowed[i] if cache.allowed is not None else None
        x = block_forward(x, model.w, i, cfg, k, lin, kv, train=False, budget=budget)[0]
    cache.length = t + 1
    return _head(model, lin, x[:, 0])                             # (B, V)


class Decoder:
    """One sequence's decoding state: a model, its KV cache, and `window`, the ids held in
    the cache (window[j] sits at position j). `refills` counts beyond-max_len restarts."""

    def __init__(self, model, moe_top_k=None, kv_cache="fp32", expert_budget=None):
        self.model, self.moe_top_k, self.expert_budget = model, _moe_k(model, moe_top_k), expert_budget
        self.cache = new_cache(model.cfg, 1, kv_cache)
        self.keep = max(1, model.cfg.max_len // 2)                # window kept at a refill
        self.window: list[int] = []
        self.refills = 0

    def start(self, prompt_ids):
        """Prefill the last max_len ids of the prompt; -> next-token logits (V,)."""
        ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
        if not ids:
            raise InputError("prompt: give at least one token")
        self.window = ids[-self.model.cfg.max_len:]
        return prefill(self.model, np.array([self.window]), self.cache, self.moe_top_k,
                       expert_budget=self.expert_budget)[0]

    def feed(self, token: int):
        """Append a token; -> next-token logits (V,): a decode step, or a refill when full."""
        cfg = self.model.cfg
        if not 0 <= int(token) < cfg.vocab_size:
            raise InputError(f"token: must be in 0..{cfg.vocab_size - 1}, got {token}")
        if len(self.window) < cfg.max_len:
            logits = decode_step(self.model, [token], self.cache, self.moe_top_k)[0]
            self.window.append(int(token))
            return logits
        self.window = (self.window + [int(token)])[-self.keep:]     # full: restart at the last half
        self.refills += 1
        return prefill(self.model, np.array([self.window]), self.cache, self.moe_top_k,
                       expert_budget=self.expert_budget, allowed=self.cache.allowed)[0]   # the request's sets


# ----------------------------------------------------------------------------
# sampling and the request loop
# ----------------------------------------------------------------------------
def sample(logits, temperature: float, sample_top_k, rng: np.random.Generator) -> int:
    """Next token from logits (V,): argmax at temperature 0, else softmax(logits / temperature)
    over the `sample_top_k` largest (all when None; ties at the cut are kept)."""
    z = np.asarray(logits, np.float64)
    if temperature == 0:
        return int(np.argmax(z))
    z = z / temperature
    if sample_top_k:
        cut = np.partition(z, -min(sample_top_k, z.size))[-min(sample_top_k, z.size)]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))


@dataclass
class Completion:
    ids: np.ndarray       # prompt + new tokens, int64
    text: str             # all of ids as UTF-8 text (bad bytes replaced)
    metrics: dict


def _pick(source, precision, moe_top_k, plan_fn):
    # -> (Model, precision wanted, mode, moe top_k); explicit arguments win over the plan
    bundle = source if isinstance(source, runtime.Bundle) else runtime.Bundle({source.precision: source})
    plan = plan_fn() if plan_fn is not None else None             # once per request
    want = precision or (plan.precision if plan is not None else None)
    want = want or next(p for p in PRECISIONS if p in bundle.models)
    if want not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {want!r}")
    model, _ = bundle.pick(want)
    if moe_top_k is None and plan is not None and plan.top_k is not None:
        moe_top_k = min(plan.top_k, bundle.cfg.n_experts)
    return model, want, getattr(plan, "mode", "fixed"), moe_top_k, getattr(plan, "threads", None)


def _run(model, prompt_ids, n_new, temperature, sample_top_k, seed, moe_top_k, kv_cache, on_id,
         expert_budget=None):
    # the sampling loop, timed; -> (new ids, the Decoder, timings)
    if temperature < 0:
        raise InputError(f"temperature: must be >= 0, got {temperature}")
    if sample_top_k is not None and sample_top_k < 1:
        raise InputError(f"sample_top_k: must be >= 1, got {sample_top_k}")
    if n_new < 0:
        raise InputError(f"max_new_tokens: must be >= 0, got {n_new}")
    if np.asarray(prompt_ids).size == 0:
        raise InputError("prompt: give at least one token")
    rng = np.random.default_rng(seed)
    dec = Decoder(model, moe_top_k, kv_cache, expert_budget)
    new, tm = [], {"prefill_s": None, "ttft_s": None, "decode_s": 0.0, "prompt_tokens": 0}
    if n_new == 0:
        return new, dec, tm
    t0 = time.perf_counter()
    logits = dec.start(prompt_ids)
    tm["prefill_s"], tm["prompt_tokens"] = time.perf_counter() - t0, len(dec.window)
    new.append(sample(logits, temperature, sample_top_k, rng))
    tm["ttft_s"] = time.perf_counter() - t0
    on_id(new[-1])
    for _ in range(n_new - 1):                                    # callbacks are not timed
        t1 = time.perf_counter()
        new.append(sample(dec.feed(new[-1]), temperature, sample_top_k, rng))
        tm["decode_s"] += time.perf_counter() - t1
        on_id(new[-1])
    return new, dec, tm


def complete(source, prompt_ids, max_new_tokens: int, *, temperature: float = 0.8, sample_top_k=None,
             seed=0, moe_top_k=None, precision=None, kv_cache: str = "fp32", plan_fn=None,
             on_token=None, expert_budget=None) -> Completion:
    """Continue a prompt with a runtime Model or Bundle, streaming text (docs/spec.md §4).

    precision / moe_top_k: None takes them from ``plan_fn()`` (a governor plan with
    .precision and .top_k, read once), else the best precision in the bundle and the
    config's top_k; a missing precision falls back as ``Bundle.pick`` does.
    sample_top_k: sample among that many most likely tokens (not the MoE's top_k).
    on_token(text_piece) gets the text as it is decoded (a multi-byte character once
    complete). Metrics: ttft_s = prefill + first sample; prefill_tok_s over the prompt
    window; decode_tok_s over the tokens after the first (refills included, None if
    there are none); peak_rss_kib is the process's peak resident set (ru_maxrss).
    expert_budget m (docs/spec.md §4): each layer's m allowed experts are chosen from the prompt
    and kept for the whole request (refills included)."""
    model, want, mode, moe_top_k, threads = _pick(source, precision, moe_top_k, plan_fn)
    cfg = model.cfg
    if cfg.mode != "lm" or cfg.vocab_size > 256:
        raise InputError("generate: needs a byte-level language model (vocab_size <= 256)")
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def on_id(i):
        piece = utf8.decode(bytes([i]))
        if piece and on_token is not None:
            on_token(piece)

    k = _moe_k(model, moe_top_k)
    # critical mode: one thread for the whole request (qz.parallel), as runtime.Runtime does
    with parallel.limit_threads(threads):
        new, dec, tm = _run(model, prompt_ids, max_new_tokens, temperature, sample_top_k, seed, k, kv_cache,
                            on_id, expert_budget)
    tail = utf8.decode(b"", final=True)                           # an unfinished character -> U+FFFD
    if tail and on_token is not None:
        on_token(tail)
    ids = np.concatenate([np.asarray(prompt_ids, np.int64).reshape(-1), np.array(new, np.int64)])
    n_dec = len(new) - 1
    metrics = {
        "precision": model.precision, "precision_wanted": want, "mode": mode, "moe_top_k": k,
        "kv_cache": kv_cache, "threads": threads, "prompt_tokens": tm["prompt_tokens"],
        "new_tokens": len(new),
        "refills": dec.refills,
        "ttft_s": tm["ttft_s"],
        "prefill_tok_s": tm["prompt_tokens"] / tm["prefill_s"] if tm["prefill_s"] else None,
        "decode_tok_s": n_dec / tm["decode_s"] if n_dec > 0 and tm["decode_s"] > 0 else None,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    return Completion(ids, decode(ids), metrics)


def metrics_line(m: dict) -> str:
    """The one-line report of complete()'s metrics."""
    def rate(x):
        return f"{x:,.0f} tok/s" if x is not None else "n/a"
    head = f"[{m['precision']}, moe_top_k {m['moe_top_k']}, kv {m['kv_cache']}]"
    ttft = f"ttft {m['ttft_s'] * 1e3:.1f} ms" if m["ttft_s"] is not None else "no new tokens"
    return (f"{head} {ttft} | prefill {rate(m['prefill_tok_s'])} ({m['prompt_tokens']} tokens) | "
            f"decode {rate(m['decode_tok_s'])} ({m['new_tokens']} new, {m['refills']} refills) | "
            f"peak RSS {m['peak_rss_kib'] / 1024:.0f} MiB")


def generate(params, cfg, prompt_ids, n_new, temperature=0.8, top_k_tokens=None, seed=0, top_k=None,
             on_token=None):
    """The float-parameter entry point (kept for scripts): -> ids (prompt + n_new).

    Prepares an fp32 runtime model and decodes with the cache; on_token(id) gets each id.
    top_k_tokens is the sampling top-k, top_k the MoE's."""
    if cfg.mode != "lm":
        raise InputError("generate: needs a language model (vocab_size set)")
    model = runtime.prepare(params, cfg, "fp32")
    new, _, _ = _run(model, prompt_ids, n_new, temperature, top_k_tokens, seed, top_k, "fp32",
                  on_token if on_token is not None else (lambda i: None))
    return np.concatenate([np.asarray(prompt_ids, np.int64).reshape(-1), np.array(new, np.int64)])
