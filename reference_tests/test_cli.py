"""The command line (qz/cli/): train / eval / info, JSON output, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import qz
from qz.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "d_model=16", "--set", "n_heads=2", "--set", "d_ff=16", "--set", "n_experts=4"]


@pytest.fixture
def feats(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.standard_normal((60, 6, 4)).astype(np.float32) + y[:, None, None]   # learnable
    path = tmp_path / "feats.npz"
    np.savez(path, x=x, y=y)
    return path


def exit_code(argv):
    """main()'s return value, or the code of argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_train_info_eval_on_features(tmp_path, feats, capsys):
    ckpt = tmp_path / "m.safetensors"
    res = run_json(capsys, ["train", "--data", str(feats), "--steps", "6", "--batch-size", "8",
                            "--out", str(ckpt), "--json", *SMALL])
    assert res["step"] == 6 and Path(res["checkpoint"]) == ckpt and res["final"]["n"] == 6
    info = run_json(capsys, ["info", str(ckpt), "--json"])
    assert (info["mode"] == "classifier" and info["config"]["input_dim"] == 4
            and info["config"]["n_classes"] == 3)
    assert info["parameters"] == qz.config.n_params(qz.Config.from_dict(info["config"]))
    assert set(info["active_parameters_per_token"]) == {"1", "2", "3", "4"}
    ev = run_json(capsys, ["eval", str(ckpt), "--data", str(feats), "--json"])
    assert [r["top_k"] for r in ev["results"]] == [1, 2]
    assert all(0 <= r["accuracy"] <= 1 for r in ev["results"])
    # test-time warps: warp 1 alone is the model itself; a bad list is a one-line error
    ev1 = run_json(capsys, ["eval", str(ckpt), "--data", str(feats), "--warps", "1", "--json"])
    assert all(r["accuracy_warps"] == pytest.approx(r["accuracy"]) and r["warps"] == [1.0]
               for r in ev1["results"])
    ev3 = run_json(capsys, ["eval", str(ckpt), "--data", str(feats), "--warps", "0.9,1,1.1", "--json"])
    assert all(0 <= r["accuracy_warps"] <= 1 for r in ev3["results"])
    assert exit_code(["eval", str(ckpt), "--data", str(feats), "--warps", "0.9,abc"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qz: error: --warps") and len(err.splitlines()) == 1, err


def test_train_text_and_resume_matches_one_run(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 40)
    common = ["--data", str(text), "--seq-len", "16", "--batch-size", "4", "--steps", "8", "--quiet", *SMALL]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert main(["train", *common, "--out", str(full)]) == 0
    assert main(["train", *common, "--out", str(part), "--stop-at", "4"]) == 0
    assert qz.load(part)[2]["step"] == 4
    assert main(["train", "--resume", str(part), "--data", str(text), "--quiet"]) == 0
    a, _, ma = qz.load(full)
    b, _, mb = qz.load(part)
    assert ma["step"] == mb["step"] == 8
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    capsys.readouterr()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "nope.npz"], "no such file"),
    (["train", "--preset", "huge"], "huge"),
    (["train", "--set", "d_model"], "key=value"),
    (["train", "--set", "top_k=99", "--steps", "1"], "top_k"),
    (["train", "--steps", "0"], "steps"),
    (["train", "--top-k-choices", "1,x"], "top-k-choices"),
    (["train", "--bogus"], "unrecognized"),
    (["train", "--steps", "abc"], "invalid int"),
    (["train", "--ema", "1.5", "--steps", "1"], "ema"),
    (["info", "missing.safetensors"], "missing.safetensors"),
    (["eval", "missing.safetensors"], "missing.safetensors"),
])
def test_user_errors_are_one_line_exit_1(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = exit_code(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("qz: error:") and len(err.splitlines()) == 1, err
    assert needle in err


def test_corrupt_checkpoint_and_wrong_data(tmp_path, feats, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    for argv in (["info", str(bad)], ["eval", str(bad), "--data", str(feats)],
                 ["train", "--resume", str(bad), "--data", str(feats)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "bad.safetensors" in err and "Traceback" not in err
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(feats), "--steps", "1", "--out", str(ckpt), "--quiet", *SMALL]) == 0
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros((4, 6, 5), np.float32), y=np.zeros(4, int))
    assert main(["eval", str(ckpt), "--data", str(other)]) == 1
    err = capsys.readouterr().err
    assert "5 features" in err and "4" in err, err
    assert main(["eval", str(ckpt), "--data", str(feats), "--moe-top-k", "9"]) == 1
    assert "--moe-top-k 9" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--data", str(feats), "--top-k", "9"]) == 1    # the old name still works
    assert "--moe-top-k 9" in capsys.readouterr().err


def test_help_teaches():
    out = subprocess.run([sys.executable, "-m", "qz.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("--resume", "--top-k-choices", "examples:", "Ctrl-C"):
        assert word in out.stdout


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "qz.cli", "train", "--steps", "100000", "--seq-len", "16",
                             "--batch-size", "2", "--out", str(ckpt), *SMALL], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    line = proc.stdout.readline()                 # the start banner: training has begun
    assert "qz train" in line
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=max(5, deadline - time.time()))
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "--resume" in out
    params, cfg, meta = qz.load(ckpt)
    assert 0 < meta["step"] < 100000


def test_quantize_calibrates_and_eval_reports_both_precisions(tmp_path, feats, capsys):
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(feats), "--steps", "20", "--out", str(ckpt), "--quiet", *SMALL]) == 0
    capsys.readouterr()
    res = run_json(capsys, ["quantize", str(ckpt), "--calibrate", "3", "--json"])
    out = Path(res["checkpoint"])
    assert out.name == "m_ptq.safetensors" and set(res["ranges"]) == set(
        qz.quant.observer_names(qz.load(ckpt)[1]))
    ev = run_json(capsys, ["eval", str(out), "--json"])
    precisions = [r["precision"] for r in ev["results"]]
    assert precisions.count("fp32") == 2 and precisions.count("fake-int8") == 2
    fp = {r["top_k"]: r["accuracy"] for r in ev["results"] if r["precision"] == "fp32"}
    q8 = {r["top_k"]: r["accuracy"] for r in ev["results"] if r["precision"] == "fake-int8"}
    assert all(abs(fp[k] - q8[k]) <= 0.2 for k in fp)       # int8 stays close on an easy task
    assert main(["quantize", str(ckpt), "--calibrate", "0"]) == 1


def test_export_onnx_and_eval_it_through_onnx_runtime(tmp_path, feats, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(feats), "--steps", "20", "--out", str(ckpt), "--quiet", *SMALL]) == 0
    assert main(["export", str(ckpt), "--onnx", "--int8"]) == 1                    # no ranges: one line
    assert main(["quantize", str(ckpt), "--calibrate", "3"]) == 0
    ptq = tmp_path / "m_ptq.safetensors"
    capsys.readouterr()
    res = run_json(capsys, ["export", str(ptq), "--onnx", "--int8", "--json"])
    assert set(res["files"]) == {"int8", "onnx_fp32", "onnx_int8"}
    fp32_onnx, int8_onnx = tmp_path / "m_ptq.onnx", tmp_path / "m_ptq.int8.onnx"
    assert fp32_onnx.exists() and int8_onnx.exists()
    ev = run_json(capsys, ["eval", str(ptq), "--moe-top-k", "2", "--json",
                           "--onnx", str(fp32_onnx), "--onnx", str(int8_onnx)])
    acc = {r["precision"]: r["accuracy"] for r in ev["results"]}
    assert acc["onnx fp32"] == acc["fp32"] and acc["onnx int8"] == acc["fake-int8"]


def test_expert_budget_flags(tmp_path, feats, capsys):
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(feats), "--steps", "8", "--out", str(ckpt), "--quiet",
                 "--budget-choices", "1,2,4", *SMALL]) == 0
    assert qz.load(ckpt)[2]["train"]["budget_choices"] == [1, 2, 4]
    assert main(["train", "--data", str(feats), "--steps", "2", "--out", str(ckpt), "--quiet",
                 "--budget-choices", "9", *SMALL]) == 1                            # 4 experts: one line
    assert main(["train", "--data", str(feats), "--steps", "2", "--out", str(ckpt), "--quiet",
                 "--budget-choices", "one", *SMALL]) == 1
    capsys.readouterr()
    ev = run_json(capsys, ["eval", str(ckpt), "--expert-budget", "1", "--moe-top-k", "2", "--json"])
    r = ev["results"][0]
    assert r["expert_budget"] == 1 and r["top_k"] == 2
    assert main(["eval", str(ckpt), "--expert-budget", "5"]) == 1
    res = run_json(capsys, ["finetune", str(ckpt), "--data", str(feats), "--steps", "4",
                            "--budget-choices", "1,4", "--out", str(tmp_path / "f.safetensors"), "--json"])
    assert "test_accuracy_top2" in res or "val_accuracy_top2" in res


def test_export_and_run_a_bundle_under_the_governor(tmp_path, capsys):
    """train (13 MFCC features, like a wav) -> quantize -> export int8 + fp32 -> run wavs: low_power
    by override uses int8 at top_k 1; a bad file is reported in one line and the rest are served."""
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2
    x = rng.standard_normal((40, 49, 13)).astype(np.float32) + y[:, None, None]
    data = tmp_path / "mfcc.npz"
    np.savez(data, x=x, y=y)
    ckpt = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(data), "--steps", "4", "--out", str(ckpt), "--quiet", *SMALL]) == 0
    assert exit_code(["export", str(ckpt)]) == 1                  # no ranges yet: a clear error
    assert "qz quantize" in capsys.readouterr().err
    assert main(["quantize", str(ckpt), "--calibrate", "2", "--observer", "percentile"]) == 0
    capsys.readouterr()
    ptq = tmp_path / "m_ptq.safetensors"
    res = run_json(capsys, ["export", str(ptq), "--int8", "--fp32", "--json"])
    files = res["files"]
    assert files["int8"]["bytes"] < 0.5 * files["fp32"]["bytes"]
    wavs = sorted((ROOT / "data" / "wav").glob("*.wav"))[:2]
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    argv = ["run", files["fp32"]["path"], files["int8"]["path"], "--inputs", str(wavs[0]), str(bad),
            str(wavs[1]), "--battery", "12", "--charging", "no", "--json"]
    assert main(argv) == 1                                         # one input failed ...
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert len(out["results"]) == 2 and out["failed"] == 1        # ... the others were served
    assert all((r["mode"], r["precision"], r["top_k"]) == ("low_power", "int8", 1) for r in out["results"])
    assert captured.err.count("\n") == 1 and "notes.txt" in captured.err
    # the same bundle through a simulated discharge (qz governor simulate)
    np.savez(data, x=x[:30], y=y[:30], x_test=x[30:], y_test=y[30:])
    sim = run_json(capsys, ["governor", "simulate", files["fp32"]["path"], files["int8"]["path"],
                            "--data", str(data), "--repeats", "2", "--out", str(tmp_path / "sim"), "--json"])
    assert set(sim["modes"]) == {"performance", "balanced", "low_power", "critical"}
    assert all(m["energy_j"] > 0 and "measured_energy_j" in m for m in sim["modes"].values())
    assert sim["runs"]["governed"]["requests"] > 0 and (tmp_path / "sim.json").exists()
    # each mode's figures alone (qz governor modes): the rows the simulation prices
    modes = run_json(capsys, ["governor", "modes", files["fp32"]["path"], files["int8"]["path"],
                              "--data", str(data), "--repeats", "2", "--json"])
    assert set(modes["modes"]) == set(sim["modes"]) and modes["n"] == len(y) - 30
    for name, m in modes["modes"].items():
        assert m["energy_uj"] == round(m["energy_j"] * 1e6, 4) and 0 <= m["accuracy"] <= 1
        assert (m["precision"], m["top_k"]) == (sim["modes"][name]["precision"], sim["modes"][name]["top_k"])
    assert main(["governor", "modes", files["int8"]["path"]]) == 1                 # no --data: one line


def test_finetune_mix_and_train_on_a_wav_folder(tmp_path, feats, capsys):
    """finetune --mix DATA[:SHARE] rehearses DATA; train --data takes a folder of wav files."""
    from qz.audio import write_wav
    from qz.cli import _mix_arg
    assert _mix_arg("data/x.npz:0.3") == ("data/x.npz", 0.3)
    assert _mix_arg("data/x.npz") == ("data/x.npz", None)
    assert _mix_arg("C:/odd:name.npz") == ("C:/odd:name.npz", None)
    ckpt = tmp_path / "m.safetensors"
    run_json(capsys, ["train", "--data", str(feats), "--steps", "4", "--out", str(ckpt), "--json", *SMALL])
    rep = run_json(capsys, ["finetune", str(ckpt), "--data", str(feats), "--mix", f"{feats}:0.25",
                            "--steps", "4", "--eval-every", "2", "--out", str(tmp_path / "ft.safetensors"),
                            "--json"])
    assert rep["mix"]["n"] == 60 and rep["options"]["mix_share"] == 0.25
    assert exit_code(["finetune", str(ckpt), "--data", str(feats), "--mix", f"{feats}:1.5"]) == 1
    assert "--mix: mix_share" in capsys.readouterr().err
    wavs = tmp_path / "wavs"
    for label in ("yes", "no"):
        (wavs / label).mkdir(parents=True)
        for i in range(3):
            t = np.arange(8000) / 16000
            write_wav(wavs / label / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t
                                                                       * (2 if label == "yes" else 1)), 16000)
    res = run_json(capsys, ["train", "--data", str(wavs), "--steps", "2",
                            "--out", str(tmp_path / "w.safetensors"), "--json", *SMALL])
    _, cfg, meta = qz.load(tmp_path / "w.safetensors")
    assert res["step"] == 2 and cfg.input_dim == 13 and meta["labels"] == ["no", "yes"]


def test_train_and_finetune_take_ema(tmp_path, feats, capsys):
    """--ema keeps an average of the weights (ema.<name> in the optimizer state); finetune passes it on,
    and its --data/--val/--test take FILE.npz:val-style splits."""
    from qz.train import load_training
    ckpt = tmp_path / "m.safetensors"
    run_json(capsys, ["train", "--data", str(feats), "--steps", "4", "--ema", "0.5", "--out", str(ckpt),
                      "--json", *SMALL])
    _, tcfg, state = load_training(ckpt)
    assert tcfg.ema == 0.5 and any(k.startswith("ema.") for k in state.opt)
    split = tmp_path / "split.npz"
    with np.load(feats) as z:
        np.savez(split, x=z["x"][:40], y=z["y"][:40], x_val=z["x"][40:50], y_val=z["y"][40:50],
                 x_test=z["x"][50:], y_test=z["y"][50:])
    rep = run_json(capsys, ["finetune", str(ckpt), "--data", str(split), "--val", f"{split}:val",
                            "--test", f"{split}:test", "--ema", "0.9", "--steps", "4", "--eval-every", "2",
                            "--out", str(tmp_path / "ft.safetensors"), "--json"])
    assert rep["options"]["ema"] == 0.9 and rep["runs"][0]["n_train"] == 40 and rep["runs"][0]["n_val"] == 10
    assert "test_accuracy_top2" in rep


def test_bad_input_is_one_line_but_a_bug_keeps_its_traceback(tmp_path, feats, capsys, monkeypatch):
    """main() reports InputError (and OSError) as one line; any other exception is a bug and propagates
    with its traceback; QZ_DEBUG=1 shows the traceback of bad input too."""
    from qz import cli
    from qz.audio import AudioError
    from qz.checkpoint import CheckpointError
    from qz.data import DataError
    from qz.errors import InputError
    assert all(issubclass(c, InputError) and issubclass(c, ValueError)
               for c in (AudioError, CheckpointError, DataError, cli.UserError))
    with pytest.raises(InputError, match="d_model"):
        qz.Config.from_dict({**qz.preset("kws").to_dict(), "d_model": -1})

    def buggy(args):
        return np.zeros(3) + np.zeros(4)          # a shape bug: numpy's ValueError, not bad input

    monkeypatch.setattr(cli.info, "cmd_info", buggy)
    ckpt = tmp_path / "m.safetensors"
    run_json(capsys, ["train", "--data", str(feats), "--steps", "2", "--out", str(ckpt), "--json", *SMALL])
    with pytest.raises(ValueError, match="broadcast"):
        main(["info", str(ckpt)])
    assert exit_code(["eval", str(tmp_path / "missing.safetensors")]) == 1
    monkeypatch.setenv("QZ_DEBUG", "1")
    with pytest.raises(InputError, match="missing.safetensors"):
        main(["eval", str(tmp_path / "missing.safetensors")])
