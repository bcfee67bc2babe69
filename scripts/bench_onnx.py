#!/usr/bin/env python3
"""The ONNX export against qz's runtime, in one process: file sizes, agreement, accuracy, latency.

    python scripts/bench_onnx.py                      # -> runs/bench_onnx/bench_onnx.json and .md
    python scripts/bench_onnx.py --rounds 5 --threads 1

The model is the shipped base command model (data/commands_base.safetensors), made int8 by
post-training min/max calibration on 16 batches of the real adaptation clips (no test clip);
both precisions are exported with qz.onnx and scored on the 465 real test-speaker clips at
top_k 1 and 2 through qz's runtime and through ONNX Runtime. Latency: batch 1 (one clip),
qz and ONNX Runtime in interleaved rounds (the order alternating), the median over rounds of
the mean of --calls calls; both with --threads threads (BLAS and ONNX Runtime's intra-op pool).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (default 9)")
    ap.add_argument("--calls", type=int, default=200, help="calls per timed sample (default 200)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS and ONNX Runtime threads (default 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_onnx")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from qz import checkpoint, export, ptq, runtime
    from qz import onnx as qz_onnx
    from qz.data import apply_input_norm, load_split

    args.out.mkdir(parents=True, exist_ok=True)
    params, cfg, meta = checkpoint.load(ROOT / "data" / "commands_base.safetensors")
    real = ROOT / "data" / "speech_commands_real.npz"
    norm = meta["input_norm"]
    train, test = (apply_input_norm(load_split(real, s), norm) for s in ("train", "test"))
    ranges = ptq.calibrate(params, cfg, (x for x, _ in train.eval_batches(32, 16)))
    res = {"machine": {"cpus": os.cpu_count(), "threads": args.threads}, "precisions": {}}
    lines = [f"*`python scripts/bench_onnx.py --threads {args.threads}`: {os.cpu_count()} cores, "
             f"{args.rounds} rounds of {args.calls} batch-1 calls*", "",
             "| precision | qz file | ONNX file | top_k | qz accuracy | ONNX Runtime accuracy | same argmax "
             "| max logit diff (rel.) | qz batch 1 | ONNX Runtime batch 1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for precision in ("fp32", "int8"):
        qz_file = args.out / f"commands.{precision}.safetensors"
        export.save_export(qz_file, params, cfg, precision, ranges if precision == "int8" else None,
                           labels=meta["labels"], input_norm=norm)
        m = runtime.load_model(qz_file)
        onnx_file = qz_onnx.export(runtime.load_model(qz_file, lean=False),
                                   args.out / f"commands.{precision}.onnx")
        sess = qz_onnx.session(onnx_file, threads=args.threads)
        row = {"qz_bytes": qz_file.stat().st_size, "onnx_bytes": onnx_file.stat().st_size, "top_k": {}}
        x1 = test.x[:1]
        for k in (2, 1):
            a, b = runtime.infer(m, test.x, top_k=k), qz_onnx.run(sess, test.x, k)
            acc = [float(np.mean(z.argmax(-1) == test.y)) for z in (a, b)]
            times = {"qz": [], "onnx": []}
            jobs = {"qz": lambda: runtime.infer(m, x1, top_k=k), "onnx": lambda: qz_onnx.run(sess, x1, k)}
            for job in jobs.values():
                job()
            for r in range(args.rounds):
                for name in (("qz", "onnx") if r % 2 == 0 else ("onnx", "qz")):
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        jobs[name]()
                    times[name].append((time.perf_counter() - t0) / args.calls)
            med = {n: float(np.median(t)) * 1e3 for n, t in times.items()}
            row["top_k"][k] = {"qz_accuracy": acc[0], "onnx_accuracy": acc[1],
                               "argmax_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
                               "max_abs_diff": float(np.abs(a - b).max()),
                               "max_rel_diff": float(np.abs(a - b).max() / np.abs(a).max()),
                               "qz_ms": med["qz"], "onnx_ms": med["onnx"]}
            t = row["top_k"][k]
            lines.append(f"| {precision} | {row['qz_bytes']:,} B | {row['onnx_bytes']:,} B | {k} | "
                         f"{t['qz_accuracy']:.4f} | {t['onnx_accuracy']:.4f} | {t['argmax_agreement']:.4f} | "
                         f"{t['max_rel_diff']:.1e} | {t['qz_ms']:.3f} ms | {t['onnx_ms']:.3f} ms |")
            print(lines[-1], flush=True)
        res["precisions"][precision] = row
    (args.out / "bench_onnx.json").write_text(json.dumps(res, indent=2))
    (args.out / "bench_onnx.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'bench_onnx.json'} and bench_onnx.md")


if __name__ == "__main__":
    main()
