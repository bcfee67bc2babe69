"""Export a runtime model to ONNX, and run the file with ONNX Runtime (docs/deploy.md).

The graph is written from the model's own structure (``model.block_forward``'s steps,
one node group per op), with the ``onnx`` package's helpers; nothing is traced, so no
expert can be dropped because an example input never reached it. Standard ops, opset
``OPSET``, so stock ONNX Runtime (desktop, Android, iOS, WebAssembly) runs the file.

Inputs and output::

    inputs   classifier: float32 (B, T, input_dim) features; LM: int64 (B, T) token ids
    top_k    int64 (1,): experts per token, 1..E (the governor's modes are values of it)
    expert_budget  int64 (1,): each input's allowed experts per layer, 1..E (E: no budget)
    logits   classifier: (B, n_classes); LM: (B, T, vocab_size)

Routing is in the graph and sparse: softmax over the experts, TopK (ties to the lower
index, as docs/spec.md §2.3 says and ONNX's TopK does) among each input's allowed experts
(the expert budget, docs/spec.md §4: TopK of the mean probability), renormalised; each expert
gathers the tokens routed to it (NonZero, Gather), computes only those rows, and adds
its weighted rows back (ScatterND, reduction "add"). An expert no token chose computes
on zero rows.

int8 (``precision == "int8"``): each quantized linear layer is integers, as qz's runtime:
``codes = Cast(Clip(Round(x / scale + zp), 0, 255), uint8)`` (the spec's order: add the
zero point, then round half to even; ONNX's QuantizeLinear rounds before adding it, which
moves a value on a tie), ``MatMulInteger(codes, w_int8, zp, 0)`` (int32, equal to qz's
``q @ w - zp colsum(w)``), then ``Cast(float) * (scale * w_scale)`` with the product
computed in float32 at export as qz computes it, then the bias. The integer layers are
bit for bit qz's; the float parts (softmax's exp, the norms, sums) are ONNX Runtime's.

``onnx`` and ``onnxruntime`` are the optional extra ``.[onnx]``; qz imports them only here.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["OPSET", "to_onnx", "export", "run", "session"]

OPSET = 18


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:   # pragma: no cover - exercised where the extra is absent
        raise InputError('ONNX export needs the onnx package: pip install -e ".[onnx]"') from e
    return onnx, helper, numpy_helper


class _Graph:
    """Nodes and initializers, with fresh names."""

    def __init__(self):
        self.onnx, self.helper, self.numpy_helper = _onnx()
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, value, name=None, dtype=None):
        arr = np.asarray(value, dtype=dtype)
        name = name or self._name("c")
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def _name(self, op):
        self.n += 1
        return f"{op.lower()}_{self.n}"

    def op(self, op_type, *inputs, outputs=1, **attrs):
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


# ----------------------------------------------------------------------------
# how a linear layer computes: float (MatMul) or integer (MatMulInteger), as qz/linear.py
# ----------------------------------------------------------------------------
class _FloatLinears:
    def __init__(self, g, model):
        self.g, self.w = g, model.w

    def linear(self, x, observer, key, bias=None):
        y = self.g.op("MatMul", x, self.g.const(self.w[key]))
        return y if bias is None else self.g.op("Add", y, self.g.const(self.w[bias]))

    def codes(self, observer, x):
        return x                                                  # the float model reads x itself

    def expert_in(self, u, g_, e, observer):
        # u: (M, d) -> a, b (M, f)
        a = self.g.op("MatMul", u, self.g.const(self.w[g_ + "w1"][e]))
        b = self.g.op("MatMul", u, self.g.const(self.w[g_ + "w3"][e]))
        return a, b

    def expert_out(self, m, g_, e, observer):
        return self.g.op("MatMul", m, self.g.const(self.w[g_ + "w2"][e]))


class _Int8Linears:
    def __init__(self, g, model):
        self.g, self.w, self.act = g, model.w, model.act

    def codes(self, observer, x):
        # x -> uint8 codes: clip(rint(x / scale + zp), 0, 255), in the kernels' order and float32
        g = self.g
        scale, zp = self.act[observer]
        r = g.op("Round", g.op("Add", g.op("Div", x, g.const(np.float32(scale))), g.const(np.float32(zp))))
        clipped = g.op("Clip", r, g.const(np.float32(0.0)), g.const(np.float32(255.0)))
        return g.op("Cast", clipped, to=self.g.onnx.TensorProto.UINT8)

    def _integer(self, codes, observer, w_q, w_scale, bias=None):
        # codes (..., in) uint8, w_q (in, out) int8 -> float32 (..., out)
        g = self.g
        scale, zp = self.act[observer]
        acc = g.op("MatMulInteger", codes, g.const(np.ascontiguousarray(w_q, np.int8)), g.const(np.uint8(zp)),
                   g.const(np.int8(0)))
        v = (np.float32(scale) * np.asarray(w_scale, np.float32)).astype(np.float32)   # as the kernels do
        y = g.op("Mul", g.op("Cast", acc, to=g.onnx.TensorProto.FLOAT), g.const(v))
        return y if bias is None else g.op("Add", y, g.const(np.asarray(bias, np.float32)))

    def linear(self, x, observer, key, bias=None):
        w_q, s, _, _ = self.w[key]
        return self._integer(self.codes(observer, x), observer, w_q, s,
                             None if bias is None else self.w[bias])

    def expert_in(self, u_codes, g_, e, observer):
        # u_codes: (M, d) uint8 (the layer's ffn_in codes, gathered) -> a, b (M, f)
        w_q, s, _, _ = self.w[g_ + "w13"]
        ab = self._integer(u_codes, observer, w_q[e], s[e])
        f = w_q.shape[2] // 2
        return self.g.op("Split", ab, self.g.const(np.array([f, f], np.int64)), axis=-1, outputs=2)

    def expert_out(self, m, g_, e, observer):
        w_q, s, _, _ = self.w[g_ + "w2"]
        return self._integer(self.codes(observer, m), observer, w_q[e], s[e])


# ----------------------------------------------------------------------------
# the graph: model.run's steps
# ----------------------------------------------------------------------------
def _rmsnorm(g, x, gain):
    # x * (1 / sqrt(mean(x^2) + eps)) * g, as ops.rmsnorm
    from .ops import EPS
    ms = g.op("ReduceMean", g.op("Mul", x, x), g.const(np.array([-1], np.int64)), keepdims=1)
    rstd = g.op("Div", g.const(np.float32(1.0)), g.op("Sqrt", g.op("Add", ms, g.const(np.float32(EPS)))))
    return g.op("Mul", g.op("Mul", x, rstd), g.const(np.asarray(gain, np.float32)))


def _attention(g, q, k, v, cfg, T):
    # q, k, v: (B, T, d) -> (B, T, d); softmax(q k^T / sqrt(D) [causal]) v per head
    H, d = cfg.n_heads, cfg.d_model
    D = d // H
    heads = g.const(np.array([0, 0, H, D], np.int64))
    qh = g.op("Transpose", g.op("Reshape", q, heads), perm=[0, 2, 1, 3])            # (B, H, T, D)
    khT = g.op("Transpose", g.op("Reshape", k, heads), perm=[0, 2, 3, 1])           # (B, H, D, T)
    vh = g.op("Transpose", g.op("Reshape", v, heads), perm=[0, 2, 1, 3])
    s = g.op("Mul", g.op("MatMul", qh, khT), g.const(np.float32(1.0 / np.sqrt(D))))  # (B, H, T, T)
    if cfg.causal:
        tt = g.op("Concat", T, T, axis=0)
        one = g.helper.make_tensor("one", g.onnx.TensorProto.FLOAT, [1], [1.0])
        ones = g.op("ConstantOfShape", tt, value=one)                               # (T, T)
        keep = g.op("Cast", g.op("Trilu", ones, upper=0), to=g.onnx.TensorProto.BOOL)  # key j <= query i
        s = g.op("Where", keep, s, g.const(np.float32(-np.inf)))
    p = g.op("Softmax", s, axis=-1)
    o = g.op("Transpose", g.op("MatMul", p, vh), perm=[0, 2, 1, 3])                 # (B, T, H, D)
    return g.op("Reshape", o, g.const(np.array([0, 0, d], np.int64)))


def _swiglu(g, a, b):
    return g.op("Mul", g.op("Mul", a, g.op("Sigmoid", a)), b)     # silu(a) * b, in ops.swiglu's order


def _allowed_probs(g, probs, B, budget, E):
    # probs (N, E), N = B x T -> probs with each input's experts outside its `budget` allowed ones
    # (highest mean probability over its tokens, ties to the lower index: moe.allowed_experts) set to -1
    per_input = g.op("Reshape", probs, g.op("Concat", B, g.const(np.array([-1, E], np.int64)), axis=0))
    mean = g.op("ReduceMean", per_input, g.const(np.array([1], np.int64)), keepdims=0)      # (B, E)
    _, top = g.op("TopK", mean, budget, axis=-1, largest=1, sorted=1, outputs=2)          # (B, m)
    zero = g.helper.make_tensor("zero", g.onnx.TensorProto.FLOAT, [1], [0.0])
    one = g.helper.make_tensor("one", g.onnx.TensorProto.FLOAT, [1], [1.0])
    zeros = g.op("ConstantOfShape", g.op("Shape", mean), value=zero)
    ones = g.op("ConstantOfShape", g.op("Shape", top), value=one)
    allowed = g.op("ScatterElements", zeros, top, ones, axis=1)                             # (B, E) 0/1
    rows = g.op("Reshape", g.op("Expand", g.op("Unsqueeze", allowed, g.const(np.array([1], np.int64))),
                                g.op("Shape", per_input)), g.op("Shape", probs))            # (N, E)
    keep = g.op("Greater", rows, g.const(np.float32(0.5)))
    return g.op("Where", keep, probs, g.const(np.float32(-1.0)))


def _moe(g, lin, h, p, cfg, top_k, budget, B):
    # h: (N, d) -> (N, d): the gate (float), each routed expert on its own tokens, the shared experts
    w = lin.w
    probs = g.op("Softmax", g.op("MatMul", h, g.const(w[p + "gate"])), axis=-1)     # (N, E)
    k = g.op("Min", top_k, budget)                                # top_k is clipped to the budget
    masked = _allowed_probs(g, probs, B, budget, cfg.n_experts)
    vals, idx = g.op("TopK", masked, k, axis=-1, largest=1, sorted=1, outputs=2)  # (N, K), best first
    gw = g.op("Div", vals, g.op("ReduceSum", vals, g.const(np.array([-1], np.int64)), keepdims=1))
    zero = g.helper.make_tensor("zero", g.onnx.TensorProto.FLOAT, [1], [0.0])
    out = g.op("ConstantOfShape", g.op("Shape", h), value=zero)                      # (N, d)
    h_in = lin.codes(p + "ffn_in", h)                             # int8: each token quantized once
    for e in range(cfg.n_experts):
        sel = g.op("NonZero", g.op("Equal", idx, g.const(np.array(e, np.int64))))  # (2, M): token, slot
        tok = g.op("Gather", sel, g.const(np.array(0, np.int64)), axis=0)           # (M,)
        weight = g.op("GatherND", gw, g.op("Transpose", sel, perm=[1, 0]))          # (M,)
        a, b = lin.expert_in(g.op("Gather", h_in, tok, axis=0), p, e, p + "ffn_in")  # (M, f) each
        y = lin.expert_out(_swiglu(g, a, b), p, e, p + "ffn_mid")                   # (M, d)
        y = g.op("Mul", y, g.op("Unsqueeze", weight, g.const(np.array([1], np.int64))))
        out = g.op("ScatterND", out, g.op("Unsqueeze", tok, g.const(np.array([1], np.int64))), y,
                   reduction="add")
    for s in range(cfg.n_shared_experts):                         # every token, weight 1
        a, b = lin.expert_in(h_in, p + "shared.", s, p + "ffn_in")
        out = g.op("Add", out, lin.expert_out(_swiglu(g, a, b), p + "shared.", s, p + "ffn_mid"))
    return out


def to_onnx(model):
    """A runtime Model (runtime.load_model / runtime.prepare, lean=False for int8) -> onnx.ModelProto."""
    if model.precision == "int8" and model.w["head.weight"][0] is None:
        raise InputError("ONNX export of an int8 model: load it with lean=False (the (in, out) int8 weights)")
    if model.precision not in ("fp32", "int8"):
        raise InputError(f"ONNX export: fp32 or int8 models, got {model.precision} (fp16 computes as fp32: "
                         "export the fp32 file)")
    g = _Graph()
    onnx, helper = g.onnx, g.helper
    cfg, int8 = model.cfg, model.precision == "int8"
    lin = _Int8Linears(g, model) if int8 else _FloatLinears(g, model)
    w = model.w
    lm = cfg.mode == "lm"
    inp = helper.make_tensor_value_info("inputs", onnx.TensorProto.INT64 if lm else onnx.TensorProto.FLOAT,
                                        ["B", "T"] if lm else ["B", "T", cfg.input_dim])
    k_in = helper.make_tensor_value_info("top_k", onnx.TensorProto.INT64, [1])
    m_in = helper.make_tensor_value_info("expert_budget", onnx.TensorProto.INT64, [1])
    T = g.op("Gather", g.op("Shape", "inputs"), g.const(np.array([1], np.int64)), axis=0)   # (1,)
    B = g.op("Gather", g.op("Shape", "inputs"), g.const(np.array([0], np.int64)), axis=0)   # (1,)
    if lm:
        x = g.op("Gather", g.const(w["embed"]), "inputs", axis=0)                  # (B, T, d)
    else:
        x = lin.linear("inputs", "in", "in_proj.weight", "in_proj.bias")
    zero = g.const(np.array([0], np.int64))
    pos = g.op("Slice", g.const(w["pos"]), zero, T, zero)                           # pos[:T]
    x = g.op("Add", x, pos)
    d = cfg.d_model
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        a_in = _rmsnorm(g, x, w[p + "attn_norm"])
        q, k, v = g.op("Split", lin.linear(a_in, p + "attn_in", p + "wqkv"),
                       g.const(np.array([d, d, d], np.int64)), axis=-1, outputs=3)
        x = g.op("Add", x, lin.linear(_attention(g, q, k, v, cfg, T), p + "attn_out", p + "wo"))
        h = g.op("Reshape", _rmsnorm(g, x, w[p + "ffn_norm"]), g.const(np.array([-1, d], np.int64)))
        m = _moe(g, lin, h, p, cfg, "top_k", "expert_budget", B)
        x = g.op("Add", x, g.op("Reshape", m, g.op("Shape", x)))
    x = _rmsnorm(g, x, w["final_norm"])
    if not lm:
        x = g.op("ReduceMean", x, g.const(np.array([1], np.int64)), keepdims=0)     # (B, d)
    logits = lin.linear(x, "head_in", "head.weight", "head.bias")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    out = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                        ["B", "T", cfg.vocab_size] if lm else ["B", cfg.n_classes])
    graph = helper.make_graph(g.nodes, f"qingzhou_mini_{model.precision}", [inp, k_in, m_in], [out], g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="qz", producer_version="0.1.0")
    proto.ir_version = 8                                          # readable by ONNX Runtime 1.10 and later
    meta = {"precision": model.precision, "config": cfg.to_dict()} | {
        k: v for k, v in model.meta.items() if k in ("labels", "input_norm")}
    import json
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    return proto


def export(model, path):
    """Write `model` (a runtime Model) to `path` as ONNX; -> path."""
    onnx, _, _ = _onnx()
    onnx.save(to_onnx(model), str(path))
    return path


def session(path_or_proto, threads=None):
    """An onnxruntime.InferenceSession (CPU) for a file or a ModelProto."""
    try:
        import onnxruntime as ort
    except ImportError as e:   # pragma: no cover
        raise InputError('running ONNX files needs onnxruntime: pip install -e ".[onnx]"') from e
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    proto = hasattr(path_or_proto, "SerializeToString")
    src = path_or_proto.SerializeToString() if proto else str(path_or_proto)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run(path_or_session, inputs, top_k, expert_budget=None):
    """Logits of an exported file through ONNX Runtime (inputs as qz.forward takes them);
    expert_budget None: all experts (a file from before the budget input has none to feed)."""
    sess = path_or_session if hasattr(path_or_session, "run") else session(path_or_session)
    x = np.asarray(inputs)
    x = x.astype(np.int64) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    feed = {"inputs": x, "top_k": np.array([int(top_k)], np.int64)}
    if any(i.name == "expert_budget" for i in sess.get_inputs()):
        E = _n_experts(sess)
        feed["expert_budget"] = np.array([E if expert_budget is None else int(expert_budget)], np.int64)
    return sess.run(["logits"], feed)[0]


def _n_experts(sess):
    import json
    return json.loads(sess.get_modelmeta().custom_metadata_map["config"])["n_experts"]
