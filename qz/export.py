"""Deployable model files: fp32, fp16 and int8 exports, and their strict loader (docs/spec.md §3.3, §6).

A training checkpoint carries optimizer moments and history; an export holds
only what inference needs, at one precision:

* ``fp32``: every parameter as float32.
* ``fp16``: every parameter as float16 (the runtime computes in float32).
* ``int8``: every quantized weight (docs/spec.md §3.1) as int8 under its own name and
  shape, its float32 scales under ``{name}.scale`` (the reduced axis removed:
  ``(out,)`` for a linear layer, ``(E, out)`` for an expert stack, ``(rows,)``
  for ``embed`` and ``pos``); everything kept in float as float32; and, in the
  metadata, each observer's activation ``(scale, zp)`` and observed range.

The scales are the fake-quant model's own float32 values, so the int8 runtime
reproduces the fake-quant forward bit for bit (quant.qlinear_forward).

Metadata (JSON strings): format "qz-export", format_version "1", precision,
config, act_qparams (int8 only), ranges (int8 only), and what the front-end
needs to serve requests (labels, input_norm) when the checkpoint had them.
"""
from __future__ import annotations

import json

import numpy as np

from .checkpoint import (
    CheckpointError,
    _bad,
    _strict_json,
    read_safetensors,
    write_safetensors,
)
from .config import Config, param_shapes
from .errors import InputError
from .quant import (
    QMAX_A,
    QMAX_W,
    QMIN_W,
    act_qparams,
    observer_names,
    split_weight,
    weight_axis,
)

__all__ = ["PRECISIONS", "export_tensors", "save_export", "load_export", "CARRIED_META"]

PRECISIONS = ("fp32", "fp16", "int8")
CARRIED_META = ("labels", "input_norm")      # what serving a request needs beyond the weights
_FORMAT = "qz-export"


def export_tensors(params, cfg: Config, precision: str, ranges=None):
    """-> (tensors, metadata-dict) of an export at `precision`; ranges: observer -> (lo, hi) (int8)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    shapes = param_shapes(cfg)
    missing = sorted(set(shapes) - set(params))
    if missing:
        raise InputError(f"params: missing {missing[0]!r} for this config")
    meta = {"precision": precision, "config": cfg.to_dict()}
    if precision != "int8":
        dtype = np.float16 if precision == "fp16" else np.float32
        return {n: np.asarray(params[n], np.float32).astype(dtype) for n in shapes}, meta
    if ranges is None:
        raise InputError("int8 export needs activation ranges: train with QAT or run `qz quantize` first")
    names = observer_names(cfg)
    absent = [n for n in names if n not in ranges]
    if absent:
        raise InputError(f"ranges: no range for observer {absent[0]!r}")
    tensors = {}
    for name in shapes:
        p = np.asarray(params[name], np.float32)    # quantize the float32 model the runtime mirrors
        axis = weight_axis(name)
        if axis is None:
            tensors[name] = p
        else:
            qw = split_weight(p, axis)
            tensors[name] = qw.w_q.astype(np.int8)
            tensors[name + ".scale"] = np.squeeze(qw.scale, axis=axis).astype(np.float32)
    meta["ranges"] = {n: [float(ranges[n][0]), float(ranges[n][1])] for n in names}
    meta["act_qparams"] = {n: list(act_qparams(*ranges[n])) for n in names}
    return tensors, meta


def save_export(path, params, cfg: Config, precision: str, ranges=None, **extra) -> None:
    """Write an export (atomic, safetensors). extra: JSON metadata to carry (labels, input_norm, ...)."""
    tensors, meta = export_tensors(params, cfg, precision, ranges)
    metadata = {"format": _FORMAT, "format_version": "1"}
    for key, value in {**meta, **extra}.items():
        metadata[key] = json.dumps(value, allow_nan=False)
    write_safetensors(path, tensors, metadata)


def _expected(cfg: Config, precision: str):
    """name -> (dtype, shape) of every tensor an export at `precision` must hold."""
    want = {}
    for name, shape in param_shapes(cfg).items():
        axis = weight_axis(name)
        if precision == "fp16":
            want[name] = (np.float16, shape)
        elif precision == "fp32" or axis is None:
            want[name] = (np.float32, shape)
        else:
            want[name] = (np.int8, shape)
            want[name + ".scale"] = (np.float32,
                                     tuple(s for i, s in enumerate(shape) if i != len(shape) + axis))
    return want


def load_export(path):
    """Read and validate an export: (tensors, cfg, meta). Raises CheckpointError naming the file
    and the failed check: wrong format, unknown precision, a missing, extra, mis-shaped or
    wrongly typed tensor, a missing or bad scale, missing or bad activation parameters."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != _FORMAT:
        hint = " (a training checkpoint: make one with `qz export`)" if metadata.get("format") == "qz" else ""
        raise _bad(path, f"__metadata__ format is {metadata.get('format')!r}, not {_FORMAT!r}{hint}")
    if metadata.get("format_version") != "1":
        raise _bad(path, f"format_version {metadata.get('format_version')!r} is not supported")
    meta = {}
    for key, value in metadata.items():
        if key not in ("format", "format_version"):
            try:
                meta[key] = _strict_json(value)
            except ValueError as e:
                raise _bad(path, f"__metadata__ {key!r} is not valid JSON: {e}") from e
    precision = meta.get("precision")
    if precision not in PRECISIONS:
        raise _bad(path, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        cfg = Config.from_dict(meta.get("config"))
    except (ValueError, TypeError) as e:
        raise _bad(path, f"config: {e}") from e
    if cfg.n_layers * 10 > len(tensors):   # before param_shapes loops over a hostile n_layers
        raise _bad(path, f"config n_layers={cfg.n_layers} needs more tensors than the file's {len(tensors)}")
    want = _expected(cfg, precision)
    for name, (dtype, shape) in want.items():
        if name not in tensors:
            what = "scale" if name.endswith(".scale") else "tensor"
            raise _bad(path, f"{what} {name!r} is missing "
                             f"({precision} export expects {np.dtype(dtype).name} {shape})")
        arr = tensors[name]
        if arr.dtype != dtype:
            raise _bad(path, f"tensor {name!r} has dtype {arr.dtype}, a {precision} export stores "
                             f"{np.dtype(dtype).name}")
        if arr.shape != shape:
            raise _bad(path, f"tensor {name!r} has shape {arr.shape}, config expects {shape}")
        if name.endswith(".scale") and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
            raise _bad(path, f"scale {name!r} has values that are not finite and positive")
        if arr.dtype == np.int8 and arr.size and arr.min() < QMIN_W:
            raise _bad(path, f"tensor {name!r} holds -128, outside the int8 range [{QMIN_W}, {QMAX_W}]")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise _bad(path, f"tensor {extra[0]!r} does not belong in a {precision} export of this config")
    if precision == "int8":
        meta["act_qparams"] = _check_act_qparams(path, cfg, meta.get("act_qparams"))
    return tensors, cfg, meta


def _check_act_qparams(path, cfg, aq):
    if not isinstance(aq, dict):
        raise _bad(path, "int8 export has no act_qparams (observer -> [scale, zero point])")
    out = {}
    for name in observer_names(cfg):
        pair = aq.get(name)
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)):
            raise _bad(path, f"act_qparams: observer {name!r} needs [scale, zero point], got {pair!r}")
        scale, zp = float(pair[0]), float(pair[1])
        if not (np.isfinite(scale) and scale > 0):
            raise _bad(path, f"act_qparams: observer {name!r} has scale {scale}, not finite and positive")
        if zp != int(zp) or not 0 <= zp <= QMAX_A:
            raise _bad(path, f"act_qparams: observer {name!r} has zero point {zp}, "
                             f"not an integer in 0..{QMAX_A}")
        out[name] = (scale, zp)
    unknown = sorted(set(aq) - set(out))
    if unknown:
        raise _bad(path, f"act_qparams: {unknown[0]!r} is not an observer of this config")
    return out


__all__ += ["CheckpointError"]
