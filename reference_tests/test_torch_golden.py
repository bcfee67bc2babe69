"""qz against the PyTorch twin, llm.c style: reference_tests/golden/torch_twin.npz holds what the twin
(scripts/torch_twin.py, written from docs/spec.md) computes on small seeded float64 models: logits,
aux, loss and every gradient. These tests need no torch; where torch is installed, the last one
checks that scripts/make_torch_golden.py still reproduces the file."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import qz

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "reference_tests" / "golden" / "torch_twin.npz"
CASES = ["classifier", "lm", "lm_ties"]


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(float(np.abs(b).max()), 1e-300))


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert meta["format"] == 1 and set(meta["cases"]) == set(CASES)
    return arrays, meta


@pytest.mark.parametrize("case", CASES)
def test_qz_equals_the_torch_twin(golden, case):
    arrays, meta = golden
    cfg, k = qz.Config.from_dict(meta["cases"][case]["config"]), meta["cases"][case]["top_k"]
    prefix = f"{case}/params/"
    params = {n[len(prefix):]: a for n, a in arrays.items() if n.startswith(prefix)}
    assert set(params) == set(qz.init_params(cfg)) and all(a.dtype == np.float64 for a in params.values())
    x, y = arrays[f"{case}/x"], arrays[f"{case}/y"]
    logits, aux = qz.forward(params, cfg, x, top_k=k)
    loss, grads = qz.loss_and_grads(params, cfg, x, y, aux_coef=meta["aux_coef"], top_k=k)
    assert rel(logits, arrays[f"{case}/logits"]) < 1e-13
    assert abs(float(aux) - float(arrays[f"{case}/aux"])) < 1e-13
    assert abs(loss - float(arrays[f"{case}/loss"])) < 1e-13 * abs(float(arrays[f"{case}/loss"]))
    assert set(grads) == set(params)
    worst = {n: rel(g, arrays[f"{case}/grads/{n}"]) for n, g in grads.items()}
    assert max(worst.values()) < 1e-12, max(worst.items(), key=lambda kv: kv[1])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_the_golden_file_is_what_the_twin_computes(golden):
    import torch
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_torch_golden import build
    fresh = build(torch)
    arrays, _ = golden
    assert set(fresh) - {"meta"} == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_allclose(fresh[name], a, rtol=1e-13, atol=1e-15, err_msg=name)
