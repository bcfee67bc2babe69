"""Every Numba kernel equals its NumPy twin (qz/kernels.py), at awkward sizes, in both dtypes.

Skipped where numba is not installed; the rest of the suite then runs on the
NumPy twins alone, which is itself the check that NumPy is enough.
"""
import numpy as np
import pytest

from qz import kernels
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
    close(kernels.softmax_jit(x), kernels.softmax_ref(x), dtype, "softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("c", SIZES)
def test_rmsnorm(n, c, dtype):
    rng = np.random.default_rng(n * 100 + c)
    x, g, dy = (rng.standard_normal(s).astype(dtype) for s in ((n, c), (c,), (n, c)))
    y1, r1 = kernels.rmsnorm_forward_jit(x, g, dtype(1e-5))
    y2, r2 = kernels.rmsnorm_forward_ref(x, g, 1e-5)
    close(y1, y2, dtype, "rmsnorm y")
    close(r1, r2, dtype, "rmsnorm rstd")
    for a, b, name in zip(kernels.rmsnorm_backward_jit(dy, x, g, r2),
                          kernels.rmsnorm_backward_ref(dy, x, g, r2), ("dx", "dg")):
        close(a, b, dtype, f"rmsnorm {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("f", SIZES)
def test_swiglu(n, f, dtype):
    rng = np.random.default_rng(n * 100 + f)
    a = (6 * rng.standard_normal((n, f))).astype(dtype)
    b, dm = rng.standard_normal((n, f)).astype(dtype), rng.standard_normal((n, f)).astype(dtype)
    close(kernels.swiglu_forward_jit(a, b), kernels.swiglu_forward_ref(a, b), dtype, "swiglu")
    for x, y, name in zip(kernels.swiglu_backward_jit(dm, a, b), kernels.swiglu_backward_ref(dm, a, b),
                          ("da", "db")):
        close(x, y, dtype, f"swiglu {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 1), (2, 3, 7, 5), (1, 2, 33, 16), (3, 1, 16, 3)])
def test_attention(B, H, T, D, causal, dtype):
    rng = np.random.default_rng(B * 1000 + T)
    q, k, v, do = (rng.standard_normal((B, H, T, D)).astype(dtype) for _ in range(4))
    o1, p1 = kernels.attention_forward_jit(q, k, v, causal)
    o2, p2 = kernels.attention_forward_ref(q, k, v, causal)
    close(o1, o2, dtype, "attention o")
    close(p1, p2, dtype, "attention p")
    for x, y, name in zip(kernels.attention_backward_jit(do, q, k, v, p2),
                          kernels.attention_backward_ref(do, q, k, v, p2), ("dq", "dk", "dv")):
        close(x, y, dtype, f"attention {name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("e", [1, 2, 7, 8])
def test_topk_with_ties(n, e, dtype):
    rng = np.random.default_rng(n * 10 + e)
    probs = rng.integers(0, 3, (n, e)).astype(dtype)  # many exact ties
    for k in range(1, e + 1):
        a, b = kernels.topk_indices_jit(probs, k), kernels.topk_indices_ref(probs, k)
        assert np.array_equal(a, b), f"topk k={k}: {a} vs {b} for {probs}"
