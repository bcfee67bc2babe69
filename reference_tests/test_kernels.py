"""Every Numba kernel equals its NumPy twin (the references in qz/ops.py and qz/moe.py, the twins in
qz/kernels/), at awkward sizes, in both dtypes.

Skipped where numba is not installed; the rest of the suite then runs on the
NumPy twins alone, which is itself the check that NumPy is enough.
"""
import numpy as np
import pytest

from qz import kernels, moe, ops, quant
from helpers import TOL

pytestmark = pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")

SIZES = [1, 3, 7, 16, 33]          # ggml-style awkward sizes
DTYPES = [np.float32, np.float64]


def close(a, b, dtype, name):
    tol = TOL["kernel_f32"] if dtype == np.float32 else TOL["kernel_f64"]
    scale = max(1.0, float(np.max(np.abs(b))) if np.size(b) else 1.0)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=name)
    assert a.dtype == b.dtype == dtype, f"{name}: dtype {a.dtype} vs {b.dtype}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("c", SIZES)
def test_softmax(n, c, dtype):
    x = (4 * np.random.default_rng(n * 100 + c).standard_normal((n, c))).astype(dtype)
    close(ops.softmax.jit(x), ops.softmax.ref(x), dtype, "softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("c", SIZES)
def test_rmsnorm(n, c, dtype):
    rng = np.random.default_rng(n * 100 + c)
    x, g, dy = (rng.standard_normal(s).astype(dtype) for s in ((n, c), (c,), (n, c)))
    y1, r1 = ops.rmsnorm.jit(x, g, dtype(1e-5))
    y2, r2 = ops.rmsnorm.ref(x, g, 1e-5)
    close(y1, y2, dtype, "rmsnorm y")
    close(r1, r2, dtype, "rmsnorm rstd")
    for a, b, name in zip(ops.rmsnorm_grad.jit(dy, x, g, r2),
                          ops.rmsnorm_grad.ref(dy, x, g, r2), ("dx", "dg")):
        close(a, b, dtype, f"rmsnorm {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("f", SIZES)
def test_swiglu(n, f, dtype):
    rng = np.random.default_rng(n * 100 + f)
    a, b = (6 * rng.standard_normal((n, f))).astype(dtype), rng.standard_normal((n, f)).astype(dtype)
    dm = rng.standard_normal((n, f)).astype(dtype)
    close(ops.swiglu.jit(a, b), ops.swiglu.ref(a, b), dtype, "swiglu m")
    for x, y, name in zip(ops.swiglu_grad.jit(dm, a, b), ops.swiglu_grad.ref(dm, a, b), ("da", "db")):
        close(x, y, dtype, f"swiglu {name}")


@pytest.mark.skipif(not kernels.USE_NUMBA, reason="compares the jitted kernel's layouts")
def test_swiglu_reads_strided_halves_as_their_contiguous_copies():
    # the int8 runtime passes the two halves of one (R, 2f) product; the fake-quant model
    # passes contiguous arrays: both must give the same bits
    rng = np.random.default_rng(0)
    ab = rng.standard_normal((7, 66)).astype(np.float32)
    a, b = ab[:, :33], ab[:, 33:]
    np.testing.assert_array_equal(ops.swiglu(a, b), ops.swiglu(a.copy(), b.copy()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 1), (2, 3, 7, 5), (1, 2, 33, 16), (3, 1, 16, 3)])
def test_attention(B, H, T, D, causal, dtype):
    rng = np.random.default_rng(B * 1000 + T)
    q, k, v, do = (rng.standard_normal((B, T, H * D)).astype(dtype) for _ in range(4))
    o1, p1 = ops.attention.jit(q, k, v, H, causal)
    o2, p2 = ops.attention.ref(q, k, v, H, causal)
    close(o1, o2, dtype, "attention o")
    close(p1, p2, dtype, "attention p")
    for x, y, name in zip(ops.attention_grad.jit(do, q, k, v, p2, H),
                          ops.attention_grad.ref(do, q, k, v, p2, H), ("dq", "dk", "dv")):
        close(x, y, dtype, f"attention {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("e", [1, 2, 7, 8])
def test_route_with_ties(n, e, dtype):
    rng = np.random.default_rng(n * 10 + e)
    logits = rng.integers(0, 3, (n, e)).astype(dtype)   # many exact ties
    for k in range(1, e + 1):
        p1, i1, w1 = moe.route.jit(logits, k)
        p2, i2, w2 = moe.route.ref(logits, k)
        assert np.array_equal(i1, i2), f"route k={k}: {i1} vs {i2} for {logits}"
        close(p1, p2, dtype, "route probs")
        close(w1, w2, dtype, "route w")
        dw = rng.standard_normal((n, k)).astype(dtype)
        drow = rng.standard_normal(e).astype(dtype)
        close(moe.route_grad.jit(dw, drow, p2, i2, w2), moe.route_grad.ref(dw, drow, p2, i2, w2),
              dtype, "route backward")


@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("E", [1, 4, 8])
def test_dispatch(N, K, E):
    # the counting sort equals NumPy's stable argsort exactly, experts with no tokens included
    rng = np.random.default_rng(N * 100 + K * 10 + E)
    idx = rng.integers(0, max(1, E - 1), (N, K))      # the last expert never chosen (E > 1)
    got, want = moe.dispatch.jit(idx, E), moe.dispatch.ref(idx, E)
    for g, w, name in zip(got, want, ("order", "bounds", "tok", "pos")):
        assert g.dtype == w.dtype and np.array_equal(g, w), f"dispatch {name}: {g} vs {w}"
    order, bounds, tok, pos = got
    # grouped by expert
    assert np.array_equal(idx.reshape(-1)[order], np.repeat(np.arange(E), np.diff(bounds)))
    assert np.array_equal(order[pos.reshape(-1)], np.arange(N * K))                        # pos inverts order


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("c", [1, 7, 16])
def test_combine(N, K, c, dtype):
    rng = np.random.default_rng(N * 100 + K * 10 + c)
    R = N * K
    order = rng.permutation(R)
    pos = np.empty(R, dtype=np.int64)
    pos[order] = np.arange(R)
    pos = pos.reshape(N, K)
    tok = order // K
    rows, w = rng.standard_normal((R, c)).astype(dtype), rng.random((N, K)).astype(dtype)
    dout, ws = rng.standard_normal((N, c)).astype(dtype), rng.random(R).astype(dtype)
    close(moe.combine.jit(rows, pos, w), moe.combine.ref(rows, pos, w), dtype, "combine")
    close(moe.combine.jit(rows, pos), moe.combine.ref(rows, pos, None), dtype, "combine sum")
    for x, y, name in zip(moe.combine_grad.jit(dout, rows, tok, ws),
                          moe.combine_grad.ref(dout, rows, tok, ws), ("drows", "dws")):
        close(x, y, dtype, f"combine backward {name}")


@pytest.mark.parametrize("n", [1, 3, 4, 7, 33])
@pytest.mark.parametrize("k", [1, 7, 64, 129])
@pytest.mark.parametrize("c", [1, 5, 16])
def test_int8_matmul_bit_exact(n, k, c):
    rng = np.random.default_rng(n * 1000 + k * 10 + c)
    q = rng.integers(0, 256, (n, k)).astype(np.uint8)
    q[0, 0], q[-1, -1] = 0, 255                                      # the uint8 edges
    w = rng.integers(-127, 128, (k, c)).astype(np.int8)
    w[0, 0] = -127
    colsum = w.astype(np.int32).sum(axis=0).astype(np.int32)
    zp = int(rng.integers(0, 256))
    a = kernels.int8.int8_matmul_jit(q, w, colsum, np.int32(zp))
    b = kernels.int8.int8_matmul_ref(q, w, colsum, zp)
    assert a.dtype == b.dtype == np.int32
    assert np.array_equal(a, b), f"int8 accumulators differ at n={n} k={k} c={c}"
    exact = q.astype(np.int64) @ (w.astype(np.int64)) - zp * colsum.astype(np.int64)
    assert np.array_equal(b, exact)


def _int8_case(rng, n, k, c):
    x = (3 * rng.standard_normal((n, k))).astype(np.float32)
    scale, zp = quant.act_qparams(0.7 * x.min(), 0.9 * x.max())       # some values clip at both ends
    x[0, 0] = np.float32((7.5 - zp) * scale)                          # a value on a .5 tie
    return x, scale, zp


@pytest.mark.parametrize("n,k,c", [(1, 1, 1), (3, 7, 5), (4, 64, 16), (9, 129, 33)])
def test_int8_linear_and_experts_jit_equal_ref_bit_for_bit(n, k, c):
    rng = np.random.default_rng(n + k + c)
    x, scale, zp = _int8_case(rng, n, k, c)
    w, s, colsum, _ = quant.pack_linear(rng.standard_normal((k, c)).astype(np.float32))
    b = rng.standard_normal(c).astype(np.float32)
    for bias in (None, b):
        ref = kernels.int8.int8_linear_ref(x, w, colsum, s, scale, zp, bias)
        jit = kernels.int8.int8_linear_jit(x, w, colsum, s, np.float32(scale), np.float32(zp),
                                           b if bias is None else bias, bias is not None)
        np.testing.assert_array_equal(jit, ref, err_msg=f"int8 linear n={n} k={k} c={c}")
    E = 3
    w_experts = rng.standard_normal((E, k, c)).astype(np.float32)
    ws, ss, cs, _ = quant.pack_qweight(quant.split_weight(w_experts, -2))
    idx = rng.integers(0, E, (n, 2))
    from qz.moe import dispatch
    _, bounds, tok, _ = dispatch(idx, E)
    ref = kernels.int8.int8_experts_ref(x, tok, bounds, ws, cs, ss, scale, zp)
    jit = kernels.int8.int8_experts_jit(x, tok, bounds, ws, cs, ss, np.float32(scale), np.float32(zp))
    np.testing.assert_array_equal(jit, ref, err_msg=f"int8 experts n={n} k={k} c={c}")
    for e in range(E):       # each expert's rows equal the single-layer kernel on the gathered tokens
        lo, hi = bounds[e], bounds[e + 1]
        want = kernels.int8.int8_linear_ref(x[tok[lo:hi]], ws[e], cs[e], ss[e], scale, zp)
        np.testing.assert_array_equal(ref[lo:hi], want)



SIMD_CASES = [(1, 1, 1), (3, 7, 5), (4, 64, 16), (5, 64, 33), (12, 64, 256), (49, 13, 64), (9, 129, 65)]


@pytest.mark.skipif(not (kernels.VNNI or kernels.AVX2), reason="neither AVX-512 VNNI nor AVX2 on this CPU")
@pytest.mark.parametrize("n,k,c", SIMD_CASES)
def test_simd_kernels_equal_ref_bit_for_bit(n, k, c):
    """This CPU's int8 microkernel (vpdpbusd or vpmaddwd): awkward sizes (rows not a multiple of 4,
    inputs not of the group, outputs not of the tile) give the reference's floats exactly; a bias,
    and all-edge codes (0 and 255) against weights of -127 and 127."""
    rng = np.random.default_rng(10 * n + k + c)
    x, scale, zp = _int8_case(rng, n, k, c)
    x[-1, -1] = 1e6                                                    # clips to 255
    w, s, colsum, _ = quant.pack_linear(rng.standard_normal((k, c)).astype(np.float32))
    w4 = kernels.int8_pack(w)
    b = rng.standard_normal(c).astype(np.float32)
    for bias in (None, b):
        np.testing.assert_array_equal(kernels.int8_linear(x, w, colsum, s, scale, zp, bias, w4),
                                      kernels.int8.int8_linear_ref(x, w, colsum, s, scale, zp, bias))
    E = 4
    w_experts = rng.standard_normal((E, k, c)).astype(np.float32)
    ws, ss, cs, _ = quant.pack_qweight(quant.split_weight(w_experts, -2))
    from qz.moe import dispatch
    _, bounds, tok, _ = dispatch(rng.integers(0, E - 1, (n, 2)), E)   # expert E-1 gets no tokens
    got = kernels.int8_experts(x, tok, bounds, ws, cs, ss, scale, zp, kernels.int8_pack(ws))
    np.testing.assert_array_equal(got, kernels.int8.int8_experts_ref(x, tok, bounds, ws, cs, ss, scale, zp))


def test_int8_pack_layouts():
    """Lane l of vector v, group t of the packed weights holds w[g t .. g t + g - 1, tile column];
    padding (K to the group, C to the tile) is zero."""
    w = np.random.default_rng(3).integers(-127, 128, (5, 19)).astype(np.int8)
    for pack, g, width in ((kernels.int8_pack_vnni, 4, kernels.int8_simd.VNNI_W),
                           (kernels.int8_pack_avx2, 2, kernels.int8_simd.AVX2_W)):
        kg, cp = -(-5 // g), -(-19 // width) * width
        p = pack(w).reshape(kg, cp, g)
        for t in range(kg):
            for c in range(cp):
                for j in range(g):
                    want = w[g * t + j, c] if g * t + j < 5 and c < 19 else 0
                    assert p[t, c, j] == want, (pack.__name__, t, c, j)


@pytest.mark.skipif(not (kernels.VNNI and kernels.USE_NUMBA), reason="the AVX2 kernel runs by default here")
def test_avx2_kernel_on_a_vnni_cpu():
    """Where VNNI wins, the AVX2 kernel is still checked: in a child process with QZ_INT8_VNNI=0."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np; from qz import kernels, quant; assert kernels.AVX2\n"
            "rng = np.random.default_rng(0); x = rng.standard_normal((9, 129)).astype(np.float32)\n"
            "w, s, cs, w4 = quant.pack_linear(rng.standard_normal((129, 65)).astype(np.float32))\n"
            "a = kernels.int8_linear(x, w, cs, s, 0.05, 100, None, w4)\n"
            "b = kernels.int8.int8_linear_ref(x, w, cs, s, 0.05, 100)\n"
            "assert np.array_equal(a, b)\n")
    env = dict(os.environ, QZ_INT8_VNNI="0")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)


# ----------------------------------------------------------------------------
# fexp: the vectorisable float32 exp used inside the jitted loops
# ----------------------------------------------------------------------------
if kernels.NUMBA_AVAILABLE:
    import numba

    @numba.njit(fastmath={"reassoc", "contract", "arcp", "nsz"})   # as the kernels are compiled
    def _fexp_all(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = kernels.fexp(x[i])
        return out


def test_fexp_float32_within_two_ulp_of_exact():
    x = np.concatenate([np.linspace(-86.5, 88.72, 400_001, dtype=np.float32),
                        np.random.default_rng(0).standard_normal(100_000).astype(np.float32)])
    got, exact = _fexp_all(x).astype(np.float64), np.exp(x.astype(np.float64))
    normal = x > -86.5                                             # below, fexp gives 0 by design
    rel = np.abs(got[normal] - exact[normal]) / exact[normal]
    assert rel.max() <= 2 * 2.0 ** -24, f"max error {rel.max() / 2.0 ** -24:.2f} ulp"


def test_fexp_float32_edges():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 88.73, 100.0, -86.6, -1e4], np.float32)
    got = _fexp_all(x)
    assert np.isnan(got[0])                                        # a diverging run shows its NaNs
    np.testing.assert_array_equal(got[1:], np.array([np.inf, 0, 1, np.inf, np.inf, 0, 0], np.float32))
    assert _fexp_all(np.float32([-86.49]))[0] > 0                  # still a normal float just above the cut


def test_fexp_float64_is_libm_exp():
    x = np.random.default_rng(1).uniform(-700, 700, 10_000)
    np.testing.assert_allclose(_fexp_all(x), np.exp(x), rtol=1e-15)
