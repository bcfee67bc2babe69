"""The whole model (qz/model.py): gradients, modes, dtypes, input checks (docs/spec.md §2, §7)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qz
from qz import model
from helpers import TOL, check_vjp
from strategies import seeds


def tiny(mode, S=0, E=4, **kw):
    common = dict(d_model=8, n_heads=2, n_layers=2, n_experts=E, top_k=min(2, E), d_ff=6, max_len=6,
                  n_shared_experts=S)
    if mode == "lm":
        return qz.Config(vocab_size=7, **common, **kw)
    return qz.Config(input_dim=3, n_classes=4, **common, **kw)


def batch(cfg, rng, B=2, T=5):
    if cfg.mode == "lm":
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    return rng.standard_normal((B, T, cfg.input_dim)), rng.integers(0, cfg.n_classes, B)


def loss_vjp(cfg, params, x, y, k, aux_coef, rng, name):
    names = list(params)

    def fwd(*arrays):
        loss, _ = model.loss_and_grads(dict(zip(names, arrays)), cfg, x, y, aux_coef=aux_coef, top_k=k)
        return np.asarray(loss)

    def bwd(dloss):
        _, g = model.loss_and_grads(params, cfg, x, y, aux_coef=aux_coef, top_k=k)
        return [float(dloss) * g[n] for n in names]
    check_vjp(fwd, bwd, [params[n] for n in names], rng, name=name)


@pytest.mark.parametrize("mode", ["lm", "classifier"])
@pytest.mark.parametrize("S", [0, 1])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_whole_model_gradient(mode, S, k):
    cfg = tiny(mode, S)
    rng = np.random.default_rng(10 * k + S)
    params = qz.init_params(cfg, seed=k, dtype=np.float64)
    x, y = batch(cfg, rng)
    loss_vjp(cfg, params, x, y, k, 0.3, rng, f"{mode} S={S} k={k}")


@given(st.sampled_from(["lm", "classifier"]), st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), seeds)
def test_whole_model_gradient_hypothesis(mode, B, T, E, seed):
    cfg = tiny(mode, S=seed % 2, E=E, causal=bool(seed % 3))
    rng = np.random.default_rng(seed)
    params = qz.init_params(cfg, seed=seed, dtype=np.float64)
    x, y = batch(cfg, rng, B, T)
    loss_vjp(cfg, params, x, y, 1 + seed % E, 0.1, rng, f"{mode} B={B} T={T} E={E}")


@pytest.mark.parametrize("mode", ["lm", "classifier"])
def test_grads_have_params_keys_shapes_dtypes(mode):
    cfg = tiny(mode, S=1)
    for dtype in (np.float32, np.float64):
        params = qz.init_params(cfg, dtype=dtype)
        x, y = batch(cfg, np.random.default_rng(0))
        loss, grads = qz.loss_and_grads(params, cfg, x, y, aux_coef=0.01)
        assert isinstance(loss, float)
        assert list(grads) == list(params) or set(grads) == set(params)
        for n in params:
            assert grads[n].shape == params[n].shape and grads[n].dtype == dtype, n
        logits, aux = qz.forward(params, cfg, x)
        assert logits.dtype == dtype, "forward must keep the parameter dtype"


@pytest.mark.parametrize("mode", ["lm", "classifier"])
def test_float32_agrees_with_float64(mode):
    cfg = tiny(mode, S=1)
    x, _ = batch(cfg, np.random.default_rng(3))
    l32, _ = qz.forward(qz.init_params(cfg, dtype=np.float32), cfg, x)
    l64, _ = qz.forward(qz.init_params(cfg, dtype=np.float64), cfg, x)
    np.testing.assert_allclose(l32, l64, rtol=TOL["f32_vs_f64"], atol=TOL["f32_vs_f64"])


def test_output_shapes_and_loss_definition():
    rng = np.random.default_rng(4)
    for mode, shape in (("lm", (2, 5, 7)), ("classifier", (2, 4))):
        cfg = tiny(mode)
        params = qz.init_params(cfg, dtype=np.float64)
        x, y = batch(cfg, rng)
        logits, aux = qz.forward(params, cfg, x)
        assert logits.shape == shape
        z = logits.reshape(-1, shape[-1])
        lse = np.log(np.exp(z).sum(1))
        ce = np.mean(lse - z[np.arange(len(z)), y.reshape(-1)])
        loss, _ = qz.loss_and_grads(params, cfg, x, y, aux_coef=0.5)
        assert loss == pytest.approx(ce + 0.5 * aux, rel=1e-12)


def test_lm_is_causal():
    cfg = tiny("lm")
    params = qz.init_params(cfg, dtype=np.float64)
    x = np.array([[1, 2, 3, 4, 5]])
    x2 = x.copy()
    x2[0, 3:] = 0
    l1, _ = qz.forward(params, cfg, x)
    l2, _ = qz.forward(params, cfg, x2)
    np.testing.assert_allclose(l1[0, :3], l2[0, :3], rtol=1e-12)


def test_top_k_override_changes_routing_but_not_shape():
    cfg = tiny("classifier")
    params = qz.init_params(cfg)
    x, _ = batch(cfg, np.random.default_rng(5))
    a, _ = qz.forward(params, cfg, x, top_k=1)
    b, _ = qz.forward(params, cfg, x, top_k=4)
    assert a.shape == b.shape and not np.allclose(a, b)


@pytest.mark.parametrize("bad,msg", [
    (lambda cfg, x: (x[:, :, :2],), "inputs"),
    (lambda cfg, x: (np.full_like(x, np.nan),), "NaN"),
    (lambda cfg, x: (np.zeros((2, 7, 3)),), "max_len"),
    (lambda cfg, x: (x[:0],), "empty"),
    (lambda cfg, x: (x, 0), "top_k"),
    (lambda cfg, x: (x, 5), "top_k"),
])
def test_classifier_input_errors_name_the_problem(bad, msg):
    cfg = tiny("classifier")
    params = qz.init_params(cfg)
    x, _ = batch(cfg, np.random.default_rng(0))
    args = bad(cfg, x)
    with pytest.raises(ValueError, match=msg):
        qz.forward(params, cfg, args[0], top_k=args[1] if len(args) > 1 else None)


def test_lm_input_and_target_errors():
    cfg = tiny("lm")
    params = qz.init_params(cfg)
    with pytest.raises(ValueError, match="token ids"):
        qz.forward(params, cfg, np.array([[0, 7]]))
    with pytest.raises(ValueError, match="int token ids"):
        qz.forward(params, cfg, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="targets"):
        qz.loss_and_grads(params, cfg, np.array([[0, 1]]), np.array([[0, 9]]))
    with pytest.raises(ValueError, match="targets"):
        qz.loss_and_grads(params, cfg, np.array([[0, 1]]), np.array([0, 1]))


def test_init_is_seeded_and_dtype_consistent():
    cfg = tiny("lm", S=1)
    a, b = qz.init_params(cfg, seed=3), qz.init_params(cfg, seed=3)
    c = qz.init_params(cfg, seed=4)
    d = qz.init_params(cfg, seed=3, dtype=np.float64)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a["blocks.0.wq"], c["blocks.0.wq"])
    assert all(np.allclose(a[n], d[n], rtol=1e-6) for n in a)
    assert set(a) == set(qz.config.param_shapes(cfg))


def test_soft_target_gradient_and_one_hot_equivalence():
    cfg = tiny("classifier")
    rng = np.random.default_rng(5)
    params = qz.init_params(cfg, seed=5, dtype=np.float64)
    x, y = batch(cfg, rng, B=3)
    soft = rng.dirichlet(np.ones(cfg.n_classes), 3)
    names = list(params)

    def fwd(*arrays):
        loss, _, _ = model.loss_grads_logits(dict(zip(names, arrays)), cfg, x, y, 0.2, soft_targets=soft)
        return np.asarray(loss)

    def bwd(dloss):
        _, g, _ = model.loss_grads_logits(params, cfg, x, y, 0.2, soft_targets=soft)
        return [float(dloss) * g[n] for n in names]
    check_vjp(fwd, bwd, [params[n] for n in names], rng, name="soft targets")
    hard = model.loss_grads_logits(params, cfg, x, y, 0.2)
    onehot = model.loss_grads_logits(params, cfg, x, y, 0.2, soft_targets=np.eye(cfg.n_classes)[y])
    assert np.isclose(hard[0], onehot[0])
    for n in names:
        np.testing.assert_allclose(hard[1][n], onehot[1][n], rtol=1e-10, atol=1e-12)
