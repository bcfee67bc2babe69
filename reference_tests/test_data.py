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
    path = write_npz(tmp_path / "s.npz", x=x, y=y, x_val=x[:2] + 1, y_val=y[:2], x_test=x[:4] - 1,
                     y_test=y[:4], labels=np.array(["a", "b", "c"]))
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


def test_speech_cmvn_takes_its_statistics_from_the_speech_frames_only():
    """speech_cmvn: mean and std over the frames within SPEECH_RANGE of the loudest c0. A clip whose frames
    all qualify is plain cmvn; quiet padding (c0 far below) does not move the speech frames' result."""
    from qz.data import SPEECH_RANGE, speech_frames, utterance_normalized
    rng = np.random.default_rng(0)
    speech = rng.standard_normal((3, 20, 13)).astype(np.float32)
    speech[..., 0] = 50.0 + rng.uniform(-5, 5, (3, 20))                   # all within the range
    np.testing.assert_allclose(utterance_normalized(speech, "speech_cmvn"),
                               utterance_normalized(speech, "cmvn"), rtol=1e-5, atol=1e-5)
    quiet = rng.standard_normal((3, 29, 13)).astype(np.float32)
    quiet[..., 0] = 50.0 - SPEECH_RANGE - 10.0 + rng.uniform(-5, 5, (3, 29))   # padding: below the range
    padded = np.concatenate([quiet[:, :10], speech, quiet[:, 10:]], axis=1)   # (3, 49, 13)
    mask = speech_frames(padded)
    assert mask[:, 10:30].all() and not mask[:, :10].any() and not mask[:, 30:].any()
    np.testing.assert_allclose(utterance_normalized(padded, "speech_cmvn")[:, 10:30],
                               utterance_normalized(speech, "cmvn"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(utterance_normalized(padded, "cmvn")[:, 10:30],
                           utterance_normalized(speech, "cmvn"))
    with pytest.raises(DataError, match="speech_cmvn"):
        utterance_normalized(speech, "loud")
