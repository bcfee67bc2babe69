"""Data sets for training and evaluation: arrays from .npz files, and text.

Two kinds, one interface (``batch(step, batch_size, seed)`` and ``eval_batches``):

* ``ArrayData``: ``x`` (N, T, F) float features with ``y`` (N,) labels
  (classifier), or ``x`` (N, T) int token ids with ``y`` (N, T) next-token
  targets (LM). The training order is a fresh permutation per epoch.
* ``TextData``: a byte stream (vocabulary 256) for a character LM; each batch
  is random windows of ``T + 1`` bytes.

Everything random is derived from ``(seed, step)`` with NumPy's counter-style
seeding, so step ``s`` of a run draws the same batch whether or not the run
was interrupted and resumed before it: the data position *is* the step.

``.npz`` files are read with ``allow_pickle=False``. Optional ``x_val``/``y_val``
(or ``x_test``/``y_test``) arrays are the held-out split; without them a
seeded 10 % of the rows is held out.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DataError", "ArrayData", "TextData", "load_dataset", "load_npz", "load_text"]


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


@dataclass
class ArrayData:
    x: np.ndarray            # (N, T, F) float or (N, T) int
    y: np.ndarray            # (N,) or (N, T) int
    name: str = "arrays"

    @property
    def kind(self) -> str:
        return "lm" if np.issubdtype(self.x.dtype, np.integer) else "classifier"

    @property
    def seq_len(self) -> int:
        return self.x.shape[1]

    def __len__(self):
        return self.x.shape[0]

    def batch(self, step, batch_size, seed):
        """Rows step*B .. step*B + B - 1 of the endless stream of per-epoch permutations."""
        n = len(self)
        start = step * batch_size
        idx = np.empty(batch_size, dtype=np.int64)
        for i in range(batch_size):
            epoch, pos = divmod(start + i, n)
            if i == 0 or pos == 0:
                perm = np.random.default_rng([seed, epoch]).permutation(n)
            idx[i] = perm[pos]
        return self.x[idx], self.y[idx]

    def eval_batches(self, batch_size, max_batches=None):
        n = len(self)
        stops = range(0, n, batch_size)
        if max_batches is not None:
            stops = stops[:max_batches]
        for s in stops:
            yield self.x[s:s + batch_size], self.y[s:s + batch_size]


@dataclass
class TextData:
    tokens: np.ndarray       # (L,) uint8 bytes
    seq_len: int
    name: str = "text"
    kind: str = "lm"

    def __len__(self):
        return max(0, len(self.tokens) - self.seq_len)

    def batch(self, step, batch_size, seed):
        rng = np.random.default_rng([seed, step, 1])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, batch_size)
        win = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)
        return win[:, :-1], win[:, 1:]

    def eval_batches(self, batch_size, max_batches=None):
        # consecutive non-overlapping windows: a fixed, repeatable evaluation set
        T = self.seq_len
        n_win = (len(self.tokens) - 1) // T
        starts = np.arange(n_win) * T
        stops = range(0, n_win, batch_size)
        if max_batches is not None:
            stops = stops[:max_batches]
        for s in stops:
            win = np.stack([self.tokens[t:t + T + 1] for t in starts[s:s + batch_size]]).astype(np.int64)
            yield win[:, :-1], win[:, 1:]


def load_text(path) -> np.ndarray:
    """Bytes of a .txt or .txt.gz file as uint8 token ids (vocabulary 256)."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read text ({e})") from None
    if len(raw) < 2:
        raise DataError(f"{path}: text file is empty")
    return np.frombuffer(raw, dtype=np.uint8).copy()


def load_npz(path):
    """-> (train ArrayData, held-out ArrayData or None) from an .npz with x and y."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile/format errors come in many types
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing array '{key}' (has: {', '.join(sorted(arrays)) or 'none'})")
    train = _check_arrays(path, arrays["x"], arrays["y"], "x", "y")
    for xk, yk in (("x_val", "y_val"), ("x_test", "y_test")):
        if xk in arrays and yk in arrays:
            return train, _check_arrays(path, arrays[xk], arrays[yk], xk, yk)
    return train, None


def _check_arrays(path, x, y, xk, yk):
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim != 3:
            raise DataError(f"{path}: float '{xk}' must be (N, T, features), got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise DataError(f"{path}: '{yk}' must be (N,) = ({x.shape[0]},) labels, got {y.shape}")
        if not np.all(np.isfinite(x)):
            raise DataError(f"{path}: '{xk}' contains NaN or Inf")
    elif np.issubdtype(x.dtype, np.integer):
        if x.ndim != 2:
            raise DataError(f"{path}: int '{xk}' must be token ids (N, T), got shape {x.shape}")
        if y.shape != x.shape:
            raise DataError(f"{path}: '{yk}' must match token ids {x.shape}, got {y.shape}")
        if x.size and x.min() < 0:
            raise DataError(f"{path}: '{xk}' has negative token ids")
    else:
        raise DataError(f"{path}: '{xk}' must be float features or int token ids, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{yk}' must be integer labels, got {y.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{path}: '{xk}' is empty ({x.shape})")
    if y.min() < 0:
        raise DataError(f"{path}: '{yk}' has negative labels")
    x = x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x.astype(np.int64)
    return ArrayData(x, y.astype(np.int64), name=str(path))


def load_dataset(path, seq_len=128, seed=0, val_fraction=0.1):
    """-> (train, val) for an .npz or a text file (.txt, .txt.gz)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".npz":
        train, val = load_npz(path)
        if val is None:  # hold out a seeded fraction of rows
            n = len(train)
            if n < 2:
                raise DataError(f"{path}: need at least 2 rows to hold some out, got {n}")
            perm = np.random.default_rng([seed, 7]).permutation(n)
            n_val = max(1, int(round(n * val_fraction)))
            v, t = perm[:n_val], perm[n_val:]
            train, val = ArrayData(train.x[t], train.y[t], train.name), ArrayData(train.x[v], train.y[v], train.name)
        return train, val
    tokens = load_text(path)
    cut = int(len(tokens) * (1 - val_fraction))  # the tail is the held-out text
    if cut <= seq_len + 1 or len(tokens) - cut <= seq_len + 1:
        raise DataError(f"{path}: text of {len(tokens)} bytes is too short for seq_len {seq_len}")
    return TextData(tokens[:cut], seq_len, str(path)), TextData(tokens[cut:], seq_len, str(path))
