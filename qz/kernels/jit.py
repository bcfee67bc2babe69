"""Numba, when installed: the jit decorators the kernels use, and ``fexp``.

The only place numba is imported. This module imports without it (then ``nb`` is None
and the decorators return None: no twin exists). Each jitted loop compiles once per
dtype and is cached on disk (``cache=True``), so short runs do not pay the compile again.
"""
from __future__ import annotations

import os

import numpy as np


try:  # numba is optional
    import numba as nb
except ImportError:  # pragma: no cover - exercised by the numba-free CI run
    nb = None

PARALLEL = os.environ.get("QZ_NUMBA_PARALLEL", "0") == "1"


def _jit(fn):
    """numba.njit(cache=True) when numba is importable, else None.

    The fast-math flags let LLVM reassociate the dot-product and row-sum
    reductions so they vectorise (results differ from NumPy's by rounding
    only); the no-NaN/no-Inf flags are left out on purpose, because the
    causal mask uses -inf and a diverging run must show its NaNs.
    error_model="numpy": 1/0 gives inf as in NumPy instead of raising.
    Outer loops use `prange`: serial unless QZ_NUMBA_PARALLEL=1, because on a
    2-core machine numba's threads and OpenBLAS's threads fight for the cores.
    """
    if nb is None:
        return None
    return nb.njit(cache=True, parallel=PARALLEL, fastmath=_FASTMATH, nogil=True, error_model="numpy")(fn)


_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}
prange = nb.prange if nb is not None else range


def _jit_exact(fn):
    """numba.njit(cache=True) without fast-math: IEEE rounding, no FMA contraction (the int8 kernels)."""
    if nb is None:
        return None
    return nb.njit(cache=True, nogil=True, error_model="numpy")(fn)


# ----------------------------------------------------------------------------
# exp that vectorises. Inside a jitted loop, numba's exp is a call into libm,
# one element at a time: LLVM turns calls into SIMD only with Intel's SVML, which
# the PyPI llvmlite lacks. So the float32 kernels use `fexp`, Cephes' expf
# written out: exp(x) = 2^n exp(r) with n = round(x / ln 2), |r| <= ln(2) / 2,
# exp(r) by a degree-7 polynomial (error about 1 ulp), 2^n built by writing n + 127
# into the exponent bits. Plain arithmetic, compares and a bitcast: LLVM runs
# 16 lanes at once (AVX-512), and an exp no longer needs its own pass over memory.
# float64 keeps libm's exp (the float64 path is for gradient checks, not speed).
# Below -86.5, exp(x) < 3e-38 (near the smallest normal float) and fexp gives 0.
# ----------------------------------------------------------------------------
def fexp(x):
    """exp(x); in jitted code, the vectorisable version above for float32."""
    return np.exp(x)


if nb is not None:
    from llvmlite import ir as _llir
    from numba.extending import intrinsic as nb_intrinsic
    from numba.extending import overload as nb_overload

    @nb_intrinsic
    def _pow2f(typingctx, n):
        """2.0 ** n as float32 for an integer n in -126..127: n + 127 in the exponent bits."""
        def codegen(context, builder, signature, args):
            i32 = _llir.IntType(32)
            e = builder.add(builder.trunc(args[0], i32), _llir.Constant(i32, 127))
            return builder.bitcast(builder.shl(e, _llir.Constant(i32, 23)), _llir.FloatType())
        return nb.types.float32(n), codegen

    @nb_overload(fexp, jit_options={"fastmath": {"contract"}})
    def _fexp_overload(x):
        if x != nb.types.float32:
            return lambda x: np.exp(x)

        def expf(x):
            lo, hi = np.float32(-86.5), np.float32(88.72283)   # n - 1 stays in -126..127
            xc = x if x > lo else lo                                  # NaN also lands here...
            xc = xc if xc < hi else hi
            n = np.floor(xc * np.float32(1.44269504) + np.float32(0.5))
            r = (xc - n * np.float32(0.693359375)) + n * np.float32(2.12194440e-4)  # ln 2 in two parts
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            p = p * (r * r) + r + np.float32(1.0)
            # n <= 128: 2 * 2^(n-1); no subnormal step
            y = (p * np.float32(2.0)) * _pow2f(np.int32(n) - 1)
            y = y if x > lo else np.float32(0.0)
            y = y if x <= hi else np.float32(np.inf)
            return y if x == x else x                                 # ...and leaves as NaN
        return expf
