"""The inference runtime at fp32, fp16 and int8 (qz/runtime.py, docs/spec.md §3.3).

The parity bar: the int8 runtime's logits equal the fake-quant float forward.
Because the fake-quant forward computes in the integer kernel's order
(quant.qlinear_forward), equality here is exact, which is stronger than the
1e-5 relative error docs/spec.md asks for; the relative error is asserted too.
"""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qz
from qz import model, runtime
from qz.data import apply_input_norm, fit_input_norm, load_split
from qz.train import TrainConfig, quant_of, train
from strategies import seeds

DATA = Path(__file__).resolve().parent.parent / "data"


def config(mode, S, E, d_ff, max_len=6):
    common = dict(d_model=16, n_heads=2, n_layers=2, n_experts=E, top_k=min(2, E), d_ff=d_ff,
                  max_len=max_len, n_shared_experts=S)
    return (qz.Config(vocab_size=11, **common) if mode == "lm"
            else qz.Config(input_dim=5, n_classes=3, **common))


def inputs(cfg, rng, B, T):
    if cfg.mode == "lm":
        return rng.integers(0, cfg.vocab_size, (B, T))
    return (2 * rng.standard_normal((B, T, cfg.input_dim))).astype(np.float32)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


@given(seeds, st.sampled_from(["lm", "classifier"]), st.integers(0, 1), st.integers(1, 5),
       st.integers(1, 9), st.integers(1, 3), st.integers(1, 6), st.floats(0.5, 1.0))
def test_int8_runtime_equals_fake_quant_forward(seed, mode, S, E, d_ff, B, T, shrink):
    """Random models, both modes, k = 1 and 2; ranges narrowed by `shrink` so that some values clip."""
    rng = np.random.default_rng(seed)
    cfg = config(mode, S, E, d_ff)
    params = qz.init_params(cfg, seed=seed % 1000)
    x = inputs(cfg, rng, B, T)
    ranges = {n: (shrink * lo, shrink * hi) for n, (lo, hi) in model.observe_ranges(params, cfg, x).items()}
    m = runtime.prepare(params, cfg, "int8", ranges)
    for k in sorted({1, min(2, E)}):
        want, _ = qz.forward(params, cfg, x, top_k=k, quant={"ranges": ranges})
        got = runtime.infer(m, x, top_k=k)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert rel_err(got, want) < 1e-5
        np.testing.assert_array_equal(got, want, err_msg=f"{mode} S={S} E={E} k={k}")


def test_int8_parity_holds_past_516_inputs():
    """Layers wider than 516 inputs (in_proj 600, every expert's w2 and the shared expert's 520):
    the fake-quant forward sums their codes in float64 (quant.code_matmul), so the int8 runtime still
    equals it bit for bit."""
    cfg = qz.Config(input_dim=600, n_classes=3, d_model=16, n_heads=2, n_layers=1, n_experts=3, top_k=2,
                    d_ff=520, max_len=4, n_shared_experts=1)
    params = qz.init_params(cfg, seed=0)
    params["in_proj.weight"] = np.abs(params["in_proj.weight"]) + np.float32(0.05)   # large, same-sign sums
    x = np.random.default_rng(0).uniform(0.5, 1.0, (3, 4, 600)).astype(np.float32)
    ranges = model.observe_ranges(params, cfg, x)
    m = runtime.prepare(params, cfg, "int8", ranges)
    for k in (1, 2):
        want, _ = qz.forward(params, cfg, x, top_k=k, quant={"ranges": ranges})
        np.testing.assert_array_equal(runtime.infer(m, x, top_k=k), want)


@pytest.mark.parametrize("mode", ["lm", "classifier"])
def test_fp32_runtime_equals_model_forward_and_fp16_is_close(mode):
    rng = np.random.default_rng(1)
    cfg = config(mode, 1, 4, 8)
    params = qz.init_params(cfg, seed=2)
    x = inputs(cfg, rng, 3, 6)
    for k in (1, 2):
        want, _ = qz.forward(params, cfg, x, top_k=k)
        np.testing.assert_array_equal(runtime.infer(runtime.prepare(params, cfg, "fp32"), x, top_k=k), want)
        # fp16 rounds each weight by at most 2**-11 relative; the logits move by about that much
        half = {n: p.astype(np.float16).astype(np.float32) for n, p in params.items()}
        want16, _ = qz.forward(half, cfg, x, top_k=k)
        np.testing.assert_array_equal(runtime.infer(runtime.prepare(params, cfg, "fp16"), x, top_k=k), want16)
        assert rel_err(want16, want) < 1e-2


def test_int8_model_is_smaller_in_memory():
    cfg = qz.preset("kws")
    params = qz.init_params(cfg)
    x = inputs(cfg, np.random.default_rng(0), 2, cfg.max_len)
    ranges = model.observe_ranges(params, cfg, x)
    b32 = runtime.prepare(params, cfg, "fp32").weight_bytes
    b8 = runtime.prepare(params, cfg, "int8", ranges).weight_bytes
    assert b8 < 0.45 * b32          # int8 weights + int32 column sums + float32 scales and floats


def test_bad_inputs_are_named():
    cfg = config("classifier", 0, 4, 8)
    m = runtime.prepare(qz.init_params(cfg), cfg, "fp32")
    with pytest.raises(ValueError, match="input"):
        runtime.infer(m, np.zeros((1, 6, 4), np.float32))
    with pytest.raises(ValueError, match="top_k"):
        runtime.infer(m, np.zeros((1, 6, 5), np.float32), top_k=9)


@pytest.mark.skipif(not (DATA / "speech_commands.npz").exists(), reason="shipped command data absent")
def test_parity_on_a_trained_command_model():
    """The kws preset trained briefly with QAT on the shipped commands: int8 == fake-quant, and
    the int8 model classifies like the fake-quant one (identical logits -> identical labels)."""
    path = DATA / "speech_commands.npz"
    cfg = qz.preset("kws")
    train_data, val = load_split(path, "train"), load_split(path, "val")
    norm = fit_input_norm(train_data, "cmvn")
    train_data, val = apply_input_norm(train_data, norm), apply_input_norm(val, norm)
    tcfg = TrainConfig(steps=120, batch_size=32, warmup=10, qat_start=60, qat_freeze=100, seed=3)
    state = train(cfg, tcfg, train_data, params=qz.init_params(cfg, seed=3), log=None, progress=False)
    q = quant_of(state)
    x = val.x[:64].astype(np.float32)
    m = runtime.prepare(state.params, cfg, "int8", q["ranges"])
    for k in (1, 2):
        want, _ = qz.forward(state.params, cfg, x, top_k=k, quant=q)
        got = runtime.infer(m, x, top_k=k)
        assert rel_err(got, want) < 1e-5
        np.testing.assert_array_equal(got, want)


class _FixedSensors:
    def __init__(self, state):
        self.state = state

    def read(self):
        return self.state


@pytest.mark.parametrize("state,mode,precision,k,threads", [
    (dict(battery_pct=80.0, charging=True, temp_c=30.0), "performance", "fp32", 2, None),
    (dict(), "balanced", "int8", 2, None),
    (dict(battery_pct=15.0, charging=False), "low_power", "int8", 1, None),
    (dict(battery_pct=3.0, charging=False), "critical", "int8", 1, 1),
])
def test_governed_runtime_runs_each_mode_as_its_model_function(state, mode, precision, k, threads,
                                                               monkeypatch):
    """docs/spec.md §4: each mode's output equals the matching model function at that mode's top_k;
    critical runs on one thread (BLAS and qz.parallel), and the limit ends with the request."""
    from qz import parallel
    from qz.governor import DeviceState, Governor
    cfg = config("classifier", 1, 4, 8)
    params = qz.init_params(cfg, seed=5)
    x = inputs(cfg, np.random.default_rng(5), 2, 6)
    ranges = model.observe_ranges(params, cfg, x)
    bundle = runtime.Bundle({"fp32": runtime.prepare(params, cfg, "fp32"),
                             "int8": runtime.prepare(params, cfg, "int8", ranges)})
    gov = Governor(_FixedSensors(DeviceState(**state)), top_k=cfg.top_k, tick_s=0.0)
    seen, infer = [], runtime.infer

    def spy(*a, **kw):
        seen.append((parallel.workers(), parallel.blas_threads()))
        return infer(*a, **kw)
    monkeypatch.setattr(runtime, "infer", spy)
    monkeypatch.setattr(parallel, "_SHORT_SPIN", True)           # as when qz loads before NumPy
    before = (parallel.workers(), parallel.blas_threads())
    logits, info = runtime.Runtime(bundle, gov).infer(x)
    assert info == {"mode": mode, "precision": precision, "top_k": k, "threads": threads}
    if threads == 1:
        assert seen[0][0] == 1 and seen[0][1] in (1, None)       # None: BLAS threads not controllable
    else:
        assert seen[0] == before
    assert (parallel.workers(), parallel.blas_threads()) == before
    want, _ = qz.forward(params, cfg, x, top_k=k, quant={"ranges": ranges} if precision == "int8" else None)
    np.testing.assert_array_equal(logits, want)


def test_missing_precision_falls_back_and_says_so_once():
    from qz.governor import DeviceState, Governor
    cfg = config("classifier", 0, 4, 8)
    params = qz.init_params(cfg, seed=6)
    x = inputs(cfg, np.random.default_rng(6), 1, 6)
    bundle = runtime.Bundle({"fp16": runtime.prepare(params, cfg, "fp16")})
    rt = runtime.Runtime(bundle, Governor(_FixedSensors(DeviceState()), top_k=2, tick_s=0.0))
    for _ in range(3):
        _, info = rt.infer(x)
    assert info["precision"] == "fp16" and rt.notes == ["no int8 model in the bundle: fp16 serves instead"]
    with pytest.raises(ValueError, match="different configs"):
        runtime.Bundle({"fp32": runtime.prepare(params, cfg, "fp32"),
                        "fp16": runtime.prepare(qz.init_params(config("classifier", 1, 4, 8)),
                                                config("classifier", 1, 4, 8), "fp16")})


def test_concurrent_requests_with_a_flapping_governor_are_never_torn():
    """Requests from 4 threads while the device state flips every call: every answer equals
    the model function of the mode it reports (a torn request would match neither)."""
    import threading
    from qz.governor import DeviceState, Governor
    cfg = config("classifier", 0, 4, 8)
    params = qz.init_params(cfg, seed=7)
    x = inputs(cfg, np.random.default_rng(7), 2, 6)
    ranges = model.observe_ranges(params, cfg, x)
    bundle = runtime.Bundle({"fp32": runtime.prepare(params, cfg, "fp32"),
                             "int8": runtime.prepare(params, cfg, "int8", ranges)})
    states = [DeviceState(battery_pct=90.0, charging=True, temp_c=30.0),
              DeviceState(battery_pct=10.0, charging=False)]

    class Flip:
        n = 0

        def read(self):
            Flip.n += 1
            return states[Flip.n % 2]
    t = [0.0]

    def clock():
        t[0] += 10.0          # past the dwell every call: the mode may change between any two requests
        return t[0]
    rt = runtime.Runtime(bundle, Governor(Flip(), top_k=2, tick_s=0.0, clock=clock))
    want = {("fp32", 2): qz.forward(params, cfg, x, top_k=2)[0],
            ("int8", 1): qz.forward(params, cfg, x, top_k=1, quant={"ranges": ranges})[0]}
    seen, errors = [], []

    def worker():
        for _ in range(30):
            logits, info = rt.infer(x)
            key = (info["precision"], info["top_k"])
            seen.append(key)
            if key not in want or not np.array_equal(logits, want[key]):
                errors.append(info)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and set(seen) == set(want)
