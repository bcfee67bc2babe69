"""Acceleration only: where a jitted twin replaces a NumPy reference (the one swap point).

The model's ops are defined in NumPy where their names are (``ops.rmsnorm``,
``ops.attention``, ``moe.route``, ...), each decorated with ``@accelerated``. While
``USE_NUMBA`` is true the decorated name runs the twin of the same name in the mirror
module (qz/kernels/ops.py for qz/ops.py, qz/kernels/moe.py for qz/moe.py) instead;
``f.ref`` and ``f.jit`` reach the two directly (reference_tests/test_kernels.py checks
each pair at awkward sizes, both dtypes). Numba itself is imported in jit.py only.

Numba is an accelerator, never a requirement: without it, or with ``QZ_NUMBA=0`` in
the environment, every op runs its reference. ``USE_NUMBA`` is read at every call, so
a test or a benchmark may flip it; the int8 SIMD choice (``VNNI``, ``AVX2``) is made
once, at import.

The int8 layer's kernels (docs/spec.md §3.3) are dispatched here too: the portable
NumPy twin and its exact loops (``int8.py``), the VNNI/AVX2 microkernels (``int8_simd.py``).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from . import jit
from . import moe as _moe_twins
from . import ops as _ops_twins
from .jit import fexp

NUMBA_AVAILABLE = jit.nb is not None
USE_NUMBA = NUMBA_AVAILABLE and os.environ.get("QZ_NUMBA", "1") != "0"

from . import int8, int8_simd  # noqa: E402  (int8_simd reads USE_NUMBA at import)
from .int8_simd import AVX2, VNNI, int8_pack, int8_pack_avx2, int8_pack_vnni  # noqa: E402

__all__ = ["NUMBA_AVAILABLE", "USE_NUMBA", "accelerated", "fexp",
           "int8_matmul", "int8_linear", "int8_experts", "int8_pack", "int8_pack_vnni", "int8_pack_avx2",
           "VNNI", "AVX2"]


def accelerated(ref):
    """ref, a NumPy reference -> the function the model calls: the jitted twin of the same name
    (qz/kernels/ops.py or moe.py) while USE_NUMBA is true, else ref. Both stay reachable as .ref and .jit."""
    mirror = {"qz.ops": _ops_twins, "qz.moe": _moe_twins}[ref.__module__]
    twin = getattr(mirror, ref.__name__) if NUMBA_AVAILABLE else None

    @functools.wraps(ref)
    def op(*args):                 # positional only: a keyword dict costs time at a dozen calls a layer
        return twin(*args) if USE_NUMBA else ref(*args)

    op.ref, op.jit = ref, twin
    return op


# ----------------------------------------------------------------------------
# int8 linear layer: the SIMD microkernel where the CPU has it and the weights were
# packed for it (w4), else the exact jitted loop, else the NumPy twin
# ----------------------------------------------------------------------------
def int8_matmul(q, w, colsum, zp):
    if USE_NUMBA:
        return int8.int8_matmul_jit(np.ascontiguousarray(q), w, colsum, np.int32(zp))
    return int8.int8_matmul_ref(q, w, colsum, zp)


def int8_linear(x, w, colsum, w_scale, a_scale, zp, bias=None, w4=None):
    """y = int8 linear layer of x (N, K) float32 with w (K, C) int8 (see qz/kernels/int8.py).
    w4: the same weights packed by int8_pack (used where the CPU has VNNI or AVX2)."""
    b = bias if bias is not None else w_scale
    if USE_NUMBA and (VNNI or AVX2) and w4 is not None:
        return int8_simd.int8_linear_simd(np.ascontiguousarray(x, np.float32), w4, colsum, w_scale,
                                          np.float32(a_scale), np.float32(zp), b, bias is not None)
    if USE_NUMBA:
        return int8.int8_linear_jit(np.ascontiguousarray(x, np.float32), w, colsum, w_scale,
                                    np.float32(a_scale), np.float32(zp), b, bias is not None)
    return int8.int8_linear_ref(x, w, colsum, w_scale, a_scale, zp, bias)


def int8_experts(x, tok, bounds, w, colsum, w_scale, a_scale, zp, w4=None):
    """Every expert's int8 linear layer on its routed rows, in one call: -> (R, C) float32."""
    if USE_NUMBA and (VNNI or AVX2) and w4 is not None:
        return int8_simd.int8_experts_simd(np.ascontiguousarray(x, np.float32), tok, bounds, w4, colsum,
                                           w_scale, np.float32(a_scale), np.float32(zp))
    if USE_NUMBA:
        return int8.int8_experts_jit(np.ascontiguousarray(x, np.float32), tok, bounds, w, colsum, w_scale,
                                     np.float32(a_scale), np.float32(zp))
    return int8.int8_experts_ref(x, tok, bounds, w, colsum, w_scale, a_scale, zp)
