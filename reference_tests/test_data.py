"""Data loading (qz/data.py): .npz checks, text windows, held-out splits."""
from pathlib import Path

import numpy as np
import pytest

from qz.data import DataError, TextData, load_dataset, load_labelled, load_npz


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


def test_load_labelled_takes_a_named_split_of_an_npz(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    y = np.arange(6) % 3
    path = write_npz(tmp_path / "s.npz", x=x, y=y, x_val=x[:2] + 1, y_val=y[:2], x_test=x[:4] - 1, y_test=y[:4],
                     labels=np.array(["a", "b", "c"]))
    val, test, whole = load_labelled(f"{path}:val"), load_labelled(f"{path}:test"), load_labelled(path)
    np.testing.assert_array_equal(val.x, x[:2] + 1)
    np.testing.assert_array_equal(test.y, y[:4])
    assert len(whole) == 6 and val.labels == test.labels == ["a", "b", "c"]
    with pytest.raises(DataError, match="no val split"):
        load_labelled(f"{write_npz(tmp_path / 't.npz', x=x, y=y)}:val")
    with pytest.raises(DataError, match="no such file"):
        load_labelled(f"{tmp_path / 'missing.npz'}:test")


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


def test_vtlp_identity_and_moves_formants_the_right_way():
    from qz.audio import _dct_matrix
    from qz.data import vtlp_matrix
    np.testing.assert_allclose(vtlp_matrix(1.0), np.eye(13), atol=1e-12)
    d = _dct_matrix(40, 13)
    bands = np.arange(40)
    log_mel = np.exp(-0.5 * ((bands - 15) / 2.0) ** 2)      # one smooth "formant" at band 15
    c = log_mel @ d
    peak = {a: int(np.argmax(c @ vtlp_matrix(a) @ d.T)) for a in (0.85, 1.0, 1.15)}
    assert peak[0.85] < peak[1.0] == 15 < peak[1.15]          # alpha > 1: formants move up (shorter tract)


def test_vtlp_mfcc_is_seeded_per_clip_and_warped_data_keeps_rows():
    from qz.data import ArrayData, WarpedData, apply_input_norm, fit_input_norm, vtlp_mfcc
    x = np.random.default_rng(0).standard_normal((8, 10, 13)).astype(np.float32)
    a = vtlp_mfcc(x, np.random.default_rng(1))
    np.testing.assert_array_equal(a, vtlp_mfcc(x, np.random.default_rng(1)))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.allclose(a, x, atol=1e-3)
    np.testing.assert_allclose(vtlp_mfcc(x, np.random.default_rng(1), 1.0, 1.0), x, atol=1e-5)
    data = ArrayData(x, np.arange(8))
    norm = fit_input_norm(data, "cmvn")
    w = WarpedData(data, norm, 1.0, 1.0)                     # no warp: exactly the scaled rows of ArrayData.batch
    xb, yb = w.batch(3, 5, seed=2)
    xs, ys = apply_input_norm(data, norm).batch(3, 5, seed=2)
    np.testing.assert_array_equal(yb, ys)
    np.testing.assert_allclose(xb, xs, atol=1e-4)
    xw, _ = WarpedData(data, norm).batch(3, 5, seed=2)
    np.testing.assert_array_equal(xw, WarpedData(data, norm).batch(3, 5, seed=2)[0])   # step-seeded: resume-exact
    assert not np.allclose(xw, xs, atol=1e-3)


def test_soft_targets_mixup_and_smoothing():
    from qz.data import soft_targets
    x = np.random.default_rng(0).standard_normal((6, 4, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    x0, t0 = soft_targets(x, y, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(x0, x)
    np.testing.assert_array_equal(t0, np.eye(3)[y])                     # neither: one-hot, clips untouched
    _, ts = soft_targets(x, y, 3, np.random.default_rng(1), smoothing=0.3)
    np.testing.assert_allclose(ts, 0.7 * np.eye(3)[y] + 0.1)
    yd = np.arange(6)                                                   # distinct labels: lam is readable
    xm, tm = soft_targets(x, yd, 6, np.random.default_rng(2), mixup=0.4)
    np.testing.assert_allclose(tm.sum(axis=1), 1.0)
    lam = tm[yd, yd]
    assert np.all(lam >= 0.5) and np.any(lam < 0.99)                    # the clip's own label leads
    assert xm.dtype == x.dtype
    for i in range(6):                                                  # each row: lam x_i + (1 - lam) x_j
        j = int(np.argmax(np.where(yd == i, -1.0, tm[i]))) if lam[i] < 1 else i
        np.testing.assert_allclose(xm[i], lam[i] * x[i] + (1 - lam[i]) * x[j], atol=1e-5)


def test_mixed_data_batches_are_seeded_and_split_by_share():
    from qz.data import ArrayData, MixedData
    a = ArrayData(np.zeros((30, 2, 3), np.float32), np.zeros(30, np.int64))
    b = ArrayData(np.ones((20, 2, 3), np.float32), np.ones(20, np.int64))
    m = MixedData(a, b, share=0.3)
    x, y = m.batch(5, 10, seed=4)
    assert x.shape == (10, 2, 3) and int(y.sum()) == 3 and np.all(x[y == 1] == 1)
    x2, y2 = m.batch(5, 10, seed=4)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert len(m) == 30 and m.seq_len == 2
    assert sum(len(yb) for _, yb in m.eval_batches(7)) == 30          # evaluation is the main data only


def test_speech_cmvn_takes_its_statistics_from_the_speech_frames_only():
    """speech_cmvn: mean and std over the frames within SPEECH_RANGE of the loudest c0. A clip whose frames
    all qualify is plain cmvn; quiet padding (c0 far below) does not move the speech frames' result."""
    from qz.data import SPEECH_RANGE, speech_frames, utterance_normalized
    rng = np.random.default_rng(0)
    speech = rng.standard_normal((3, 20, 13)).astype(np.float32)
    speech[..., 0] = 50.0 + rng.uniform(-5, 5, (3, 20))                   # all within the range
    np.testing.assert_allclose(utterance_normalized(speech, "speech_cmvn"), utterance_normalized(speech, "cmvn"),
                               rtol=1e-5, atol=1e-5)
    quiet = rng.standard_normal((3, 29, 13)).astype(np.float32)
    quiet[..., 0] = 50.0 - SPEECH_RANGE - 10.0 + rng.uniform(-5, 5, (3, 29))   # padding: below the range
    padded = np.concatenate([quiet[:, :10], speech, quiet[:, 10:]], axis=1)   # (3, 49, 13)
    mask = speech_frames(padded)
    assert mask[:, 10:30].all() and not mask[:, :10].any() and not mask[:, 30:].any()
    np.testing.assert_allclose(utterance_normalized(padded, "speech_cmvn")[:, 10:30],
                               utterance_normalized(speech, "cmvn"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(utterance_normalized(padded, "cmvn")[:, 10:30], utterance_normalized(speech, "cmvn"))
    with pytest.raises(DataError, match="speech_cmvn"):
        utterance_normalized(speech, "loud")
