"""Fine-tuning (qz/finetune.py): split, new head, plans, early stopping, report."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qz
from qz.data import ArrayData
from qz.finetune import FinetuneOptions, finetune, new_head, stratified_split
from qz.train import TrainConfig, TrainState, save_training
from qz.optim import adamw_init


@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.floats(0.1, 0.5), st.integers(0, 99))
def test_stratified_split(labels, frac, seed):
    y = np.array(labels)
    tr, va = stratified_split(y, frac, seed)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    for c in np.unique(y):
        n = np.sum(y == c)
        if n >= 2:   # every class with 2+ samples appears on both sides
            assert np.sum(y[tr] == c) >= 1 and np.sum(y[va] == c) >= 1
    tr2, va2 = stratified_split(y, frac, seed)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


def test_new_head_keeps_the_body():
    cfg = qz.preset("kws")
    params = qz.init_params(cfg)
    p2, cfg2 = new_head(params, cfg, 5, seed=0)
    assert cfg2.n_classes == 5 and p2["head.weight"].shape == (64, 5) and p2["head.bias"].shape == (5,)
    for n in params:
        if not n.startswith("head."):
            assert np.array_equal(params[n], p2[n]) and p2[n] is not params[n], n


def make_task(rng, n=240, T=6, F=4, C=3):
    y = np.arange(n) % C
    x = rng.standard_normal((n, T, F)).astype(np.float32) * 0.5
    x[np.arange(n), :, y % F] += 1.5          # each class lights up its own feature
    return ArrayData(x, y, labels=[f"c{i}" for i in range(C)])


@pytest.fixture
def base(tmp_path):
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=16, max_len=6,
                    input_dim=4, n_classes=7)
    params = qz.init_params(cfg, seed=1)
    path = tmp_path / "base.safetensors"
    save_training(path, cfg, TrainConfig(steps=1), TrainState(params, adamw_init(params),
                  extra={"input_norm": {"mean": [0.0] * 4, "std": [1.0] * 4}}))
    return path, params


@pytest.mark.parametrize("plan", ["head", "light", "all"])
def test_plans_train_only_what_they_say(base, tmp_path, plan):
    path, params0 = base
    data = make_task(np.random.default_rng(0))
    out = tmp_path / f"{plan}.safetensors"
    report = finetune(path, data, FinetuneOptions(plan=plan, steps=60, eval_every=20, patience=0, lr=1e-2),
                      out_path=out, log=None, progress=False)
    params, cfg, meta = qz.load(out)
    assert cfg.n_classes == 3 and meta["labels"] == ["c0", "c1", "c2"]
    changed = {n for n in params0 if not n.startswith("head.") and not np.array_equal(params0[n], params[n])}
    if plan == "head":
        assert changed == set()
    elif plan == "light":
        assert changed and all(n.endswith(("norm", "gate")) or n.startswith("in_proj.")
                               for n in changed), changed
    else:
        assert "blocks.0.w1" in changed and "blocks.0.wq" in changed
    assert report["val_accuracy_top2"]["mean"] > 0.8, report


def test_seeds_report_spread_and_test_is_only_evaluated(base, tmp_path):
    path, _ = base
    rng = np.random.default_rng(1)
    data, test = make_task(rng), make_task(rng, n=60)
    opts = FinetuneOptions(steps=40, eval_every=10, patience=3, seeds=3, lr=1e-2)
    rep = finetune(path, data, opts, test=test, out_path=tmp_path / "ft.safetensors", log=None,
                   progress=False)
    assert [r["seed"] for r in rep["runs"]] == [0, 1, 2]
    assert set(rep["test_accuracy_top2"]) == {"mean", "std"}
    best_val = max(r["val_accuracy_top2"] for r in rep["runs"])
    chosen = next(r for r in rep["runs"] if r["seed"] == rep["chosen_seed"])
    assert chosen["val_accuracy_top2"] == best_val               # chosen by validation, not by test
    cm = np.array(rep["confusion"])
    assert cm.shape == (3, 3) and cm.sum() == len(test) and rep["confusion_on"] == "test"


def test_early_stopping_keeps_the_best_weights(base, tmp_path):
    path, _ = base
    data = make_task(np.random.default_rng(2))
    rep = finetune(path, data, FinetuneOptions(steps=400, eval_every=5, patience=2, lr=3e-2), log=None,
                   progress=False, out_path=tmp_path / "es.safetensors")
    run = rep["runs"][0]
    assert run["steps_run"] < 400            # stopped early
    params, cfg, meta = qz.load(tmp_path / "es.safetensors")
    best = max(h["accuracy"] for h in meta["history"])
    from qz.data import apply_input_norm
    from qz.train import evaluate
    va = apply_input_norm(data, meta["input_norm"])
    from qz.finetune import stratified_split as split
    _, va_idx = split(data.y, 0.2, 0)
    assert evaluate(params, cfg, va.subset(va_idx), batch_size=512)["accuracy"] == pytest.approx(best)


def test_bad_inputs(base):
    path, _ = base
    with pytest.raises(ValueError, match="plan"):
        FinetuneOptions(plan="most")
    wrong = ArrayData(np.zeros((10, 6, 5), np.float32), np.arange(10) % 2)
    with pytest.raises(ValueError, match="features"):
        finetune(path, wrong, FinetuneOptions(steps=2), log=None, progress=False)


def test_qat_finetune_scores_the_int8_model_and_ships_its_export(base, tmp_path):
    """QAT while fine-tuning: reported accuracies are the int8 model's, and the int8 export
    written beside the checkpoint gives exactly the fake-quant logits of the saved state."""
    from qz import runtime
    from qz.data import apply_input_norm
    from qz.train import load_training, quant_of
    path, _ = base
    rng = np.random.default_rng(3)
    data, test = make_task(rng), make_task(rng, n=40)
    out = tmp_path / "q.safetensors"
    rep = finetune(path, data, FinetuneOptions(steps=60, eval_every=10, patience=0, lr=1e-2, qat_start=20,
                                               qat_freeze=50),
                   test=test, out_path=out, log=None, progress=False)
    assert rep["precision"] == "int8 (QAT)" and rep["test_accuracy_top2"]["mean"] > 0.8
    assert "test_accuracy_fp32_top2" in rep["runs"][0]
    cfg, _, state = load_training(out)
    m = runtime.load_model(rep["int8_export"])
    x = apply_input_norm(test, state.extra["input_norm"]).x.astype(np.float32)
    want, _ = qz.forward(state.params, cfg, x, quant=quant_of(state))
    np.testing.assert_array_equal(runtime.infer(m, x), want)
    assert m.meta["labels"] == ["c0", "c1", "c2"]
    # the confusion and expert load are the int8 model's too, as "precision" says
    norm_test = apply_input_norm(test, state.extra["input_norm"])
    pred = np.argmax(runtime.infer(m, x), axis=1)
    want_cm = np.zeros((3, 3), np.int64)
    np.add.at(want_cm, (norm_test.y, pred), 1)
    assert rep["confusion"] == want_cm.tolist()
    from qz.train import evaluate
    assert rep["expert_load"] == evaluate(state.params, cfg, norm_test, 256,
                                          quant=quant_of(state))["expert_load"]
    with pytest.raises(ValueError, match="qat_freeze"):
        FinetuneOptions(qat_start=30, qat_freeze=10)


def test_interrupted_finetune_saves_the_best_so_far_and_skips_later_seeds(base, tmp_path):
    path, _ = base
    data = make_task(np.random.default_rng(4))
    calls = {"n": 0}

    def stop():                       # a Ctrl-C arriving during step 30 of the first seed
        calls["n"] += 1
        return calls["n"] >= 30
    out = tmp_path / "int.safetensors"
    rep = finetune(path, data, FinetuneOptions(steps=400, eval_every=10, patience=50, seeds=3, lr=1e-2),
                   out_path=out, log=None, progress=False, should_stop=stop)
    assert rep["interrupted"] and len(rep["runs"]) == 1 and rep["runs"][0]["steps_run"] == 30
    params, cfg, meta = qz.load(out)
    assert meta["step"] == 30 and max(h["accuracy"] for h in meta["history"]) == pytest.approx(
        rep["runs"][0]["val_accuracy_top2"])


def test_vtlp_and_soft_targets_change_training_but_still_learn(base, tmp_path):
    path, _ = base
    data = make_task(np.random.default_rng(2))
    runs = {}
    for name, kw in {"plain": {}, "vtlp": {"vtlp": 0.2},
                     "soft": {"mixup": 0.4, "label_smoothing": 0.1}}.items():
        out = tmp_path / f"{name}.safetensors"
        rep = finetune(path, data, FinetuneOptions(steps=60, eval_every=20, patience=0, lr=1e-2, **kw),
                       out_path=out, log=None, progress=False)
        assert rep["val_accuracy_top2"]["mean"] > 0.8, (name, rep)
        runs[name] = qz.load(out)[0]["head.weight"]
    assert not np.array_equal(runs["plain"], runs["vtlp"]) and not np.array_equal(runs["plain"], runs["soft"])
    with pytest.raises(ValueError, match="vtlp"):
        FinetuneOptions(vtlp=0.6)


def test_base_head_is_kept_reordered_when_the_labels_match(tmp_path):
    """Same label set as the base (in another order): the base head's columns follow their names."""
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=1, n_experts=4, top_k=2, d_ff=16, max_len=6,
                    input_dim=4, n_classes=3)
    params = qz.init_params(cfg, seed=1)
    params["head.bias"][:] = [1.0, 2.0, 3.0]
    path = tmp_path / "base.safetensors"
    save_training(path, cfg, TrainConfig(steps=1), TrainState(params, adamw_init(params), extra={
        "input_norm": {"mean": [0.0] * 4, "std": [1.0] * 4}, "labels": ["a", "b", "c"]}))
    data = make_task(np.random.default_rng(0))
    data.labels = ["c", "a", "b"]
    out = tmp_path / "kept.safetensors"
    rep = finetune(path, data, FinetuneOptions(plan="head", steps=1, lr=1e-12, eval_every=1, patience=0,
                                               warmup=0),
                   out_path=out, log=None, progress=False)
    got, _, meta = qz.load(out)
    assert rep["head"] == "base" and meta["labels"] == ["c", "a", "b"]
    np.testing.assert_allclose(got["head.bias"], [3.0, 1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(got["head.weight"], params["head.weight"][:, [2, 0, 1]], atol=1e-6)
    rep = finetune(path, data, FinetuneOptions(plan="head", steps=1, eval_every=1, patience=0,
                                               keep_head=False),
                   log=None, progress=False)
    assert rep["head"] == "new"


def test_mix_rehearses_its_share_of_every_batch(base, tmp_path, monkeypatch):
    """--mix: each training batch holds round(share * B) rows of the mix data, relabelled by name."""
    import qz.finetune as ft
    path, _ = base
    rng = np.random.default_rng(3)
    data = make_task(rng)
    mix = ArrayData(np.full((50, 6, 4), 7.0, np.float32), np.zeros(50, np.int64), labels=["c2"])
    seen = []
    real_train = ft.train

    def spy(cfg, tcfg, tr, va, **kw):
        x, y = tr.batch(0, tcfg.batch_size, tcfg.seed)
        seen.append((x, y))
        return real_train(cfg, tcfg, tr, va, **kw)
    monkeypatch.setattr(ft, "train", spy)
    rep = finetune(path, data, FinetuneOptions(steps=4, batch_size=16, eval_every=2, patience=0,
                                               mix_share=0.25, augment=False),
                   mix=mix, log=None, progress=False)
    x, y = seen[0]
    from_mix = np.all(x == 7.0, axis=(1, 2))
    assert from_mix.sum() == 4 and np.all(y[from_mix] == 2), (from_mix, y)
    assert rep["mix"]["n"] == 50
    with pytest.raises(ValueError, match="not among the task's labels"):
        finetune(path, data, FinetuneOptions(steps=2), mix=ArrayData(mix.x, mix.y, labels=["zz"]), log=None,
                 progress=False)
