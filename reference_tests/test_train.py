"""The training loop (qz/train.py): exact resume, elastic top-k, evaluation, learning."""
from pathlib import Path

import numpy as np
import pytest

import qz
from qz import train as tr
from qz.data import ArrayData, TextData, load_dataset

TEXT = Path(__file__).resolve().parent.parent / "data" / "kjv.txt.gz"


def small_setup(steps=12, **kw):
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=2, n_experts=4, top_k=2, d_ff=24, max_len=8,
                    n_shared_experts=1, vocab_size=256)
    rng = np.random.default_rng(0)
    tokens = rng.integers(97, 110, 4000).astype(np.uint8)
    data = TextData(tokens, seq_len=8)
    tcfg = tr.TrainConfig(steps=steps, batch_size=4, warmup=3, lr=1e-2, top_k_choices=(1, 2), **kw)
    return cfg, tcfg, data


def test_resume_is_bit_exact(tmp_path):
    """2N steps in one go == N steps, checkpoint, load, N more steps."""
    cfg, tcfg, data = small_setup(steps=12, ckpt_every=0)
    full = tr.train(cfg, tcfg, data, params=qz.init_params(cfg, seed=1), progress=False, log=None)
    half = tr.train(cfg, tcfg, data, params=qz.init_params(cfg, seed=1), stop_at=6, progress=False, log=None)
    assert half.step == 6
    path = tmp_path / "half.safetensors"
    tr.save_training(path, cfg, tcfg, half)
    cfg2, tcfg2, state = tr.load_training(path)
    assert cfg2 == cfg and tcfg2 == tcfg and state.step == 6
    resumed = tr.train(cfg2, tcfg2, data, state=state, progress=False, log=None)
    assert resumed.step == 12
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name
        assert np.array_equal(full.opt["m." + name], resumed.opt["m." + name]), name


def test_different_seeds_differ_and_same_seed_repeats():
    cfg, tcfg, data = small_setup(steps=3)
    a = tr.train(cfg, tcfg, data, params=qz.init_params(cfg), progress=False, log=None)
    b = tr.train(cfg, tcfg, data, params=qz.init_params(cfg), progress=False, log=None)
    c = tr.train(cfg, tr.TrainConfig(**{**tcfg.to_dict(), "seed": 5}), data, params=qz.init_params(cfg),
                 progress=False, log=None)
    assert np.array_equal(a.params["blocks.0.wq"], b.params["blocks.0.wq"])
    assert not np.array_equal(a.params["blocks.0.wq"], c.params["blocks.0.wq"])


def test_elastic_top_k_draws_from_the_list():
    cfg, tcfg, _ = small_setup()
    ks = [tr.top_k_for_step(cfg, tcfg, s) for s in range(200)]
    assert set(ks) == {1, 2}
    assert 60 < ks.count(1) < 140
    fixed = tr.TrainConfig(steps=5)
    assert {tr.top_k_for_step(cfg, fixed, s) for s in range(20)} == {cfg.top_k}


def test_elastic_budget_draws_from_the_list_and_trains_under_it(tmp_path):
    cfg, tcfg, data = small_setup(steps=6, budget_choices=(1, 2, 4))
    ms = [tr.budget_for_step(cfg, tcfg, s) for s in range(300)]
    assert set(ms) == {1, 2, None}                                # n_experts (4): no budget
    assert all(60 < ms.count(m) < 140 for m in (1, 2, None))
    assert {tr.budget_for_step(cfg, tr.TrainConfig(steps=5), s) for s in range(20)} == {None}
    full = tr.train(cfg, tcfg, data, params=qz.init_params(cfg, seed=1), progress=False, log=None)
    half = tr.train(cfg, tcfg, data, params=qz.init_params(cfg, seed=1), stop_at=3, progress=False, log=None)
    tr.save_training(tmp_path / "h.safetensors", cfg, tcfg, half)
    cfg2, tcfg2, state = tr.load_training(tmp_path / "h.safetensors")
    assert tcfg2.budget_choices == (1, 2, 4)
    resumed = tr.train(cfg2, tcfg2, data, state=state, progress=False, log=None)
    for name in full.params:                                      # the draws are a function of the step
        assert np.array_equal(full.params[name], resumed.params[name]), name
    plain = tr.train(cfg, tr.TrainConfig(**{**tcfg.to_dict(), "budget_choices": []}), data,
                     params=qz.init_params(cfg, seed=1), progress=False, log=None)
    assert not np.array_equal(plain.params["blocks.0.gate"], full.params["blocks.0.gate"])


def test_array_data_epochs_visit_every_row_once():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1)
    data = ArrayData(x, np.arange(10))
    seen = np.concatenate([data.batch(s, 5, seed=3)[1] for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    seen2 = np.concatenate([data.batch(s, 5, seed=3)[1] for s in range(2, 4)])
    assert sorted(seen2.tolist()) == list(range(10)) and seen2.tolist() != seen.tolist()


def test_evaluate_reports_load_and_entropy():
    cfg, tcfg, data = small_setup()
    params = qz.init_params(cfg)
    res = tr.evaluate(params, cfg, data, batch_size=8, max_batches=3)
    assert res["n"] == 3 * 8 * 8
    load = np.array(res["expert_load"])
    assert load.shape == (2, 4)
    np.testing.assert_allclose(load.sum(1), 1.0)
    assert all(0 <= e <= np.log(4) + 1e-9 for e in res["gate_entropy"])
    assert 0 <= res["accuracy"] <= 1


def test_divergence_is_reported_and_params_kept():
    cfg, tcfg, data = small_setup(steps=4)
    params = qz.init_params(cfg)
    params["head.bias"][:] = np.nan
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(tr.TrainingDiverged, match="step 0"):
        tr.train(cfg, tcfg, data, params=params, progress=False, log=None)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_train_config_validation():
    with pytest.raises(ValueError, match="steps"):
        tr.TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        tr.TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="beta2"):
        tr.TrainConfig(beta2=1.5)
    with pytest.raises(ValueError, match="bogus"):
        tr.TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="time_mask"):
        tr.TrainConfig(time_mask=-1)


def test_mask_widths_reach_the_augmentation():
    """TrainConfig.time_mask / feature_mask set the SpecAugment widths of the training batches:
    with both 0 and a constant input, a step sees only shift and noise; wider masks zero more."""
    x = np.full((64, 10, 5), 3.0, dtype=np.float32)
    data = ArrayData(x, np.arange(64) % 2)
    cfg = qz.Config(d_model=8, n_heads=2, n_layers=1, n_experts=2, top_k=1, d_ff=8, max_len=10,
                    input_dim=5, n_classes=2)
    seen = {}
    for t, f in ((0, 0), (6, 2), (10, 4)):
        tcfg = tr.TrainConfig(steps=1, batch_size=64, augment=True, time_mask=t, feature_mask=f)
        batches = []
        orig = tr.loss_grads_logits
        tr.loss_grads_logits = lambda p, c, xb, *a, **k: (batches.append(xb), orig(p, c, xb, *a, **k))[1]
        try:
            tr.train(cfg, tcfg, data, params=qz.init_params(cfg), progress=False, log=None)
        finally:
            tr.loss_grads_logits = orig
        seen[(t, f)] = float(np.mean(np.abs(batches[0]) < 1.0))   # masked or shifted-in cells
    assert seen[(0, 0)] < seen[(6, 2)] < seen[(10, 4)], seen


def test_char_lm_learns_well_below_unigram_baseline():
    """A short run on the shipped KJV text: held-out loss far under the unigram entropy."""
    train_data, val_data = load_dataset(TEXT, seq_len=32, seed=0)
    counts = np.bincount(train_data.tokens, minlength=256).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    cfg = qz.preset("tiny_lm", d_model=48, max_len=32)
    tcfg = tr.TrainConfig(steps=200, batch_size=32, lr=1e-2, warmup=20, eval_batches=10)
    state = tr.train(cfg, tcfg, train_data, val_data, params=qz.init_params(cfg), progress=False, log=None)
    final = state.history[-1]
    assert final["loss"] < 0.75 * unigram, (final["loss"], unigram)
    assert final["accuracy"] > 0.3


def test_qat_phases_and_exact_resume_through_them(tmp_path):
    """float warm-up -> fake-quant with observers updating -> observers frozen; resume mid-QAT is
    bit-exact."""
    cfg, _, data = small_setup()
    tcfg = tr.TrainConfig(steps=12, batch_size=4, warmup=3, lr=1e-2, top_k_choices=(1, 2), qat_start=4,
                          qat_freeze=8)
    seen = {}

    def run(stop_at=None, state=None):
        return tr.train(cfg, tcfg, data, params=None if state else qz.init_params(cfg, seed=1), state=state,
                        stop_at=stop_at, progress=False, log=None)
    for stop in (4, 6, 8, 10):                          # ranges as each phase leaves them
        seen[stop] = run(stop_at=stop).ranges
    assert seen[4] == {}                                # still float
    assert set(seen[6]) == set(qz.quant.observer_names(cfg)) and seen[6] != seen[8]   # observers moving
    assert seen[8] == seen[10]                          # frozen from step 8 on
    full = run()
    half = run(stop_at=6)
    path = tmp_path / "qat.safetensors"
    tr.save_training(path, cfg, tcfg, half)
    cfg2, tcfg2, state = tr.load_training(path)
    assert state.ranges == half.ranges
    resumed = run(state=state)
    assert resumed.ranges == full.ranges
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name


def test_qat_config_validation():
    with pytest.raises(ValueError, match="qat_freeze"):
        tr.TrainConfig(qat_start=-1, qat_freeze=5)
    with pytest.raises(ValueError, match="qat_freeze"):
        tr.TrainConfig(qat_start=10, qat_freeze=5)


def test_early_stopping_restores_the_best_weights_with_their_ranges():
    """With QAT, the best evaluation's observer ranges come back with its weights: the ranges
    they were scored with, not the ones the observers drifted to after."""
    cfg, tcfg, data = small_setup(steps=16, qat_start=0, eval_every=2, eval_batches=2, patience=100)
    state = tr.train(cfg, tcfg, data, data, params=qz.init_params(cfg, seed=2), progress=False, log=None)
    best = state.best
    assert best is not None and best["step"] < 16, best["step"]   # this seed peaks early
    assert state.ranges == best["ranges"]
    for name, p in best["params"].items():
        assert np.array_equal(state.params[name], p)
    res = tr.evaluate(state.params, cfg, data, batch_size=32, max_batches=2, quant=tr.quant_of(state))
    assert res["accuracy"] == best["accuracy"]


def test_elastic_runs_are_chosen_on_every_k_they_train_with():
    """With top_k_choices (1, 2) each evaluation scores both k, and the kept checkpoint is the
    one with the best mean over them (the governor serves it at either)."""
    cfg, tcfg, data = small_setup(steps=16, eval_every=2, eval_batches=2, patience=100)
    state = tr.train(cfg, tcfg, data, data, params=qz.init_params(cfg, seed=2), progress=False, log=None)
    for h in state.history:
        assert h["score"] == pytest.approx((h["accuracy_top1"] + h["accuracy_top2"]) / 2)
        assert h["accuracy_top2"] == h["accuracy"]        # the config top_k
    best = max(state.history, key=lambda h: h["score"])   # first of equals, as the loop keeps it
    assert state.best["step"] == best["step"] and state.best["score"] == best["score"]
    for k in (1, 2):
        res = tr.evaluate(state.params, cfg, data, batch_size=32, max_batches=2, top_k=k)
        assert res["accuracy"] == best[f"accuracy_top{k}"]


def test_weight_average_follows_its_recursion_resumes_exactly_and_is_kept(tmp_path):
    """ema: avg_1 = w_1, avg_t = d avg_{t-1} + (1 - d) w_t after each step; a finished run keeps the
    average; the average rides in the checkpoint, so N + resume + N equals 2N steps bit for bit."""
    d = 0.7
    cfg, tcfg, data = small_setup(steps=6, ema=d)
    weights, state = [], tr.TrainState(qz.init_params(cfg, seed=1), None)
    state.opt = tr.adamw_init(state.params)
    # the raw weights after steps 1..5 (not finished: not averaged)
    for stop in range(1, 6):
        state = tr.train(cfg, tcfg, data, state=state, stop_at=stop, progress=False, log=None)
        weights.append({n: p.astype(np.float64) for n, p in state.params.items()})
    avg = weights[0]
    for w in weights[1:]:
        avg = {n: d * avg[n] + (1 - d) * w[n] for n in avg}
    for name in avg:
        np.testing.assert_allclose(state.opt["ema." + name], avg[name], rtol=1e-5, atol=1e-6, err_msg=name)
    path = tmp_path / "mid.safetensors"
    tr.save_training(path, cfg, tcfg, state)
    _, _, resumed = tr.load_training(path)
    resumed = tr.train(cfg, tcfg, data, state=resumed, progress=False, log=None)
    full = tr.train(cfg, tcfg, data, params=qz.init_params(cfg, seed=1), progress=False, log=None)
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name
        # finished: the average is kept
        assert np.array_equal(full.params[name], full.opt["ema." + name]), name
    assert not np.array_equal(full.params["blocks.0.wq"], weights[-1]["blocks.0.wq"].astype(np.float32))
    off = tr.TrainConfig.from_dict({**tcfg.to_dict(), "ema": 0.0})
    with pytest.raises(qz.checkpoint.CheckpointError, match="weight average but ema is off"):
        tr.save_training(path, cfg, off, state) or tr.load_training(path)
    with pytest.raises(ValueError, match="ema"):
        tr.TrainConfig(ema=1.0)


def test_resume_with_early_stopping_keeps_the_best_evaluation(tmp_path):
    """With patience, the run's end restores its best evaluation's weights; a checkpoint taken before
    the end carries that evaluation, so N + resume + N steps still equals 2N bit for bit."""
    cfg, _, data = small_setup()
    tcfg = tr.TrainConfig(steps=12, batch_size=4, warmup=3, lr=3e-2, top_k_choices=(1, 2), eval_every=2,
                          eval_batches=2, patience=100)
    val = TextData(np.random.default_rng(1).integers(97, 110, 400).astype(np.uint8), seq_len=8)

    def run(stop_at=None, state=None):
        return tr.train(cfg, tcfg, data, val, params=None if state else qz.init_params(cfg, seed=1),
                        state=state, stop_at=stop_at, progress=False, log=None)
    full, half = run(), run(stop_at=6)
    path = tmp_path / "half.safetensors"
    tr.save_training(path, cfg, tcfg, half)
    _, _, state = tr.load_training(path)
    assert state.best["step"] == half.best["step"] and state.best["score"] == half.best["score"]
    for name, value in half.best["params"].items():
        assert np.array_equal(state.best["params"][name], value), name
    resumed = run(state=state)
    assert resumed.best["step"] == full.best["step"]
    for name in full.params:
        assert np.array_equal(full.params[name], resumed.params[name]), name
    assert set(tr.load_training(path)[2].opt) == set(half.opt)      # best.* is not mistaken for a moment
