"""Fake quantization, the clipped STE and observers (qz/quant.py, docs/spec.md §3.1-3.2)."""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qz
from qz import model, quant
from helpers import check_vjp
from strategies import seeds

floats = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, max_side=6), elements=floats))
def test_weight_quant_error_at_most_half_a_step(w):
    q, s = quant.quantize_weight(w, axis=-2)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert s.shape == w.shape[:-2] + (1, w.shape[-1])
    err = np.abs(q * s - w)
    assert np.all(err <= s / 2 + 1e-12 * np.abs(w).max(initial=1.0)), (err, s)
    np.testing.assert_array_equal(quant.fake_quant_weight(w, -2), q * s)


@pytest.mark.parametrize("dtype,tiny", [(np.float64, 5e-324), (np.float32, np.float32(1e-45))])
def test_subnormal_channel_gives_zeros_not_nan(dtype, tiny):
    """A channel whose max |w| is subnormal: max / 127 underflows to 0, so its scale is 1 (as for an
    all-zero channel) and it quantizes to zeros, without a division by zero (found by hypothesis)."""
    w = np.array([[0.0, 1.0], [tiny, -2.0]], dtype)
    with np.errstate(divide="raise", invalid="raise"):
        q, s = quant.quantize_weight(w, axis=-2)
        hat = quant.fake_quant_weight(w, -2)
    assert s.dtype == dtype and s[0, 0] == 1 and np.all(q[:, 0] == 0) and np.all(hat[:, 0] == 0)
    assert s[0, 1] == dtype(2.0) / 127


def test_all_zero_channel_gives_zeros_not_nan():
    w = np.array([[0.0, 1.0], [0.0, -2.0]])
    q, s = quant.quantize_weight(w, axis=-2)
    assert s[0, 0] == 1.0 and np.all(q[:, 0] == 0)
    assert np.all(np.isfinite(quant.fake_quant_weight(w, -2)))
    assert q[1, 1] == -127 and s[0, 1] == 2.0 / 127     # the channel's max maps to the edge


def test_each_expert_and_row_has_its_own_scale():
    w = np.stack([np.full((3, 2), 1.0), np.full((3, 2), 100.0)])          # (E=2, in, out)
    _, s = quant.quantize_weight(w, axis=-2)
    assert s.shape == (2, 1, 2) and s[0, 0, 0] == 1 / 127 and s[1, 0, 0] == 100 / 127
    emb = np.array([[1.0, -3.0], [0.5, 0.25]])
    _, s = quant.quantize_weight(emb, axis=-1)                             # per row
    np.testing.assert_allclose(s[:, 0], [3 / 127, 0.5 / 127])


def test_act_qparams_contains_zero_and_guards_zero_range():
    scale, zp = quant.act_qparams(0.5, 2.0)              # widened to (0, 2)
    assert scale == 2.0 / 255 and zp == 0
    scale, zp = quant.act_qparams(-1.0, 1.0)
    assert zp == np.rint(1.0 / scale)
    assert quant.act_qparams(0.0, 0.0) == (1.0, 0.0)
    scale, zp = quant.act_qparams(-3.0, -1.0)             # all negative: widened to (-3, 0)
    assert zp == 255


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=floats), st.floats(-50, 0), st.floats(0, 50))
def test_act_fake_quant_is_on_grid_and_ste_is_the_mask(x, lo, hi):
    scale, zp = quant.act_qparams(lo, hi)
    x_hat, mask = quant.fake_quant_act_forward(x, scale, zp)
    grid = x_hat / scale + zp
    np.testing.assert_allclose(grid, np.rint(grid), atol=1e-6)
    assert grid.min() >= -1e-6 and grid.max() <= 255 + 1e-6
    r = np.rint(x / scale + zp)
    np.testing.assert_array_equal(mask, (r >= 0) & (r <= 255))
    dy = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_array_equal(quant.fake_quant_act_backward(dy, mask), dy * mask)


def test_ste_at_the_clip_edges_and_ties():
    scale, zp = 1.0, 10.0                                 # representable: -10 .. 245
    x = np.array([-10.0, -10.5, -10.6, 245.0, 245.5, 245.4, 0.5, 1.5, -0.5, 0.0])
    x_hat, mask = quant.fake_quant_act_forward(x, scale, zp)
    # -10 -> r = 0 (edge: passes); -10.5 -> r = rint(-0.5) = -0 (half to even: passes);
    # -10.6 -> r = -1 (blocked); 245 -> 255 (passes); 245.5 -> rint(255.5) = 256 (blocked);
    # 245.4 -> 255 (passes); ties 0.5 -> 10 (even), 1.5 -> 12, -0.5 -> 10
    assert mask.tolist() == [True, True, False, True, False, True, True, True, True, True]
    assert x_hat.tolist() == [-10.0, -10.0, -10.0, 245.0, 245.0, 245.0, 0.0, 2.0, 0.0, 0.0]


def test_observer_first_batch_then_ema():
    r = quant.observe_update({}, {"a": (-1.0, 2.0)})
    assert r["a"] == (-1.0, 2.0)
    r = quant.observe_update(r, {"a": (-3.0, 4.0)})
    assert r["a"] == pytest.approx((-1.0 + 0.01 * -2.0, 2.0 + 0.01 * 2.0))


def tiny(mode, S=0):
    common = dict(d_model=8, n_heads=2, n_layers=2, n_experts=4, top_k=2, d_ff=6, max_len=5,
                  n_shared_experts=S)
    return (qz.Config(vocab_size=9, **common) if mode == "lm"
            else qz.Config(input_dim=3, n_classes=4, **common))


def batch(cfg, rng):
    if cfg.mode == "lm":
        return rng.integers(0, 9, (2, 5)), rng.integers(0, 9, (2, 5))
    return rng.standard_normal((2, 5, 3)), rng.integers(0, 4, 2)


def test_observer_names_and_missing_range():
    cfg = tiny("classifier")
    assert quant.observer_names(cfg) == ["in", "blocks.0.attn_in", "blocks.0.attn_out", "blocks.0.ffn_in",
                                         "blocks.0.ffn_mid", "blocks.1.attn_in", "blocks.1.attn_out",
                                         "blocks.1.ffn_in", "blocks.1.ffn_mid", "head_in"]
    params = qz.init_params(cfg)
    x, _ = batch(cfg, np.random.default_rng(0))
    ranges = model.observe_ranges(params, cfg, x)
    assert set(ranges) == set(quant.observer_names(cfg))
    del ranges["blocks.1.ffn_mid"]
    with pytest.raises(ValueError, match="blocks.1.ffn_mid"):
        qz.forward(params, cfg, x, quant={"ranges": ranges})


@pytest.mark.parametrize("mode", ["lm", "classifier"])
def test_fake_quant_model_is_close_to_float_and_grads_keep_keys(mode):
    cfg = tiny(mode, S=1)
    params = qz.init_params(cfg, seed=1)
    x, y = batch(cfg, np.random.default_rng(1))
    q = {"ranges": model.observe_ranges(params, cfg, x)}
    lf, _ = qz.forward(params, cfg, x)
    lq, _ = qz.forward(params, cfg, x, quant=q)
    assert not np.array_equal(lf, lq)
    assert np.abs(lf - lq).max() < 0.1 * np.abs(lf).max() + 0.05
    loss, grads = qz.loss_and_grads(params, cfg, x, y, quant=q)
    assert set(grads) == set(params) and all(grads[n].shape == params[n].shape for n in params)


@pytest.mark.parametrize("mode", ["lm", "classifier"])
@pytest.mark.parametrize("S,k", [(0, 1), (1, 2), (0, 4)])
def test_whole_model_gradient_with_fake_quant(mode, S, k, monkeypatch):
    """float64 check of the STE backward with frozen ranges. Finite differences cannot see through
    rint (piecewise constant), so the check uses the STE's own surrogate, rounding = identity:
    weights then pass through and activations are clipped to their range, whose derivative is
    exactly the clipped-STE mask. Ranges are narrowed so that some activations do clip."""
    cfg = tiny(mode, S)
    rng = np.random.default_rng(10 * k + S)
    params = qz.init_params(cfg, seed=k, dtype=np.float64)
    x, y = batch(cfg, rng)
    ranges = {n: (0.6 * lo, 0.6 * hi) for n, (lo, hi) in model.observe_ranges(params, cfg, x).items()}
    q = {"ranges": ranges}
    monkeypatch.setattr(quant, "_round", lambda v: v)
    names = list(params)

    def fwd(*arrays):
        loss, _ = qz.loss_and_grads(dict(zip(names, arrays)), cfg, x, y, aux_coef=0.1, top_k=k, quant=q)
        return np.asarray(loss)

    def bwd(dloss):
        _, g = qz.loss_and_grads(params, cfg, x, y, aux_coef=0.1, top_k=k, quant=q)
        return [float(dloss) * g[n] for n in names]
    check_vjp(fwd, bwd, [params[n] for n in names], rng, name=f"qat {mode} S={S} k={k}")


@given(seeds)
def test_clipping_blocks_gradients(seed):
    """With tiny ranges nearly everything clips, so almost no gradient reaches the body."""
    cfg = tiny("classifier")
    params = qz.init_params(cfg, seed=seed % 100, dtype=np.float64)
    x, y = batch(cfg, np.random.default_rng(seed))
    ranges = {n: (-1e-9, 1e-9) for n in quant.observer_names(cfg)}
    _, g = qz.loss_and_grads(params, cfg, x, y, quant={"ranges": ranges})
    assert np.abs(g["in_proj.weight"]).max() < 1e-6 and np.abs(g["blocks.0.w1"]).max() < 1e-6


@pytest.mark.parametrize("k", [516, 517, 600, 2048])
def test_wide_int8_linear_still_equals_fake_quant_forward(k):
    """Past 516 inputs a float32 sum of code products can pass 2**24 and round; the fake-quant layer
    then sums in float64 (quant.code_matmul) and stays equal to the int8 layer bit for bit. The
    inputs sit at the top of their range and the weights near their channel's max, so the sums are
    as large as codes allow."""
    rng = np.random.default_rng(k)
    x = rng.uniform(0.9, 1.0, (5, k)).astype(np.float32)
    w = rng.uniform(0.8, 1.0, (k, 7)).astype(np.float32)
    w[:, 1] *= -1
    scale, zp = quant.act_qparams(0.0, 0.95)                        # codes up to 255, zero point 0
    x_c, _ = quant.act_codes(x, scale, zp)
    if k >= 600:                                                    # sums past float32's exact integers
        assert np.abs(x_c.astype(np.int64) @ quant.split_weight(w, -2).w_q.astype(np.int64)).max() > 2 ** 24
    y = quant.int8_linear(x, quant.pack_linear(w), scale, zp)
    y_fq, _ = quant.qlinear_forward(x_c, scale, quant.split_weight(w, -2))
    np.testing.assert_array_equal(y, y_fq)


@given(seeds, st.integers(1, 9), st.integers(1, 70), st.integers(1, 20))
@example(seed=129173, n=1, k=41, c=20)                             # a weight on a rounding tie
def test_int8_linear_equals_fake_quant_forward(seed, n, k, c):
    """docs/spec.md §3.3: the integer layer's output equals the fake-quant float forward; computed in the
    same order (qlinear_forward), the two agree bit for bit, and both are within float rounding of
    x_hat @ W_hat computed in float64."""
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, k))).astype(np.float32)
    w = rng.standard_normal((k, c)).astype(np.float32)
    w[:, 0] = 0.0                                                  # an all-zero channel too
    b = rng.standard_normal(c).astype(np.float32)
    scale, zp = quant.act_qparams(0.8 * x.min(), 0.8 * x.max())    # some inputs clip
    packed = quant.pack_linear(w)
    assert packed[0].dtype == np.int8 and packed[0].shape == (k, c)
    assert np.array_equal(packed[2], packed[0].astype(np.int32).sum(axis=0))
    y = quant.int8_linear(x, packed, scale, zp, b)
    x_c, _ = quant.act_codes(x, scale, zp)
    y_fq, _ = quant.qlinear_forward(x_c, scale, quant.split_weight(w, -2), b)
    np.testing.assert_array_equal(y, y_fq)
    x_hat, _ = quant.fake_quant_act_forward(x, scale, zp)
    # W_hat from w's own float32 scales: recomputing the scales in float64 can move a code that sits on
    # a rounding tie in float32 (w / s = -54.5 exactly) by one step, a different weight, not rounding.
    want = x_hat.astype(np.float64) @ quant.fake_quant_weight(w, -2).astype(np.float64) + b
    err = np.abs(y - want).max() / max(np.abs(want).max(), 1e-6)
    assert err < 1e-5, err


def test_minmax_observer_keeps_the_widest_range():
    r = quant.minmax_update({}, {"a": (-1.0, 2.0)})
    r = quant.minmax_update(r, {"a": (-0.5, 3.0), "b": (0.0, 1.0)})
    assert r == {"a": (-1.0, 3.0), "b": (0.0, 1.0)}


def test_precision_sizes_by_hand():
    cfg = qz.Config(d_model=4, n_heads=2, n_layers=1, n_experts=2, top_k=1, d_ff=3, max_len=5,
                    input_dim=2, n_classes=3)
    sizes = quant.precision_sizes(qz.init_params(cfg))
    # quantized (weights, scales): in_proj 2x4 (8, 4); wq/wk/wv/wo 4x4 each (16, 4);
    # w1, w3 2x4x3 (24, 6) each; w2 2x3x4 (24, 8); pos 5x4 per row (20, 5); head 4x3 (12, 3)
    qw = 8 + 4 * 16 + 3 * 24 + 20 + 12
    qs = 4 + 4 * 4 + 6 + 6 + 8 + 5 + 3
    kept = 4 + 4 + 4 + 4 * 2 + 4 + 3          # in_proj.bias, attn_norm, ffn_norm, gate, final_norm, head.bias
    assert sizes["fp32_bytes"] == 4 * (qw + kept) and sizes["fp16_bytes"] == 2 * (qw + kept)
    assert sizes["int8_bytes"] == qw + 4 * qs + 4 * kept
