"""The inference runtime: a model loaded at fp32, fp16 or int8, and its forward pass (docs/spec.md §3.3).

``infer(model, inputs, top_k)`` is the model's own forward (``model.run``, the one
block) on the prepared weights, its linear layers computed as the precision says
(``linear.Float`` or ``linear.Int8``). In an int8 model every quantized linear layer runs as integers: the
activation is quantized to uint8 codes once per observer, multiplied with the
int8 weights into int32 accumulators (``kernels.int8_matmul``, the zero point
folded in through the weights' column sums) and rescaled once per output
channel. Everything else (norms, attention scores and softmax, the gate,
SwiGLU, the combine) runs in float32 through the same functions the training
model uses, in the same order, so the int8 model's logits equal the fake-quant
float forward bit for bit (``quant.qlinear_forward`` explains why that is
possible), and the fp32 model's equal ``model.forward``.

fp16 is a storage precision: the weights are read as float16 and widened to
float32 once, at load; compute is float32.

Shape letters: B batch, T time, d width, E experts, K experts per token,
f expert hidden width, R = N * K routed rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import checkpoint, parallel
from .config import Config
from .errors import InputError
from .export import PRECISIONS, export_tensors, load_export
from .linear import Float, Int8
from .model import budget_of, run, validate_inputs
from .quant import QWeight, cat_out, pack_qweight, weight_axis

__all__ = ["Model", "prepare", "prepare_tensors", "load_model", "infer", "accuracy", "linear_mode",
           "Bundle", "load_bundle", "Runtime", "FALLBACK"]


@dataclass
class Model:
    """A model ready to serve: config, precision, prepared weights, activation (scale, zp)."""
    cfg: Config
    precision: str
    w: dict                      # prepared weights (see prepare_tensors)
    act: dict | None = None      # int8: observer -> (scale, zp)
    meta: dict = field(default_factory=dict)   # labels, input_norm, source path, ...

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights held in memory."""
        total = 0
        for v in self.w.values():
            for a in (v if isinstance(v, list) else [v]):
                total += sum(x.nbytes for x in a if x is not None) if isinstance(a, tuple) else a.nbytes
        return total


def prepare(params, cfg: Config, precision: str = "fp32", ranges=None, meta=None, lean=True) -> Model:
    """A Model straight from float parameters, as if exported at `precision` and loaded."""
    tensors, m = export_tensors(params, cfg, precision, ranges)
    act = {n: tuple(v) for n, v in m["act_qparams"].items()} if precision == "int8" else None
    return prepare_tensors(tensors, cfg, precision, act, meta, lean)


def prepare_tensors(tensors, cfg: Config, precision: str, act=None, meta=None, lean=True) -> Model:
    """Export tensors -> the layout `infer` reads.

    fp32/fp16: float32 arrays; q|k|v fused into one (d, 3d) matrix; w1 and w3 kept apart
    (linear.Float multiplies by each, as the training model does, so the logits are its own).
    int8: quantized matrices packed for the integer kernels (quant.pack_qweight: int8 (in, out),
    scales, column sums, the SIMD layout: VNNI or AVX2), expert stacks packed as stacks, w1|w3 fused into
    (E, d, 2f) (integer products are exact, so fusing changes no value); embed and pos
    dequantized once (they are looked up, not multiplied); float parameters as float32.
    lean=False keeps the int8 weights in their (in, out) layout beside the SIMD one (qz.onnx reads it).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    int8 = precision == "int8"

    def get(name):
        if not int8 or weight_axis(name) is None:
            return np.asarray(tensors[name], np.float32)
        axis = weight_axis(name)
        return QWeight(tensors[name].astype(np.float32),
                       np.expand_dims(tensors[name + ".scale"].astype(np.float32), axis))

    def pack(w):               # one linear layer (in, out), or a stack of experts (E, in, out)
        return pack_qweight(w, lean=lean) if int8 else w

    w = {}
    if cfg.mode == "lm":
        w["embed"] = get("embed").hat if int8 else get("embed")
    else:
        w["in_proj.weight"], w["in_proj.bias"] = pack(get("in_proj.weight")), get("in_proj.bias")
    w["pos"] = get("pos").hat if int8 else get("pos")
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        for name in ("attn_norm", "ffn_norm", "gate"):
            w[p + name] = get(p + name)
        w[p + "wqkv"] = pack(cat_out(get(p + "wq"), get(p + "wk"), get(p + "wv")))
        w[p + "wo"] = pack(get(p + "wo"))
        groups = [""] + (["shared."] if cfg.n_shared_experts else [])
        for g in groups:
            if int8:
                w[p + g + "w13"] = pack(cat_out(get(p + g + "w1"), get(p + g + "w3")))
            else:
                w[p + g + "w1"], w[p + g + "w3"] = get(p + g + "w1"), get(p + g + "w3")
            w[p + g + "w2"] = pack(get(p + g + "w2"))
    w["final_norm"] = get("final_norm")
    w["head.weight"], w["head.bias"] = pack(get("head.weight")), get("head.bias")
    return Model(cfg, precision, w, dict(act) if act is not None else None, dict(meta or {}))


def load_model(path, lean=True) -> Model:
    """Load an export (`qz export`) or, as fp32, a training checkpoint."""
    tensors, metadata = checkpoint.read_safetensors(path)
    if metadata.get("format") == "qz":
        params, cfg, meta = checkpoint.load(path)
        meta.pop("state", None)
        return prepare(params, cfg, "fp32", meta=_carried(meta, path))
    tensors, cfg, meta = load_export(path)
    return prepare_tensors(tensors, cfg, meta["precision"], meta.get("act_qparams"), _carried(meta, path),
                           lean)


def _carried(meta, path):
    out = {k: meta[k] for k in ("labels", "input_norm") if k in meta}
    out["path"] = str(path)
    return out


# ----------------------------------------------------------------------------
# the forward pass: the model's own (model.run), with the precision's linear layers
# ----------------------------------------------------------------------------
def linear_mode(model):
    """How the model's linear layers compute: integers for int8, float32 for fp32 and fp16."""
    return Int8(model.act) if model.precision == "int8" else Float()


def accuracy(model: Model, data, top_k=None, batch=256):
    """Share of data.y the model's argmax gets right, run in batches."""
    hits = 0
    for i in range(0, len(data), batch):
        logits = infer(model, data.x[i:i + batch].astype(np.float32), top_k=top_k)
        hits += int(np.sum(np.argmax(logits, axis=-1) == data.y[i:i + batch]))
    return hits / len(data)


def infer(model: Model, inputs, top_k=None, expert_budget=None):
    """Logits of docs/spec.md §2.3 for a batch: LM ids (B, T) -> (B, T, V); features (B, T, in) -> (B, C).
    expert_budget m: each input uses only its m allowed experts per layer (docs/spec.md §4); the
    others' weights are not read for it."""
    cfg = model.cfg
    inputs, _ = validate_inputs(cfg, inputs, top_k=top_k, expert_budget=expert_budget)
    k = cfg.top_k if top_k is None else int(top_k)
    budget = budget_of(cfg, expert_budget)
    return run(model.w, cfg, inputs, k, linear_mode(model), train=False, budget=budget)[0]


# ----------------------------------------------------------------------------
# a bundle of precisions, served under the governor's plan (docs/spec.md §4)
# ----------------------------------------------------------------------------
# Where a precision is missing, the nearest loaded one serves instead: fp32 falls
# back to fp16 (docs/spec.md §4), then int8; int8 to fp16, then fp32; fp16 to fp32, then int8.
FALLBACK = {"fp32": ("fp32", "fp16", "int8"), "fp16": ("fp16", "fp32", "int8"),
            "int8": ("int8", "fp16", "fp32")}


class Bundle:
    """One model at several precisions: {precision: Model}, all with the same config."""

    def __init__(self, models: dict):
        if not models:
            raise InputError("bundle: no models")
        cfgs = {m.cfg for m in models.values()}
        if len(cfgs) != 1:
            raise InputError("bundle: the files hold models with different configs")
        self.models, self.cfg = dict(models), cfgs.pop()
        self.meta = next(iter(models.values())).meta

    def pick(self, precision: str):
        """-> (Model, the precision actually used) for a wanted precision."""
        for p in FALLBACK[precision]:
            if p in self.models:
                return self.models[p], p
        raise AssertionError("unreachable: a bundle is never empty")


def load_bundle(paths) -> Bundle:
    """Models from files (exports or a training checkpoint); one per precision."""
    models = {}
    for path in paths:
        m = load_model(path)
        if m.precision in models:
            raise InputError(f"{path}: a second {m.precision} model in the bundle "
                             f"(the first is {models[m.precision].meta.get('path')})")
        models[m.precision] = m
    return Bundle(models)


class Runtime:
    """Serves requests from a Bundle, each under one plan of the governor.

    The plan is read once per request, and a Plan is immutable, so a request
    never runs half in one mode and half in another, whatever other threads
    or the governor do meanwhile. Without a governor every request runs the
    bundle's best precision at the config's top_k. A precision fallback is
    reported once (`notes`)."""

    def __init__(self, bundle: Bundle, governor=None):
        self.bundle, self.governor = bundle, governor
        self.notes: list[str] = []
        self._noted: set = set()

    def plan(self):
        if self.governor is None:
            return None
        return self.governor.plan()

    def infer(self, inputs):
        """-> (logits, info) with info = {mode, precision, top_k}."""
        plan = self.plan()
        want = plan.precision if plan is not None else next(p for p in PRECISIONS if p in self.bundle.models)
        model, used = self.bundle.pick(want)
        if used != want and (want, used) not in self._noted:
            self._noted.add((want, used))
            self.notes.append(f"no {want} model in the bundle: {used} serves instead")
        k = plan.top_k if plan is not None else None
        k = min(k, self.bundle.cfg.n_experts) if k is not None else self.bundle.cfg.top_k
        threads = plan.threads if plan is not None else None
        with parallel.limit_threads(threads):   # critical: one thread for BLAS, no splitting
            logits = infer(model, inputs, top_k=k)
        return logits, {"mode": plan.mode if plan is not None else "fixed", "precision": used, "top_k": k,
                        "threads": threads}
