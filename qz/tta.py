"""Test-time warps for speech classifiers: average the class probabilities over a few vocal
tract length warps of each clip.

Training with VTLP (``augment.vtlp_mfcc``) teaches the model every voice between the
training voices' warps by 1 +- vtlp. A new voice still lands somewhere in that range,
and the model is surer of it at some warps than at others; averaging the softmax over
a small grid of warps (0.9, 1.0, 1.1 by default) lets the surest views decide. It is
test-time augmentation (as multi-crop evaluation is for images) with the one
transform the speech models here train with: no weights change, and each warp costs
one more forward pass, so three warps cost three times the compute of one. Off
unless asked for.

    probs = warp_probs(params, cfg, x_raw, meta["input_norm"])      # x_raw: (N, T, C) raw MFCC
    acc = warp_accuracy(params, cfg, data_raw, meta["input_norm"], warps=(0.9, 1.0, 1.1))

The warp runs on raw features, before the model's input scaling (``data.apply_input_norm``),
as in training; warps=(1.0,) gives the model's own softmax.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .augment import vtlp_matrix
from .data import ArrayData, apply_input_norm
from .errors import InputError
from .model import forward

__all__ = ["DEFAULT_WARPS", "parse_warps", "warp_probs", "warp_accuracy"]

DEFAULT_WARPS = (0.9, 1.0, 1.1)


def parse_warps(warps) -> tuple:
    """'0.9,1,1.1' or a sequence of numbers -> (0.9, 1.0, 1.1); each warp in [0.5, 1.5]
    (past that, most formants leave the 4 kHz band)."""
    try:
        items = [w for w in warps.split(",") if w.strip()] if isinstance(warps, str) else list(warps)
        warps = tuple(float(w) for w in items)
    except (TypeError, ValueError):
        raise InputError(f"warps {warps!r}: expected numbers separated by commas, e.g. 0.9,1,1.1") from None
    if not warps:
        raise InputError("warps: give at least one warp factor, e.g. 1 (no warp) or 0.9,1,1.1")
    bad = [w for w in warps if not 0.5 <= w <= 1.5]
    if bad:
        raise InputError(f"warps {bad}: each must be in [0.5, 1.5] (1 = no warp)")
    return warps


def warp_probs(params, cfg, x_raw, norm, warps=DEFAULT_WARPS, top_k=None, quant=None, batch_size=256):
    """Class probabilities (N, n_classes) averaged over the warps of each raw clip.

    x_raw: (N, T, C) raw MFCC features (not yet scaled); norm: the checkpoint's
    meta['input_norm'] (None: the model takes features as they are); quant: the
    fake-quant int8 ranges of a QAT model (as in ``model.forward``).
    """
    if cfg.mode != "classifier":
        raise InputError("warp_probs: needs a classifier model")
    warps = parse_warps(warps)
    x_raw = np.asarray(x_raw, dtype=np.float32)
    if x_raw.ndim != 3:
        raise InputError(f"warp_probs: expected raw features (N, T, C), got shape {x_raw.shape}")
    N, _, C = x_raw.shape
    # the warp is applied in float64, as in augment.vtlp_mfcc
    x64 = x_raw.astype(np.float64)
    total = np.zeros((N, cfg.n_classes), dtype=np.float64)
    for alpha in warps:
        warped = np.einsum("ntc,cd->ntd", x64, vtlp_matrix(alpha, C)).astype(np.float32)
        x = apply_input_norm(ArrayData(warped, np.zeros(N, dtype=np.int64)), norm).x       # (N, T, C) scaled
        for i in range(0, N, batch_size):
            logits, _ = forward(params, cfg, x[i:i + batch_size], top_k=top_k, quant=quant)   # (b, n_classes)
            total[i:i + batch_size] += ops.softmax(logits.astype(np.float64))
    return total / len(warps)


def warp_accuracy(params, cfg, data: ArrayData, norm, warps=DEFAULT_WARPS, top_k=None, quant=None) -> float:
    """Accuracy of the warp-averaged prediction on a raw labelled data set."""
    probs = warp_probs(params, cfg, data.x, norm, warps, top_k, quant)
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(data.y)))
