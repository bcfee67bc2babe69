"""Gradient checks for every op pair in qz/ops.py (float64 central differences)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qz import ops
from helpers import check_vjp
from strategies import dims, model_shapes, seeds, small


@given(small, small, dims, dims, seeds)
def test_linear_vjp(B, T, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal((B, T, n_in)), rng.standard_normal((n_in, n_out)),
               rng.standard_normal(n_out))
    cache = {}

    def fwd(x, w, b):
        y, cache["c"] = ops.linear_forward(x, w, b)
        return y
    check_vjp(fwd, lambda dy: ops.linear_backward(dy, cache["c"]), [x, w, b], rng, name="linear")


@given(small, dims, seeds)
def test_linear_without_bias_returns_no_bias_grad(B, n, seed):
    rng = np.random.default_rng(seed)
    y, c = ops.linear_forward(rng.standard_normal((B, n)), rng.standard_normal((n, 3)))
    assert ops.linear_backward(np.ones_like(y), c)[2] is None


@given(small, small, dims, seeds)
def test_rmsnorm_vjp(B, T, d, seed):
    rng = np.random.default_rng(seed)
    x, g = rng.standard_normal((B, T, d)), rng.standard_normal(d)
    cache = {}

    def fwd(x, g):
        y, cache["c"] = ops.rmsnorm_forward(x, g)
        return y
    check_vjp(fwd, lambda dy: ops.rmsnorm_backward(dy, cache["c"]), [x, g], rng, name="rmsnorm")


def test_rmsnorm_matches_spec_formula():
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((3, 4, 7)), rng.standard_normal(7)
    want = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-5) * g
    np.testing.assert_allclose(ops.rmsnorm_forward(x, g)[0], want, rtol=1e-12, err_msg="rmsnorm")


@given(model_shapes(), seeds, st.booleans())
def test_attention_vjp(shape, seed, causal):
    B, T, H, D = shape
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, T, H * D)) for _ in range(3))
    cache = {}

    def fwd(q, k, v):
        o, cache["c"] = ops.attention_forward(q, k, v, H, causal)
        return o
    check_vjp(fwd, lambda do: ops.attention_backward(do, cache["c"]), [q, k, v], rng, name="attention")


def test_attention_causal_ignores_the_future():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 6, 8)) for _ in range(3))
    o1, _ = ops.attention_forward(q, k, v, 2, True)
    k2, v2 = k.copy(), v.copy()
    k2[:, 4:] += 10.0
    v2[:, 4:] -= 10.0
    o2, _ = ops.attention_forward(q, k2, v2, 2, True)
    np.testing.assert_allclose(o1[:, :4], o2[:, :4], rtol=1e-12, err_msg="causal leak")
    assert not np.allclose(o1[:, 4:], o2[:, 4:])


def test_attention_matches_direct_formula():
    rng = np.random.default_rng(2)
    B, T, H, D = 2, 5, 3, 4
    q, k, v = (rng.standard_normal((B, T, H * D)) for _ in range(3))
    o, _ = ops.attention_forward(q, k, v, H, False)
    for h in range(H):
        sl = slice(h * D, (h + 1) * D)
        s = q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) / np.sqrt(D)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(o[:, :, sl], p @ v[:, :, sl], rtol=1e-10, err_msg=f"head {h}")


@given(small, dims, seeds)
def test_swiglu_vjp(N, f, seed):
    rng = np.random.default_rng(seed)
    a, b = 3 * rng.standard_normal((N, f)), rng.standard_normal((N, f))   # a of both signs
    cache = {}

    def fwd(a, b):
        m, cache["c"] = ops.swiglu_forward(a, b)
        return m
    check_vjp(fwd, lambda dm: ops.swiglu_backward(dm, cache["c"]), [a, b], rng, name="swiglu")


def test_swiglu_is_silu_a_times_b():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    m, _ = ops.swiglu_forward(a, b)
    np.testing.assert_allclose(m, a / (1 + np.exp(-a)) * b, rtol=1e-12)


def test_swiglu_extreme_inputs_are_finite():
    a = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    m, c = ops.swiglu_forward(a, np.ones_like(a))
    da, db = ops.swiglu_backward(np.ones_like(a), c)
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(da)) and np.all(np.isfinite(db))
    np.testing.assert_allclose(m[0], [0.0, -50.0 / (1 + np.exp(50.0)), 0.0, 50.0 / (1 + np.exp(-50.0)),
                                      1000.0])


@given(small, small, dims, seeds)
def test_embedding_vjp(B, T, V, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, T))        # repeated ids: gradients must add up
    table = rng.standard_normal((V, 4))
    cache = {}

    def fwd(ids, table):
        x, cache["c"] = ops.embedding_forward(ids.astype(np.int64), table)
        return x
    check_vjp(fwd, lambda dx: (None, ops.embedding_backward(dx, cache["c"])), [ids, table], rng,
              name="embedding")


@given(small, small, dims, seeds)
def test_mean_pool_vjp(B, T, d, seed):
    rng = np.random.default_rng(seed)
    cache = {}

    def fwd(x):
        y, cache["c"] = ops.mean_pool_forward(x)
        return y
    check_vjp(fwd, lambda dy: (ops.mean_pool_backward(dy, cache["c"]),),
              [rng.standard_normal((B, T, d))], rng, name="mean_pool")


@given(small, st.integers(2, 9), seeds)
def test_cross_entropy_vjp(N, V, seed):
    rng = np.random.default_rng(seed)
    logits, targets = 3 * rng.standard_normal((N, V)), rng.integers(0, V, N)
    cache = {}

    def fwd(z):
        loss, cache["c"] = ops.cross_entropy_forward(z, targets)
        return loss
    check_vjp(fwd, lambda dl: (ops.cross_entropy_backward(dl, cache["c"]),), [logits], rng,
              name="cross_entropy")


def test_cross_entropy_value():
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    loss, _ = ops.cross_entropy_forward(z, np.array([0, 2]))
    want = np.mean([-(2.0 - np.log(np.exp(2) + 1 + np.exp(-1))), np.log(3.0)])
    assert loss == pytest.approx(want, rel=1e-12)
