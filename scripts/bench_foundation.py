#!/usr/bin/env python3
"""Benchmark the float model: training step and batch-1 forward, numba vs NumPy path.

Both paths are timed in one process, interleaved round by round (numba,
numpy, numba, numpy, ...) so that machine noise hits both alike; each figure
is the median over all rounds. Two configs from the foundation issue:

* kws:     d_model 64, 4 heads, 2 layers, 8 experts top-2, d_ff 128,
           12 classes, 49 frames x 13 features, batch 32
* char_lm: d_model 256, 8 heads, 4 layers, 8 experts top-2, d_ff 512,
           1 shared expert, seq 128, batch 8

    python scripts/bench_foundation.py                 # table on stdout
    python scripts/bench_foundation.py --json out.json --rounds 15
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qz import kernels, model  # noqa: E402
from qz.config import preset  # noqa: E402
from qz.memory import keep_freed_memory  # noqa: E402

CASES = {
    "kws": dict(preset="kws", overrides={}, batch=32, seq=49),
    "char_lm": dict(preset="char_lm", overrides={}, batch=8, seq=128),
}


def make_batch(cfg, B, T, rng):
    if cfg.mode == "lm":
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    return rng.standard_normal((B, T, cfg.input_dim)).astype(np.float32), rng.integers(0, cfg.n_classes, B)


def timed(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench_case(name, rounds, reps):
    spec = CASES[name]
    cfg = preset(spec["preset"], **spec["overrides"])
    params = model.init_params(cfg, seed=0)
    rng = np.random.default_rng(0)
    x, y = make_batch(cfg, spec["batch"], spec["seq"], rng)
    x1 = x[:1]
    jobs = {
        "train_step": lambda: model.loss_and_grads(params, cfg, x, y, aux_coef=0.01),
        "forward_b1": lambda: model.forward(params, cfg, x1),
    }
    paths = ["numba", "numpy"] if kernels.NUMBA_AVAILABLE else ["numpy"]
    times = {(j, p): [] for j in jobs for p in paths}
    for p in paths:  # warm-up: compile (or load the cache) and touch memory
        kernels.USE_NUMBA = p == "numba"
        for fn in jobs.values():
            fn()
            fn()
    for _ in range(rounds):
        for p in paths:
            kernels.USE_NUMBA = p == "numba"
            for j, fn in jobs.items():
                times[(j, p)].append(timed(fn, reps[j]))
    kernels.USE_NUMBA = kernels.NUMBA_AVAILABLE and os.environ.get("QZ_NUMBA", "1") != "0"
    out = {"config": cfg.to_dict(), "batch": spec["batch"], "seq": spec["seq"]}
    for (j, p), ts in times.items():
        out[f"{j}_{p}_ms"] = round(1000 * float(np.median(ts)), 3)
    if "numba" in paths:
        for j in jobs:
            out[f"{j}_speedup"] = round(out[f"{j}_numpy_ms"] / out[f"{j}_numba_ms"], 3)
    out["train_steps_per_s_numba"] = round(1000 / out["train_step_numba_ms"], 2) if "numba" in paths else None
    out["train_steps_per_s_numpy"] = round(1000 / out["train_step_numpy_ms"], 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="kws,char_lm", help="comma-separated: " + ", ".join(CASES))
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds; the median is reported")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                    help="tuned: keep freed memory as `qz` does (qz.memory); default: glibc as it comes")
    args = ap.parse_args(argv)
    if args.allocator == "tuned":
        keep_freed_memory()
    results = {"allocator": args.allocator,
               "machine": {"python": platform.python_version(), "numpy": np.__version__,
                           "cpus": os.cpu_count(), "numba": kernels.NUMBA_AVAILABLE}, "cases": {}}
    for name in args.cases.split(","):
        reps = {"train_step": 3 if name == "kws" else 1, "forward_b1": 20}
        results["cases"][name] = r = bench_case(name, args.rounds, reps)
        print(f"{name:8s} train step: numba {r.get('train_step_numba_ms', float('nan')):8.2f} ms  "
              f"numpy {r['train_step_numpy_ms']:8.2f} ms  "
              f"speedup {r.get('train_step_speedup', float('nan')):.2f}x | "
              f"forward b=1: numba {r.get('forward_b1_numba_ms', float('nan')):6.2f} ms  "
              f"numpy {r['forward_b1_numpy_ms']:6.2f} ms  "
              f"speedup {r.get('forward_b1_speedup', float('nan')):.2f}x",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
