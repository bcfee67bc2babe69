"""Test-time warps (qz/tta.py): the averaged softmax, its identity case, and its errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qz
from qz import ops
from qz.data import ArrayData, apply_input_norm
from qz.finetune import FinetuneOptions, finetune
from qz.model import forward
from qz.tta import parse_warps, warp_accuracy, warp_probs

C = 13


def _make_model():
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=16, max_len=8,
                    input_dim=C, n_classes=5)
    rng = np.random.default_rng(3)
    norm = {"mean": rng.standard_normal(C).tolist(), "std": (1.0 + rng.random(C)).tolist(),
            "utterance": "cmvn"}
    return qz.init_params(cfg, seed=2), cfg, norm


_MODEL = _make_model()      # module level: hypothesis tests cannot take function-scoped fixtures


@pytest.fixture
def model():
    return _MODEL


def clips(seed, n=12):
    return np.random.default_rng(seed).standard_normal((n, 8, C)).astype(np.float32) * 3.0


def test_no_warp_is_the_models_own_softmax(model):
    params, cfg, norm = model
    x = clips(0)
    logits, _ = forward(params, cfg, apply_input_norm(ArrayData(x, np.zeros(len(x), int)), norm).x)
    expected = ops.softmax.ref(logits.astype(np.float64))
    np.testing.assert_allclose(warp_probs(params, cfg, x, norm, warps=(1.0,)), expected, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.8, 1.2), min_size=1, max_size=4), st.integers(0, 1000))
def test_warped_probabilities_are_a_distribution_and_the_order_of_warps_is_free(warps, seed):
    params, cfg, norm = _MODEL
    x = clips(seed, n=5)
    p = warp_probs(params, cfg, x, norm, warps=warps)
    assert p.shape == (5, cfg.n_classes) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(warp_probs(params, cfg, x, norm, warps=warps[::-1]), p, atol=1e-12)
    # the mean of the single-warp softmaxes, computed one warp at a time
    each = np.mean([warp_probs(params, cfg, x, norm, warps=(w,)) for w in warps], axis=0)
    np.testing.assert_allclose(p, each, atol=1e-12)


def test_a_warp_changes_the_input_and_batches_do_not_matter(model):
    params, cfg, norm = model
    x = clips(1)
    p1, p9 = warp_probs(params, cfg, x, norm, warps=(1.0,)), warp_probs(params, cfg, x, norm, warps=(0.9,))
    assert np.abs(p1 - p9).max() > 1e-4
    np.testing.assert_allclose(warp_probs(params, cfg, x, norm, batch_size=5),
                               warp_probs(params, cfg, x, norm), atol=1e-6)


def test_warp_accuracy_is_the_argmax_of_warp_probs(model):
    params, cfg, norm = model
    x = clips(2, n=40)
    y = np.random.default_rng(0).integers(0, cfg.n_classes, 40)
    p = warp_probs(params, cfg, x, norm)
    assert warp_accuracy(params, cfg, ArrayData(x, y), norm) == pytest.approx(np.mean(p.argmax(1) == y))


@pytest.mark.parametrize("text", ["", "a,b", "0.9,,2.0", "0.3", "1,1.6", "nan",
                                  [float("inf")], 0.9, [None], ()])
def test_parse_warps_rejects_bad_lists(text):
    with pytest.raises(ValueError):
        parse_warps(text)


def test_parse_warps_and_bad_inputs(model):
    params, cfg, norm = model
    assert parse_warps("0.9, 1,1.1") == parse_warps([0.9, 1, "1.1"]) == (0.9, 1.0, 1.1)
    with pytest.raises(ValueError, match="raw features"):
        warp_probs(params, cfg, np.zeros((3, C)), norm)
    lm = qz.Config(d_model=16, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=16, max_len=8, vocab_size=11)
    with pytest.raises(ValueError, match="classifier"):
        warp_probs(qz.init_params(lm), lm, clips(0), None)


def test_finetune_reports_warped_accuracy(tmp_path):
    from qz.optim import adamw_init
    from qz.train import TrainConfig, TrainState, save_training
    params, cfg, norm = _MODEL
    path = tmp_path / "base.safetensors"
    save_training(path, cfg, TrainConfig(steps=1),
                  TrainState(params, adamw_init(params), extra={"input_norm": norm}))
    y = np.arange(90) % 3
    x = clips(5, n=90)
    x[np.arange(90), :, y] += 4.0
    data = ArrayData(x, y, labels=["a", "b", "c"])
    test = ArrayData(x[:30].copy(), y[:30])
    opts = dict(steps=40, eval_every=20, patience=0, lr=1e-2, batch_size=16)
    one = finetune(path, data, FinetuneOptions(warps=(1.0,), **opts), test=test, log=None, progress=False)
    # warps (1.0,) is the plain model at its top_k: the same accuracies
    assert one["val_accuracy_warps"]["mean"] == pytest.approx(one["val_accuracy_top2"]["mean"])
    assert one["test_accuracy_warps"]["mean"] == pytest.approx(one["test_accuracy_top2"]["mean"])
    three = finetune(path, data, FinetuneOptions(warps=(0.9, 1.0, 1.1), **opts), log=None, progress=False)
    assert 0.0 <= three["val_accuracy_warps"]["mean"] <= 1.0 and "test_accuracy_warps" not in three
    off = finetune(path, data, FinetuneOptions(**opts), log=None, progress=False)
    assert not any("warps" in k for k in off)
    with pytest.raises(ValueError):
        FinetuneOptions(warps=(2.0,))

