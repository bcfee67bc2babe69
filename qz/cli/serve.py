"""qz run and qz governor: serve a model bundle under the governor; the device's mode, a simulation."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..data import apply_input_norm
from ..errors import InputError
from .common import UserError, _add_governor_args, _emit, _governor, _sensors


def cmd_run(args):
    """Classify wav files (or an .npz of features) with a model bundle under the governor."""
    from ..audio import wav_features
    from ..data import ArrayData
    from ..runtime import Runtime, infer, load_bundle
    bundle = load_bundle(args.models)
    if bundle.cfg.mode != "classifier":
        raise UserError("qz run classifies inputs; for a language model use qz generate")
    gov = _governor(args, bundle.cfg.top_k)
    rt = Runtime(bundle, gov)
    for m in bundle.models.values():   # compile / load the kernels now, so latencies are per request
        infer(m, np.zeros((1, bundle.cfg.max_len, bundle.cfg.input_dim), np.float32))
    labels = bundle.meta.get("labels") or [str(i) for i in range(bundle.cfg.n_classes)]
    norm = bundle.meta.get("input_norm")
    results, failed = [], 0
    for path in args.inputs:
        try:
            x = wav_features(path)[None] if str(path).lower().endswith(".wav") else None
            if x is None:
                raise UserError(f"{path}: not a .wav file")
            if norm is not None:
                x = apply_input_norm(ArrayData(x, np.zeros(1, np.int64), str(path)), norm).x
            t0 = time.perf_counter()
            logits, info = rt.infer(x.astype(np.float32))
            ms = 1000 * (time.perf_counter() - t0)
        except (InputError, OSError) as e:   # one bad file never stops the rest
            failed += 1
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"qz: error: {msg}", file=sys.stderr)
            continue
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        c = int(np.argmax(p))
        results.append({"input": str(path), "label": labels[c], "confidence": round(float(p[c]), 4),
                        **info, "latency_ms": round(ms, 3)})
    summary = {}
    for r in results:
        s = summary.setdefault(r["mode"], {"requests": 0, "latency_ms": []})
        s["requests"] += 1
        s["latency_ms"].append(r["latency_ms"])
    for s in summary.values():
        s["mean_latency_ms"] = round(float(np.mean(s.pop("latency_ms"))), 3)
    lines = [f"{r['input']}: {r['label']} ({r['confidence']:.2f})  {r['mode']} {r['precision']} "
             f"top_k {r['top_k']}  {r['latency_ms']:.2f} ms" for r in results]
    lines += [f"{mode}: {s['requests']} requests, mean {s['mean_latency_ms']:.2f} ms"
              for mode, s in summary.items()]
    lines += [f"note: {n}" for n in rt.notes]
    _emit(args, {"results": results, "summary": summary, "failed": failed, "notes": rt.notes}, lines)
    return 1 if failed else 0


def cmd_governor(args):
    """`qz governor status`: what the sensors say and the mode; `simulate`: replay a discharge."""
    from ..governor import Governor, plan_for
    if args.action == "status":
        gov = Governor(_sensors(args), tick_s=0.0)
        plan, state = gov.plan(), gov.state
        res = {"state": {k: getattr(state, k) for k in ("battery_pct", "charging", "temp_c", "cpu_util")},
               "sources": dict(state.sources), "mode": plan.mode, "plan": plan_for(plan.mode, 2).__dict__}
        lines = [f"battery {state.battery_pct}%, charging {state.charging}, temp {state.temp_c} C, "
                 f"cpu {state.cpu_util} -> {plan.mode} ({plan.precision}, top_k {plan.top_k or 'config'})"]
        lines += [f"  {k}: {v}" for k, v in state.sources.items()]
        _emit(args, res, lines)
        return 0
    from ..data import load_split
    from ..governor import load_trace
    from ..runtime import load_bundle
    from ..governor import simulate as sim
    if not args.models or not args.data:
        raise UserError(f"governor {args.action} needs model files and --data (an .npz with a test split)")
    bundle = load_bundle(args.models)
    test = apply_input_norm(load_split(args.data, "test"), bundle.meta.get("input_norm"))
    costs = sim.measure_modes(bundle, test, repeats=args.repeats)
    modes = {m: {"precision": c.precision, "top_k": c.top_k, "energy_j": c.energy_j,
                 "energy_uj": round(c.energy_j * 1e6, 4),
                 "measured_energy_j": c.measured_j,              # RAPL, where the machine has it
                 "mean_ms": round(c.mean_ms, 4), "p95_ms": round(c.p95_ms, 4), "accuracy": c.accuracy}
             for m, c in costs.items()}

    def measured(c):
        return ("" if c["measured_energy_j"] is None
                else f" ({c['measured_energy_j'] * 1e6:.2f} uJ measured by RAPL)")
    mode_lines = [f"{m}: {c['precision']} top_k {c['top_k']}, {c['energy_uj']:.2f} uJ/request (estimated)"
                  f"{measured(c)}, {c['mean_ms']:.3f} ms (p95 {c['p95_ms']:.3f}), "
                  f"accuracy {c['accuracy']:.4f}" for m, c in modes.items()]
    if all(c["measured_energy_j"] is None for c in modes.values()):
        mode_lines.append("(no RAPL counters under /sys/class/powercap here: energy is the estimate only)")
    if args.action == "modes":
        _emit(args, {"modes": modes, "data": args.data, "n": len(test)}, mode_lines)
        return 0
    trace = load_trace(args.trace) if args.trace else None
    cfg = sim.SimConfig(capacity_wh=args.capacity_wh, rate_hz=args.rate, baseline_w=args.baseline_w)
    res = sim.compare(costs, cfg, trace)
    res["modes"] = modes
    res["sweep_baseline_w"] = sim.sweep(costs, sim=cfg, trace=trace)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = sim.write_timeline(res, str(out))
    lines = list(mode_lines)
    for name, run in res["runs"].items():
        lines.append(f"{name:>11}: {run['requests']:,} requests in {run['hours']:.1f} h, "
                     f"accuracy {run['accuracy']:.4f}, mean latency {run['mean_latency_ms']:.3f} ms")
    lines.append(f"governed vs always-performance: {res['governed_vs_performance_requests']:.2f}x requests, "
                 f"{res['governed_vs_performance_accuracy_points']:+.2f} accuracy points")
    lines.append(f"wrote {out}.json, {out}.csv" + (f", {png}" if png else ""))
    _emit(args, {k: v for k, v in res.items() if k != "runs"}
          | {"runs": {k: {kk: vv for kk, vv in v.items() if kk != "timeline"}
                      for k, v in res["runs"].items()}}, lines)
    return 0


def add_parser(sub):
    r = sub.add_parser("run", help="classify wav files with a model bundle under the governor",
                       description="Load one model at one or more precisions (exports from qz export, or a "
                       "training checkpoint as fp32) and classify wav files. Each request runs with the "
                       "governor's plan (docs/spec.md §4): performance = fp32 at the config top_k, "
                       "balanced = int8, "
                       "low_power = int8 at top_k 1, critical = int8, top_k 1, one thread. Prints label, "
                       "confidence, mode, precision, top_k and latency per file, then a summary per mode.",
                       epilog="examples:\n"
                       "  qz run runs/demo/commands.fp32.safetensors runs/demo/commands.int8.safetensors "
                       "--inputs data/wav/*.wav\n"
                       "  qz run MODELS --inputs a.wav --battery 15 --charging no   # low_power\n"
                       "  qz run MODELS --inputs a.wav --governor trace.csv   "
                       "# replay time,battery,charging,temp,cpu_util",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("models", nargs="+", help="model files: one per precision")
    r.add_argument("--inputs", nargs="+", required=True, help="wav files to classify")
    _add_governor_args(r, "auto")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    gv = sub.add_parser("governor", help="device state and mode now, each mode's cost, or a simulated "
                        "battery discharge",
                        description="status: read this device's battery, temperature and CPU load (or a "
                        "trace, or overrides) and print the mode the governor picks. modes: each mode's "
                        "estimated energy per inference (uJ; RAPL's measure beside it where the machine "
                        "has one), accuracy on --data's test split, and mean and p95 batch-1 latency "
                        "measured here. simulate: replay a "
                        "discharge from 100 % against the model under always-performance, always-balanced "
                        "and the governed policy, with each mode's energy estimated "
                        "(qz/governor/energy.py) and its latency and accuracy measured here; writes JSON, "
                        "CSV and (with matplotlib) PNG.",
                        epilog="examples:\n  qz governor status --battery 15 --charging no\n"
                        "  qz governor modes runs/demo/commands.fp32.safetensors "
                        "runs/demo/commands.int8.safetensors --data data/speech_commands_real.npz --json\n"
                        "  qz governor simulate runs/demo/commands.fp32.safetensors "
                        "runs/demo/commands.int8.safetensors --data data/speech_commands.npz\n"
                        "  qz governor simulate MODELS --data D --trace heat.csv --baseline-w 0.1 --rate 10",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    gv.add_argument("action", choices=["status", "modes", "simulate"])
    gv.add_argument("models", nargs="*", help="modes, simulate: model files, one per precision")
    gv.add_argument("--data", help="modes, simulate: an .npz whose test split scores each mode")
    gv.add_argument("--governor", default="auto", help="status: auto (this device) or a trace file")
    gv.add_argument("--trace", help="simulate: CSV/JSON rows of time, battery, charging, temp, cpu_util "
                    "(battery is simulated; default: a synthetic profile with a heat-up every 10 h)")
    gv.add_argument("--battery", type=float, help="status: override the battery level, percent")
    gv.add_argument("--temp", type=float, help="status: override the temperature, C")
    gv.add_argument("--charging", help="status: override charging, yes or no")
    gv.add_argument("--capacity-wh", type=float, default=15.0,
                    help="battery capacity (default 15 Wh, a phone)")
    gv.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50: a 20 ms hop)")
    gv.add_argument("--baseline-w", type=float, default=0.03,
                    help="the rest of the device's power (default 0.03 W)")
    gv.add_argument("--repeats", type=int, default=200, help="latency samples per mode (default 200)")
    gv.add_argument("--out", default="runs/governor/simulation", help="output path stem")
    gv.add_argument("--json", action="store_true")
    gv.set_defaults(func=cmd_governor)
