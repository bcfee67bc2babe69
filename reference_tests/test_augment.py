"""Training-time augmentation (qz/augment.py): seeded masks and shifts, VTLP on MFCC, rehearsal, mixup."""
import numpy as np


def test_augment_is_seeded_and_shifts_and_masks():
    from qz.augment import augment_features
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


def test_vtlp_identity_and_moves_formants_the_right_way():
    from qz.audio import _dct_matrix
    from qz.augment import vtlp_matrix
    np.testing.assert_allclose(vtlp_matrix(1.0), np.eye(13), atol=1e-12)
    d = _dct_matrix(40, 13)
    bands = np.arange(40)
    log_mel = np.exp(-0.5 * ((bands - 15) / 2.0) ** 2)      # one smooth "formant" at band 15
    c = log_mel @ d
    peak = {a: int(np.argmax(c @ vtlp_matrix(a) @ d.T)) for a in (0.85, 1.0, 1.15)}
    assert peak[0.85] < peak[1.0] == 15 < peak[1.15]          # alpha > 1: formants move up (shorter tract)


def test_vtlp_mfcc_is_seeded_per_clip_and_warped_data_keeps_rows():
    from qz.augment import WarpedData, vtlp_mfcc
    from qz.data import ArrayData, apply_input_norm, fit_input_norm
    x = np.random.default_rng(0).standard_normal((8, 10, 13)).astype(np.float32)
    a = vtlp_mfcc(x, np.random.default_rng(1))
    np.testing.assert_array_equal(a, vtlp_mfcc(x, np.random.default_rng(1)))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not np.allclose(a, x, atol=1e-3)
    np.testing.assert_allclose(vtlp_mfcc(x, np.random.default_rng(1), 1.0, 1.0), x, atol=1e-5)
    data = ArrayData(x, np.arange(8))
    norm = fit_input_norm(data, "cmvn")
    # no warp: exactly the scaled rows of ArrayData.batch
    w = WarpedData(data, norm, 1.0, 1.0)
    xb, yb = w.batch(3, 5, seed=2)
    xs, ys = apply_input_norm(data, norm).batch(3, 5, seed=2)
    np.testing.assert_array_equal(yb, ys)
    np.testing.assert_allclose(xb, xs, atol=1e-4)
    xw, _ = WarpedData(data, norm).batch(3, 5, seed=2)
    # step-seeded: resume-exact
    np.testing.assert_array_equal(xw, WarpedData(data, norm).batch(3, 5, seed=2)[0])
    assert not np.allclose(xw, xs, atol=1e-3)


def test_soft_targets_mixup_and_smoothing():
    from qz.augment import soft_targets
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
    from qz.augment import MixedData
    from qz.data import ArrayData
    a = ArrayData(np.zeros((30, 2, 3), np.float32), np.zeros(30, np.int64))
    b = ArrayData(np.ones((20, 2, 3), np.float32), np.ones(20, np.int64))
    m = MixedData(a, b, share=0.3)
    x, y = m.batch(5, 10, seed=4)
    assert x.shape == (10, 2, 3) and int(y.sum()) == 3 and np.all(x[y == 1] == 1)
    x2, y2 = m.batch(5, 10, seed=4)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert len(m) == 30 and m.seq_len == 2
    assert sum(len(yb) for _, yb in m.eval_batches(7)) == 30          # evaluation is the main data only
