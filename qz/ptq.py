"""Post-training quantization: calibrate the activation observers of a trained float model
(docs/spec.md §3.2).

The baseline quantization-aware training is compared with. Two observers:

* ``minmax``: the widest (min, max) seen over the calibration batches;
* ``percentile``: the mean over batches of each batch's (100 - p)th and pth
  percentiles, so rare outliers clip instead of stretching the 256-step grid
  (p = 99.99 by default).

Calibration runs the float model (quant=None), as PTQ does: the weights are
quantized only afterwards, by the export.
"""
from __future__ import annotations

from .errors import InputError
from .model import observe_ranges
from .quant import mean_update, minmax_update, percentile_stat

__all__ = ["OBSERVERS", "calibrate"]

OBSERVERS = ("minmax", "percentile")


def calibrate(params, cfg, batches, observer="minmax", percentile=99.99, top_k=None):
    """batches: an iterable of input arrays -> {observer name: (lo, hi)}."""
    if observer not in OBSERVERS:
        raise InputError(f"observer: expected one of {', '.join(OBSERVERS)}, got {observer!r}")
    stat = percentile_stat(percentile) if observer == "percentile" else None
    ranges, n = {}, 0
    for x in batches:
        seen = observe_ranges(params, cfg, x, top_k=top_k, stat=stat)
        ranges = mean_update(ranges, seen, n) if stat else minmax_update(ranges, seen)
        n += 1
    if n == 0:
        raise InputError("calibrate: no calibration batches")
    return ranges
