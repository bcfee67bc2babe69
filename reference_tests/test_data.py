"""Data loading (qz/data.py): .npz checks, text windows, held-out splits."""
from pathlib import Path

import numpy as np
import pytest

from qz.data import DataError, TextData, load_dataset, load_npz


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_classifier_npz_with_and_without_val(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 5, 3)).astype(np.float32)
    y = np.arange(20) % 4
    train, val = load_dataset(write_npz(tmp_path / "a.npz", x=x, y=y), seed=1)
    assert train.kind == "classifier" and len(train) == 18 and len(val) == 2
    assert sorted(np.concatenate([train.y, val.y]).tolist()) == sorted(y.tolist())
    train, val = load_dataset(write_npz(tmp_path / "b.npz", x=x, y=y, x_val=x[:3], y_val=y[:3]))
    assert len(train) == 20 and len(val) == 3


@pytest.mark.parametrize("arrays,msg", [
    (dict(x=np.zeros((4, 3, 2), np.float32)), "missing array 'y'"),
    (dict(x=np.zeros((4, 3), np.float32), y=np.zeros(4, int)), "must be"),
    (dict(x=np.zeros((4, 3, 2), np.float32), y=np.zeros(3, int)), "labels"),
    (dict(x=np.full((4, 3, 2), np.nan, np.float32), y=np.zeros(4, int)), "NaN"),
    (dict(x=np.zeros((4, 3, 2), np.float32), y=np.zeros(4)), "integer labels"),
    (dict(x=np.zeros((4, 3, 2), np.float32), y=-np.ones(4, int)), "negative"),
    (dict(x=np.zeros((4, 3), np.int64), y=np.zeros((4, 2), np.int64)), "match"),
    (dict(x=np.zeros((0, 3, 2), np.float32), y=np.zeros(0, int)), "empty"),
])
def test_bad_npz_is_a_clear_error(tmp_path, arrays, msg):
    with pytest.raises(DataError, match=msg):
        load_npz(write_npz(tmp_path / "bad.npz", **arrays))


def test_not_an_npz(tmp_path):
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(p)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")


def test_text_windows_are_shifted_targets():
    tokens = np.arange(200, dtype=np.uint8)
    data = TextData(tokens, seq_len=10)
    x, y = data.batch(step=3, batch_size=4, seed=0)
    assert x.shape == y.shape == (4, 10)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    x2, _ = data.batch(step=3, batch_size=4, seed=0)
    np.testing.assert_array_equal(x, x2)       # a pure function of (seed, step)
    batches = list(data.eval_batches(batch_size=5))
    assert sum(len(b[0]) for b in batches) == 199 // 10


def test_text_split_and_too_short(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"abcdefghij" * 100)
    train, val = load_dataset(p, seq_len=16)
    assert len(train.tokens) == 900 and len(val.tokens) == 100
    with pytest.raises(DataError, match="too short"):
        load_dataset(p, seq_len=200)


def test_augment_is_seeded_and_shifts_and_masks():
    from qz.data import augment_features
    x = np.random.default_rng(0).standard_normal((16, 20, 5)).astype(np.float32)
    a = augment_features(x, np.random.default_rng(3), noise=0.0)
    b = augment_features(x, np.random.default_rng(3), noise=0.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == x.dtype
    zeros = np.mean(a == 0.0)
    assert 0.0 < zeros < 0.6                     # masks and shift gaps, but most content kept
    # without masks, a shifted row is the original row moved in time
    c = augment_features(x, np.random.default_rng(4), max_time_mask=0, max_feature_mask=0, noise=0.0)
    for i in range(16):
        assert any(np.array_equal(c[i, max(s, 0):20 + min(s, 0)], x[i, max(-s, 0):20 - max(s, 0)])
                   for s in range(-6, 7)), i


def test_csv_with_header_and_string_labels(tmp_path):
    from qz.data import load_csv
    p = tmp_path / "f.csv"
    p.write_text("a,b,label,c,d\n1,2,cat,3,4\n5,6,dog,7,8\n9,1,cat,2,3\n")
    d = load_csv(p, frames=2)
    assert d.labels == ["cat", "dog"] and d.y.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(d.x[1], [[5, 6], [7, 8]])
    with pytest.raises(DataError, match="fold"):
        load_csv(p, frames=3)


FSDD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fsdd-dev"


@pytest.mark.skipif(not FSDD.exists(), reason="../shared/data/fsdd-dev is absent")
def test_real_recordings_load_as_labelled_features():
    from qz.data import load_wav_folder
    d = load_wav_folder(FSDD, include="*_jackson_[0-2].wav")     # 3 clips of each digit, 8 kHz
    assert d.x.shape == (30, 49, 13) and d.labels == [str(i) for i in range(10)]
    assert np.bincount(d.y).tolist() == [3] * 10
    assert np.all(np.isfinite(d.x))


def test_wav_labels_from_file_names():
    from qz.data import wav_label
    assert wav_label("7_jackson_3") == "7" and wav_label("yes_0") == "yes"
    assert wav_label("_silence__2") == "_silence_" and wav_label("_unknown__0") == "_unknown_"
