"""The demo's int8 section: PTQ and QAT on the command model, exported and run as integers.

Given the trained float command model:

1. PTQ baseline: calibrate min/max observers on training batches (qz/ptq.py);
2. QAT: continue training from the float weights with fake-quant int8 on
   (observers updating, then frozen), choosing the step on validation voices,
   as the float model was chosen;
3. export fp32 / fp16 / int8 files and compare their sizes;
4. score each int8 model with the integer runtime on the unseen-voice test set,
   at top_k 2 and 1, beside the float model;
5. time the fp32 and int8 runtimes at batch 1 and 32 (median of repeats,
   both in this process).
"""
from __future__ import annotations

import time

import numpy as np

from .export import save_export
from .optim import adamw_init
from .ptq import calibrate
from .runtime import accuracy, infer, load_model, prepare
from .train import TrainConfig, TrainState, train

__all__ = ["quantize_commands", "runtime_latency"]


def runtime_latency(models, x, batches=(1, 32), repeats=(200, 20)):
    """{precision: {batch: median ms}} with the models timed in turn, in one process."""
    out = {name: {} for name in models}
    for b, n in zip(batches, repeats):
        xb = x[:b].astype(np.float32)
        for m in models.values():
            infer(m, xb)                                      # warm-up (and JIT compile)
        times = {name: [] for name in models}
        for _ in range(n):                                    # interleaved: drift hits every model alike
            for name, m in models.items():
                t0 = time.perf_counter()
                infer(m, xb)
                times[name].append(time.perf_counter() - t0)
        for name in models:
            out[name][b] = round(1000 * float(np.median(times[name])), 3)
    return out


def quantize_commands(cfg, tcfg, state, train_data, val_data, test_data, out_dir, qat_steps=400,
                      progress=True, log=print):
    """-> the report's "int8" section; writes commands.{fp32,fp16,int8}.safetensors in out_dir."""
    t0 = time.perf_counter()
    seed = tcfg.seed
    meta = {"input_norm": state.extra.get("input_norm"), "labels": state.extra.get("labels")}
    fp32 = prepare(state.params, cfg, "fp32")
    rep = {"fp32": {f"test_accuracy_top{k}": accuracy(fp32, test_data, k) for k in (2, 1)}}

    # 1. PTQ: min/max over 16 training batches, the float model untouched
    batches = (train_data.batch(s, 64, seed + 1)[0] for s in range(16))
    ptq_ranges = calibrate(state.params, cfg, batches, "minmax")
    ptq = prepare(state.params, cfg, "int8", ptq_ranges)
    rep["ptq_int8"] = {f"test_accuracy_top{k}": accuracy(ptq, test_data, k) for k in (2, 1)}

    # 2. QAT: fake-quant from the first step, observers frozen for the last quarter
    params = {n: p.copy() for n, p in state.params.items()}
    qcfg = TrainConfig(steps=qat_steps, batch_size=tcfg.batch_size, lr=tcfg.lr / 10, warmup=0,
                       top_k_choices=tcfg.top_k_choices, seed=seed + 7, eval_every=max(qat_steps // 8, 1),
                       eval_batches=10 ** 6, patience=10 ** 6, augment=tcfg.augment,
                       qat_start=0, qat_freeze=(3 * qat_steps) // 4)
    qstate = train(cfg, qcfg, train_data, val_data, state=TrainState(params, adamw_init(params)),
                   progress=progress, log=None)
    qat_ranges = qstate.ranges

    # 3. export and reload: the int8 model scored below is the file a device would ship
    sizes = {}
    for precision in ("fp32", "fp16", "int8"):
        path = out_dir / f"commands.{precision}.safetensors"
        src = qstate.params if precision == "int8" else state.params
        save_export(path, src, cfg, precision, qat_ranges if precision == "int8" else None, **meta)
        sizes[precision] = path.stat().st_size
    qat = load_model(out_dir / "commands.int8.safetensors")
    fp16 = load_model(out_dir / "commands.fp16.safetensors")
    rep["qat_int8"] = {f"test_accuracy_top{k}": accuracy(qat, test_data, k) for k in (2, 1)}
    rep["qat_int8"]["qat_steps"] = qat_steps
    rep["qat_int8"]["best_val_step"] = qstate.best["step"] if qstate.best else None
    rep["fp16"] = {"test_accuracy_top2": accuracy(fp16, test_data, 2)}
    rep["int8_vs_fp32_accuracy"] = round(rep["qat_int8"]["test_accuracy_top2"]
                                         / rep["fp32"]["test_accuracy_top2"], 4)
    rep["file_bytes"] = sizes
    rep["int8_vs_fp32_size"] = round(sizes["int8"] / sizes["fp32"], 4)
    rep["fp16_vs_fp32_size"] = round(sizes["fp16"] / sizes["fp32"], 4)

    # 5. latency of the runtimes (one process, interleaved, medians)
    lat = runtime_latency({"fp32": fp32, "int8": qat}, test_data.x[:32])
    rep["latency_ms"] = lat
    rep["int8_vs_fp32_latency"] = {b: round(lat["int8"][b] / lat["fp32"][b], 3) for b in lat["fp32"]}
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    if log:
        log(f"int8: QAT {rep['qat_int8']['test_accuracy_top2']:.4f} "
            f"({rep['int8_vs_fp32_accuracy']:.3f}x fp32), "
            f"PTQ {rep['ptq_int8']['test_accuracy_top2']:.4f}; file {rep['int8_vs_fp32_size']:.3f}x fp32; "
            f"latency int8/fp32 batch 1 {rep['int8_vs_fp32_latency'][1]:.2f}x, "
            f"batch 32 {rep['int8_vs_fp32_latency'][32]:.2f}x")
    return rep
