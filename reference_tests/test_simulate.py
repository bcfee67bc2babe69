"""Battery simulation of the governed runtime (qz/governor/simulate.py, docs/spec.md §4)."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qz.governor import simulate
from qz.governor import DeviceState, MODES
from qz.governor.simulate import ModeCost, SimConfig


def costs(e_fp32=3e-4, e_int8=1e-5, e_low=8e-6, acc=(0.92, 0.915, 0.91, 0.91)):
    e = {"performance": e_fp32, "balanced": e_int8, "low_power": e_low, "critical": e_low}
    prec = {"performance": "fp32"}
    return {m: ModeCost(m, prec.get(m, "int8"), 2 if m in ("performance", "balanced") else 1, e[m],
                        (0.4, 0.5, 0.6), a) for m, a in zip(MODES, acc)}


def test_energy_bookkeeping_by_hand():
    """Always-performance with no charging: hours = capacity / power exactly."""
    c = costs()
    sim = SimConfig(capacity_wh=1.0, rate_hz=10.0, baseline_w=0.01, dt_s=10.0)
    r = simulate.simulate("performance", c, sim, trace=[(0.0, DeviceState(charging=False))])
    power = 0.01 + 10.0 * 3e-4
    assert r["hours"] == pytest.approx(1.0 / power, rel=1e-6)
    assert r["requests"] == pytest.approx(10.0 * 3600.0 / power, rel=1e-6)
    assert r["accuracy"] == pytest.approx(0.92)
    batt = [row["battery_pct"] for row in r["timeline"]]
    assert all(a >= b for a, b in zip(batt, batt[1:]))               # draining only


def test_governed_walks_down_the_modes_and_beats_performance():
    c = costs()
    res = simulate.compare(c, SimConfig(capacity_wh=1.0, baseline_w=0.01),
                           trace=[(0.0, DeviceState(charging=False, temp_c=30.0))])
    gov = res["runs"]["governed"]
    assert set(gov["requests_by_mode"]) == {"balanced", "low_power", "critical"}
    modes = [row["mode"] for row in gov["timeline"]]
    order = [MODES.index(m) for m in modes]
    assert order == sorted(order)                                    # only toward less compute
    assert res["governed_vs_performance_requests"] > 1.0
    # accuracy over all served requests is the request-weighted mean of the modes'
    n = gov["requests_by_mode"]
    want = sum(n[m] * c[m].accuracy for m in n) / sum(n.values())
    assert gov["accuracy"] == pytest.approx(want, abs=1e-4)


def test_charging_extends_life_and_heat_forces_low_power():
    c = costs()
    sim = SimConfig(capacity_wh=0.5, baseline_w=0.05)
    dry = simulate.simulate("governed", c, sim, trace=[(0.0, DeviceState(charging=False, temp_c=30.0))])
    plug = [(0.0, DeviceState(charging=False, temp_c=30.0)),
            (3600.0, DeviceState(charging=True, temp_c=30.0)),
            (7200.0, DeviceState(charging=False, temp_c=30.0))]
    wet = simulate.simulate("governed", c, sim, trace=plug)
    assert wet["hours"] > dry["hours"] + 0.9
    hot = simulate.simulate("governed", c, sim, trace=[(0.0, DeviceState(charging=False, temp_c=47.0))])
    assert "balanced" not in hot["requests_by_mode"] and hot["requests_by_mode"]["low_power"] > 0


@given(st.floats(1e-6, 1e-3), st.floats(1e-7, 1e-5), st.floats(0.001, 1.0))
def test_cheaper_modes_never_serve_fewer_requests(e_fp32, e_int8, baseline):
    """When int8 requests cost no more energy than fp32 ones, the governed policy (which only moves
    to int8 modes while discharging) serves at least as many requests as always-performance."""
    c = costs(e_fp32=max(e_fp32, e_int8), e_int8=e_int8, e_low=e_int8)
    res = simulate.compare(c, SimConfig(capacity_wh=0.01, baseline_w=baseline, dt_s=5.0),
                           trace=[(0.0, DeviceState(charging=False))])
    assert res["runs"]["governed"]["requests"] >= res["runs"]["performance"]["requests"] * (1 - 1e-6)


def test_sweep_shows_the_baseline_dependence_and_files_are_written(tmp_path):
    c = costs()
    s = simulate.sweep(c, baselines=(0.001, 0.1), sim=SimConfig(capacity_wh=0.2))
    assert s[0]["governed_vs_performance_requests"] > s[1]["governed_vs_performance_requests"] > 1.0
    res = simulate.compare(c, SimConfig(capacity_wh=0.2))
    simulate.write_timeline(res, str(tmp_path / "sim"))
    assert json.loads((tmp_path / "sim.json").read_text())["runs"]["governed"]["requests"] > 0
    lines = (tmp_path / "sim.csv").read_text().splitlines()
    assert lines[0].startswith("policy,time_h,battery_pct") and len(lines) > 3


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="capacity_wh"):
        SimConfig(capacity_wh=0)
    with pytest.raises(ValueError, match="policy"):
        simulate.simulate("turbo", costs())
    assert np.isfinite(simulate.default_trace(2.0)[0][0])


def test_measure_modes_reports_rapl_energy_beside_the_estimate(tmp_path, monkeypatch):
    """docs/spec.md §4: where RAPL exists, each mode's measured package energy per request comes with
    the estimate (counters read around `repeats` back-to-back requests); None where it does not."""
    import qz
    from qz import model
    from qz.data import ArrayData
    from qz.export import save_export
    from qz.runtime import load_bundle
    cfg = qz.Config(input_dim=5, n_classes=3, d_model=16, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=8,
                    max_len=4)
    params = qz.init_params(cfg, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 4, 5)).astype(np.float32)
    save_export(tmp_path / "m.fp32.safetensors", params, cfg, "fp32")
    save_export(tmp_path / "m.int8.safetensors", params, cfg, "int8", model.observe_ranges(params, cfg, x))
    bundle = load_bundle([tmp_path / "m.fp32.safetensors", tmp_path / "m.int8.safetensors"])
    test = ArrayData(x, np.arange(6) % 3)
    plain = simulate.measure_modes(bundle, test, repeats=3, rapl_root=str(tmp_path / "no-rapl"))
    assert set(plain) == set(MODES) and all(c.measured_j is None and c.energy_j > 0 for c in plain.values())
    counter = {"uj": 10_000}

    def fake_read_rapl(root="/"):          # each read sees 3000 uJ more: 3000 uJ over 3 requests
        counter["uj"] += 3000
        return {"intel-rapl:0": counter["uj"]}
    monkeypatch.setattr(simulate, "read_rapl", fake_read_rapl)
    monkeypatch.setattr(simulate, "read_rapl_ranges", lambda root="/": {"intel-rapl:0": 2 ** 32})
    measured = simulate.measure_modes(bundle, test, repeats=3)
    assert all(c.measured_j == pytest.approx(1e-3) for c in measured.values())
