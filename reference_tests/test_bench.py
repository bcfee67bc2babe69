"""Smoke test of scripts/bench.py: the whole command on tiny models, in a few seconds.

It runs the real script (a subprocess: the thread variables must be set before
numpy loads, and section c starts its own QZ_NUMBA=0 child) and checks what it
writes: every section's rows, positive medians, the ratios, the bars, the
markdown table, and — when torch is importable — that the PyTorch twin's
logits, loss and gradients matched qz's. A second run with the twin's RMSNorm
epsilon perturbed must fail the parity check, so the check is known to bite.
The figures of a smoke run mean nothing; only their presence and sanity do.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_bench(out, *flags):
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--out", str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)


def medians(node):
    """Every median_ms under a results node."""
    if isinstance(node, dict):
        if "median_ms" in node:
            yield node["median_ms"]
        else:
            for v in node.values():
                yield from medians(v)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = run_bench(out)
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = json.loads((out / "bench.json").read_text())
    return doc, (out / "bench.md").read_text(), proc.stdout


def test_json_has_every_section(smoke):
    doc, _, _ = smoke
    assert {"meta", "configs", "results", "derived", "bars", "notes"} <= set(doc)
    assert doc["meta"]["mode"] == "smoke" and doc["meta"]["threads"] == 1
    assert doc["meta"]["machine"]["thread_env"]["OPENBLAS_NUM_THREADS"] == "1"
    res = doc["results"]
    assert set(res["a"]) == {"kws", "char_lm"}
    assert set(res["a"]["kws"]) == {"forward_b4", "train_b4", "forward_b1"}
    assert set(res["a"]["char_lm"]) == {"forward_b2", "train_b2"}
    assert set(res["b"]["kws"]) == {"b1", "b4"} and set(res["b"]["char_lm"]) == {"b1", "b2"}
    for node in (n for case in res["b"].values() for n in case.values()):
        assert {"fp32", "fp16", "int8", "int8_over_fp32", "fp16_over_fp32"} <= set(node)
    E = doc["configs"]["char_lm"]["n_experts"]
    assert {"top2", f"top{E}", "speedup_dense_over_sparse"} <= set(res["a"]["char_lm"]["train_b2"])
    g = doc["derived"]["gflops"]
    assert g["step_flops"] > 0 and g["step_gflops"] > 0 and g["sgemm_peak_gflops"] > 0
    assert g["sgemm_model_shapes_gflops"] > 0 and g["pct_of_peak"] > 0


def test_timings_are_positive_and_ratios_consistent(smoke):
    doc, _, _ = smoke
    ms = list(medians(doc["results"]))
    assert len(ms) > 30 and all(m > 0 for m in ms), ms
    node = doc["results"]["a"]["kws"]["train_b4"]
    E = doc["configs"]["kws"]["n_experts"]
    want = node[f"top{E}"]["median_ms"] / node["top2"]["median_ms"]
    assert node["speedup_dense_over_sparse"] == pytest.approx(want, rel=1e-2)
    for stats in (node["top2"], node[f"top{E}"]):
        assert stats["rounds"] == 2 and len(stats["samples_ms"]) == 2
        assert stats["min_ms"] <= stats["median_ms"]


def test_numba_row_ran_in_a_numpy_child(smoke):
    doc, _, _ = smoke
    from qz import kernels
    if not kernels.USE_NUMBA:
        assert any("section c skipped" in n for n in doc["notes"])
        return
    assert doc["meta"]["child"]["use_numba"] is False
    assert doc["meta"]["child"]["pid"] > 0
    node = doc["results"]["c"]["char_lm"]["train_b2"]
    assert node["numba"]["median_ms"] > 0 and node["numpy"]["median_ms"] > 0
    assert set(doc["results"]["c"]["kws"]) == {"train_b4", "forward_b4", "forward_b1"}


def test_markdown_table_has_the_bars(smoke):
    doc, md, stdout = smoke
    lines = md.splitlines()
    assert lines[0].startswith("*`scripts/bench.py`: smoke run")
    assert lines[2] == "| row | figure | comparison | bar | status |"
    for line in ("char_lm train step (batch 2)", "char_lm train step GFLOP/s", "kws forward batch 1",
                 "char_lm forward (batch 2) top-2 vs top-4", "runtime kws batch 1",
                 "runtime char_lm batch 2"):
        assert f"| {line} |" in md, line
    assert "| row | figure |" in stdout                       # the table is printed at the end
    names = [b["name"] for b in doc["bars"]]
    assert len(names) == 4 and all(b["status"] in ("PASS", "FAIL", "n/a") for b in doc["bars"])


def test_torch_twin_matched(smoke):
    doc, _, _ = smoke
    if not HAS_TORCH:
        assert doc["torch"]["available"] is False and "not installed" in doc["torch"]["note"]
        pytest.skip("torch is not installed: the twin rows are skipped (checked above)")
    par = doc["torch"]["parity"]
    for case in ("kws", "char_lm"):
        assert par[case]["matched"] is True, par[case]
        assert par[case]["float32"]["logits_max_rel_err"] <= 1e-4
        assert par[case]["float64"]["logits_max_rel_err"] <= 1e-10
        assert par[case]["float64"]["grads_max_rel_err"] <= 1e-9
    assert doc["results"]["d"]["char_lm"]["train_b2"]["qz_over_torch"] > 0
    assert doc["bars"][0]["status"] in ("PASS", "FAIL")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_parity_check_can_fail(tmp_path):
    proc = run_bench(tmp_path, "--sections", "d", "--perturb-twin")
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PyTorch twin does not match qz" in proc.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["torch"]["parity_failures"]


def test_without_torch_the_rows_say_so(tmp_path):
    proc = run_bench(tmp_path, "--sections", "d", "--no-torch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["torch"]["available"] is False
    assert "d" not in doc["results"]
    md = (tmp_path / "bench.md").read_text()
    assert "skipped (--no-torch)" in md and "| n/a |" in md
