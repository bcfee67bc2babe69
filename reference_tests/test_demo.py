"""The main job (qz/demo.py) end to end, on a small slice of the shipped data."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qz.demo import DemoOptions, run_demo, summary_lines

DATA = Path(__file__).resolve().parent.parent / "data"


def slice_npz(src, dst, n):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for split in ("", "_val", "_test"):
        arrays["x" + split] = arrays["x" + split][:n]
        arrays["y" + split] = arrays["y" + split][:n]
    np.savez(dst, **arrays)


@pytest.fixture
def small_data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    slice_npz(DATA / "speech_commands.npz", d / "speech_commands.npz", 240)
    slice_npz(DATA / "spoken_digits.npz", d / "spoken_digits.npz", 120)
    shutil.copytree(DATA / "wav", d / "wav")
    return d


def test_demo_runs_end_to_end_and_writes_its_report(small_data, tmp_path):
    out = tmp_path / "out"
    report = run_demo(DemoOptions(data_dir=small_data, out_dir=out, steps=20, finetune_steps=20),
                      log=None, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["commands"]["n_train"] == report["commands"]["n_train"] == 240
    for key in ("test_accuracy_top2", "test_accuracy_top1", "logreg_baseline_test_accuracy"):
        assert 0.0 <= saved["commands"][key] <= 1.0
    assert 0.0 <= saved["digits"]["test_accuracy_top2"] <= 1.0
    assert 0.0 <= saved["digits"]["test_accuracy_warps"] <= 1.0 and saved["digits"]["warps"] == [0.9, 1.0, 1.1]
    assert saved["latency_per_clip"]["clips"] == 22 and saved["latency_per_clip"]["top1_ms"] > 0
    assert (out / "commands_fp32.safetensors").exists() and (out / "digits.safetensors").exists()
    assert saved["model"]["fp32_file_bytes"] == (out / "commands_fp32.safetensors").stat().st_size
    text = "\n".join(summary_lines(report))
    assert "unseen voices, top_k 1" in text and "fine-tuning" in text and "test-time warps 0.9,1,1.1" in text


def test_demo_without_data_is_a_clear_error(tmp_path):
    from qz.data import DataError
    with pytest.raises(DataError, match="speech_commands.npz"):
        run_demo(DemoOptions(data_dir=tmp_path, out_dir=tmp_path / "o", steps=1), log=None, progress=False)
