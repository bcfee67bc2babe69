"""The frozen, validated Config (qz/config.py, docs/spec.md §2.1)."""
import dataclasses

import pytest

import qz
from qz.config import PRESETS, active_params, n_params, param_shapes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip(name):
    cfg = qz.preset(name)
    assert qz.Config.from_dict(cfg.to_dict()) == cfg


def test_frozen():
    cfg = qz.preset("kws")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3


@pytest.mark.parametrize("change,key", [
    (dict(d_model=65), "n_heads"),
    (dict(top_k=9), "top_k"),
    (dict(top_k=0), "top_k"),
    (dict(n_layers=-1), "n_layers"),
    (dict(d_ff=2.5), "d_ff"),
    (dict(n_experts=True), "n_experts"),
    (dict(n_shared_experts=-1), "n_shared_experts"),
    (dict(vocab_size=100), "vocab_size"),          # both modes set
    (dict(n_classes=None), "n_classes"),
    (dict(causal="yes"), "causal"),
    (dict(max_len=0), "max_len"),
])
def test_bad_values_name_the_key(change, key):
    d = {**PRESETS["kws"], **change}
    with pytest.raises(ValueError, match=key):
        qz.Config.from_dict(d)


def test_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="d_modle"):
        qz.Config.from_dict({**PRESETS["kws"], "d_modle": 3})
    d = dict(PRESETS["kws"])
    del d["d_ff"]
    with pytest.raises(ValueError, match="d_ff"):
        qz.Config.from_dict(d)
    with pytest.raises(ValueError, match="vocab_size"):
        qz.Config.from_dict({k: v for k, v in PRESETS["kws"].items() if k not in ("input_dim", "n_classes")})


def test_causal_defaults_by_mode():
    assert qz.preset("tiny_lm").causal is True
    assert qz.preset("kws").causal is False
    assert qz.preset("kws", causal=True).causal is True


def test_param_shapes_follow_spec_names():
    cfg = qz.preset("char_lm")
    shapes = param_shapes(cfg)
    assert shapes["embed"] == (256, 256) and shapes["pos"] == (128, 256)
    assert shapes["blocks.3.w1"] == (8, 256, 512) and shapes["blocks.3.w2"] == (8, 512, 256)
    assert shapes["blocks.0.shared.w3"] == (1, 256, 512)
    assert shapes["head.weight"] == (256, 256) and "in_proj.weight" not in shapes
    kws = param_shapes(qz.preset("kws"))
    assert kws["in_proj.weight"] == (13, 64) and "blocks.0.shared.w1" not in kws and "embed" not in kws


def test_active_params_counts_k_experts():
    cfg = qz.preset("kws")
    per_expert = 3 * cfg.d_model * cfg.d_ff
    assert active_params(cfg, 2) - active_params(cfg, 1) == cfg.n_layers * per_expert
    assert active_params(cfg, cfg.n_experts) < n_params(cfg)   # pos rows beyond one are not active
