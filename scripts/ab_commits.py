#!/usr/bin/env python3
"""Time qz at another commit against the working tree, in one process, on the same jobs.

    python scripts/ab_commits.py 1228962              # 9 interleaved rounds of every job
    python scripts/ab_commits.py HEAD~3 --rounds 15 --jobs "infer,generate"

The other commit's qz/ is extracted (git archive) into a temporary folder as the package
``qz_base`` and imported beside ``qz``; both build the same models from the same seed and
run the same jobs (runtime inference at fp32 and int8, a training step float and
fake-quant, KV-cache generation) in interleaved rounds, the order alternating; a sample
is the mean over calls filling --min-sample seconds, the figure the median over rounds,
the ratio new / base. Threads: --threads for BLAS (set before numpy loads).
"""
import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def extract(rev, into):
    """qz/ of commit `rev` -> into/qz_base (its imports are relative, so it imports as a package)."""
    git = ["git", "-C", str(ROOT), "archive", rev, "qz"]
    raw = subprocess.run(git, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(into, filter="data")
    (Path(into) / "qz").rename(Path(into) / "qz_base")


def jobs(pkg, np):
    import importlib
    for mod in ("config", "model", "runtime", "generate"):
        importlib.import_module(f"{pkg.__name__}.{mod}")
    kws = pkg.config.Config(d_model=64, n_heads=4, n_layers=2, n_experts=8, top_k=2, d_ff=128, max_len=49,
                            n_shared_experts=1, input_dim=13, n_classes=12)
    lm = pkg.config.Config(d_model=128, n_heads=4, n_layers=4, n_experts=8, top_k=2, d_ff=256, max_len=128,
                           vocab_size=256)
    out, rng = {}, np.random.default_rng(0)
    for name, cfg in (("kws", kws), ("lm", lm)):
        p = pkg.model.init_params(cfg, seed=0)
        if name == "kws":
            xs = {b: rng.standard_normal((b, 49, 13)).astype(np.float32) for b in (1, 32)}
            y = rng.integers(0, 12, 32)
        else:
            xs = {b: rng.integers(0, 256, (b, 128)) for b in (1, 8)}
            y = rng.integers(0, 256, (8, 128))
        big = max(xs)
        ranges = pkg.model.observe_ranges(p, cfg, xs[big])
        for prec in ("fp32", "int8"):
            m = pkg.runtime.prepare(p, cfg, prec, ranges)
            for b, x in xs.items():
                out[f"{name} infer {prec} batch {b}"] = (lambda m=m, x=x: pkg.runtime.infer(m, x))
        out[f"{name} train step batch {big}"] = (
            lambda p=p, c=cfg, x=xs[big], y=y: pkg.model.loss_and_grads(p, c, x, y, 0.01))
        out[f"{name} QAT step batch {big}"] = (
            lambda p=p, c=cfg, x=xs[big], y=y, r=ranges: pkg.model.loss_and_grads(p, c, x, y, 0.01,
                                                                                quant={"ranges": r}))
        if name == "lm":
            m = pkg.runtime.prepare(p, cfg, "int8", ranges)
            out["lm generate int8, 32 tokens"] = (
                lambda m=m: pkg.generate.complete(m, [65, 66, 67], 32, seed=0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("rev", help="the commit to compare with (anything git understands)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--min-sample", type=float, default=0.05, help="seconds per sample (default 0.05)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", help="comma-separated substrings: only the jobs whose name has one")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    tmp = tempfile.mkdtemp(prefix="qz_ab_")
    extract(args.rev, tmp)
    sys.path[:0] = [tmp, str(ROOT)]
    import qz
    import qz_base
    from qz.memory import keep_freed_memory
    keep_freed_memory()                       # as the qz command does: no page faults from freed blocks
    A, B = jobs(qz_base, np), jobs(qz, np)
    if args.jobs:
        keep = args.jobs.split(",")
        A = {k: v for k, v in A.items() if any(s in k for s in keep)}
    res = {k: ([], []) for k in A}

    def sample(f):
        n, t0 = 0, time.perf_counter()
        while True:
            f()
            n += 1
            if time.perf_counter() - t0 > args.min_sample:
                return (time.perf_counter() - t0) / n

    for k in A:
        A[k](), B[k]()                        # warm-up: numba compiles or loads its cache
    for r in range(args.rounds):
        for k in A:
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                res[k][i].append(sample((A, B)[i][k]))
    print(f"*`python scripts/ab_commits.py {args.rev} --rounds {args.rounds} --threads {args.threads}`, "
          f"{os.cpu_count()} cores*\n")
    print(f"| job | {args.rev} (ms) | working tree (ms) | ratio |\n|---|---|---|---|")
    for k, (a, b) in res.items():
        ma, mb = float(np.median(a)) * 1e3, float(np.median(b)) * 1e3
        print(f"| {k} | {ma:.3f} | {mb:.3f} | {mb / ma:.3f} |")


if __name__ == "__main__":
    main()
