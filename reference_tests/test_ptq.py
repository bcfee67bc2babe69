"""Post-training calibration with min/max and percentile observers (qz/ptq.py, docs/spec.md §3.2)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qz
from qz import model, ptq, quant
from strategies import seeds


def setup():
    cfg = qz.Config(d_model=8, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=6, max_len=5,
                    input_dim=3, n_classes=4, n_shared_experts=1)
    rng = np.random.default_rng(0)
    return cfg, qz.init_params(cfg, seed=1), [rng.standard_normal((4, 5, 3)) for _ in range(3)]


def test_minmax_is_the_widest_range_over_batches():
    cfg, params, batches = setup()
    r = ptq.calibrate(params, cfg, batches, "minmax")
    per = [model.observe_ranges(params, cfg, x) for x in batches]
    for name in quant.observer_names(cfg):
        assert r[name] == (min(p[name][0] for p in per), max(p[name][1] for p in per))


def test_percentile_is_the_mean_of_batch_percentiles_and_inside_minmax():
    cfg, params, batches = setup()
    mm = ptq.calibrate(params, cfg, batches, "minmax")
    pc = ptq.calibrate(params, cfg, batches, "percentile", percentile=90.0)
    x = batches[0].astype(np.float32)
    want_in = np.mean([np.percentile(b.astype(np.float32), [10, 90]) for b in batches], axis=0)
    np.testing.assert_allclose(pc["in"], want_in, rtol=1e-6)
    for name in quant.observer_names(cfg):
        assert mm[name][0] <= pc[name][0] <= pc[name][1] <= mm[name][1], name
    assert pc["in"][1] < mm["in"][1] and x.size > 0


@given(seeds, st.floats(50.5, 100.0))
def test_percentile_stat_bounds(seed, p):
    x = np.random.default_rng(seed).standard_normal(200)
    lo, hi = quant.percentile_stat(p)(x)
    assert x.min() <= lo <= hi <= x.max()
    assert np.mean((x >= lo) & (x <= hi)) >= (2 * p - 100) / 100 - 0.02


def test_bad_observer_and_no_batches():
    cfg, params, batches = setup()
    with pytest.raises(ValueError, match="observer"):
        ptq.calibrate(params, cfg, batches, "histogram")
    with pytest.raises(ValueError, match="no calibration"):
        ptq.calibrate(params, cfg, [], "minmax")
    with pytest.raises(ValueError, match="percentile"):
        quant.percentile_stat(40)
