"""The main job (qz/demo.py) end to end, on a small slice of the shipped data."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qz.demo import BASE, DemoOptions, run_demo, summary_lines

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
    slice_npz(DATA / "speech_commands_real.npz", d / "speech_commands_real.npz", 120)
    shutil.copytree(DATA / "wav", d / "wav")
    return d


def test_demo_from_scratch_then_from_the_shipped_base(small_data, tmp_path):
    """--from-scratch trains the base here; without it the demo loads data/commands_base.safetensors."""
    out = tmp_path / "out"
    report = run_demo(DemoOptions(data_dir=small_data, out_dir=out, from_scratch=True, base_steps=20,
                                  adapt_steps=20, qat_steps=10), log=None, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved["base"]["n_test"] == report["base"]["n_test"] == 120 and saved["base"]["from_scratch"]
    for key in ("real_test_accuracy_top2", "real_test_accuracy_top1", "synthetic_test_accuracy_top2"):
        assert 0.0 <= saved["base"][key] <= 1.0
    a = saved["adapted"]
    assert a["n_train"] == 120 and a["n_val"] == 120
    for key in ("real_test_accuracy_top2", "real_test_accuracy_top1", "logreg_baseline_test_accuracy"):
        assert 0.0 <= a[key] <= 1.0
    assert len(a["confusion_top2"]) == 12 and sum(map(sum, a["confusion_top2"])) == 120
    assert saved["latency_per_clip"]["clips"] == 22 and saved["latency_per_clip"]["top1_ms"] > 0
    assert (out / "commands.int8.safetensors").exists() and (out / "commands_base.safetensors").exists()
    assert saved["model"]["fp32_file_bytes"] == (out / "commands.fp32.safetensors").stat().st_size
    text = "\n".join(summary_lines(report))
    assert "unseen real speakers, top_k 2" in text and "adapted on 120 real clips" in text

    # the shipped base, as the script writes it
    shutil.copy(out / "commands_base.safetensors", small_data / BASE)
    again = run_demo(DemoOptions(data_dir=small_data, out_dir=tmp_path / "out2", adapt_steps=20,
                                 qat_steps=10),
                     log=None, progress=False)
    assert not again["base"]["from_scratch"]
    assert again["base"]["real_test_accuracy_top2"] == report["base"]["real_test_accuracy_top2"]


def test_demo_without_data_is_a_clear_error(tmp_path):
    from qz.data import DataError
    with pytest.raises(DataError, match="speech_commands_real.npz"):
        run_demo(DemoOptions(data_dir=tmp_path, out_dir=tmp_path / "o"), log=None, progress=False)


def test_the_shipped_base_model_is_the_recipes():
    """data/commands_base.safetensors (scripts/make_base_model.py) matches qz.demo.BASE_RECIPE and the
    shipped data's labels, and its input scaling is the recipe's."""
    from qz import checkpoint
    from qz.data import load_split
    from qz.demo import BASE_RECIPE
    params, cfg, meta = checkpoint.load(DATA / BASE)
    assert {k: meta["recipe"][k] for k in BASE_RECIPE} == BASE_RECIPE
    assert meta["labels"] == load_split(DATA / "speech_commands.npz", "test").labels
    assert meta["labels"] == load_split(DATA / "speech_commands_real.npz", "test").labels
    assert meta["input_norm"]["utterance"] == BASE_RECIPE["utterance"]
    assert cfg.n_classes == len(meta["labels"]) and params["head.weight"].shape[1] == cfg.n_classes
