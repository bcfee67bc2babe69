"""qz generate: continue a prompt with a KV-cached decoder."""
from __future__ import annotations

import argparse
import sys
import time

from .common import UserError, _add_governor_args, _emit, _governor


def cmd_generate(args):
    """Continue a prompt with a KV-cached decoder; stream to a terminal, then one metrics line."""
    from ..generate import complete, encode, metrics_line
    from ..runtime import load_bundle
    bundle = load_bundle(args.checkpoint)
    cfg = bundle.cfg
    if cfg.mode != "lm":
        raise UserError(f"{args.checkpoint[0]} is a classifier; generate needs a language model")
    prompt = encode(args.prompt)
    if prompt.size == 0:
        raise UserError("--prompt: give at least one character")
    if prompt.max() >= cfg.vocab_size:
        raise UserError(f"--prompt: has bytes outside the model's vocabulary of {cfg.vocab_size}")
    if args.sample_top_k is not None and args.sample_top_k < 1:
        raise UserError(f"--sample-top-k: must be >= 1, got {args.sample_top_k}")
    gov = _governor(args, cfg.top_k)
    stream = not args.json and sys.stdout.isatty()
    if stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    t0 = time.perf_counter()
    out = complete(bundle, prompt, args.max_new_tokens, temperature=args.temperature,
                   sample_top_k=args.sample_top_k, seed=args.seed, moe_top_k=args.moe_top_k,
                   precision=args.precision, kv_cache=args.kv_cache, expert_budget=args.expert_budget,
                   plan_fn=gov.plan if gov is not None else None,
                   on_token=(lambda piece: (sys.stdout.write(piece), sys.stdout.flush())) if stream else None)
    seconds = time.perf_counter() - t0
    if stream:
        print()
        print(metrics_line(out.metrics))
        return 0
    _emit(args, {"text": out.text, "new_tokens": out.metrics["new_tokens"], "seconds": round(seconds, 3),
                 "metrics": out.metrics}, [out.text, metrics_line(out.metrics)])
    return 0


def add_parser(sub):
    g = sub.add_parser("generate", help="sample text from a character language model",
                       description="Continue a prompt with a trained character LM, one byte at a time, "
                       "with a KV cache: the prompt runs once (prefill), then each new byte runs alone. "
                       "Give a training checkpoint and/or exports (qz export) of the same model; "
                       "prints time to first token, prefill and decode tokens/s and peak RSS at the end.")
    g.add_argument("checkpoint", nargs="+", help="checkpoint or export file(s), at most one per precision")
    g.add_argument("--prompt", default="And God said", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    g.add_argument("--sample-top-k", type=int, help="sample only among the k most likely next bytes")
    g.add_argument("--top-k", dest="sample_top_k", type=int, help=argparse.SUPPRESS)   # the old name
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--moe-top-k", type=int, help="experts per token (default: the config's top_k)")
    g.add_argument("--expert-budget", type=int, help="use only the m experts per layer the prompt likes "
                   "best, for the whole request (docs/spec.md §4; default: all)")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="which loaded model serves (default the most precise; a missing one falls back)")
    g.add_argument("--kv-cache", choices=("fp32", "int8"), default="fp32",
                   help="KV cache storage: fp32 (exact) or int8 (per token and head, ~1/3.6 the memory)")
    _add_governor_args(g, "off", " (the plan is read once per request: a KV cache belongs to one precision; "
                       "--precision and --moe-top-k win over it)")
    g.add_argument("--json", action="store_true", help="print text and metrics as JSON")
    g.set_defaults(func=cmd_generate)
