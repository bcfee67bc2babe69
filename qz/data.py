"""Data sets for training and evaluation: arrays from .npz files, and text.

Two kinds, one interface (``batch(step, batch_size, seed)`` and ``eval_batches``):

* ``ArrayData``: ``x`` (N, T, F) float features with ``y`` (N,) labels
  (from an .npz, or a CSV of features with a label column)
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

from .errors import InputError
from .streams import stream

__all__ = ["DataError", "ArrayData", "TextData", "load_dataset", "load_npz", "load_split", "load_csv",
           "load_text", "feature_stats", "fit_input_norm", "utterance_normalized", "apply_input_norm",
           "load_wav_folder", "load_labelled", "wav_label", "speech_frames"]


class DataError(InputError):
    """A data file that cannot be used; the message names the file and the problem."""


@dataclass
class ArrayData:
    x: np.ndarray            # (N, T, F) float or (N, T) int
    y: np.ndarray            # (N,) or (N, T) int
    name: str = "arrays"
    labels: list | None = None   # class names, when the file has them

    def subset(self, idx):
        return ArrayData(self.x[idx], self.y[idx], self.name, self.labels)

    def standardized(self, mean, std):
        """Features minus mean, over std (per feature): the classifier's input scaling."""
        x = (self.x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return ArrayData(x.astype(np.float32), self.y, self.name, self.labels)

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
                perm = stream(seed, "epoch", epoch).permutation(n)
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
        rng = stream(seed, "batch", step)
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


def feature_stats(data: ArrayData):
    """Per-feature mean and std over all rows and frames; std floored so a constant feature stays finite."""
    x = data.x.reshape(-1, data.x.shape[-1]).astype(np.float64)
    return x.mean(axis=0).astype(np.float32), np.maximum(x.std(axis=0), 1e-6).astype(np.float32)


SPEECH_RANGE = 4.6 * np.sqrt(40)     # c0 units: 20 dB below the loudest frame, in each of 40 mel bands


def speech_frames(x, span=SPEECH_RANGE):
    """(N, T, C) MFCC clips -> (N, T) float mask of the frames within `span` of the clip's loudest
    frame by c0 (the orthonormal DCT's c0 is sqrt(40) x the mean log-mel energy): its speech."""
    c0 = x[..., 0]
    return (c0 >= c0.max(axis=1, keepdims=True) - span).astype(np.float64)


def utterance_normalized(x, mode):
    """Per-clip normalisation over time, before the global scaling:
    'cmn' subtracts each clip's mean of every feature (cepstral mean normalisation:
    removes a fixed channel or voice colouring), 'cmvn' also divides by its std;
    'speech_cmvn' takes both statistics over the clip's speech frames only (speech_frames),
    so the padding and silence around a short word do not dilute them."""
    if mode in (None, "none"):
        return x
    if mode not in ("cmn", "cmvn", "speech_cmvn"):
        raise DataError(f"utterance normalisation {mode!r}: expected none, cmn, cmvn or speech_cmvn")
    if mode == "speech_cmvn":
        w = speech_frames(x)[..., None]                                        # (N, T, 1)
        n = w.sum(axis=1, keepdims=True)
        mean = (w * x).sum(axis=1, keepdims=True) / n                          # (N, 1, C)
        std = np.sqrt((w * (x - mean) ** 2).sum(axis=1, keepdims=True) / n)
        return ((x - mean) / np.maximum(std, 1e-3)).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    if mode == "cmvn":
        x = x / np.maximum(x.std(axis=1, keepdims=True), 1e-3)
    return x.astype(np.float32)


def fit_input_norm(data, utterance=None):
    """The input scaling a model is trained with: optional per-clip normalisation, then per-feature
    mean/std of the training split. Stored in checkpoints as meta['input_norm']."""
    x = utterance_normalized(data.x, utterance)
    mean, std = feature_stats(ArrayData(x, data.y))
    return {"mean": mean.tolist(), "std": std.tolist(), "utterance": utterance or "none"}


def apply_input_norm(data, norm):
    """Scale a classifier data set with the stats stored in a checkpoint (meta['input_norm'])."""
    if norm is None or data is None or data.kind != "classifier":
        return data
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    if mean.shape != (data.x.shape[-1],):
        raise DataError(f"{data.name}: {data.x.shape[-1]} features, "
                        f"but the model was trained on {mean.shape[0]}")
    x = utterance_normalized(data.x, norm.get("utterance"))
    return ArrayData(x, data.y, data.name, data.labels).standardized(mean, std)


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
    labels = None
    if "labels" in arrays:
        if arrays["labels"].dtype.kind != "U" or arrays["labels"].ndim != 1:
            raise DataError(f"{path}: 'labels' must be a 1-D array of strings")
        labels = [str(v) for v in arrays["labels"]]
    train = _check_arrays(path, arrays["x"], arrays["y"], "x", "y")
    train.labels = labels
    for xk, yk in (("x_val", "y_val"), ("x_test", "y_test")):
        if xk in arrays and yk in arrays:
            held = _check_arrays(path, arrays[xk], arrays[yk], xk, yk)
            held.labels = labels
            return train, held
    return train, None


def load_split(path, split):
    """One named split of an .npz: 'train' (x, y), 'val' (x_val, y_val) or 'test' (x_test, y_test)."""
    path = Path(path)
    keys = {"train": ("x", "y"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}[split]
    train, _ = load_npz(path)
    with np.load(path, allow_pickle=False) as z:
        if keys[0] not in z.files or keys[1] not in z.files:
            raise DataError(f"{path}: has no {split} split ({keys[0]}, {keys[1]})")
        data = _check_arrays(path, z[keys[0]], z[keys[1]], *keys)
    data.labels = train.labels
    return data


def load_csv(path, frames=1):
    """Features from a CSV: one example per row, a label column, the rest numbers.

    The label column is the one headed 'label' when the file has a header row,
    else the last column. String labels become class ids in sorted order
    (names kept in .labels). `frames` folds F features into (frames, F / frames),
    e.g. an 8x8 image into 8 rows of 8 pixels.
    """
    import csv
    import io
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        rows = [r for r in csv.reader(io.StringIO(raw.decode("utf-8"))) if r]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: CSV file is empty")
    header = None
    if any(not _is_number(v) for v in rows[0]):
        header, rows = [h.strip().lower() for h in rows[0]], rows[1:]
    if not rows:
        raise DataError(f"{path}: CSV has a header but no rows")
    width = len(rows[0])
    if width < 2 or any(len(r) != width for r in rows):
        raise DataError(f"{path}: every CSV row needs the same number (>= 2) of columns")
    col = header.index("label") if header and "label" in header else width - 1
    labels_raw = [r[col].strip() for r in rows]
    try:
        feats = np.array([[float(v) for i, v in enumerate(r) if i != col] for r in rows], dtype=np.float32)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric feature value ({e})") from None
    if all(_is_number(v) and float(v).is_integer() for v in labels_raw):
        y, names = np.array([int(float(v)) for v in labels_raw], dtype=np.int64), None
    else:
        names = sorted(set(labels_raw))
        y = np.array([names.index(v) for v in labels_raw], dtype=np.int64)
    F = feats.shape[1]
    if frames < 1 or F % frames:
        raise DataError(f"{path}: {F} features do not fold into {frames} frames")
    data = _check_arrays(path, feats.reshape(len(rows), frames, F // frames), y, "features", "label")
    data.labels = names
    return data


def wav_label(stem):
    """Label of a file named '{label}_*.wav': the text before the first '_'
    ('7_jackson_3' -> '7'); a label that itself starts with '_' runs to its
    closing '_' ('_silence__0' -> '_silence_')."""
    if stem.startswith("_"):
        end = stem.find("_", 1)
        return stem[:end + 1] if end > 0 else stem
    return stem.split("_", 1)[0]


def load_wav_folder(path, include="*.wav"):
    """Features of every wav under a folder: one sub-folder per label, or files named '{label}_*.wav'.

    Each file goes through the same front-end as the shipped data sets
    (qz.audio.wav_features: 16 kHz, 1 s, 49 x 13 MFCC). `include` is a glob
    on file names (e.g. '*_george_*.wav'). A file that cannot be read stops
    the load with an error naming it.
    """
    from .audio import wav_features
    path = Path(path)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob(include)))
    if subdirs:
        items = [(f, d.name) for d in subdirs for f in sorted(d.glob(include))]
    else:
        items = [(f, wav_label(f.stem)) for f in sorted(path.glob(include))]
    if not items:
        raise DataError(f"{path}: no wav files matching {include!r} (expected sub-folders per label "
                        "or files named <label>_*.wav)")
    names = sorted({label for _, label in items})
    x = np.stack([wav_features(f) for f, _ in items]).astype(np.float32)
    y = np.array([names.index(label) for _, label in items], dtype=np.int64)
    return ArrayData(x, y, name=str(path), labels=names)


def load_labelled(path, include="*.wav", frames=1):
    """A whole labelled set (no split) from a wav folder, a CSV of features or an .npz (x, y);
    `file.npz:val` (or `:test`, `:train`) takes that split of an .npz (x_val, y_val, ...)."""
    name, _, split = str(path).rpartition(":")
    if name.endswith(".npz") and split in ("train", "val", "test"):
        path = Path(name)
    else:
        path, split = Path(path), None
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return load_wav_folder(path, include)
    if path.name.endswith((".csv", ".csv.gz")):
        return load_csv(path, frames)
    if path.suffix == ".npz":
        return load_split(path, split) if split else load_npz(path)[0]
    raise DataError(f"{path}: expected a folder of wav files, a .csv(.gz) or an .npz")


def _is_number(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


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


def load_dataset(path, seq_len=128, seed=0, val_fraction=0.1, frames=1):
    """-> (train, val) for an .npz, a .csv(.gz) of features, or a text file (.txt, .txt.gz)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction}: must be in [0, 1)")
    if path.is_dir() or path.suffix == ".npz" or path.name.endswith((".csv", ".csv.gz")):
        if path.suffix == ".npz":
            train, val = load_npz(path)
        else:
            train, val = load_labelled(path, frames=frames), None
        if val is None:  # hold out a seeded fraction of rows
            n = len(train)
            if n < 2:
                raise DataError(f"{path}: need at least 2 rows to hold some out, got {n}")
            perm = stream(seed, "holdout").permutation(n)
            n_val = min(max(1, int(round(n * val_fraction))), n - 1)   # at least one row on each side
            train, val = train.subset(perm[n_val:]), train.subset(perm[:n_val])
        return train, val
    if seq_len < 1:
        raise DataError(f"seq_len {seq_len}: must be at least 1")
    tokens = load_text(path)
    cut = int(len(tokens) * (1 - val_fraction))  # the tail is the held-out text
    if cut <= seq_len + 1 or len(tokens) - cut <= seq_len + 1:
        raise DataError(f"{path}: text of {len(tokens)} bytes is too short for seq_len {seq_len}")
    return TextData(tokens[:cut], seq_len, str(path)), TextData(tokens[cut:], seq_len, str(path))
