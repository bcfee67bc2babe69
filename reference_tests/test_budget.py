"""The expert budget (docs/spec.md §4): each request uses only its m experts of highest mean gate
probability (qz/moe.py allowed_experts, route_within; model.forward(expert_budget=m))."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qz
from qz import model, moe, runtime
from qz.linear import Float
from helpers import check_vjp
from strategies import seeds
from test_model import batch, tiny


@st.composite
def budget_case(draw):
    E = draw(st.integers(2, 6))
    return (draw(st.sampled_from(["lm", "classifier"])), E, draw(st.integers(1, E)), draw(st.integers(1, E)),
            draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(seeds))


@given(budget_case())
def test_no_expert_outside_the_allowed_set_gets_a_token(case):
    _, E, k, m, R, T, seed = case
    rng = np.random.default_rng(seed)
    h, wg = rng.standard_normal((R * T, 4)), rng.standard_normal((4, E))
    (w, idx, probs, allowed), _ = moe.gate_forward(h, wg, k, m, R)
    assert allowed.shape == (R, E) and (allowed.sum(axis=1) == m).all()
    assert idx.shape == (R * T, min(k, m))
    for r in range(R):
        tokens = idx[r * T:(r + 1) * T]
        assert allowed[r, tokens].all()                           # every choice is allowed
        mean = probs[r * T:(r + 1) * T].mean(axis=0)
        assert mean[allowed[r]].min() >= mean[~allowed[r]].max(initial=-1.0)   # the m most probable
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    # and dispatch gives the experts outside the set no rows: their weights are never read
    _, bounds, _, _ = moe.dispatch(idx, E)
    used = np.diff(bounds) > 0
    assert not (used & ~allowed.any(axis=0)).any()


@given(budget_case())
def test_a_budget_of_E_is_no_budget(case):
    mode, E, k, _, B, T, seed = case
    cfg = tiny(mode, S=seed % 2, E=E)
    rng = np.random.default_rng(seed)
    params = qz.init_params(cfg, seed=seed % 100)
    x, y = batch(cfg, rng, B, T)
    a, aux_a = model.forward(params, cfg, x, top_k=k)
    b, aux_b = model.forward(params, cfg, x, top_k=k, expert_budget=E)
    np.testing.assert_array_equal(a, b)
    assert aux_a == aux_b


@given(budget_case())
def test_the_allowed_set_belongs_to_the_request(case):
    """Batching other requests beside one changes nothing for it."""
    mode, E, k, m, B, T, seed = case
    cfg = tiny(mode, E=E)
    rng = np.random.default_rng(seed)
    params = qz.init_params(cfg, seed=seed % 100, dtype=np.float64)
    x, _ = batch(cfg, rng, B + 1, T)
    together, _, st_all = model.forward_stats(params, cfg, x, top_k=k, expert_budget=m)
    for b in range(B + 1):
        alone, _, st_one = model.forward_stats(params, cfg, x[b:b + 1], top_k=k, expert_budget=m)
        np.testing.assert_allclose(together[b:b + 1], alone, rtol=1e-10, atol=1e-12)
        if m < E:
            for layer_all, layer_one in zip(st_all, st_one):
                np.testing.assert_array_equal(layer_all["allowed"][b:b + 1], layer_one["allowed"])


@settings(max_examples=20)
@given(budget_case())
def test_gradient_under_a_budget(case):
    mode, E, k, m, B, T, seed = case
    cfg = tiny(mode, S=seed % 2, E=E)
    rng = np.random.default_rng(seed)
    params = qz.init_params(cfg, seed=seed % 100, dtype=np.float64)
    x, y = batch(cfg, rng, B, T)
    names = list(params)

    def fwd(*arrays):
        loss, _ = model.loss_and_grads(dict(zip(names, arrays)), cfg, x, y, 0.1, top_k=k, expert_budget=m)
        return np.asarray(loss)

    def bwd(dloss):
        _, g = model.loss_and_grads(params, cfg, x, y, 0.1, top_k=k, expert_budget=m)
        return [float(dloss) * g[n] for n in names]
    check_vjp(fwd, bwd, [params[n] for n in names], rng, name=f"budget {m} of {E}, k={k}")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_runtime_under_a_budget_is_the_model_s(precision):
    cfg = tiny("classifier", S=1, E=6)
    rng = np.random.default_rng(3)
    params = qz.init_params(cfg, seed=3)
    x = rng.standard_normal((4, 5, cfg.input_dim)).astype(np.float32)
    ranges = model.observe_ranges(params, cfg, x)
    m = runtime.prepare(params, cfg, precision, ranges)
    quant = None if precision == "fp32" else {"ranges": ranges}
    for budget in (1, 2, 6):
        want, _ = model.forward(params, cfg, x, top_k=2, quant=quant, expert_budget=budget)
        np.testing.assert_array_equal(runtime.infer(m, x, top_k=2, expert_budget=budget), want)


def test_bad_budgets_are_one_clear_error():
    cfg = tiny("classifier", E=4)
    params = qz.init_params(cfg)
    x = np.zeros((1, 3, cfg.input_dim), np.float32)
    for bad in (0, 5, True, 1.5, [2]):
        with pytest.raises(ValueError, match="expert_budget"):
            model.forward(params, cfg, x, expert_budget=bad)


def test_moe_layer_with_a_budget_reads_only_allowed_experts():
    """Float experts that record which expert rows they computed: none outside the allowed set."""
    rng = np.random.default_rng(0)
    E, d = 6, 4
    w = {"gate": rng.standard_normal((d, E)), "w1": rng.standard_normal((E, d, 3)),
         "w3": rng.standard_normal((E, d, 3)), "w2": rng.standard_normal((E, 3, d))}
    seen = []

    class Recording(Float):
        def experts_in(self, h, tok, w, g, observer, bounds):
            seen.append(np.flatnonzero(np.diff(bounds)))
            return super().experts_in(h, tok, w, g, observer, bounds)

    out, _, stats, _ = moe.moe_forward(rng.standard_normal((2 * 7, d)), w, "", 2, 0, Recording(), True, 2, 2)
    allowed = stats["allowed"]
    assert set(seen[0]) <= set(np.flatnonzero(allowed.any(axis=0)))


def _lm():
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=2, n_experts=6, top_k=2, d_ff=8, max_len=12,
                    vocab_size=20)
    return cfg, runtime.prepare(qz.init_params(cfg, seed=5), cfg, "fp32")


def test_generation_chooses_the_allowed_experts_at_prefill_and_keeps_them(monkeypatch):
    from qz import generate
    cfg, m = _lm()
    prompt = np.array([[3, 7, 1, 9, 4]])
    cache = generate.new_cache(cfg)
    logits = generate.prefill(m, prompt, cache, expert_budget=2)
    # the allowed sets come from the whole prompt: the last position's logits are infer's
    np.testing.assert_array_equal(logits, runtime.infer(m, prompt, expert_budget=2)[:, -1])
    assert len(cache.allowed) == cfg.n_layers and all(a.sum() == 2 for a in cache.allowed)
    used = []

    class Recording(Float):
        def experts_in(self, h, tok, w, g, observer, bounds):
            used.append(set(np.flatnonzero(np.diff(bounds))))
            return super().experts_in(h, tok, w, g, observer, bounds)

    monkeypatch.setattr(runtime, "linear_mode", lambda model: Recording())
    for token in (2, 11, 5):
        generate.decode_step(m, [token], cache)
    for step in range(3):
        for layer in range(cfg.n_layers):
            assert used[step * cfg.n_layers + layer] <= set(np.flatnonzero(cache.allowed[layer][0]))


def test_generation_with_a_budget_of_E_is_generation_without_one():
    from qz import generate
    cfg, m = _lm()
    a = generate.complete(m, [1, 2, 3], 20, temperature=0, expert_budget=cfg.n_experts).ids
    b = generate.complete(m, [1, 2, 3], 20, temperature=0).ids       # 20 new tokens: refills too
    np.testing.assert_array_equal(a, b)
    c = generate.complete(m, [1, 2, 3], 20, temperature=0, expert_budget=1)
    assert len(c.ids) == 23
