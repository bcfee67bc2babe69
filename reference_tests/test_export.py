"""fp32 / fp16 / int8 exports and their strict loader (qz/export.py, docs/spec.md §3.3, §6)."""
import json
import os

import numpy as np
import pytest

import qz
from qz import checkpoint, export, model, runtime
from qz.checkpoint import CheckpointError, read_safetensors, write_safetensors


def setup(S=1, mode="classifier"):
    common = dict(d_model=16, n_heads=2, n_layers=2, n_experts=4, top_k=2, d_ff=8, max_len=6,
                  n_shared_experts=S)
    cfg = (qz.Config(input_dim=5, n_classes=3, **common) if mode == "classifier"
           else qz.Config(vocab_size=11, **common))
    params = qz.init_params(cfg, seed=4)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 6, 5)).astype(np.float32) if mode == "classifier"
         else rng.integers(0, 11, (3, 6)))
    return cfg, params, x, model.observe_ranges(params, cfg, x)


@pytest.mark.parametrize("mode", ["classifier", "lm"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_round_trip_gives_the_same_logits(tmp_path, mode, precision):
    cfg, params, x, ranges = setup(mode=mode)
    path = tmp_path / f"m.{precision}.safetensors"
    export.save_export(path, params, cfg, precision, ranges, labels=["a", "b", "c"])
    loaded = runtime.load_model(path)
    assert loaded.precision == precision and loaded.cfg == cfg and loaded.meta["labels"] == ["a", "b", "c"]
    direct = runtime.prepare(params, cfg, precision, ranges)
    for k in (1, 2):
        np.testing.assert_array_equal(runtime.infer(loaded, x, top_k=k), runtime.infer(direct, x, top_k=k))
    if precision == "int8":
        want, _ = qz.forward(params, cfg, x, quant={"ranges": ranges})
        np.testing.assert_array_equal(runtime.infer(loaded, x), want)


def test_every_quantized_weight_is_int8_with_scales_and_the_rest_float(tmp_path):
    """No expert left unquantized (pytorch/ao #4408): every routed and shared expert, the head,
    in_proj and attention are int8; only norms, biases and gates are float32."""
    cfg, params, x, ranges = setup(S=1)
    path = tmp_path / "m.safetensors"
    export.save_export(path, params, cfg, "int8", ranges)
    tensors, meta = read_safetensors(path)
    for name, p in params.items():
        leaf = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        if leaf in ("attn_norm", "ffn_norm", "gate", "final_norm", "in_proj.bias", "head.bias"):
            assert tensors[name].dtype == np.float32, name
        else:
            assert tensors[name].dtype == np.int8 and tensors[name].shape == p.shape, name
            assert tensors[name + ".scale"].dtype == np.float32, name
    aq = json.loads(meta["act_qparams"])
    assert set(aq) == set(qz.quant.observer_names(cfg))


def test_sizes_against_fp32_on_the_command_preset(tmp_path):
    cfg = qz.preset("kws")
    params = qz.init_params(cfg)
    x = np.random.default_rng(0).standard_normal((2, cfg.max_len, cfg.input_dim)).astype(np.float32)
    ranges = model.observe_ranges(params, cfg, x)
    size = {}
    for precision in export.PRECISIONS:
        path = tmp_path / f"m.{precision}.safetensors"
        export.save_export(path, params, cfg, precision, ranges)
        size[precision] = os.path.getsize(path)
    assert size["int8"] <= 0.27 * size["fp32"], size
    assert size["fp16"] <= 0.52 * size["fp32"], size


def _rewrite(path, out, drop=None, change=None, meta_change=None):
    tensors, meta = read_safetensors(path)
    if drop:
        del tensors[drop]
    if change:
        name, arr = change
        tensors[name] = arr
    meta.update(meta_change or {})
    write_safetensors(out, tensors, meta)
    return out


@pytest.mark.parametrize("case,match", [
    (dict(drop="blocks.0.w1.scale"), "scale 'blocks.0.w1.scale' is missing"),
    (dict(drop="head.weight"), "'head.weight' is missing"),
    (dict(change=("blocks.1.w2", np.zeros((4, 8, 16), np.float32))), "dtype float32"),
    (dict(change=("blocks.1.w2.scale", np.ones((4, 16), np.float64))), "dtype float64"),
    (dict(change=("blocks.0.wq.scale", np.ones(15, np.float32))), "shape"),
    (dict(change=("blocks.0.wq.scale", np.full(16, -1.0, np.float32))), "finite and positive"),
    (dict(change=("extra", np.ones(2, np.float32))), "does not belong"),
    (dict(meta_change={"precision": '"int4"'}), "precision"),
    (dict(meta_change={"act_qparams": '{"in": [0.1, 3]}'}), "act_qparams"),
    (dict(meta_change={"act_qparams": None}), "act_qparams"),
    (dict(meta_change={"format": "qz"}), "training checkpoint"),
])
def test_broken_exports_are_rejected_naming_file_and_check(tmp_path, case, match):
    cfg, params, x, ranges = setup()
    good = tmp_path / "good.safetensors"
    export.save_export(good, params, cfg, "int8", ranges)
    if case.get("meta_change") and None in case["meta_change"].values():
        tensors, meta = read_safetensors(good)
        del meta["act_qparams"]
        write_safetensors(tmp_path / "bad.safetensors", tensors, meta)
        bad = tmp_path / "bad.safetensors"
    else:
        bad = _rewrite(good, tmp_path / "bad.safetensors", **case)
    with pytest.raises(CheckpointError, match=match) as info:
        export.load_export(bad)
    assert "bad.safetensors" in str(info.value)


def test_bad_zero_point_and_int8_minus_128(tmp_path):
    cfg, params, x, ranges = setup()
    good = tmp_path / "good.safetensors"
    export.save_export(good, params, cfg, "int8", ranges)
    aq = json.loads(read_safetensors(good)[1]["act_qparams"])
    aq["head_in"][1] = 3.5
    bad = _rewrite(good, tmp_path / "zp.safetensors", meta_change={"act_qparams": json.dumps(aq)})
    with pytest.raises(CheckpointError, match="zero point"):
        export.load_export(bad)
    w = read_safetensors(good)[0]["blocks.0.wo"].copy()
    w[0, 0] = -128
    bad = _rewrite(good, tmp_path / "m128.safetensors", change=("blocks.0.wo", w))
    with pytest.raises(CheckpointError, match="-128"):
        export.load_export(bad)


def test_int8_export_needs_ranges_and_a_known_precision():
    cfg, params, x, ranges = setup()
    with pytest.raises(ValueError, match="ranges"):
        export.export_tensors(params, cfg, "int8")
    with pytest.raises(ValueError, match="precision"):
        export.export_tensors(params, cfg, "int4", ranges)
    del ranges["head_in"]
    with pytest.raises(ValueError, match="head_in"):
        export.export_tensors(params, cfg, "int8", ranges)


def test_training_checkpoint_loads_as_fp32(tmp_path):
    cfg, params, x, _ = setup()
    path = tmp_path / "ckpt.safetensors"
    checkpoint.save(path, params, cfg, labels=["x", "y", "z"])
    m = runtime.load_model(path)
    assert m.precision == "fp32" and m.meta["labels"] == ["x", "y", "z"]
    want, _ = qz.forward(params, cfg, x)
    np.testing.assert_array_equal(runtime.infer(m, x), want)
