#!/usr/bin/env python3
"""One benchmark for qz: MoE sparsity, runtime precisions, numba, PyTorch, GFLOP/s.

    python scripts/bench.py                      # full run -> runs/bench/bench.json, bench.md
    python scripts/bench.py --quick              # 3 rounds instead of 11, same models
    python scripts/bench.py --smoke --out /tmp/b # tiny models, seconds (reference_tests/test_bench.py)
    python scripts/bench.py --sections a,d --threads 1

Sections (rows of bench.md):
  a  MoE top-2 of 8 vs the same model at top_k = 8 (all experts): forward and training
     step (model.loss_and_grads), kws (batch 32, batch 1 forward) and char_lm (batch 8).
  b  runtime.infer at fp32 / fp16 / int8 (ranges from model.observe_ranges on the batch):
     kws batch 1 and 32, char_lm batch 1 and 8.
  c  numba vs NumPy path: a child process with QZ_NUMBA=0 (kernels.USE_NUMBA is read at
     import) runs the same jobs; parent and child take turns, round by round, over a pipe.
  d  qz vs PyTorch eager (CPU, same threads): a PyTorch twin of docs/spec.md §2 written here from
     docs/spec.md (not from qz), loaded with qz's weights; its logits, aux, loss and gradients
     are checked against qz's (float32 and float64) before anything is timed, and the run
     stops with exit code 3 if they differ. Skipped, with a note, when torch is absent.
  e  achieved GFLOP/s of the char_lm training step vs the measured sgemm rate (np.matmul,
     float32): a big square product (the peak) and the exact GEMMs of the step.

FLOPs of a training step (section e), counted analytically, N = B*T tokens:
    fwd_MACs  = N * [ L * (4 d^2 + 2 T d + d E + (K + S) * 3 d f) ] + R_head * d * V (+ N * in * d)
                 (q|k|v|o projections; scores and p@v over all T keys, as executed: qz and
                  the twin compute the full T x T product and mask it; gate; K routed + S
                  shared SwiGLU experts, 3 d f each; head on R_head = N rows (LM) or B rows)
    step_FLOPs = 2 * fwd_MACs (forward) + 2 * 2 * fwd_MACs (backward: dX and dW per GEMM)
               = 6 * fwd_MACs
Elementwise work (norms, softmax, SwiGLU, routing) is not counted.

Timing: every job is warmed up first (numba compiles or loads its cache, memory is
touched); then the jobs compared in one row are measured in interleaved rounds (A, B, A,
B, ..., order rotated each round) so drift hits both alike; a sample is `inner` calls long
(at least --min-sample seconds); the figure is the median over rounds. When the executor
changes (qz -> torch -> child process) the runner sleeps --settle seconds so the other
library's spinning BLAS/OpenMP threads go idle first, then makes one untimed call. Thread
counts (OMP, OpenBLAS, MKL, numba) are set from --threads before numpy or torch is imported.
"""
import os
import sys


def _threads_from_argv(argv):
    n = "2"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    return n


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

if __name__ == "__main__":
    # BLAS reads its thread count when it is loaded: set it before numpy is imported. If
    # something imported numpy already (sitecustomize), start again with the env in place.
    _n = _threads_from_argv(sys.argv[1:])
    _stale = any(os.environ.get(v) != _n for v in THREAD_VARS)
    for _v in THREAD_VARS:
        os.environ[_v] = _n
    if _stale and "numpy" in sys.modules and os.environ.get("QZ_BENCH_REEXEC") != "1":
        os.environ["QZ_BENCH_REEXEC"] = "1"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:])

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qz import kernels, model, runtime  # noqa: E402
from qz.config import preset  # noqa: E402
from qz.memory import keep_freed_memory  # noqa: E402
from qz.progress import format_duration  # noqa: E402
from torch_twin import (AUX_COEF, RMS_EPS, parity, rel_err, twin_forward, twin_inputs,  # noqa: E402
                        twin_loss, twin_params)

# parity budgets: max |a - b| / max |b| per tensor (relative to the tensor's scale)
TOL = {"logits_f32": 1e-4, "loss_f32": 1e-5, "grads_f32": 1e-3,
       "logits_f64": 1e-10, "loss_f64": 1e-12, "grads_f64": 1e-9}
BARS = {"train_vs_torch": 0.9, "pct_of_peak": 60.0, "b1_vs_torch": 0.5, "topk_speedup": 2.3}


# ----------------------------------------------------------------------------
# the models and batches
# ----------------------------------------------------------------------------
def cases(smoke):
    """name -> (cfg, batch, seq). The smoke cases are tiny models of the same two kinds."""
    if smoke:
        return {"kws": (preset("kws", d_model=16, n_heads=2, n_layers=1, n_experts=4, d_ff=32, max_len=8,
                               input_dim=5, n_classes=3), 4, 8),
                "char_lm": (preset("char_lm", d_model=32, n_heads=2, n_layers=2, n_experts=4, d_ff=64,
                                   max_len=16, vocab_size=32), 2, 16)}
    return {"kws": (preset("kws"), 32, 49), "char_lm": (preset("char_lm"), 8, 128)}


def make_batch(cfg, B, T, rng):
    if cfg.mode == "lm":
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    return rng.standard_normal((B, T, cfg.input_dim)).astype(np.float32), rng.integers(0, cfg.n_classes, B)


def build(smoke, seed):
    """name -> dict(cfg, B, T, params (float32), x, y): the same numbers in parent and child."""
    out = {}
    for j, (name, (cfg, B, T)) in enumerate(cases(smoke).items()):
        x, y = make_batch(cfg, B, T, np.random.default_rng(seed + j))
        out[name] = dict(cfg=cfg, B=B, T=T, params=model.init_params(cfg, seed=seed + j), x=x, y=y)
    return out


def qz_jobs(c):
    """The qz float-model jobs sections a, c, d and e share: name -> callable."""
    p, cfg, x, y = c["params"], c["cfg"], c["x"], c["y"]
    E, B = cfg.n_experts, c["B"]
    jobs = {}
    for k, tag in ((cfg.top_k, f"top{cfg.top_k}"), (E, f"top{E}")):
        jobs[f"forward_b{B}_{tag}"] = lambda k=k: model.forward(p, cfg, x, top_k=k)
        jobs[f"train_b{B}_{tag}"] = lambda k=k: model.loss_and_grads(p, cfg, x, y, AUX_COEF, top_k=k)
        if cfg.mode == "classifier":
            jobs[f"forward_b1_{tag}"] = lambda k=k, x1=x[:1]: model.forward(p, cfg, x1, top_k=k)
    return jobs


NUMBA_JOBS = {"kws": ("train_b{B}", "forward_b{B}", "forward_b1"), "char_lm": ("train_b{B}",)}


def numba_job_names(built):
    return [(case, j.format(B=built[case]["B"])) for case, js in NUMBA_JOBS.items() for j in js]


def check_parity(torch, built, seed, perturb=False):
    """Parity of every case: float32 on the timed batch; float64 on a small one, and again with
    every gate zeroed (exact ties: the spec's lower-index rule). -> (figures, list of failures)."""
    eps = RMS_EPS * (10.0 if perturb else 1.0)   # --perturb-twin: prove the check can fail
    out, bad = {}, []
    for name, c in built.items():
        cfg = c["cfg"]
        r32 = parity(torch, c["params"], cfg, c["x"], c["y"], cfg.top_k, eps)
        p64 = model.init_params(cfg, seed=seed + 100, dtype=np.float64)
        x64, y64 = make_batch(cfg, 2, min(c["T"], 32), np.random.default_rng(seed + 100))
        r64 = parity(torch, p64, cfg, x64, y64, cfg.top_k, eps)
        for i in range(cfg.n_layers):      # a zero gate: every expert ties, top-k is the lowest k
            p64[f"blocks.{i}.gate"][:] = 0.0
        rties = parity(torch, p64, cfg, x64, y64, cfg.top_k, eps)
        out[name] = {"float32": r32, "float64": r64, "float64_ties": rties}
        for label, tag in (("float32", "f32"), ("float64", "f64"), ("float64_ties", "f64")):
            r = out[name][label]
            for key, tol in (("logits_max_rel_err", f"logits_{tag}"), ("loss_rel_err", f"loss_{tag}"),
                             ("grads_max_rel_err", f"grads_{tag}")):
                if not r[key] <= TOL[tol]:
                    bad.append(f"{name} {label}: {key} = {r[key]:.3g} > {TOL[tol]:g}"
                               + (f" (worst: {r['grads_worst']})" if key.startswith("grads") else ""))
        out[name]["matched"] = not any(b.startswith(name + " ") for b in bad)
    return out, bad


# ----------------------------------------------------------------------------
# FLOPs and the GEMMs of a training step (section e)
# ----------------------------------------------------------------------------
def forward_gemms(cfg, B, T, k):
    """Every forward GEMM of qz's step: (label, batch, M, K, N, count); FLOPs = 2*batch*M*K*N*count."""
    d, f, E, L, S, V, H = (cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.n_layers, cfg.n_shared_experts,
                           cfg.n_out, cfg.n_heads)
    N, D = B * T, cfg.d_model // cfg.n_heads
    g = []
    if cfg.mode == "classifier":
        g.append(("in_proj", 1, N, cfg.input_dim, d, 1))
    rows = max(1, round(N * k / E))                       # average rows per routed expert
    g += [("wqkv", 1, N, d, 3 * d, L), ("scores", B * H, T, D, T, L), ("p@v", B * H, T, T, D, L),
          ("wo", 1, N, d, d, L), ("gate", 1, N, d, E, L),
          ("expert w1, w3", 1, rows, d, f, 2 * L * E),   # w1, w3: two products
          ("expert w2", 1, rows, f, d, L * E)]
    if S:
        g += [("shared w1, w3", 1, N, d, f, 2 * L * S), ("shared w2", 1, N, f, d, L * S)]
    g.append(("head", 1, N if cfg.mode == "lm" else B, d, V, 1))
    return g


def step_gemms(cfg, B, T, k):
    """Forward GEMMs plus, for each, the backward dX = dY W^T and dW = X^T dY."""
    out = []
    for label, b, M, K, N, cnt in forward_gemms(cfg, B, T, k):
        out += [(label, b, M, K, N, cnt, "fwd"), (label + " dX", b, M, N, K, cnt, "bwd"),
                (label + " dW", b, K, M, N, cnt, "bwd")]
    return out


def step_flops(cfg, B, T, k):
    """The closed form of the module docstring (checked against the GEMM list)."""
    d, f, E, L, S, V = cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.n_layers, cfg.n_shared_experts, cfg.n_out
    N = B * T
    macs = N * L * (4 * d * d + 2 * T * d + d * E + (k + S) * 3 * d * f)
    macs += (N if cfg.mode == "lm" else B) * d * V
    if cfg.mode == "classifier":
        macs += N * cfg.input_dim * d
    return 6 * macs


def gemm_job(b, M, K, N, phase_label, rng):
    """np.matmul of (b,) M x K by K x N in float32. Like qz's backward, dX = dY @ W.T reads the
    weight through a transposed view and dW = X.T @ dY the activations."""
    def operand(rows, cols, transposed):
        shape = (cols, rows) if transposed else (rows, cols)
        a = rng.standard_normal(((b,) if b > 1 else ()) + shape, dtype=np.float32)
        return a.swapaxes(-1, -2) if transposed else a
    lhs = operand(M, K, phase_label.endswith(" dW"))
    rhs = operand(K, N, phase_label.endswith(" dX"))
    return lambda: np.matmul(lhs, rhs)


# ----------------------------------------------------------------------------
# timing: warm-up, interleaved rounds, medians
# ----------------------------------------------------------------------------
class Child:
    """The NumPy-path twin process (QZ_NUMBA=0): runs named jobs on request, over a pipe."""

    def __init__(self, argv):
        env = dict(os.environ, QZ_NUMBA="0")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--child"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self.ask(cmd="hello")
        if self.hello.get("use_numba") is not False:
            raise RuntimeError(f"child process: expected the NumPy path (QZ_NUMBA=0), got {self.hello}")

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child process died (exit code {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError("child process: " + reply["error"])
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.ask(cmd="quit")
            self.proc.wait(timeout=30)


def child_main(args):
    """--child: serve the section-c jobs of this script to the parent (one JSON line per request)."""
    proto = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr                     # nothing but replies on the pipe
    built = build(args.smoke, args.seed)
    jobs = {}
    for case, name in numba_job_names(built):
        jobs[f"{case}.{name}"] = qz_jobs(built[case])[f"{name}_top{built[case]['cfg'].top_k}"]
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "quit":
                proto.write("{}\n")
                proto.flush()
                return
            if msg["cmd"] == "hello":
                reply = {"use_numba": bool(kernels.USE_NUMBA), "pid": os.getpid(),
                         "blas_threads": blas_threads()}
            else:
                reply = {"seconds": run_local(jobs[msg["job"]], msg["n"])}
        except Exception as exc:  # report to the parent instead of hanging it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


def run_local(fn, n):
    """Seconds per call over n back-to-back calls, the garbage collector paused."""
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n
    finally:
        gc.enable()


class Job:
    def __init__(self, name, fn=None, executor="qz", child=None, key=None):
        self.name, self.fn, self.executor, self.child, self.key = name, fn, executor, child, key
        self.inner, self.est, self.samples = 1, 0.0, []

    def call(self, n):
        if self.child is not None:
            return self.child.ask(cmd="run", job=self.key, n=n)["seconds"]
        return run_local(self.fn, n)


class Bench:
    """Groups of jobs compared with each other; each group is measured in interleaved rounds."""

    def __init__(self, rounds, warmups, min_sample, settle, stream=sys.stderr):
        self.rounds, self.warmups, self.min_sample, self.settle = rounds, warmups, min_sample, settle
        self.groups, self.stream = [], stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last_exec = None

    def add(self, key, jobs):
        self.groups.append((key, jobs))

    def _switch(self, job):
        """Before a job of another executor: sleep so the other library's worker threads stop
        spinning, then one untimed call, so the sample starts warm (after the sleep the first
        calls ran slow: kws batch-1 forward 2.5, 1.8, 1.7 ms, then 1.35 ms)."""
        if self.last_exec is not None and job.executor != self.last_exec and self.settle > 0:
            time.sleep(self.settle)
            job.call(1)
        self.last_exec = job.executor

    def warm(self):
        jobs = [j for _, js in self.groups for j in js]
        t0, last = time.perf_counter(), 0.0
        for i, job in enumerate(jobs):
            self._switch(job)
            if self.warmups > 1:
                job.call(self.warmups - 1)
            job.est = job.call(1)                      # one more, timed: sets the sample length
            job.inner = max(1, math.ceil(self.min_sample / max(job.est, 1e-9)))
            last = self._progress(f"warm-up {i + 1}/{len(jobs)}", (i + 1) / len(jobs), t0, last)
        self._end_line()

    def run(self, results):
        total = sum(self.rounds * j.inner * j.est for _, js in self.groups for j in js)
        done, t0, last = 0.0, time.perf_counter(), 0.0
        for key, jobs in self.groups:
            gc.collect()
            for r in range(self.rounds):
                shift = r % len(jobs)
                for job in jobs[shift:] + jobs[:shift]:
                    self._switch(job)
                    job.samples.append(job.call(job.inner))
                    done += job.inner * job.est
                    last = self._progress(" ".join(key) + f" [{job.name}]", done / total, t0, last)
            node = results
            for part in key:
                node = node.setdefault(part, {})
            for job in jobs:
                node[job.name] = stats(job.samples, job.inner)
        self._end_line()

    def _progress(self, what, frac, t0, last):
        now = time.perf_counter()
        if now - last < (0.2 if self.tty else 10.0) and frac < 1.0:
            return last
        el = now - t0
        eta = el * (1 - frac) / frac if frac > 0 else float("nan")
        text = (f"[bench] {100 * frac:3.0f}%  elapsed {format_duration(el)}  ETA {format_duration(eta)}"
                f"  {what}")
        if self.tty:
            self.stream.write("\r" + text[:110].ljust(110))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        return now

    def _end_line(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def stats(samples, inner):
    s = np.asarray(samples) * 1000.0
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return {"median_ms": round(float(med), 4), "min_ms": round(float(s.min()), 4),
            "q1_ms": round(float(q1), 4), "q3_ms": round(float(q3), 4), "rounds": len(s),
            "calls_per_sample": inner, "samples_ms": [round(float(v), 4) for v in s]}


def blas_threads():
    """Threads OpenBLAS will use, read from the loaded library (None if it cannot be asked)."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
        for path in libs:
            lib = ctypes.CDLL(path)
            for sym in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                        "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
                if hasattr(lib, sym):
                    return int(getattr(lib, sym)())
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------
# the sections
# ----------------------------------------------------------------------------
def med(node, job):
    return node[job]["median_ms"]


def add_topk(bench, built, jobs):
    for case, c in built.items():
        cfg, B = c["cfg"], c["B"]
        kinds = [f"forward_b{B}", f"train_b{B}"] + (["forward_b1"] if cfg.mode == "classifier" else [])
        for kind in kinds:
            bench.add(("a", case, kind), [Job(f"top{k}", jobs[case][f"{kind}_top{k}"])
                                          for k in (cfg.top_k, cfg.n_experts)])


def add_runtime(bench, built):
    """Models at three precisions; checks fp32 == model.forward before timing."""
    for case, c in built.items():
        cfg, p, x = c["cfg"], c["params"], c["x"]
        ranges = model.observe_ranges(p, cfg, x)
        models = {prec: runtime.prepare(p, cfg, prec, ranges if prec == "int8" else None)
                  for prec in ("fp32", "fp16", "int8")}
        ref, _ = model.forward(p, cfg, x)
        for prec, m in models.items():
            out = runtime.infer(m, x)
            if not np.all(np.isfinite(out)) or (prec == "fp32" and rel_err(out, ref) > TOL["logits_f32"]):
                raise RuntimeError(f"runtime {prec} on {case}: logits are not those of the float model")
        for b in sorted({1, c["B"]}):
            bench.add(("b", case, f"b{b}"),
                      [Job(prec, lambda m=m, xb=x[:b]: runtime.infer(m, xb)) for prec, m in models.items()])


def add_numba(bench, built, jobs, child):
    for case, name in numba_job_names(built):
        full = f"{name}_top{built[case]['cfg'].top_k}"
        bench.add(("c", case, name), [Job("numba", jobs[case][full]),
                                      Job("numpy", executor="child", child=child, key=f"{case}.{name}")])


def add_torch(bench, built, jobs, torch):
    for case, c in built.items():
        cfg, B, k = c["cfg"], c["B"], c["cfg"].top_k
        tp = twin_params(torch, c["params"])
        xt, yt = twin_inputs(torch, cfg, c["x"], c["y"])

        def t_forward(xb=xt, tp=tp, cfg=cfg, k=k):
            with torch.inference_mode():
                return twin_forward(torch, tp, cfg, xb, k)

        def t_train(tp=tp, cfg=cfg, xt=xt, yt=yt, k=k):
            for t in tp.values():
                t.grad = None
            loss, _, _ = twin_loss(torch, tp, cfg, xt, yt, k)
            loss.backward()

        kinds = {f"forward_b{B}": t_forward, f"train_b{B}": t_train}
        if cfg.mode == "classifier":
            kinds["forward_b1"] = lambda f=t_forward, x1=xt[:1]: f(x1)
        m32 = runtime.prepare(c["params"], cfg, "fp32")      # the serving path, for reference
        for kind, fn in kinds.items():
            group = [Job("qz", jobs[case][f"{kind}_top{k}"]), Job("torch", fn, executor="torch")]
            if kind.startswith("forward"):
                xb = c["x"][:int(kind.split("_b")[1])]
                group.append(Job("qz_runtime_fp32", lambda m32=m32, xb=xb: runtime.infer(m32, xb)))
            bench.add(("d", case, kind), group)


def add_gflops(bench, built, jobs, smoke, seed):
    c = built["char_lm"]
    cfg, B, T = c["cfg"], c["B"], c["T"]
    rng = np.random.default_rng(seed)
    n = 256 if smoke else 1024
    group = [Job("train_step", jobs["char_lm"][f"train_b{B}_top{cfg.top_k}"]),
             Job(f"sgemm_{n}", gemm_job(1, n, n, n, "square", rng))]
    for label, b, M, K, N, _, _ in step_gemms(cfg, B, T, cfg.top_k):
        group.append(Job("gemm " + label, gemm_job(b, M, K, N, label, rng)))
    bench.add(("e", "char_lm", "gemm"), group)


def derive(res, built, smoke):
    """Ratios, GFLOP/s and the bars, from the medians in res."""
    out = {}
    for case, kinds in res.get("a", {}).items():
        cfg = built[case]["cfg"]
        for kind, node in kinds.items():
            t2, t8 = med(node, f"top{cfg.top_k}"), med(node, f"top{cfg.n_experts}")
            node["speedup_dense_over_sparse"] = round(t8 / t2, 3)
    for case, kinds in res.get("b", {}).items():
        for node in kinds.values():
            node["int8_over_fp32"] = round(med(node, "int8") / med(node, "fp32"), 3)
            node["fp16_over_fp32"] = round(med(node, "fp16") / med(node, "fp32"), 3)
    for case, kinds in res.get("c", {}).items():
        for node in kinds.values():
            node["speedup_numba_over_numpy"] = round(med(node, "numpy") / med(node, "numba"), 3)
    for case, kinds in res.get("d", {}).items():
        for kind, node in kinds.items():
            if isinstance(node, dict) and "qz" in node:
                node["qz_over_torch"] = round(med(node, "qz") / med(node, "torch"), 3)
                if "qz_runtime_fp32" in node:
                    node["qz_runtime_over_torch"] = round(
                        med(node, "qz_runtime_fp32") / med(node, "torch"), 3)
    if "e" in res:
        c = built["char_lm"]
        cfg, B, T, k = c["cfg"], c["B"], c["T"], c["cfg"].top_k
        node = res["e"]["char_lm"]["gemm"]
        flops = step_flops(cfg, B, T, k)
        listed = sum(2 * b * M * K * N * cnt for _, b, M, K, N, cnt, _ in step_gemms(cfg, B, T, k))
        if listed != flops and (B * T * k) % cfg.n_experts == 0:   # else experts' rows are rounded
            raise AssertionError(f"FLOP formula {flops} != sum over the step's GEMMs {listed}")
        sq = next(j for j in node if j.startswith("sgemm_"))
        n = int(sq.split("_")[1])
        gemm_flops = gemm_s = 0.0
        for label, b, M, K, N, cnt, _ in step_gemms(cfg, B, T, k):
            gemm_flops += 2 * b * M * K * N * cnt
            gemm_s += med(node, "gemm " + label) / 1000 * cnt
        step = med(node, "train_step") / 1000
        out["gflops"] = g = {
            "formula": "step_FLOPs = 6 * N * [L*(4d^2 + 2Td + dE + (K+S)*3df)] + 6*N*d*V (see the docstring)",
            "step_flops": flops, "step_ms": round(step * 1000, 3),
            "step_gflops": round(flops / step / 1e9, 2),
            "sgemm_peak_gflops": round(2 * n ** 3 / (med(node, sq) / 1000) / 1e9, 2), "sgemm_peak_n": n,
            "sgemm_model_shapes_gflops": round(gemm_flops / gemm_s / 1e9, 2),
            "step_gemm_time_ms": round(gemm_s * 1000, 3)}
        g["pct_of_peak"] = round(100 * g["step_gflops"] / g["sgemm_peak_gflops"], 1)
        g["pct_of_model_sgemm"] = round(100 * g["step_gflops"] / g["sgemm_model_shapes_gflops"], 1)
    return out


# ----------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------
def verdict(value, bar, le):
    if value is None:
        return "n/a"
    return "PASS" if (value <= bar if le else value >= bar) else "FAIL"


def bars_and_table(res, derived, built, torch_note):
    """-> (bar table lines, detail table lines, bars list): one line per bar, then the runtime rows."""
    B = built["char_lm"]["B"]
    cfg = built["char_lm"]["cfg"]
    rows, bars = [], []

    def bar(name, figure, comparison, value, target, le):
        status = verdict(value, target, le)
        bars.append({"name": name, "value": value, "bar": ("<= " if le else ">= ") + f"{target:g}",
                     "status": status})
        rows.append(f"| {name} | {figure} | {comparison} | {'≤' if le else '≥'} {target:g} | {status} |")

    d = res.get("d", {})
    tr = d.get("char_lm", {}).get(f"train_b{B}")
    if tr:
        bar(f"char_lm train step (batch {B})",
            f"qz {med(tr, 'qz'):.1f} ms, PyTorch {med(tr, 'torch'):.1f} ms",
            f"qz/PyTorch {tr['qz_over_torch']:.2f}", tr["qz_over_torch"], BARS["train_vs_torch"], True)
    else:
        bar(f"char_lm train step (batch {B})", torch_note, "—", None, BARS["train_vs_torch"], True)
    g = derived.get("gflops")
    if g:
        bar("char_lm train step GFLOP/s",
            f"{g['step_gflops']:.1f} GFLOP/s ({g['step_flops'] / 1e9:.1f} GFLOP in {g['step_ms']:.1f} ms)",
            f"{g['pct_of_peak']:.0f}% of sgemm peak {g['sgemm_peak_gflops']:.0f} GFLOP/s "
            f"({g['pct_of_model_sgemm']:.0f}% of the step's GEMMs at {g['sgemm_model_shapes_gflops']:.0f})",
            g["pct_of_peak"], BARS["pct_of_peak"], False)
    else:
        bar("char_lm train step GFLOP/s", "section e not run", "—", None, BARS["pct_of_peak"], False)
    f1 = d.get("kws", {}).get("forward_b1")
    if f1:
        bar("kws forward batch 1",
            f"qz {med(f1, 'qz'):.2f} ms (runtime fp32 {med(f1, 'qz_runtime_fp32'):.2f} ms), "
            f"PyTorch {med(f1, 'torch'):.2f} ms",
            f"qz/PyTorch {f1['qz_over_torch']:.2f}", f1["qz_over_torch"], BARS["b1_vs_torch"], True)
    else:
        bar("kws forward batch 1", torch_note, "—", None, BARS["b1_vs_torch"], True)
    a = res.get("a", {}).get("char_lm", {}).get(f"forward_b{B}")
    k, E = cfg.top_k, cfg.n_experts
    name = f"char_lm forward (batch {B}) top-{k} vs top-{E}"
    if a:
        bar(name, f"top-{k} {med(a, f'top{k}'):.1f} ms, top-{E} {med(a, f'top{E}'):.1f} ms",
            f"speedup {a['speedup_dense_over_sparse']:.2f}x", a["speedup_dense_over_sparse"],
            BARS["topk_speedup"], False)
    else:
        bar(name, "section a not run", "—", None, BARS["topk_speedup"], False)
    for case, kinds in res.get("b", {}).items():
        for kind, node in kinds.items():
            figure = ", ".join(f"{p} {med(node, p):.2f} ms" for p in ("int8", "fp16", "fp32"))
            ratios = f"int8/fp32 {node['int8_over_fp32']:.2f}, fp16/fp32 {node['fp16_over_fp32']:.2f}"
            rows.append(f"| runtime {case} batch {kind[1:]} | {figure} | {ratios} | — | — |")
    head = ["| row | figure | comparison | bar | status |", "|---|---|---|---|---|"]
    detail = ["| section | model | job | medians (ms) | ratio |", "|---|---|---|---|---|"]
    ratio_key = {"a": "speedup_dense_over_sparse", "b": "int8_over_fp32", "c": "speedup_numba_over_numpy",
                 "d": "qz_over_torch"}
    for sec, key in ratio_key.items():
        for case, kinds in res.get(sec, {}).items():
            for kind, node in kinds.items():
                figs = ", ".join(f"{j} {v['median_ms']:.2f}" for j, v in node.items() if isinstance(v, dict))
                detail.append(f"| {sec} | {case} | {kind} | {figs} | {key} {node[key]:.2f} |")
    return head + rows, detail, bars


def write_report(out_dir, doc, table, detail, note):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = [f"*`scripts/bench.py`: {note}*", "", *table, "", "All rows (medians over rounds):", "", *detail, ""]
    with open(os.path.join(out_dir, "bench.md"), "w") as f:
        f.write("\n".join(md))
    return "\n".join(md)


# ----------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats (3 rounds), full-size models")
    ap.add_argument("--smoke", action="store_true", help="tiny models, 2 rounds: seconds (the smoke test)")
    ap.add_argument("--out", default=os.path.join("runs", "bench"),
                    help="output directory (default runs/bench)")
    ap.add_argument("--threads", type=int, default=2,
                    help="BLAS / OpenMP / torch / numba threads (default 2)")
    ap.add_argument("--sections", default="a,b,c,d,e", help="which rows to measure (default a,b,c,d,e)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per row (default 11; quick 3; smoke 2)")
    ap.add_argument("--min-sample", type=float,
                    help="seconds per timed sample (default 0.05; quick 0.02; smoke 0.002)")
    ap.add_argument("--settle", type=float,
                    help="sleep when switching qz/torch/child, so the other library's idle threads have "
                         "stopped spinning (torch's OpenMP: up to 0.2 s) (default 0.5 s; quick 0.3; smoke 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows as if torch were absent")
    ap.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                    help="tuned: keep freed memory, as the qz command does (qz.memory)")
    ap.add_argument("--perturb-twin", action="store_true", help=argparse.SUPPRESS)  # tests: parity must fail
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)         # the QZ_NUMBA=0 process
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error("--threads: must be >= 1")
    args.sections = set(s.strip() for s in args.sections.split(",") if s.strip())
    if not args.sections <= set("abcde"):
        ap.error(f"--sections: unknown {sorted(args.sections - set('abcde'))}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.rounds = args.rounds or {"smoke": 2, "quick": 3, "full": 11}[mode]
    if args.min_sample is None:
        args.min_sample = {"smoke": 0.002, "quick": 0.02, "full": 0.05}[mode]
    if args.settle is None:
        args.settle = {"smoke": 0.0, "quick": 0.3, "full": 0.5}[mode]
    args.warmups = {"smoke": 1, "quick": 2, "full": 3}[mode]
    args.mode = mode
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def import_torch(args):
    if args.no_torch:
        return None, "skipped (--no-torch)"
    try:
        import torch
    except ImportError:
        return None, "skipped: torch is not installed (pip install torch; optional)"
    torch.set_num_threads(args.threads)
    return torch, None


def machine_info(torch):
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": kernels.NUMBA_AVAILABLE, "use_numba": bool(kernels.USE_NUMBA),
            "torch": torch.__version__ if torch else None,
            "torch_threads": torch.get_num_threads() if torch else None, "blas_threads": blas_threads(),
            "thread_env": {v: os.environ.get(v) for v in THREAD_VARS}}


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.allocator == "tuned":
        keep_freed_memory()
    t_start = time.time()
    torch, torch_note = import_torch(args) if "d" in args.sections else (None, "section d not run")
    built = build(args.smoke, args.seed)
    jobs = {case: qz_jobs(c) for case, c in built.items()}
    doc = {"meta": {"argv": args.argv, "mode": args.mode, "threads": args.threads, "rounds": args.rounds,
                    "allocator": args.allocator, "sections": sorted(args.sections), "aux_coef": AUX_COEF,
                    "machine": machine_info(torch), "loadavg_start": loadavg(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
           "configs": {case: {**c["cfg"].to_dict(), "batch": c["B"], "seq": c["T"]}
                       for case, c in built.items()},
           "notes": [], "results": {}}
    notes = doc["notes"]
    phases = doc["meta"]["phase_seconds"] = {}
    clock = [time.perf_counter(), "setup"]

    def phase(what):
        now = time.perf_counter()
        phases[clock[1]] = round(phases.get(clock[1], 0.0) + now - clock[0], 2)
        clock[:] = [now, what]
        if what != "done":
            sys.stderr.write(f"[bench] {what} ...\n")
            sys.stderr.flush()
    if os.environ.get("QZ_BENCH_REEXEC") == "1":
        notes.append("re-executed so the thread variables applied before numpy was loaded")
    bench = Bench(args.rounds, args.warmups, args.min_sample, args.settle)
    child = None
    try:
        if "a" in args.sections:
            add_topk(bench, built, jobs)
        if "b" in args.sections:
            phase("preparing fp32 / fp16 / int8 runtime models")
            add_runtime(bench, built)
        if "c" in args.sections:
            if kernels.USE_NUMBA:
                phase("starting the QZ_NUMBA=0 child process")
                child = Child(args.argv)
                doc["meta"]["child"] = child.hello
                add_numba(bench, built, jobs, child)
            else:
                notes.append("section c skipped: this process runs the NumPy path already "
                             "(numba missing or QZ_NUMBA=0)")
        if "d" in args.sections:
            doc["torch"] = {"available": torch is not None, "note": torch_note}
            if torch is None:
                notes.append("section d " + torch_note)
            else:
                phase("checking the PyTorch twin against qz (float32, float64, ties)")
                par, bad = check_parity(torch, built, args.seed, perturb=args.perturb_twin)
                doc["torch"]["parity"] = par
                if bad:
                    doc["torch"]["parity_failures"] = bad
                    write_report(args.out, doc, ["twin parity FAILED"], [], "parity failed")
                    sys.stderr.write("PyTorch twin does not match qz (docs/spec.md §2):\n  "
                                     + "\n  ".join(bad) + "\n")
                    return 3
                add_torch(bench, built, jobs, torch)
        if "e" in args.sections:
            add_gflops(bench, built, jobs, args.smoke, args.seed)
        phase("warming up")
        bench.warm()
        phase("measuring")
        bench.run(doc["results"])
        phase("done")
    finally:
        if child is not None:
            child.close()
    doc["derived"] = derive(doc["results"], built, args.smoke)
    table, detail, bars = bars_and_table(doc["results"], doc["derived"], built, torch_note or "—")
    doc["bars"] = bars
    doc["meta"]["loadavg_end"] = loadavg()
    doc["meta"]["seconds"] = round(time.time() - t_start, 1)
    note = (f"{args.mode} run, {args.rounds} rounds, threads={args.threads}, "
            f"{doc['meta']['machine']['cpu']}, "
            f"load average {doc['meta']['loadavg_start']} -> {doc['meta']['loadavg_end']}")
    if args.smoke:
        note += "; SMOKE: tiny models, the figures mean nothing"
    md = write_report(args.out, doc, table, detail, note)
    print(md)
    for n in notes:
        print("note:", n)
    print(f"wrote {os.path.join(args.out, 'bench.json')} and bench.md in {doc['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
