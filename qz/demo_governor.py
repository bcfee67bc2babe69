"""The demo's governor section (docs/spec.md §4): modes on the exported command model, and a
simulated discharge.

1. each mode's cost on this machine: estimated energy per request (qz/governor/energy.py),
   measured batch-1 latency, measured accuracy on the unseen-voice test set;
2. low_power against balanced: energy, accuracy and latency;
3. a simulated discharge from 100 % under always-performance, always-balanced
   and the governed policy (qz/governor/simulate.py, default device: 15 Wh, 50
   requests/s, 30 mW baseline), and how the outcome moves with baseline power;
4. the governor's own overhead per request, sensors read once per 1 s tick.
"""
from __future__ import annotations

import time

import numpy as np

from .governor import simulate
from .governor import Governor, SysfsSensors
from .runtime import load_bundle

__all__ = ["governor_report", "governor_overhead_us"]


def governor_overhead_us(calls=100_000):
    """Median-of-5 microseconds per Governor.plan() on this device's real sensors, tick 1 s."""
    gov = Governor(SysfsSensors(), tick_s=1.0)
    gov.plan()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            gov.plan()
        runs.append((time.perf_counter() - t0) / (calls // 5) * 1e6)
    return float(np.median(runs))


def governor_report(model_paths, test_data, repeats=100, log=print):
    t0 = time.perf_counter()
    bundle = load_bundle(model_paths)
    costs = simulate.measure_modes(bundle, test_data, repeats=repeats)
    modes = {m: {"precision": c.precision, "top_k": c.top_k, "energy_uj": round(c.energy_j * 1e6, 3),
                 "measured_energy_uj": None if c.measured_j is None else round(c.measured_j * 1e6, 3),
                 "mean_ms": round(c.mean_ms, 4), "p95_ms": round(c.p95_ms, 4),
                 "accuracy": round(c.accuracy, 4)}
             for m, c in costs.items()}
    bal, low = costs["balanced"], costs["low_power"]
    low_vs_bal = {"energy_ratio": round(low.energy_j / bal.energy_j, 4),
                  "accuracy_points": round(100 * (low.accuracy - bal.accuracy), 2),
                  "latency_ratio": round(low.mean_ms / bal.mean_ms, 4)}
    sim = simulate.compare(costs)
    runs = {k: {kk: vv for kk, vv in v.items() if kk != "timeline"} for k, v in sim["runs"].items()}
    overhead = governor_overhead_us()
    rep = {"modes": modes, "low_power_vs_balanced": low_vs_bal, "simulation": {
               "sim": sim["sim"], "runs": runs,
               "governed_vs_performance_requests": sim["governed_vs_performance_requests"],
               "governed_vs_performance_accuracy_points": sim["governed_vs_performance_accuracy_points"],
               "sweep_baseline_w": simulate.sweep(costs)},
           "overhead_us_per_request": round(overhead, 4),
           "overhead_share_of_batch1_latency": round(overhead / (1000 * costs["balanced"].mean_ms), 6),
           "seconds": round(time.perf_counter() - t0, 1)}
    if log:
        log(f"governor: low_power uses {100 * (1 - low_vs_bal['energy_ratio']):.0f} % "
            "less energy than balanced "
            f"({low_vs_bal['accuracy_points']:+.2f} points); simulated discharge: governed serves "
            f"{sim['governed_vs_performance_requests']:.2f}x the requests of always-performance")
    return rep
