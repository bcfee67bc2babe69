"""The ONNX export (qz/onnx.py) through ONNX Runtime against qz's own runtime.

Skipped where the onnx extra (onnx, onnxruntime) is not installed."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qz import model, quant, runtime
from qz.config import Config
from strategies import seeds

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from qz import onnx as qz_onnx  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"


@st.composite
def onnx_case(draw):
    lm = draw(st.booleans())
    H = draw(st.integers(1, 2))
    E = draw(st.integers(1, 5))
    kw = dict(d_model=8 * H, n_heads=H, n_layers=draw(st.integers(1, 2)), n_experts=E,
              top_k=draw(st.integers(1, E)), d_ff=draw(st.integers(1, 12)), max_len=9,
              n_shared_experts=draw(st.integers(0, 1)))
    if lm:
        kw.update(vocab_size=draw(st.integers(2, 40)))
    else:
        kw.update(input_dim=draw(st.integers(1, 5)), n_classes=draw(st.integers(2, 6)))
    B, T, k = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, E))
    return Config(**kw), B, T, k, draw(st.integers(1, E)), draw(seeds)


def _inputs(cfg, B, T, rng):
    if cfg.mode == "lm":
        return rng.integers(0, cfg.vocab_size, (B, T))
    return rng.standard_normal((B, T, cfg.input_dim)).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(onnx_case())
def test_fp32_export_equals_the_runtime(case):
    """LM and classifier, shared experts 0/1, top_k 1..E, expert budget 1..E (docs/spec.md §4), batch
    and length from 1: with more experts than tokens some experts get no token and compute on zero rows."""
    cfg, B, T, k, budget, seed = case
    rng = np.random.default_rng(seed)
    m = runtime.prepare(model.init_params(cfg, seed=seed % 1000), cfg, "fp32")
    x = _inputs(cfg, B, T, rng)
    sess = qz_onnx.session(qz_onnx.to_onnx(m))
    for b in (None, budget):
        want = runtime.infer(m, x, top_k=k, expert_budget=b)
        got = qz_onnx.run(sess, x, k, b)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-3)


@settings(max_examples=15, deadline=None)
@given(onnx_case())
def test_int8_export_agrees_with_the_integer_runtime(case):
    cfg, B, T, k, budget, seed = case
    rng = np.random.default_rng(seed)
    p = model.init_params(cfg, seed=seed % 1000)
    x = _inputs(cfg, B, T, rng)
    m = runtime.prepare(p, cfg, "int8", model.observe_ranges(p, cfg, x), lean=False)
    want = runtime.infer(m, x, top_k=k, expert_budget=budget)
    got = qz_onnx.run(qz_onnx.session(qz_onnx.to_onnx(m)), x, k, budget)
    # integer layers agree bit for bit (below); the float parts are computed by another library, and a
    # value on a rounding edge of its uint8 code can move one step: the logits agree to a few codes
    assert np.abs(got - want).max() <= 0.05 * max(np.abs(want).max(), 1e-3)


@given(seeds, st.integers(1, 7), st.integers(1, 70), st.integers(1, 20))
def test_an_int8_layer_of_the_graph_is_qz_s_bit_for_bit(seed, n, k, c):
    """The ONNX integer layer (codes, MatMulInteger, rescale, bias) on the same input equals
    quant.int8_linear, including inputs past the clipped range and halfway ties."""
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, k))).astype(np.float32)
    w = rng.standard_normal((k, c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    scale, zp = quant.act_qparams(0.8 * float(x.min()), 0.8 * float(x.max()))
    x[0, 0] = np.float32((np.float32(1.5) - zp) * np.float32(scale))   # near a tie after / scale + zp
    packed = quant.pack_linear(w)

    class Layer:                                                  # the smallest model the builder reads
        w = {"lin": packed, "b": b}
        act = {"in": (scale, zp)}

    g = qz_onnx._Graph()
    y = qz_onnx._Int8Linears(g, Layer).linear("x", "in", "lin", "b")
    g.nodes.append(g.helper.make_node("Identity", [y], ["logits"]))
    graph = g.helper.make_graph(g.nodes, "layer", [g.helper.make_tensor_value_info("x", 1, [n, k])],
                                [g.helper.make_tensor_value_info("logits", 1, [n, c])], g.inits)
    proto = g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", qz_onnx.OPSET)])
    proto.ir_version = 8
    got = qz_onnx.session(proto).run(["logits"], {"x": x})[0]
    np.testing.assert_array_equal(got, quant.int8_linear(x, packed, scale, zp, b))


def test_the_shipped_command_model_through_onnx_runtime(tmp_path):
    """data/commands_base.safetensors exported to a file and scored through ONNX Runtime on the real
    test speakers: the same predictions as qz's runtime, logits within 1e-5."""
    from qz.data import apply_input_norm, load_split
    m = runtime.load_model(DATA / "commands_base.safetensors")
    path = qz_onnx.export(m, tmp_path / "base.onnx")
    test = apply_input_norm(load_split(DATA / "speech_commands_real.npz", "test"), m.meta["input_norm"])
    sess = qz_onnx.session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    assert '"fp32"' == meta["precision"] and "labels" in meta
    for k in (1, 2):
        want = runtime.infer(m, test.x, top_k=k)
        got = qz_onnx.run(sess, test.x, k)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_lean_int8_models_are_refused_with_a_clear_error():
    cfg = Config(d_model=8, n_heads=1, n_layers=1, n_experts=2, top_k=1, d_ff=4, max_len=4, input_dim=3,
                 n_classes=2)
    p = model.init_params(cfg)
    x = np.ones((1, 4, 3), np.float32)
    m = runtime.prepare(p, cfg, "int8", model.observe_ranges(p, cfg, x), lean=True)
    if m.w["head.weight"][0] is not None:
        pytest.skip("this CPU keeps the (in, out) int8 weights anyway (no SIMD layout)")
    with pytest.raises(ValueError, match="lean=False"):
        qz_onnx.to_onnx(m)
