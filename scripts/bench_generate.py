"""KV-cache generation against the PyTorch twin: time to first token, prefill and
decode tokens/s (issue 8's assistant-path bars).

A char_lm-sized model (docs/spec.md §2: d 256, 4 layers, 8 experts top-2, 1 shared) with
random weights (speed does not depend on training), a 64-token prompt and 64 greedy
new tokens. Per round, in rotated order with a settle between libraries:

* qz fp32 and qz int8 (`generate.complete`, the path of `qz generate`): time to first
  token (prefill + first sample), prefill tok/s, decode tok/s and ms per decode step;
* the PyTorch twin of scripts/bench.py, same weights: prefill = one forward over the
  prompt, and the full re-forward a runtime without a KV cache pays per new token, at
  the decode steps' mean context (96 tokens).

Bars: qz TTFT <= 0.7x the twin's prefill; a qz decode step <= 0.5x the twin's
re-forward; int8 decode >= 1.5x fp32 decode. Medians over --rounds; writes
runs/bench/generate.json and generate.md.

Usage: python scripts/bench_generate.py [--rounds 9] [--smoke] [--no-torch]
"""
import os
import sys

if __name__ == "__main__":   # thread counts before NumPy / torch load (as scripts/bench.py)
    for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_v, "2")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import qz  # noqa: E402
import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from qz import generate, model, runtime  # noqa: E402
from qz.memory import keep_freed_memory  # noqa: E402

PROMPT, NEW = 64, 64
BARS = {"ttft_vs_twin_prefill": 0.7, "decode_step_vs_twin_reforward": 0.5, "int8_decode_speedup": 1.5}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds to sleep when switching between qz and torch (default 0.5)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model, 2 rounds, no settle (the test)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    ap.add_argument("--out", default=os.path.join("runs", "bench"), help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.settle = 2, 0.0
    if args.rounds < 1:
        ap.error("--rounds: must be >= 1")
    return args


def build(smoke, seed):
    if smoke:
        cfg = qz.preset("char_lm", d_model=32, n_heads=2, n_layers=2, n_experts=4, d_ff=64, max_len=32)
        prompt, new = 8, 8
    else:
        cfg, prompt, new = qz.preset("char_lm"), PROMPT, NEW
    params = model.init_params(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    calib = rng.integers(0, cfg.vocab_size, (4, cfg.max_len))
    ranges = model.observe_ranges(params, cfg, calib)
    models = {"fp32": runtime.prepare(params, cfg, "fp32"),
              "int8": runtime.prepare(params, cfg, "int8", ranges)}
    ids = rng.integers(0, cfg.vocab_size, prompt + new)
    return cfg, params, models, ids, prompt, new


def qz_run(m, ids, prompt, new):
    c = generate.complete(m, list(ids[:prompt]), new, temperature=0.0, kv_cache="fp32")
    mt = c.metrics
    return {"ttft_ms": mt["ttft_s"] * 1e3, "prefill_tok_s": mt["prefill_tok_s"],
            "decode_tok_s": mt["decode_tok_s"], "decode_step_ms": 1e3 / mt["decode_tok_s"],
            "peak_rss_mib": mt["peak_rss_kib"] / 1024}


def twin_jobs(torch, params, cfg, ids, prompt, new):
    """The twin's prefill and re-forward, after checking its logits equal qz's."""
    import bench
    tp = bench.twin_params(torch, params)
    ctx = prompt + new // 2                                       # the decode steps' mean context

    def forward(n):
        x = torch.from_numpy(np.asarray(ids[:n])[None])
        with torch.inference_mode():
            return bench.twin_forward(torch, tp, cfg, x, cfg.top_k)[0]

    ref, _ = model.forward(params, cfg, np.asarray(ids[:prompt])[None])
    err = bench.rel_err(forward(prompt).numpy(), ref)
    if err > bench.TOL["logits_f32"]:
        raise RuntimeError(f"the twin's logits differ from qz's (relative error {err:.2e})")

    def timed(n):
        t = time.perf_counter()
        forward(n)
        return (time.perf_counter() - t) * 1e3
    return {"prefill_ms": lambda: timed(prompt), "reforward_ms": lambda: timed(ctx)}, ctx


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    cfg, params, models, ids, prompt, new = build(args.smoke, args.seed)
    torch, note = None, None
    if not args.no_torch:
        try:
            import torch
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        except ImportError:
            note = "torch not installed: twin rows skipped (pip install torch)"
    jobs = {p: (lambda m=m: qz_run(m, ids, prompt, new)) for p, m in models.items()}
    ctx = None
    if torch is not None:
        tj, ctx = twin_jobs(torch, params, cfg, ids, prompt, new)
        jobs["twin"] = lambda: {k: f() for k, f in tj.items()}
    names = list(jobs)
    for n in names:                                               # warm-up: compile, touch memory
        jobs[n]()
        jobs[n]()
    samples = {n: [] for n in names}
    last = None
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            lib = "torch" if n == "twin" else "qz"
            if last is not None and lib != last and args.settle:
                time.sleep(args.settle)                           # the other library's threads go idle
            last = lib
            samples[n].append(jobs[n]())
        el = time.perf_counter() - t0
        print(f"[bench_generate] round {r + 1}/{args.rounds}  elapsed {el:.0f} s  "
              f"ETA {el / (r + 1) * (args.rounds - r - 1):.0f} s", file=sys.stderr, flush=True)
    med = {n: {k: float(np.median([s[k] for s in samples[n]])) for k in samples[n][0]} for n in names}
    res = {"model": cfg.to_dict(), "prompt_tokens": prompt, "new_tokens": new, "rounds": args.rounds,
           "threads": os.environ.get("OMP_NUM_THREADS"), "medians": med, "note": note}
    rows = [("int8 decode vs fp32 decode",
             f"{med['int8']['decode_tok_s']:,.0f} vs {med['fp32']['decode_tok_s']:,.0f} tok/s",
             med["int8"]["decode_tok_s"] / med["fp32"]["decode_tok_s"], BARS["int8_decode_speedup"], False)]
    if "twin" in med:
        tw = med["twin"]
        for p in ("fp32", "int8"):
            rows.append((f"qz {p} TTFT vs twin prefill ({prompt} tokens)",
                         f"{med[p]['ttft_ms']:.2f} vs {tw['prefill_ms']:.2f} ms",
                         med[p]["ttft_ms"] / tw["prefill_ms"], BARS["ttft_vs_twin_prefill"], True))
        for p in ("fp32", "int8"):
            rows.append((f"qz {p} decode step vs twin re-forward ({ctx} tokens)",
                         f"{med[p]['decode_step_ms']:.2f} vs {tw['reforward_ms']:.2f} ms",
                         med[p]["decode_step_ms"] / tw["reforward_ms"], BARS["decode_step_vs_twin_reforward"],
                         True))
    res["bars"] = [{"row": a, "figure": b, "ratio": round(c, 3), "bar": d,
                    "pass": bool(c <= d if le else c >= d)} for a, b, c, d, le in rows]
    table = ["| row | figure | ratio | bar | status |", "|---|---|---|---|---|"]
    table += [f"| {b['row']} | {b['figure']} | {b['ratio']:.2f} | {'≤' if 'vs twin' in b['row'] else '≥'} "
              f"{b['bar']} | {'PASS' if b['pass'] else 'FAIL'} |" for b in res["bars"]]
    table.append("")
    table.append(f"qz fp32: prefill {med['fp32']['prefill_tok_s']:,.0f} tok/s, decode "
                 f"{med['fp32']['decode_tok_s']:,.0f} tok/s; int8: prefill "
                 f"{med['int8']['prefill_tok_s']:,.0f} tok/s, decode "
                 f"{med['int8']['decode_tok_s']:,.0f} tok/s; peak RSS "
                 f"{max(med[p]['peak_rss_mib'] for p in ('fp32', 'int8')):.0f} MiB. {note or ''}".rstrip())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "generate.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "generate.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    return res


if __name__ == "__main__":
    main()
