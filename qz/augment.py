"""Training-time augmentation of feature clips, each draw seeded by (seed, step) so resume stays exact.

* ``augment_features``: time shift, SpecAugment-style masks and noise on standardised clips;
* ``vtlp_matrix`` / ``vtlp_mfcc``: vocal tract length perturbation done on MFCC features (one
  13 x 13 matrix per clip), and ``WarpedData``, a training source that warps every batch;
* ``MixedData``: rehearsal, a share of every batch drawn from another labelled set;
* ``soft_targets``: mixup and label smoothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import ArrayData, apply_input_norm
from .streams import stream

__all__ = ["augment_features", "vtlp_matrix", "vtlp_mfcc", "WarpedData", "MixedData", "soft_targets"]


def augment_features(x, rng, max_shift=6, max_time_mask=6, max_feature_mask=2, noise=0.05):
    """Training-time augmentation of standardised feature clips (N, T, F), all seeded by rng.

    * time shift by up to max_shift frames, the gap filled with 0 (the mean
      after standardisation): the word may start anywhere;
    * one time mask and one feature mask (SpecAugment, Park et al. 2019),
      set to 0: the model cannot lean on one moment or one coefficient;
    * a little Gaussian noise.
    """
    N, T, F = x.shape
    out = np.zeros_like(x)
    shifts = rng.integers(-max_shift, max_shift + 1, N)
    for i, s in enumerate(shifts):
        if s >= 0:
            out[i, s:] = x[i, :T - s]
        else:
            out[i, :T + s] = x[i, -s:]
    t0, tw = rng.integers(0, T, N), rng.integers(0, max_time_mask + 1, N)
    f0, fw = rng.integers(0, F, N), rng.integers(0, max_feature_mask + 1, N)
    for i in range(N):
        out[i, t0[i]:t0[i] + tw[i]] = 0.0
        out[i, :, f0[i]:f0[i] + fw[i]] = 0.0
    out += noise * rng.standard_normal(out.shape).astype(out.dtype)
    return out


def vtlp_matrix(alpha, n_mfcc=13):
    """(C, C) map of MFCC rows under a vocal tract length warp by `alpha` (Jaitly & Hinton 2013).

    The MFCC is a truncated DCT of the 40 log-mel bands, so its inverse DCT is a
    smoothed log-mel spectrum; that is resampled at f / alpha for each band centre
    f (alpha > 1 moves formants up, as a shorter vocal tract does; bands past the
    4 kHz edge repeat the edge band) and DCT'd back. Warping needs no front-end
    re-run, and alpha = 1 gives the identity (up to float rounding).
    """
    from .audio import FMAX, FMIN, N_MELS, _dct_matrix, _hz_to_mel, _mel_to_hz
    edges = np.linspace(_hz_to_mel(FMIN), _hz_to_mel(FMAX), N_MELS + 2)
    centres = edges[1:-1]                                                       # (M,) mel
    # (M,) where each band reads from
    src = _hz_to_mel(_mel_to_hz(centres) / float(alpha))
    pos = np.clip(np.interp(src, centres, np.arange(N_MELS)), 0, N_MELS - 1)    # fractional band index
    lo = np.minimum(np.floor(pos).astype(int), N_MELS - 2)
    w = pos - lo
    interp = np.zeros((N_MELS, N_MELS))                                         # (M out, M in)
    interp[np.arange(N_MELS), lo] = 1.0 - w
    interp[np.arange(N_MELS), lo + 1] += w
    d = _dct_matrix(N_MELS, n_mfcc)                                             # (M, C)
    return d.T @ interp.T @ d                                                   # row c @ it: (C,) -> (C,)


def vtlp_mfcc(x, rng, low=0.85, high=1.15):
    """Raw MFCC clips (N, T, C) with each clip warped by its own alpha ~ U(low, high), seeded by rng.

    Must run on raw features (before utterance_normalized and standardisation):
    the warp mixes coefficients, which per-coefficient scaling does not commute with.
    """
    alphas = rng.uniform(low, high, x.shape[0])
    mats = np.stack([vtlp_matrix(a, x.shape[-1]) for a in alphas])               # (N, C, C)
    return np.einsum("ntc,ncd->ntd", x.astype(np.float64), mats).astype(x.dtype)


@dataclass
class WarpedData:
    """Raw training features that are VTLP-warped (vtlp_mfcc) per batch, then scaled with `norm`.

    Drop-in for a scaled ArrayData in train(): batch(step, ...) draws the same rows
    as ArrayData.batch, and the warp is seeded by (seed, step), so resume stays exact.
    """
    raw: ArrayData
    norm: dict
    low: float = 0.85
    high: float = 1.15
    kind: str = "classifier"

    @property
    def seq_len(self):
        return self.raw.seq_len

    def __len__(self):
        return len(self.raw)

    def batch(self, step, batch_size, seed):
        x, y = self.raw.batch(step, batch_size, seed)
        x = vtlp_mfcc(x, stream(seed, "vtlp", step), self.low, self.high)
        return apply_input_norm(ArrayData(x, y), self.norm).x, y

    def eval_batches(self, batch_size, max_batches=None):
        return apply_input_norm(self.raw, self.norm).eval_batches(batch_size, max_batches)


@dataclass
class MixedData:
    """Rehearsal: each training batch takes round(share * B) rows from `extra` (e.g. the base
    model's own data) and the rest from `main`, so adapting to new data does not erase what the
    model knew. Both are training sources with batch(step, B, seed) (ArrayData or WarpedData,
    scaled the same way); each draws its rows from its own seed stream, so resume stays exact.
    Evaluation batches come from `main` only."""
    main: object
    extra: object
    share: float = 0.5
    kind: str = "classifier"

    @property
    def seq_len(self):
        return self.main.seq_len

    def __len__(self):
        return len(self.main)

    def batch(self, step, batch_size, seed):
        n_extra = int(round(self.share * batch_size))
        n_main = batch_size - n_extra
        parts = [s.batch(step, n, seed + i)
                 for i, (s, n) in enumerate(((self.main, n_main), (self.extra, n_extra))) if n > 0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def eval_batches(self, batch_size, max_batches=None):
        return self.main.eval_batches(batch_size, max_batches)


def soft_targets(x, y, n_classes, rng, mixup=0.0, smoothing=0.0):
    """-> (x, (N, n_classes) target probabilities): mixup (Zhang et al. 2018) and label smoothing.

    mixup > 0: each clip is blended with a random other clip of the batch by
    lam ~ Beta(mixup, mixup), folded to lam >= 0.5 so the clip's own label leads,
    and its target is blended the same way: the model is pushed toward linear
    behaviour between training voices rather than sharp boundaries around them.
    smoothing: (1 - smoothing) on the target, smoothing / n_classes spread over all.
    """
    N = x.shape[0]
    onehot = np.eye(n_classes, dtype=np.float64)[y]                       # (N, C)
    if mixup > 0:
        lam = rng.beta(mixup, mixup, N)
        lam = np.maximum(lam, 1.0 - lam)                                   # (N,)
        j = rng.permutation(N)
        x = (lam[:, None, None] * x + (1.0 - lam[:, None, None]) * x[j]).astype(x.dtype)
        onehot = lam[:, None] * onehot + (1.0 - lam[:, None]) * onehot[j]
    return x, (1.0 - smoothing) * onehot + smoothing / n_classes
