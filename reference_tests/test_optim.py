"""AdamW, clipping and the schedule (qz/optim.py, docs/spec.md §5)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qz import optim
from strategies import seeds


@given(seeds, st.integers(1, 5))
def test_adamw_matches_textbook_update(seed, steps):
    """Compare against a direct transcription of PyTorch's AdamW pseudocode, in float64."""
    rng = np.random.default_rng(seed)
    params = {"blocks.0.wq": rng.standard_normal((3, 4)), "blocks.0.attn_norm": rng.standard_normal(4),
              "head.bias": rng.standard_normal(2)}
    ref = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    state = optim.adamw_init(params)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    for t in range(1, steps + 1):
        grads = {k: rng.standard_normal(p.shape) for k, p in params.items()}
        optim.adamw_step(params, {k: g.copy() for k, g in grads.items()}, state, t, lr, b1, b2, eps, wd)
        for k in ref:
            g = grads[k]
            if k == "blocks.0.wq":                       # decayed; gains and biases are not
                ref[k] = ref[k] - lr * wd * ref[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v2[k] = b2 * v2[k] + (1 - b2) * g * g
            mhat, vhat = m[k] / (1 - b1 ** t), v2[k] / (1 - b2 ** t)
            ref[k] = ref[k] - lr * mhat / (np.sqrt(vhat) + eps)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_no_decay_on_norms_and_biases():
    assert optim.decays("blocks.1.w1") and optim.decays("embed") and optim.decays("head.weight")
    for name in ("blocks.0.attn_norm", "blocks.3.ffn_norm", "final_norm", "head.bias", "in_proj.bias"):
        assert not optim.decays(name), name


def test_weight_decay_alone_shrinks_weights_not_gains():
    params = {"w": np.ones(3), "final_norm": np.ones(3)}
    state = optim.adamw_init(params)
    optim.adamw_step(params, {"w": np.zeros(3), "final_norm": np.zeros(3)}, state, 1, lr=0.1,
                     weight_decay=0.5)
    np.testing.assert_allclose(params["w"], 0.95)
    np.testing.assert_allclose(params["final_norm"], 1.0)


def test_adamw_keeps_float32():
    params = {"w": np.ones((2, 2), np.float32)}
    state = optim.adamw_init(params)
    optim.adamw_step(params, {"w": np.ones((2, 2), np.float32)}, state, 1, lr=1e-3, weight_decay=0.1)
    assert params["w"].dtype == np.float32 and state["m.w"].dtype == np.float32


@given(seeds, st.floats(0.01, 10.0))
def test_clip_grad_norm(seed, max_norm):
    rng = np.random.default_rng(seed)
    grads = {"a": rng.standard_normal((3, 3)) * 5, "b": rng.standard_normal(4)}
    before = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    direction = {k: g / before for k, g in grads.items()}
    norm = optim.clip_grad_norm(grads, max_norm)
    after = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    assert norm == pytest.approx(before)
    assert after == pytest.approx(min(before, max_norm), rel=1e-5)
    for k in grads:   # direction unchanged
        np.testing.assert_allclose(grads[k] / after, direction[k], rtol=1e-9, atol=1e-12)


def test_clip_leaves_nonfinite_for_the_caller():
    grads = {"a": np.array([np.inf, 1.0])}
    assert not math.isfinite(optim.clip_grad_norm(grads, 1.0))


def test_schedule_warmup_then_cosine():
    lrs = [optim.lr_at(s, 1.0, 10, 110, 0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))            # rising
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))           # then falling
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-9)         # cosine midpoint
    assert optim.lr_at(110, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
