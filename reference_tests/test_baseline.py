"""The logistic-regression baseline (qz/baseline.py)."""
import numpy as np

from qz.baseline import fit_logreg, pool, predict_logreg


def test_pool_is_mean_and_std_over_time():
    x = np.random.default_rng(0).standard_normal((3, 7, 2))
    np.testing.assert_allclose(pool(x), np.concatenate([x.mean(1), x.std(1)], 1))


def test_learns_a_separable_problem_and_not_noise():
    rng = np.random.default_rng(1)
    y = np.arange(300) % 3
    x = rng.standard_normal((300, 5, 4))
    x[:, :, 0] += 2.0 * y[:, None]                  # class in the mean of feature 0
    m = fit_logreg(x[:200], y[:200], 3)
    assert np.mean(predict_logreg(m, x[200:]) == y[200:]) > 0.9
    noise = rng.standard_normal((300, 5, 4))
    m2 = fit_logreg(noise[:200], y[:200], 3)
    assert np.mean(predict_logreg(m2, noise[200:]) == y[200:]) < 0.6
