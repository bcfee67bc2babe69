"""SIMD microkernels for the int8 linear layer (VNNI, AVX2); imported by qz/kernels only.

The portable loops they mirror are in qz/kernels/int8.py.
"""
from __future__ import annotations

import os
import types as _types

import numpy as np

from . import USE_NUMBA
from .jit import nb


# ----------------------------------------------------------------------------
# SIMD microkernels for the int8 linear layer. LLVM does not find good code for
# it from the portable loops (it widens to int32 and uses vpmulld, or a dot-product
# order, and keeps the accumulators in memory), so the inner tile is written as
# LLVM IR through a numba intrinsic: 4 activation rows x NV vectors of output
# channels, the accumulators in registers (entry-block allocas that LLVM
# promotes), over the whole input. Weights are repacked once, at load, so that
# one vector load reads G consecutive inputs of each of its lanes' channels:
#
#   VNNI (AVX-512 VNNI): vpdpbusd, 64 u8 x s8 products summed into 16 int32
#        lanes per instruction. G = 4: weights (K/4, C, 4), codes as 4 bytes.
#   AVX2 (no VNNI): vpmaddwd, 16 i16 x i16 products summed in pairs into 8 int32
#        lanes. G = 2: weights (K/2, C, 2) int8, sign-extended to i16 in the
#        register (vpmovsxbw), so memory stays one byte a weight; codes as two
#        uint16 in an int32, broadcast. A code (0..255) times a weight (-128..127)
#        fits in i16 x i16, and a pair of products in int32: no saturation
#        (vpmaddubsw, the u8 x s8 instruction, saturates a pair at 32767).
#
# Both add integers, so they equal the portable loops bit for bit. Used where the
# CPU has the instructions; QZ_INT8_VNNI=0 / QZ_INT8_AVX2=0 turn them off.
# ----------------------------------------------------------------------------
VNNI_W = 32                                   # output channels per VNNI tile (2 x 16 lanes)
AVX2_W = 16                                   # output channels per AVX2 tile (2 x 8 lanes)


def _host_features():
    try:
        import llvmlite.binding as llvm
        return llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - an llvmlite without the query: stay on the portable loop
        return {}


def _cpu_has_vnni():
    if nb is None or os.environ.get("QZ_INT8_VNNI", "1") == "0":
        return False
    feats = _host_features()
    return bool(feats.get("avx512vnni") and feats.get("avx512bw") and feats.get("avx512f"))


def _cpu_has_avx2():
    if nb is None or os.environ.get("QZ_INT8_AVX2", "1") == "0":
        return False
    return bool(_host_features().get("avx2"))


VNNI = USE_NUMBA and _cpu_has_vnni()
AVX2 = USE_NUMBA and not VNNI and _cpu_has_avx2()   # the VNNI kernel wins where both run


def _pack_groups(w, g, width):
    # w (..., K, C) int8 -> (..., K/g, Cp, g) flattened; K padded to a multiple of g and C to one
    # of width, with zero weights (they add nothing)
    *lead, k, c = w.shape
    kg, cp = (k + g - 1) // g, (c + width - 1) // width * width
    wp = np.zeros((*lead, kg * g, cp), np.int8)
    wp[..., :k, :c] = w
    wp = wp.reshape(*lead, kg, g, cp).swapaxes(-1, -2)           # (..., K/g, Cp, g)
    return np.ascontiguousarray(wp).reshape(*lead, -1)


def int8_pack_vnni(w):
    """w (..., K, C) int8 -> (..., K4 * Cp * 4) int8 in vpdpbusd order (K4 = ceil(K / 4), Cp: C to 32s)."""
    return _pack_groups(w, 4, VNNI_W)


def int8_pack_avx2(w):
    """w (..., K, C) int8 -> (..., K2 * Cp * 2) int8 in vpmaddwd order (K2 = ceil(K / 2), Cp: C to 16s)."""
    return _pack_groups(w, 2, AVX2_W)


def int8_pack(w):
    """The weights in the order this CPU's int8 microkernel reads, or None (the portable loop)."""
    if VNNI:
        return int8_pack_vnni(w)
    if AVX2:
        return int8_pack_avx2(w)
    return None


if VNNI or AVX2:
    from llvmlite import ir as _ir
    from numba.core import cgutils as _cg
    from numba.extending import intrinsic as _intrinsic

    if VNNI:   # group of 4 codes, 16 int32 lanes, 2 vectors a tile
        _G, _LANES, _MADD = 4, 16, "llvm.x86.avx512.vpdpbusd.512"
        _TILE_W = VNNI_W
    else:      # group of 2 codes, 8 int32 lanes, 2 vectors a tile
        _G, _LANES, _MADD = 2, 8, "llvm.x86.avx2.pmadd.wd"
        _TILE_W = AVX2_W
    _NV = _TILE_W // _LANES

    class _Ops:
        """The IR steps both kernels below share, for this CPU's instruction."""

        def __init__(self, builder):
            self.b = builder
            self.acc_t = _ir.VectorType(_ir.IntType(32), _LANES)               # int32 accumulators
            # operands: vpdpbusd reads 4 bytes a lane as i32 lanes; vpmaddwd reads <16 x i16>
            self.op_t = self.acc_t if _G == 4 else _ir.VectorType(_ir.IntType(16), 2 * _LANES)
            args = [self.acc_t] * 3 if _G == 4 else [self.op_t] * 2
            self.fn = _cg.get_or_insert_function(builder.module, _ir.FunctionType(self.acc_t, args), _MADD)
            self.undef = _ir.Constant(self.acc_t, _ir.Undefined)
            self.zeros = _ir.Constant(self.acc_t, [0] * _LANES)

        def codes(self, ptr):
            """The group of codes at ptr (one int32) in every lane."""
            b = self.b
            one = b.insert_element(self.undef, b.load(ptr, align=4), _ir.Constant(_ir.IntType(32), 0))
            return b.shuffle_vector(one, self.undef, self.zeros)

        def weights(self, ptr):
            """One vector of packed weights at byte pointer ptr (AVX2: sign-extended to i16, vpmovsxbw)."""
            b = self.b
            if _G == 4:
                return b.load(b.bitcast(ptr, self.acc_t.as_pointer()), align=1)
            raw = b.load(b.bitcast(ptr, _ir.VectorType(_ir.IntType(8), 2 * _LANES).as_pointer()), align=1)
            return b.sext(raw, self.op_t)

        def madd(self, acc, a, w):
            """acc + each lane's sum of code x weight products."""
            if _G == 4:
                return self.b.call(self.fn, [acc, a, w])                        # vpdpbusd adds into acc
            return self.b.add(acc, self.b.call(self.fn, [self.b.bitcast(a, self.op_t), w]))

    def _tile_codegen(context, builder, signature, args):
        """One tile: out[ooff + r * ldo + LANES v + l] (int32) = sum over t < kg of the products of
        row r0 + r's code group t and lane l of vector v's weights, r < 4, v < NV. q32: int32 view
        of the codes, one group an element (ldq a row); w: packed int8, the tile's group t at
        woff + t * wstride, vector v 4 LANES bytes further (G bytes a lane)."""
        qv, r0v, ldqv, wv, woffv, wsv, kgv, outv, ooffv, ldov = args
        qa = context.make_array(signature.args[0])(context, builder, qv)
        wa = context.make_array(signature.args[3])(context, builder, wv)
        oa = context.make_array(signature.args[7])(context, builder, outv)
        i64 = _ir.IntType(64)
        ops = _Ops(builder)
        accs = []
        for _ in range(4 * _NV):
            a = _cg.alloca_once(builder, ops.acc_t)        # entry-block alloca: promoted to a register
            builder.store(_ir.Constant(ops.acc_t, None), a)
            accs.append(a)
        with _cg.for_range(builder, kgv) as loop:
            t = loop.index
            base = builder.add(woffv, builder.mul(t, wsv))
            wvec = [ops.weights(builder.gep(wa.data, [builder.add(base, _ir.Constant(i64, _LANES * _G * v))]))
                    for v in range(_NV)]
            for r in range(4):
                row = builder.add(r0v, _ir.Constant(i64, r))
                a = ops.codes(builder.gep(qa.data, [builder.add(builder.mul(row, ldqv), t)]))
                for v in range(_NV):
                    acc = accs[r * _NV + v]
                    builder.store(ops.madd(builder.load(acc), a, wvec[v]), acc)
        for r in range(4):
            for v in range(_NV):
                at = builder.add(builder.add(ooffv, builder.mul(_ir.Constant(i64, r), ldov)),
                                 _ir.Constant(i64, _LANES * v))
                op = builder.gep(oa.data, [at])
                builder.store(builder.load(accs[r * _NV + v]), builder.bitcast(op, ops.acc_t.as_pointer()),
                              align=4)
        return context.get_dummy_value()

    def _row_codegen(context, builder, signature, args):
        """One row in the other loop order: for each input group t, for each output vector v,
        out[ooff + LANES v + l] += the products of row r's code group t and lane l's weights.
        The accumulators live in `out` (L1) and the weights stream in memory order, once: with
        one row there is nothing to share a weight load with, and a padded 4-row tile did 4x the
        work down 2 KB strides (a decode step ran 1.5x slower than the portable loop)."""
        qv, rv, ldqv, wv, kgv, cpv, outv, ooffv = args
        qa = context.make_array(signature.args[0])(context, builder, qv)
        wa = context.make_array(signature.args[3])(context, builder, wv)
        oa = context.make_array(signature.args[6])(context, builder, outv)
        i64 = _ir.IntType(64)
        ops = _Ops(builder)
        nvec = builder.udiv(cpv, _ir.Constant(i64, _LANES))
        with _cg.for_range(builder, kgv) as outer:
            t = outer.index
            a = ops.codes(builder.gep(qa.data, [builder.add(builder.mul(rv, ldqv), t)]))
            base = builder.mul(builder.mul(t, cpv), _ir.Constant(i64, _G))
            with _cg.for_range(builder, nvec) as inner:
                v = inner.index
                woff = builder.add(base, builder.mul(v, _ir.Constant(i64, _LANES * _G)))
                w = ops.weights(builder.gep(wa.data, [woff]))
                op = builder.gep(oa.data, [builder.add(ooffv, builder.mul(v, _ir.Constant(i64, _LANES)))])
                optr = builder.bitcast(op, ops.acc_t.as_pointer())
                builder.store(ops.madd(builder.load(optr, align=4), a, w), optr, align=4)
        return context.get_dummy_value()

    @_intrinsic
    def _simd_tile(typingctx, q32, r0, ldq, w, woff, wstride, kg, out, ooff, ldo):
        return nb.types.void(q32, r0, ldq, w, woff, wstride, kg, out, ooff, ldo), _tile_codegen

    @_intrinsic
    def _simd_row(typingctx, q32, r, ldq, w, kg, cp, out, ooff):
        # one row, all Cp outputs, added into out[ooff:ooff + Cp] (see _row_codegen)
        return nb.types.void(q32, r, ldq, w, kg, cp, out, ooff), _row_codegen

    @nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _quantize_padded(x, rows, a_scale, zp, kg):
        # x rows `rows` -> uint8 codes, 4 rows per tile and K padded to kg groups with zero codes
        # (x zero weights = 0); as int32 groups: 4 codes (VNNI) or 2 codes widened to uint16 (AVX2)
        n, k = rows.shape[0], x.shape[1]
        q = np.zeros(((n + 3) // 4 * 4, kg * _G), dtype=np.uint8)
        for i in range(n):
            src = rows[i]
            for t in range(k):
                r = np.rint(x[src, t] / a_scale + zp)
                q[i, t] = np.uint8(min(max(r, np.float32(0.0)), np.float32(255.0)))
        if _G == 4:
            return q.reshape(-1).view(np.int32)
        return q.astype(np.uint16).reshape(-1).view(np.int32)

    @nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _simd_rescale(q32, n, w, kg, colsum, w_scale, a_scale, zp, bias, has_bias, y, y0):
        # y[y0 + i, :] = (acc[i, :] - zp colsum) * (a_scale * w_scale) (+ bias), tile by tile
        c = y.shape[1]
        cp = w.shape[0] // (kg * _G)
        rows = q32.shape[0] // kg
        acc = np.empty((rows, cp), dtype=np.int32)                # tiles land here, then one rescale pass
        full = n // 4 * 4
        for i0 in range(0, full, 4):
            for j0 in range(0, cp, _TILE_W):
                _simd_tile(q32, np.int64(i0), np.int64(kg), w, np.int64(j0 * _G), np.int64(cp * _G),
                           np.int64(kg), acc.reshape(-1), np.int64(i0 * cp + j0), np.int64(cp))
        for i in range(full, n):                                  # the 1-3 rows left, one at a time
            acc[i, :] = 0
            _simd_row(q32, np.int64(i), np.int64(kg), w, np.int64(kg), np.int64(cp), acc.reshape(-1),
                      np.int64(i * cp))
        izp = np.int32(zp)
        for i in range(n):
            for j in range(c):
                yv = np.float32(acc[i, j] - izp * colsum[j]) * (a_scale * w_scale[j])
                y[y0 + i, j] = yv + bias[j] if has_bias else yv

    def _as_path(fn):
        """fn under a name of this path's own (int8_linear_avx2, ...), then jitted and cached.
        Numba names a cache file after the function and keys it by the CPU, not by the globals
        the code froze: without this, QZ_INT8_VNNI=0 on a VNNI CPU would load the VNNI build."""
        name = fn.__name__.replace("simd", "vnni" if VNNI else "avx2")
        g = _types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        g.__qualname__ = name
        return nb.njit(cache=True, nogil=True, error_model="numpy")(g)

    def int8_linear_simd(x, wp, colsum, w_scale, a_scale, zp, bias, has_bias):
        n, k = x.shape
        kg = (k + _G - 1) // _G
        y = np.empty((n, colsum.shape[0]), dtype=np.float32)
        q32 = _quantize_padded(x, np.arange(n), a_scale, zp, kg)
        _simd_rescale(q32, n, wp, kg, colsum, w_scale, a_scale, zp, bias, has_bias, y, 0)
        return y

    def int8_experts_simd(x, tok, bounds, wp, colsum, w_scale, a_scale, zp):
        kg = (x.shape[1] + _G - 1) // _G
        y = np.empty((tok.shape[0], colsum.shape[1]), dtype=np.float32)
        for e in range(wp.shape[0]):
            lo, hi = bounds[e], bounds[e + 1]
            if lo == hi:
                continue
            q32 = _quantize_padded(x, tok[lo:hi], a_scale, zp, kg)   # this expert's rows, gathered
            _simd_rescale(q32, hi - lo, wp[e], kg, colsum[e], w_scale[e], a_scale, zp, w_scale[e], False,
                          y, lo)
        return y

    int8_linear_simd, int8_experts_simd = _as_path(int8_linear_simd), _as_path(int8_experts_simd)
else:
    int8_linear_simd = int8_experts_simd = None

