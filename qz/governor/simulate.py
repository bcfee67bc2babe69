"""Battery simulation: replay a discharge (and a heat-up) against the model under three policies
(docs/spec.md §4).

A simulated battery of `capacity_wh` drains at

    power = baseline_w + rate_hz * energy_per_request(mode)  (- charger_w while charging)

where `energy_per_request` comes from the per-mode cost table (``measure_modes``:
the energy estimate of qz/governor/energy.py for that mode's precision and top_k, and the
latency and accuracy measured on this machine). Each policy is replayed from
the same start until the battery is empty:

* ``performance``: always fp32 at the config top_k;
* ``balanced``: always int8 at the config top_k;
* ``governed``: the governor's policy (qz/governor/policy.py) on the simulated battery
  level and the trace's temperature, charging and CPU load.

The outcome depends on the device: with a large baseline power (screen, radio)
the model's share of the drain is small and no policy changes battery life
much; ``sweep`` shows that dependence. Nothing here sleeps: time is simulated.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .energy import (
    count_work,
    estimate_energy,
    rapl_joules_between,
    read_rapl,
    read_rapl_ranges,
)
from .policy import MODES, Thresholds, plan_for, policy
from .sensors import DeviceState

__all__ = ["SimConfig", "ModeCost", "POLICIES", "default_trace", "measure_modes", "simulate", "compare",
           "sweep", "write_timeline"]

POLICIES = ("performance", "balanced", "governed")


@dataclass(frozen=True)
class SimConfig:
    capacity_wh: float = 15.0     # a phone-sized battery
    start_pct: float = 100.0
    rate_hz: float = 50.0         # always-on keyword spotting: one 1 s window every 20 ms hop
    baseline_w: float = 0.03      # the rest of the device, screen off (microphone, idle SoC)
    charger_w: float = 5.0        # added while the trace says charging
    dt_s: float = 30.0            # simulation step
    max_hours: float = 10_000.0

    def __post_init__(self):
        for name in ("capacity_wh", "rate_hz", "dt_s", "max_hours"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("baseline_w", "charger_w"):
            if not getattr(self, name) >= 0:
                raise InputError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 < self.start_pct <= 100:
            raise InputError(f"start_pct: must be in (0, 100], got {self.start_pct}")


@dataclass(frozen=True)
class ModeCost:
    """What one request costs in a mode: estimated energy, measured latencies, measured accuracy."""
    mode: str
    precision: str
    top_k: int
    energy_j: float
    latency_ms: tuple          # measured samples at batch 1
    accuracy: float | None
    measured_j: float | None = None   # RAPL package energy per request where /sys/class/powercap has it

    @property
    def mean_ms(self):
        return float(np.mean(self.latency_ms))

    @property
    def p95_ms(self):
        return float(np.percentile(self.latency_ms, 95))


def default_trace(hours=400.0):
    """A synthetic day-and-heat profile when no trace is given: not charging, CPU 30 % busy,
    35 C, with a heat-up to 47 C (low_power by temperature) for one hour in every ten."""
    rows = []
    for h in np.arange(0.0, hours, 0.5):
        hot = (h % 10.0) >= 9.0
        rows.append((h * 3600.0, DeviceState(charging=False, temp_c=47.0 if hot else 35.0, cpu_util=0.3)))
    return rows


def measure_modes(bundle, test_data, repeats=200, seq_len=None, rapl_root="/"):
    """{mode: ModeCost} for a runtime.Bundle on this machine (latency at batch 1, accuracy on test_data,
    and measured energy beside the estimate where RAPL exists)."""
    from ..runtime import accuracy, infer
    cfg = bundle.cfg
    x1 = test_data.x[:1].astype(np.float32)
    setup = {}
    for mode in MODES:
        plan = plan_for(mode, cfg.top_k)
        model, used = bundle.pick(plan.precision)
        setup[mode] = (model, used, plan.top_k)
        infer(model, x1, top_k=plan.top_k)                       # warm-up
    lat = {mode: [] for mode in MODES}
    for _ in range(repeats):                                      # interleaved: drift hits every mode alike
        for mode, (model, _, k) in setup.items():
            t0 = time.perf_counter()
            infer(model, x1, top_k=k)
            lat[mode].append(1000 * (time.perf_counter() - t0))
    measured = {mode: _rapl_per_request(lambda m=model, k=k: infer(m, x1, top_k=k), repeats, rapl_root)
                for mode, (model, _, k) in setup.items()}
    costs = {}
    for mode, (model, used, k) in setup.items():
        work = count_work(cfg, used, top_k=k, seq_len=seq_len or x1.shape[1])
        costs[mode] = ModeCost(mode, used, k, estimate_energy(work)["total_j"], tuple(lat[mode]),
                               accuracy(model, test_data, top_k=k), measured[mode])
    return costs


def _rapl_per_request(request, n, root="/"):
    """Measured package energy per request (docs/spec.md §4): RAPL's counters read before and after
    n back-to-back requests; J per request, or None where RAPL is absent or unreadable. It counts the
    whole package (idle cores, the rest of the process), so it bounds the model's share from above."""
    before = read_rapl(root)
    if before is None:
        return None
    for _ in range(n):
        request()
    joules = rapl_joules_between(before, read_rapl(root), read_rapl_ranges(root))
    return None if joules is None else joules / n


def _env_at(trace, t, i):
    # the latest trace row at or before t (i: where the last lookup ended)
    while i + 1 < len(trace) and trace[i + 1][0] <= t:
        i += 1
    return (trace[i][1] if trace and trace[0][0] <= t else DeviceState()), i


def simulate(policy_name, costs, sim=SimConfig(), trace=None, th=Thresholds(), keep_every=10):
    """Replay one policy until the battery is empty -> summary and a timeline."""
    if policy_name not in POLICIES:
        raise InputError(f"policy: expected one of {', '.join(POLICIES)}, got {policy_name!r}")
    trace = default_trace() if trace is None else trace
    cap = sim.capacity_wh * 3600.0
    energy = cap * sim.start_pct / 100.0
    t, i, mode, since = 0.0, 0, "balanced", 0.0
    served = {m: 0.0 for m in MODES}
    timeline, step = [], 0
    while energy > 0 and t < sim.max_hours * 3600.0:
        env, i = _env_at(trace, t, i)
        state = DeviceState(battery_pct=min(100.0, 100.0 * energy / cap), charging=env.charging,
                            temp_c=env.temp_c, cpu_util=env.cpu_util)
        if policy_name == "governed":
            new = policy(state, mode, t - since, th)
            if new != mode:
                mode, since = new, t
        else:
            mode = policy_name
        power = sim.baseline_w + sim.rate_hz * costs[mode].energy_j
        gain = sim.charger_w if env.charging else 0.0
        dt = min(sim.dt_s, energy / max(power - gain, 1e-12)) if power > gain else sim.dt_s
        energy = min(cap, energy - (power - gain) * dt)
        served[mode] += sim.rate_hz * dt
        if step % keep_every == 0 or energy <= 0:
            timeline.append({"time_h": round(t / 3600.0, 4), "battery_pct": round(state.battery_pct, 3),
                             "temp_c": env.temp_c, "charging": env.charging, "mode": mode,
                             "power_w": round(power, 6), "latency_ms": round(costs[mode].mean_ms, 4)})
        t += dt
        step += 1
    total = sum(served.values())
    acc = [(n, costs[m].accuracy) for m, n in served.items() if n > 0 and costs[m].accuracy is not None]
    lat_mean = sum(n * costs[m].mean_ms for m, n in served.items()) / max(total, 1e-12)
    return {"policy": policy_name, "hours": round(t / 3600.0, 3), "requests": int(total),
            "requests_by_mode": {m: int(n) for m, n in served.items() if n > 0},
            "accuracy": (round(sum(n * a for n, a in acc) / max(sum(n for n, _ in acc), 1e-12), 4)
                         if acc else None),
            "mean_latency_ms": round(lat_mean, 4),
            "p95_latency_ms_by_mode": {m: round(costs[m].p95_ms, 4) for m, n in served.items() if n > 0},
            "timeline": timeline}


def compare(costs, sim=SimConfig(), trace=None, th=Thresholds()):
    """The three policies from the same start; governed vs always-performance ratios."""
    runs = {p: simulate(p, costs, sim, trace, th) for p in POLICIES}
    perf, gov = runs["performance"], runs["governed"]
    return {"sim": asdict(sim), "runs": runs,
            "governed_vs_performance_requests": round(gov["requests"] / max(perf["requests"], 1), 4),
            "governed_vs_performance_accuracy_points": (round(100 * (gov["accuracy"] - perf["accuracy"]), 2)
                                                        if gov["accuracy"] is not None else None)}


def sweep(costs, baselines=(0.003, 0.01, 0.03, 0.1, 0.3), sim=SimConfig(), trace=None):
    """governed / performance requests served as the device's baseline power varies."""
    out = []
    for b in baselines:
        s = SimConfig(**{**asdict(sim), "baseline_w": b})
        c = compare(costs, s, trace)
        out.append({"baseline_w": b,
                    "governed_vs_performance_requests": c["governed_vs_performance_requests"]})
    return out


def write_timeline(result, path_stem):
    """Timeline of each policy as CSV and the whole result as JSON; a PNG when matplotlib is present."""
    with open(f"{path_stem}.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(f"{path_stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "time_h", "battery_pct", "temp_c", "charging", "mode", "power_w", "latency_ms"])
        for name, run in result["runs"].items():
            for r in run["timeline"]:
                w.writerow([name, r["time_h"], r["battery_pct"], r["temp_c"], r["charging"], r["mode"],
                            r["power_w"], r["latency_ms"]])
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(4, 1, figsize=(9, 8), sharex=True)
    for name, run in result["runs"].items():
        tl = run["timeline"]
        hrs = [r["time_h"] for r in tl]
        axes[0].plot(hrs, [r["battery_pct"] for r in tl], label=name)
        axes[2].step(hrs, [MODES.index(r["mode"]) for r in tl], where="post", label=name)
        axes[3].plot(hrs, [r["latency_ms"] for r in tl], label=name)
        axes[1].plot(hrs, [r["temp_c"] if r["temp_c"] is not None else np.nan for r in tl], color="tab:red")
    axes[0].set_ylabel("battery %")
    axes[1].set_ylabel("temp C")
    axes[2].set_yticks(range(len(MODES)), MODES)
    axes[3].set_ylabel("latency ms")
    axes[3].set_xlabel("hours")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(f"{path_stem}.png", dpi=90)
    plt.close(fig)
    return f"{path_stem}.png"
