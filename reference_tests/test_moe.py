"""The gate, the experts and the load-balancing loss (qz/moe.py, docs/spec.md §2.3)."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qz import moe
from qz.linear import Float
from helpers import check_vjp
from strategies import seeds


@st.composite
def routing_case(draw):
    N = draw(st.integers(1, 7))
    E = draw(st.integers(1, 6))
    k = draw(st.integers(1, E))
    d = draw(st.integers(1, 5))
    f = draw(st.integers(1, 5))
    return N, E, k, d, f, draw(seeds)


@given(routing_case())
def test_gate_weights_positive_sum_to_one_distinct(case):
    N, E, k, d, f, seed = case
    rng = np.random.default_rng(seed)
    (w, idx, probs, _), _ = moe.gate_forward(rng.standard_normal((N, d)), rng.standard_normal((d, E)), k)
    assert w.shape == idx.shape == (N, k)
    assert np.all(w > 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12, err_msg="gate weights")
    for row in idx:
        assert len(set(row.tolist())) == k, f"repeated expert in {row}"
    # the chosen are the k most probable: none left out beats one chosen
    for n in range(N):
        chosen = probs[n, idx[n]]
        rest = np.delete(probs[n], idx[n])
        assert rest.size == 0 or rest.max() <= chosen.min()


@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 4), seeds)
def test_zero_gate_routes_to_lowest_indices(N, E, d, seed):
    k = 1 + seed % E
    h = np.random.default_rng(seed).standard_normal((N, d))
    (w, idx, _, _), _ = moe.gate_forward(h, np.zeros((d, E)), k)
    assert np.array_equal(idx, np.tile(np.arange(k), (N, 1))), idx
    np.testing.assert_allclose(w, 1.0 / k)


def test_ties_go_to_lower_index_among_equal_nonzero_probs():
    # logits [1, 3, 3, 0, 3]: three-way tie at the top, k = 2 -> experts 1 and 2
    h = np.array([[1.0]])
    wg = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    (_, idx, _, _), _ = moe.gate_forward(h, wg, 2)
    assert idx.tolist() == [[1, 2]]


def _moe(h, wg, w1, w3, w2, k, shared=None):
    # the float layer with its weights under the spec's leaf names (block prefix "")
    w = {"gate": wg, "w1": w1, "w3": w3, "w2": w2}
    if shared:
        w.update({"shared.w1": shared[0], "shared.w3": shared[1], "shared.w2": shared[2]})
    return moe.moe_forward(h, w, "", k, len(shared[0]) if shared else 0, Float())


def _expert(u, w1, w3, w2):
    a, b = u @ w1, u @ w3
    return (a / (1 + np.exp(-a)) * b) @ w2


@given(routing_case())
def test_moe_equals_direct_spec_formula(case):
    N, E, k, d, f, seed = case
    rng = np.random.default_rng(seed)
    h, wg = rng.standard_normal((N, d)), rng.standard_normal((d, E))
    w1, w3, w2 = (rng.standard_normal((E, d, f)), rng.standard_normal((E, d, f)),
                  rng.standard_normal((E, f, d)))
    out, aux, stats, _ = _moe(h, wg, w1, w3, w2, k)
    (w, idx, probs, _), _ = moe.gate_forward(h, wg, k)
    want = np.zeros_like(h)
    for n in range(N):
        for j in range(k):
            e = idx[n, j]
            want[n] += w[n, j] * _expert(h[n:n + 1], w1[e], w3[e], w2[e])[0]
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12, err_msg="moe vs formula")
    assert stats["load"].sum() == N * k


@given(routing_case())
def test_top_k_equal_E_is_the_dense_mixture(case):
    N, E, _, d, f, seed = case
    rng = np.random.default_rng(seed)
    h, wg = rng.standard_normal((N, d)), rng.standard_normal((d, E))
    w1, w3, w2 = (rng.standard_normal((E, d, f)), rng.standard_normal((E, d, f)),
                  rng.standard_normal((E, f, d)))
    out, _, _, _ = _moe(h, wg, w1, w3, w2, E)
    logits = h @ wg
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    dense = sum(probs[:, e:e + 1] * _expert(h, w1[e], w3[e], w2[e]) for e in range(E))
    np.testing.assert_allclose(out, dense, rtol=1e-10, atol=1e-12, err_msg="dense mixture")


def test_aux_is_one_under_uniform_routing():
    N, E = 12, 4
    probs = np.full((N, E), 1.0 / E)
    idx = np.array([[(2 * n) % E, (2 * n + 1) % E] for n in range(N)])   # k = 2: every expert N*k/E slots
    assert np.bincount(idx.ravel()).tolist() == [6, 6, 6, 6]
    aux, _ = moe.aux_loss_forward(probs, idx)
    assert abs(aux - 1.0) < 1e-12


def test_aux_grows_when_routing_collapses():
    N = 8
    probs = np.tile([0.97, 0.01, 0.01, 0.01], (N, 1))
    aux, _ = moe.aux_loss_forward(probs, np.zeros((N, 1), dtype=np.int64))
    assert aux > 3.5   # E * 1 * 0.97


@given(routing_case(), st.booleans())
def test_moe_vjp(case, with_shared):
    """Gradient through gate (softmax, top-k gather, renormalisation), experts, aux and shared experts."""
    N, E, k, d, f, seed = case
    rng = np.random.default_rng(seed)
    S = 2 if with_shared else 0
    args = [rng.standard_normal((N, d)), rng.standard_normal((d, E)),
            rng.standard_normal((E, d, f)), rng.standard_normal((E, d, f)), rng.standard_normal((E, f, d))]
    if S:
        args += [rng.standard_normal((S, d, f)), rng.standard_normal((S, d, f)),
                 rng.standard_normal((S, f, d))]
    cache = {}

    def fwd(h, wg, w1, w3, w2, *sh):
        out, aux, _, cache["c"] = _moe(h, wg, w1, w3, w2, k, tuple(sh) if sh else None)
        return out, np.asarray(aux)

    def bwd(dys):
        dout, daux = dys
        dh, g = moe.moe_backward(dout, float(daux), cache["c"], Float())
        grads = [dh, g["gate"], g["w1"], g["w3"], g["w2"]]
        if S:
            grads += [g["shared.w1"], g["shared.w3"], g["shared.w2"]]
        return grads
    check_vjp(fwd, bwd, args, rng, name=f"moe k={k} E={E} S={S}")


@given(routing_case())
def test_aux_gradient_flows_through_mean_probs_only(case):
    N, E, k, d, f, seed = case
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(E), size=N)
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    _, c = moe.aux_loss_forward(probs, idx)
    g = moe.aux_loss_backward(1.0, c)
    frac = np.bincount(idx.ravel(), minlength=E) / (N * k)
    np.testing.assert_allclose(g, E * frac / N, rtol=1e-12)   # one row, the same for every token


@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 4), seeds)
def test_the_shared_experts_plan_is_dispatch_of_every_token_to_every_expert_at_weight_1(N, S, d, seed):
    """moe.every_token (nothing gathered, the S blocks summed) gives what the routed path gives with
    every token sent to all S experts at gate weight 1: forward and backward, bit for bit."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, d))
    w = {"shared.w1": rng.standard_normal((S, d, 3)), "shared.w3": rng.standard_normal((S, d, 3)),
         "shared.w2": rng.standard_normal((S, 3, d))}
    dout = rng.standard_normal((N, d))
    every = np.tile(np.arange(S), (N, 1))
    a, ca = moe.experts_forward(h, moe.every_token(N, S), None, w, "shared.", "", Float())
    b, cb = moe.experts_forward(h, moe.dispatch.ref(every, S), np.ones((N, S)), w, "shared.", "", Float())
    np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)
    ga, gb = moe.experts_backward(dout, ca, Float()), moe.experts_backward(dout, cb, Float())
    np.testing.assert_allclose(ga[0], gb[0], rtol=1e-14, atol=1e-14)
    for x, y in zip(ga[2], gb[2]):
        np.testing.assert_allclose(x, y, rtol=1e-14, atol=1e-14)
