"""How a linear layer computes (qz/linear.py): the loop over experts, float vs fake-quant vs int8."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qz import quant
from qz.linear import FakeQuant, Float, Int8, Observed, grouped_matmul, grouped_matmul_backward
from qz.moe import dispatch
from helpers import check_vjp
from strategies import seeds


@st.composite
def grouped_case(draw):
    E = draw(st.integers(1, 5))
    rows = draw(st.lists(st.integers(0, 3), min_size=E, max_size=E))    # 0: an expert with no rows
    bounds = np.concatenate([[0], np.cumsum(rows)])
    return E, bounds, draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(seeds)


@given(grouped_case())
def test_grouped_matmul_multiplies_each_row_by_its_experts_matrix(case):
    E, bounds, n_in, n_out, seed = case
    rng = np.random.default_rng(seed)
    u, w = rng.standard_normal((bounds[-1], n_in)), rng.standard_normal((E, n_in, n_out))
    expert = np.repeat(np.arange(E), np.diff(bounds))                     # (R,) expert of each row
    want = np.stack([u[r] @ w[expert[r]] for r in range(len(u))]) if len(u) else np.zeros((0, n_out))
    np.testing.assert_allclose(grouped_matmul(u, w, bounds), want, rtol=1e-12, atol=1e-12)


@given(grouped_case())
def test_grouped_matmul_vjp(case):
    E, bounds, n_in, n_out, seed = case
    rng = np.random.default_rng(seed)
    u, w = rng.standard_normal((bounds[-1], n_in)), rng.standard_normal((E, n_in, n_out))
    du, dw = grouped_matmul_backward(np.ones((len(u), n_out)), u, w, bounds)
    for e in range(E):                                    # an expert with no rows gets exactly 0
        if bounds[e] == bounds[e + 1]:
            assert not dw[e].any()
    check_vjp(lambda u, w: grouped_matmul(u, w, bounds),
              lambda dy: grouped_matmul_backward(dy, u, w, bounds), [u, w], rng, name="grouped_matmul")


def _experts_case(seed, N=7, d=5, f=4, E=3, K=2):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((N, d)).astype(np.float32)
    idx = np.stack([rng.permutation(E)[:K] for _ in range(N)])
    _, bounds, tok, _ = dispatch(idx, E)
    w = {"w1": rng.standard_normal((E, d, f)).astype(np.float32),
         "w3": rng.standard_normal((E, d, f)).astype(np.float32),
         "w2": rng.standard_normal((E, f, d)).astype(np.float32)}
    return h, tok, bounds, w


@given(seeds)
def test_fake_quant_experts_are_the_float_experts_on_dequantized_values(seed):
    """FakeQuant multiplies codes and rescales; in real arithmetic that is x_hat @ W_hat."""
    h, tok, bounds, w = _experts_case(seed)
    aq = {"ffn_in": quant.act_qparams(float(h.min()), float(h.max()))}
    wq = quant.quant_weights(w)
    a, b, _ = FakeQuant(aq).experts_in(h, tok, wq, "", "ffn_in", bounds)
    h_hat, _ = quant.fake_quant_act_forward(h, *aq["ffn_in"])
    a_f, b_f, _ = Float().experts_in(h_hat, tok, {k: v.hat for k, v in wq.items()}, "", "ffn_in", bounds)
    np.testing.assert_allclose(a, a_f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, b_f, rtol=1e-5, atol=1e-5)


@given(seeds)
def test_int8_experts_equal_fake_quant_experts_bit_for_bit(seed):
    h, tok, bounds, w = _experts_case(seed)
    aq = {"ffn_in": quant.act_qparams(float(h.min()), 0.7 * float(h.max())),   # some inputs clip
          "ffn_mid": quant.act_qparams(-1.0, 2.0)}
    wq = quant.quant_weights(w)
    fq = FakeQuant(aq)
    a, b, _ = fq.experts_in(h, tok, wq, "", "ffn_in", bounds)
    y, _ = fq.experts_out(a, wq, "", "ffn_mid", bounds)
    packed = {"w13": quant.pack_qweight(quant.cat_out(wq["w1"], wq["w3"])),
              "w2": quant.pack_qweight(wq["w2"])}
    a8, b8, _ = Int8(aq).experts_in(h, tok, packed, "", "ffn_in", bounds)
    y8, _ = Int8(aq).experts_out(a, packed, "", "ffn_mid", bounds)
    np.testing.assert_array_equal(a8, a)
    np.testing.assert_array_equal(b8, b)
    np.testing.assert_array_equal(y8, y)


def test_observed_keeps_the_widest_range_of_a_name_seen_twice():
    seen = Observed()
    seen.see("ffn_mid", np.array([-1.0, 2.0]))
    seen.see("ffn_mid", np.array([-3.0, 1.0]))
    seen.see("attn_in", np.array([0.5, 0.25]))
    assert seen == {"ffn_mid": (-3.0, 2.0), "attn_in": (0.25, 0.5)}
    lin = Float(Observed())
    lin.linear(np.ones((2, 3)), "head_in", np.ones((3, 4)))
    assert lin.observed == {"head_in": (1.0, 1.0)}
