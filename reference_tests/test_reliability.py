"""Reliability: training that loses nothing, non-finite batches, malformed inputs, a governor soak.

* Random kills (SIGKILL, SIGTERM, SIGINT) of `qz train`: after every one the last
  checkpoint reads, `--resume` carries on, and the final parameters and AdamW
  moments equal an uninterrupted run's bit for bit. `kill_and_resume` is shared
  with scripts/kill_test.py (20 kills); CI runs a few.
* A non-finite loss or gradient stops the run with the last good state, or, under
  `skip_nonfinite`, skips the batch without touching params, moments or observers.
* A corpus of malformed inputs to every command: each is exit code 1 and one
  `qz: error:` line on stderr, never a traceback. Unusual but valid wav files work.
* The governor, soaked with garbage sensor files and concurrent callers.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import qz
from qz import train as tr
from qz.cli import main
from qz.data import ArrayData
from qz.governor import MODES, Governor, SysfsSensors, Thresholds

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "data" / "digits.csv.gz"
SMALL = ["--set", "d_model=16", "--set", "n_heads=2", "--set", "d_ff=16", "--set", "n_experts=4"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


# ----------------------------------------------------------------------------
# random kills: the harness (also run by scripts/kill_test.py)
# ----------------------------------------------------------------------------
def _train_argv(steps, ckpt_every):
    return [sys.executable, "-m", "qz.cli", "train", "--data", str(DIGITS), "--frames", "8",
            "--preset", "digits", "--val-fraction", "0.2", "--steps", str(steps), "--batch-size", "8",
            "--ckpt-every", str(ckpt_every), "--eval-batches", "2", "--quiet", *SMALL]


def state_differences(a, b):
    """Names of parameters / optimizer moments (and 'step') that differ between two checkpoints."""
    pa, _, ma = qz.load(a)
    pb, _, mb = qz.load(b)
    diff = [n for n in pa if pa[n].dtype != pb[n].dtype or not np.array_equal(pa[n], pb[n])]
    sa, sb = ma["state"], mb["state"]
    diff += [f"state.{n}" for n in sorted(set(sa) | set(sb))
             if n not in sa or n not in sb or not np.array_equal(sa[n], sb[n])]
    return diff + (["step"] if ma.get("step") != mb.get("step") else [])


def kill_and_resume(workdir, kills, seed=0, steps=60, ckpt_every=1, env=None, log=None):
    """Train once uninterrupted, then again with `kills` signals at seeded random moments.

    After each kill the run resumes from its checkpoint (or starts over when none was
    written yet: a kill before the first save); when a run finishes it is compared with
    the uninterrupted one and, if kills remain, a new round starts from scratch.
    -> summary dict; summary["failures"] lists everything that went wrong.
    """
    workdir, env = Path(workdir), {**ENV, **(env or {})}
    ref, run = workdir / "ref.safetensors", workdir / "run.safetensors"
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    done = subprocess.run(_train_argv(steps, ckpt_every) + ["--out", str(ref)], cwd=workdir, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {done.stderr.strip()}")
    t_full = time.perf_counter() - t0            # delays span start-up, steps, saves and exit
    s = {"kills": 0, "by_signal": {sig.name: 0 for sig in SIGNALS}, "resumes": 0, "restarts": 0,
         "startup_sigints": 0, "rounds": 0, "equal_rounds": 0, "stale_temp_files": 0, "failures": []}
    started = False                              # has this round started a process yet?
    while True:
        resume = run.exists()
        argv = (_train_argv(steps, ckpt_every)[:4] + ["--resume", str(run), "--data", str(DIGITS), "--quiet"]
                if resume else _train_argv(steps, ckpt_every) + ["--out", str(run)])
        s["resumes" if resume else "restarts"] += started
        started = True
        delay, sig = rng.uniform(0, 1.2 * t_full), SIGNALS[rng.integers(len(SIGNALS))]   # drawn every time
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        sent = None
        if s["kills"] < kills:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
                sent = sig
                s["kills"] += 1
                s["by_signal"][sig.name] += 1
        _, err = proc.communicate(timeout=300)
        rc = proc.returncode
        # a handled signal is 130; dying by it is -signum (before qz's handler is installed, or SIGKILL).
        # Ctrl-C while Python itself starts up or imports is Python's KeyboardInterrupt traceback (exit 1
        # or -2): nothing of qz runs yet, and the checkpoint check below still applies.
        startup_sigint = sent == signal.SIGINT and rc in (1, -signal.SIGINT) and "KeyboardInterrupt" in err
        s["startup_sigints"] += startup_sigint
        ok = rc == 0 or (sent is not None and rc in (130, -sent)) or startup_sigint
        if not ok or ("Traceback" in err and not startup_sigint):
            s["failures"].append(f"{'resume' if resume else 'start'} after {sent and sent.name}: "
                                 f"exit {rc}: {err.strip()[-300:]}")
            break
        if run.exists():
            try:
                tr.load_training(run)            # the last checkpoint is always whole and resumable
            except Exception as e:               # noqa: BLE001 -- any failure to read is the bug we look for
                s["failures"].append(f"unreadable checkpoint after {sent and sent.name}: {e}")
                break
        if log:
            what = f"{sent.name} after {delay:.2f} s" if sent else "no signal"
            log(f"kill {s['kills']}: {what} -> exit {rc}, "
                f"checkpoint step {qz.load(run)[2]['step'] if run.exists() else None}")
        if rc == 0:                              # only a finished run exits 0 (a stopped one is 130)
            s["rounds"] += 1
            diff = state_differences(ref, run)
            s["equal_rounds"] += not diff
            if diff:
                s["failures"].append(f"round {s['rounds']}: differs from the uninterrupted run in {diff[:5]}")
            if s["kills"] >= kills:
                break
            run.unlink()
            started = False
    s["stale_temp_files"] = len(list(workdir.glob(".run.safetensors.*.tmp")))
    s["equal"] = not s["failures"] and s["rounds"] > 0 and s["equal_rounds"] == s["rounds"]
    return s


def test_random_kills_resume_bit_exact(tmp_path):
    # NumPy kernels: the same math (tests hold kernel == reference) without Numba's ~1 s start-up per process
    s = kill_and_resume(tmp_path, kills=4, seed=1, steps=40, ckpt_every=2, env={"QZ_NUMBA": "0"})
    assert s["failures"] == [], s
    assert s["kills"] == 4 and s["equal"], s


def _start_and_wait_for_banner(argv, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "qz.cli", *argv], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()               # the banner: the signal handlers are in place
    assert line.startswith("qz "), line + proc.stderr.read()
    return proc


def test_sigterm_saves_and_resume_finishes(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    proc = _start_and_wait_for_banner(_train_argv(100000, 0)[3:] + ["--out", str(ckpt)], tmp_path)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "Traceback" not in err
    cfg, tcfg, state = tr.load_training(ckpt)
    assert 0 < state.step < 100000
    assert main(["train", "--resume", str(ckpt), "--data", str(DIGITS), "--stop-at", str(state.step + 2),
                 "--quiet"]) == 0
    assert qz.load(ckpt)[2]["step"] == state.step + 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_finetune_signal_exits_cleanly(sig, world, tmp_path):
    """A signal during finetune finishes the step, saves the best state so far (atomically) and
    its report, says so in one line and exits 130."""
    out = tmp_path / "ft.safetensors"
    proc = _start_and_wait_for_banner(["finetune", str(world.clf), "--data", str(world.feats),
                                       "--steps", "100000", "--patience", "100000", "--quiet",
                                       "--out", str(out)], tmp_path)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("qz: interrupted: saved") and len(err.strip().splitlines()) == 1, err
    params, cfg, meta = qz.load(out)
    assert 0 < meta["step"] < 100000
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["interrupted"] is True
    assert not list(tmp_path.glob(".ft.*.tmp"))


# ----------------------------------------------------------------------------
# non-finite batches
# ----------------------------------------------------------------------------
class PoisonedData(ArrayData):
    """An ArrayData whose batches at `bad_steps` overflow the forward pass: finite features of 3e38
    (NaN itself is refused as input by model.validate_inputs, before any loss)."""
    bad_steps = ()

    def batch(self, step, batch_size, seed):
        x, y = super().batch(step, batch_size, seed)
        if step in self.bad_steps:
            x = x.copy()
            x[0] = 3e38
        return x, y


def _nonfinite_setup(bad_steps, **kw):
    rng = np.random.default_rng(0)
    y = np.arange(40) % 3
    data = PoisonedData(rng.standard_normal((40, 5, 4)).astype(np.float32) + y[:, None, None], y)
    data.bad_steps = tuple(bad_steps)
    cfg = qz.Config(d_model=16, n_heads=2, n_layers=2, n_experts=4, top_k=2, d_ff=16, max_len=5,
                    input_dim=4, n_classes=3)
    tcfg = tr.TrainConfig(steps=10, batch_size=8, warmup=2, lr=1e-2, top_k_choices=(1, 2), **kw)
    return cfg, tcfg, data


def _run(cfg, tcfg, data, stop_at=None, state=None, **kw):
    with np.errstate(over="ignore", invalid="ignore"):        # the poisoned batch overflows on purpose
        return tr.train(cfg, tcfg, data, state=state, params=None if state else qz.init_params(cfg, seed=1),
                        stop_at=stop_at, progress=False, log=None, **kw)


def _assert_same(a, b):
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    for name in a.opt:
        assert np.array_equal(a.opt[name], b.opt[name]), name
    assert a.ranges == b.ranges


def test_nonfinite_batch_stops_with_the_last_good_state():
    cfg, tcfg, data = _nonfinite_setup([4])
    before = _run(cfg, tcfg, data, stop_at=4)
    state = _run(cfg, tcfg, data, stop_at=4)
    with pytest.raises(tr.TrainingDiverged, match="step 4: non-finite loss nan"):
        _run(cfg, tcfg, data, state=state)
    assert state.step == 4 and state.skipped == []
    _assert_same(state, before)


@pytest.mark.parametrize("qat_start", [-1, 3])
def test_skipped_batch_changes_nothing_and_resume_stays_exact(qat_start, tmp_path):
    """Step 3's batch is NaN: with skip_nonfinite it is skipped (params, moments and, at the first
    QAT step, the observers untouched), the step still counts, and a resume after it is bit-exact."""
    cfg, tcfg, data = _nonfinite_setup([3], skip_nonfinite=1, qat_start=qat_start)
    at3, at4 = _run(cfg, tcfg, data, stop_at=3), _run(cfg, tcfg, data, stop_at=4)
    assert at4.step == 4 and at4.skipped == [3] and at3.skipped == []
    _assert_same(at3, at4)
    assert any(not np.array_equal(at4.params[n], _run(cfg, tcfg, data, stop_at=5).params[n])
               for n in at4.params)
    path = tmp_path / "skip.safetensors"
    tr.save_training(path, cfg, tcfg, at4)
    _, tcfg2, state = tr.load_training(path)
    assert state.skipped == [3] and tcfg2.skip_nonfinite == 1
    resumed, full = _run(cfg, tcfg2, data, state=state), _run(cfg, tcfg, data)
    assert resumed.step == full.step == 10 and full.skipped == resumed.skipped == [3]
    _assert_same(resumed, full)


def test_skip_budget_counts_across_a_resume(tmp_path):
    cfg, tcfg, data = _nonfinite_setup([2, 6], skip_nonfinite=1)
    half = _run(cfg, tcfg, data, stop_at=4)
    path = tmp_path / "half.safetensors"
    tr.save_training(path, cfg, tcfg, half)
    _, tcfg2, state = tr.load_training(path)
    with pytest.raises(tr.TrainingDiverged, match=r"step 6: .*1 bad batches skipped before"):
        _run(cfg, tcfg2, data, state=state)
    assert state.step == 6 and state.skipped == [2]
    with pytest.raises(ValueError, match="skip_nonfinite"):
        tr.TrainConfig(skip_nonfinite=-1)


def test_cli_nonfinite_stops_saves_and_resumes_with_skip(tmp_path, capsys):
    """A row of 3e38 features (finite, valid data) overflows the forward pass: the run stops at the
    first batch holding it, saves the last good state, and --resume --skip-nonfinite gets past it."""
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    x = rng.standard_normal((20, 5, 4)).astype(np.float32)
    x[7] = 3e38
    data = tmp_path / "overflow.npz"
    np.savez(data, x=x, y=y, x_val=x[:6] * 0, y_val=y[:6])   # a clean held-out split
    ckpt = tmp_path / "m.safetensors"
    argv = ["train", "--data", str(data), "--no-standardize", "--steps", "6", "--batch-size", "8",
            "--out", str(ckpt), "--quiet", *SMALL]
    with np.errstate(over="ignore", invalid="ignore"):
        assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("qz: error: training stopped: step ") and "non-finite" in err and str(ckpt) in err
    assert len(err.splitlines()) == 1
    _, _, stopped = tr.load_training(ckpt)
    assert stopped.step < 6 and stopped.skipped == []
    with np.errstate(over="ignore", invalid="ignore"):
        assert main(["train", "--resume", str(ckpt), "--skip-nonfinite", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["step"] == 6 and stopped.step in res["skipped_nonfinite"]
    _, _, final = tr.load_training(ckpt)
    assert final.skipped == res["skipped_nonfinite"]
    assert all(np.all(np.isfinite(p)) for p in final.params.values())


# ----------------------------------------------------------------------------
# malformed inputs: one line, exit 1
# ----------------------------------------------------------------------------
def _wav(path, rate=16000, bits=16, channels=1, seconds=1.0, float_fmt=False, claim=None, nan=False):
    """A RIFF/WAVE file of a 440 Hz tone; `claim` overrides the data chunk's size field."""
    t = np.arange(int(rate * seconds)) / rate
    x = np.repeat(0.3 * np.sin(2 * np.pi * 440 * t)[:, None], channels, axis=1)   # (N, channels)
    if nan:
        x[len(x) // 2] = np.nan
    if float_fmt:
        raw, bits = x.astype("<f4").tobytes(), 32
    elif bits == 8:
        raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()           # 8-bit PCM is unsigned
    elif bits == 24:
        v = np.round(x * (2 ** 23 - 1)).astype("<i4")
        raw = v.reshape(-1, 1).view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = np.round(x * (2 ** (bits - 1) - 1)).astype(f"<i{bits // 8}").tobytes()
    block = channels * bits // 8
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 3 if float_fmt else 1, channels, rate,
                      rate * block, block, bits)
    body = b"WAVE" + fmt + struct.pack("<4sI", b"data", len(raw) if claim is None else claim) + raw
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


class World:
    """Files for the corpus: good models of every kind, good data, and the bad inputs."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    w = World()
    w.d = d
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    w.feats = d / "feats.npz"                                     # like wav features: 49 frames x 13
    np.savez(w.feats, x=rng.standard_normal((40, 49, 13)).astype(np.float32) + y[:, None, None], y=y)
    w.clf = d / "clf.safetensors"
    assert main(["train", "--data", str(w.feats), "--steps", "2", "--out", str(w.clf), "--quiet",
                 *SMALL]) == 0
    assert main(["quantize", str(w.clf), "--calibrate", "1"]) == 0
    w.ptq = d / "clf_ptq.safetensors"
    assert main(["export", str(w.ptq), "--int8", "--fp32"]) == 0
    w.int8, w.fp32 = d / "clf_ptq.int8.safetensors", d / "clf_ptq.fp32.safetensors"
    w.text = d / "text.txt"
    w.text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 20)
    w.lm = d / "lm.safetensors"
    assert main(["train", "--data", str(w.text), "--seq-len", "16", "--steps", "1", "--out", str(w.lm),
                 "--quiet", *SMALL]) == 0
    # broken checkpoints
    w.truncated = d / "truncated.safetensors"
    w.truncated.write_bytes(w.clf.read_bytes()[:-100])
    w.empty_file = d / "empty.safetensors"
    w.empty_file.write_bytes(b"")
    w.folder = d / "folder"
    w.folder.mkdir()
    # bad data
    npz = {
        "wrong_dim": dict(x=np.zeros((10, 49, 7), np.float32), y=np.arange(10) % 2),
        "long_seq": dict(x=np.zeros((10, 60, 13), np.float32), y=np.arange(10) % 2),
        "nan": dict(x=np.where(np.eye(49, 13)[None] > 0, np.nan, 1.0).repeat(10, 0).astype(np.float32),
                    y=np.arange(10) % 2),
        "inf": dict(x=np.full((10, 49, 13), np.inf, np.float32), y=np.arange(10) % 2),
        "no_arrays": {},
        "empty_x": dict(x=np.zeros((0, 49, 13), np.float32), y=np.zeros(0, np.int64)),
        "no_labels": dict(x=np.zeros((10, 49, 13), np.float32)),
        "float_labels": dict(x=np.zeros((10, 49, 13), np.float32), y=np.full(10, 0.5)),
        "label_shape": dict(x=np.zeros((10, 49, 13), np.float32), y=np.zeros((10, 2), np.int64)),
        "negative_labels": dict(x=np.zeros((10, 49, 13), np.float32), y=-np.ones(10, np.int64)),
        "tokens_300": dict(x=np.full((10, 16), 300, np.int64), y=np.full((10, 16), 300, np.int64)),
        "tokens_long": dict(x=np.ones((10, 200), np.int64), y=np.ones((10, 200), np.int64)),
        "string_x": dict(x=np.array([["a"]]), y=np.zeros(1, np.int64)),
    }
    w.npz = {}
    for name, arrays in npz.items():
        w.npz[name] = d / f"{name}.npz"
        np.savez(w.npz[name], **arrays)
    w.not_npz = d / "not.npz"
    w.not_npz.write_text("plain text, not a zip")
    w.empty_txt = d / "empty.txt"
    w.empty_txt.write_bytes(b"")
    w.trace = d / "trace.csv"
    w.trace.write_text("when,battery\n1,50\n")
    w.json_cfg = d / "cfg.json"
    w.json_cfg.write_text("[1, 2]")
    # wav files: unusual but valid ...
    w.good_wavs = {name: _wav(d / f"{name}.wav", **kw) for name, kw in {
        "pcm8": dict(bits=8), "pcm24": dict(bits=24), "pcm32": dict(bits=32), "float32": dict(float_fmt=True),
        "rate96k": dict(rate=96000), "rate8k": dict(rate=8000), "stereo": dict(channels=2),
        "short": dict(seconds=0.1), "long": dict(seconds=3.0)}.items()}
    raw = _wav(d / "tmp.wav").read_bytes()                       # fmt fields: 22 channels, 24 rate, 34 bits
    w.good_wavs["bits12"] = d / "bits12.wav"                      # 12 valid bits in a 16-bit container
    w.good_wavs["bits12"].write_bytes(raw[:34] + struct.pack("<H", 12) + raw[36:])
    # ... and malformed
    w.bad_wavs = {
        "empty": d / "empty.wav", "truncated": _wav(d / "truncated.wav", claim=10 ** 6),
        "no_samples": _wav(d / "no_samples.wav", seconds=0),
        "nan": _wav(d / "nan.wav", float_fmt=True, nan=True),
        "adpcm": d / "adpcm.wav", "no_channels": d / "no_channels.wav", "not_wav": d / "not_wav.wav",
        "folder": d / "folder.wav"}
    w.bad_wavs["empty"].write_bytes(b"")
    w.bad_wavs["adpcm"].write_bytes(raw[:20] + struct.pack("<H", 2) + raw[22:])     # compressed: unsupported
    w.bad_wavs["no_channels"].write_bytes(raw[:22] + struct.pack("<H", 0) + raw[24:])
    w.bad_wavs["not_wav"].write_text("ID3 this is an mp3, honest")
    w.bad_wavs["folder"].mkdir()
    w.good_wav = w.good_wavs["pcm24"]
    w.wav_dir_bad = d / "wavs_bad"
    w.wav_dir_bad.mkdir()
    _wav(w.wav_dir_bad / "yes_0.wav")
    _wav(w.wav_dir_bad / "no_0.wav", claim=10 ** 6)                 # one broken file in a folder
    return w


def _p(key, *rest):
    """A lazily built argv: world attributes by name, 'npz:<name>' / 'wav:<name>' for the bad files."""
    def build(w):
        out = []
        for a in (key, *rest):
            if a.startswith("@npz:"):
                out.append(str(w.npz[a[5:]]))
            elif a.startswith("@wav:"):
                out.append(str(w.bad_wavs[a[5:]]))
            elif a.startswith("@"):
                out.append(str(getattr(w, a[1:])))
            else:
                out.append(a)
        return out
    return build


RUN = ("run", "@fp32", "--governor", "off", "--inputs")
BAD_INPUTS = {
    # train: data
    "train wrong feature dim (resume)": _p("train", "--resume", "@clf", "--data", "@npz:wrong_dim"),
    "train sequences longer than max_len": _p("train", "--resume", "@clf", "--data", "@npz:long_seq"),
    "train text data for a classifier": _p("train", "--resume", "@clf", "--data", "@text"),
    "train token ids beyond the vocabulary": _p("train", "--resume", "@lm", "--data", "@npz:tokens_300"),
    "train NaN features": _p("train", "--data", "@npz:nan"),
    "train Inf features": _p("train", "--data", "@npz:inf"),
    "train npz without arrays": _p("train", "--data", "@npz:no_arrays"),
    "train empty arrays": _p("train", "--data", "@npz:empty_x"),
    "train missing labels": _p("train", "--data", "@npz:no_labels"),
    "train float labels": _p("train", "--data", "@npz:float_labels"),
    "train labels of the wrong shape": _p("train", "--data", "@npz:label_shape"),
    "train negative labels": _p("train", "--data", "@npz:negative_labels"),
    "train string features": _p("train", "--data", "@npz:string_x"),
    "train not an npz": _p("train", "--data", "@not_npz"),
    "train empty text": _p("train", "--data", "@empty_txt"),
    "train text too short for seq_len": _p("train", "--data", "@text", "--seq-len", "2000"),
    "train a folder without wavs": _p("train", "--data", "@folder"),
    "train csv frames that do not fold": _p("train", "--data", str(DIGITS), "--frames", "5"),
    # train: options
    "train negative steps": _p("train", "--data", "@feats", "--steps", "-5"),
    "train batch size 0": _p("train", "--data", "@feats", "--batch-size", "0"),
    "train lr nan": _p("train", "--data", "@feats", "--lr", "nan"),
    "train unknown preset": _p("train", "--data", "@feats", "--preset", "huge"),
    "train malformed --set": _p("train", "--data", "@feats", "--set", "d_model"),
    "train unknown config key": _p("train", "--data", "@feats", "--set", "colour=3"),
    "train heads do not divide d_model": _p("train", "--data", "@feats", "--set", "n_heads=3"),
    "train --config not an object": _p("train", "--data", "@feats", "--config", "@json_cfg"),
    "train --top-k-choices beyond experts": _p("train", "--data", "@feats", "--top-k-choices", "1,9", *SMALL),
    "train --top-k-choices 0": _p("train", "--data", "@feats", "--top-k-choices", "0", *SMALL),
    "train --val-fraction 1.5": _p("train", "--data", "@feats", "--val-fraction", "1.5"),
    "train --seq-len 0": _p("train", "--data", "@text", "--seq-len", "0"),
    "train --frames 0": _p("train", "--data", str(DIGITS), "--frames", "0"),
    "train --skip-nonfinite -1": _p("train", "--data", "@feats", "--skip-nonfinite", "-1"),
    # train: checkpoints
    "train resume a text file": _p("train", "--resume", "@text", "--data", "@feats"),
    "train resume a truncated checkpoint": _p("train", "--resume", "@truncated", "--data", "@feats"),
    "train resume an int8 export": _p("train", "--resume", "@int8", "--data", "@feats"),
    "train resume a PTQ model without optimizer state": _p("train", "--resume", "@ptq", "--data", "@feats"),
    "train resume a folder": _p("train", "--resume", "@folder", "--data", "@feats"),
    "train resume past --steps": _p("train", "--resume", "@clf", "--data", "@feats", "--steps", "1"),
    # eval
    "eval --moe-top-k 0": _p("eval", "@clf", "--data", "@feats", "--moe-top-k", "0"),
    "eval --moe-top-k beyond experts": _p("eval", "@clf", "--data", "@feats", "--moe-top-k", "5"),
    "eval wrong feature dim": _p("eval", "@clf", "--data", "@npz:wrong_dim"),
    "eval sequences longer than max_len": _p("eval", "@clf", "--data", "@npz:long_seq"),
    "eval classifier data for an LM": _p("eval", "@lm", "--data", "@feats"),
    "eval token ids beyond the vocabulary": _p("eval", "@lm", "--data", "@npz:tokens_300"),
    "eval LM sequences longer than max_len": _p("eval", "@lm", "--data", "@npz:tokens_long"),
    "eval a text file as checkpoint": _p("eval", "@text", "--data", "@feats"),
    "eval an empty checkpoint file": _p("eval", "@empty_file", "--data", "@feats"),
    "eval a folder as checkpoint": _p("eval", "@folder", "--data", "@feats"),
    "eval an export as checkpoint": _p("eval", "@fp32", "--data", "@feats"),
    "eval --split test without one": _p("eval", "@clf", "--data", "@feats", "--split", "test"),
    "eval --batch-size 0": _p("eval", "@clf", "--data", "@feats", "--batch-size", "0"),
    "eval --max-batches 0": _p("eval", "@clf", "--data", "@feats", "--max-batches", "0"),
    "eval --warps out of range": _p("eval", "@clf", "--data", "@feats", "--warps", "0.9,2"),
    "eval --warps on an LM": _p("eval", "@lm", "--data", "@text", "--warps", "1"),
    # finetune
    "finetune a text file as base": _p("finetune", "@text", "--data", "@feats"),
    "finetune an LM as base": _p("finetune", "@lm", "--data", "@feats"),
    "finetune an export as base": _p("finetune", "@int8", "--data", "@feats"),
    "finetune wrong feature dim": _p("finetune", "@clf", "--data", "@npz:wrong_dim"),
    "finetune sequences longer than max_len": _p("finetune", "@clf", "--data", "@npz:long_seq"),
    "finetune missing data": _p("finetune", "@clf", "--data", "nope/"),
    "finetune a folder without wavs": _p("finetune", "@clf", "--data", "@folder"),
    "finetune a folder with a truncated wav": _p("finetune", "@clf", "--data", "@wav_dir_bad"),
    "finetune text as data": _p("finetune", "@clf", "--data", "@text"),
    "finetune --seeds 0": _p("finetune", "@clf", "--data", "@feats", "--seeds", "0"),
    "finetune --val-fraction 0": _p("finetune", "@clf", "--data", "@feats", "--val-fraction", "0"),
    "finetune --steps 0": _p("finetune", "@clf", "--data", "@feats", "--steps", "0"),
    "finetune --batch-size 0": _p("finetune", "@clf", "--data", "@feats", "--batch-size", "0"),
    "finetune --top-k-choices x": _p("finetune", "@clf", "--data", "@feats", "--top-k-choices", "x"),
    "finetune unknown plan": _p("finetune", "@clf", "--data", "@feats", "--plan", "most"),
    "finetune --warps not numbers": _p("finetune", "@clf", "--data", "@feats", "--warps", "a,b"),
    # quantize
    "quantize --calibrate 0": _p("quantize", "@clf", "--calibrate", "0"),
    "quantize --calibrate -3": _p("quantize", "@clf", "--calibrate", "-3"),
    "quantize --batch-size 0": _p("quantize", "@clf", "--batch-size", "0"),
    "quantize --percentile 150": _p("quantize", "@clf", "--observer", "percentile", "--percentile", "150"),
    "quantize a text file": _p("quantize", "@text"),
    "quantize an export": _p("quantize", "@int8", "--data", "@feats"),
    "quantize wrong feature dim": _p("quantize", "@clf", "--data", "@npz:wrong_dim"),
    # export
    "export int8 without ranges": _p("export", "@clf", "--int8"),
    "export a truncated checkpoint": _p("export", "@truncated"),
    "export an export": _p("export", "@int8", "--fp32"),
    "export into a file as folder": _p("export", "@ptq", "--fp32", "--out-dir", "@text"),
    # run
    "run an LM": _p("run", "@lm", "--inputs", "@wav:truncated"),
    "run a text file as model": _p("run", "@text", "--inputs", "@wav:truncated"),
    "run a truncated model": _p("run", "@truncated", "--inputs", "@wav:truncated"),
    "run two fp32 models": _p("run", "@clf", "@fp32", "--inputs", "@wav:truncated"),
    "run models of different configs": _p("run", "@int8", "@lm", "--inputs", "@wav:truncated"),
    "run an empty wav": _p(*RUN, "@wav:empty"),
    "run a truncated wav": _p(*RUN, "@wav:truncated"),
    "run a wav without samples": _p(*RUN, "@wav:no_samples"),
    "run a wav with NaN samples": _p(*RUN, "@wav:nan"),
    "run an ADPCM wav": _p(*RUN, "@wav:adpcm"),
    "run a wav with zero channels": _p(*RUN, "@wav:no_channels"),
    "run not a wav": _p(*RUN, "@wav:not_wav"),
    "run a folder as wav": _p(*RUN, "@wav:folder"),
    "run a text file as input": _p(*RUN, "@text"),
    "run --governor bad trace": _p("run", "@fp32", "--governor", "@trace", "--inputs", "@wav:truncated"),
    "run --governor missing trace": _p("run", "@fp32", "--governor", "nope.csv", "--inputs",
                                       "@wav:truncated"),
    "run --charging maybe": _p("run", "@fp32", "--charging", "maybe", "--inputs", "@wav:truncated"),
    "run --battery 150": _p("run", "@fp32", "--battery", "150", "--inputs", "@good_wav", "@good_wav"),
    "run --temp nan": _p("run", "@fp32", "--temp", "nan", "--inputs", "@good_wav", "@good_wav"),
    "run --tick -1": _p("run", "@fp32", "--tick", "-1", "--inputs", "@wav:truncated"),
    # info
    "info a text file": _p("info", "@text"),
    "info a truncated checkpoint": _p("info", "@truncated"),
    "info an empty file": _p("info", "@empty_file"),
    "info a folder": _p("info", "@folder"),
    "info a missing file": _p("info", "nope.safetensors"),
    # generate
    "generate from a classifier": _p("generate", "@clf"),
    "generate an empty prompt": _p("generate", "@lm", "--prompt", ""),
    "generate --sample-top-k 0": _p("generate", "@lm", "--sample-top-k", "0"),
    "generate --temperature -1": _p("generate", "@lm", "--temperature", "-1"),
    "generate --max-new-tokens -1": _p("generate", "@lm", "--max-new-tokens", "-1"),
    "generate from an export": _p("generate", "@int8"),
    "generate from a truncated file": _p("generate", "@truncated"),
}


def _exit_code(argv):
    try:
        return main(argv)
    except SystemExit as e:                     # argparse
        return e.code


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_malformed_input_is_one_line_and_exit_1(name, world, capsys, monkeypatch):
    monkeypatch.chdir(world.d)                  # default outputs (runs/...) land in the temp folder
    argv = BAD_INPUTS[name](world)
    code = _exit_code(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, (argv, code, err)
    assert err.startswith("qz: error:") and len(err.splitlines()) == 1, (argv, err)


def test_the_corpus_is_large():
    assert len(BAD_INPUTS) >= 30


def test_unusual_but_valid_wavs_are_classified(world, capsys):
    names = sorted(world.good_wavs)
    code = main(["run", str(world.fp32), "--governor", "off", "--json", "--inputs",
                 *(str(world.good_wavs[n]) for n in names)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [Path(r["input"]).stem for r in json.loads(out)["results"]] == names


def test_run_serves_the_inputs_after_a_bad_one(world, capsys):
    good = str(world.good_wavs["pcm24"])
    code = main(["run", str(world.fp32), "--governor", "off", "--json", "--inputs",
                 str(world.bad_wavs["truncated"]), good, str(world.bad_wavs["not_wav"]), good])
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert code == 1 and res["failed"] == 2 and [r["input"] for r in res["results"]] == [good, good]
    assert err.count("qz: error:") == 2 and "Traceback" not in err


# ----------------------------------------------------------------------------
# governor soak: garbage sensors, concurrent callers
# ----------------------------------------------------------------------------
GARBAGE = ["", "abc", "nan", "inf", "-1", "1e400", "\x00\xff", "50\n60", "  42  ", "7" * 5000]


def _scribble(root, rng, stop):
    """Rewrite the fake sysfs/proc files with valid, garbage, out-of-range or missing contents."""
    bat, zone, stat = (root / "sys/class/power_supply/BAT0", root / "sys/class/thermal/thermal_zone0",
                       root / "proc")
    files = {bat / "capacity": lambda: str(rng.integers(-10, 120)),
             bat / "status": lambda: str(rng.choice(["Charging", "Discharging", "Full", "Unknown", "??"])),
             bat / "type": lambda: str(rng.choice(["Battery", "Mains"])),
             zone / "temp": lambda: str(int(rng.integers(-60_000, 200_000))),
             stat / "stat": lambda: "cpu " + " ".join(str(v) for v in rng.integers(-5, 10 ** 6, 8))}
    while not stop.is_set():
        path = list(files)[rng.integers(len(files))]
        choice = rng.random()
        try:
            if path.is_dir():
                path.rmdir()
            if choice < 0.15:
                path.unlink(missing_ok=True)
            elif choice < 0.2:                 # a directory where a file should be
                path.unlink(missing_ok=True)
                path.mkdir(parents=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                text = files[path]() if choice < 0.6 else str(rng.choice(GARBAGE))
                path.write_bytes(text.encode() if choice < 0.95 else rng.bytes(32))
        except OSError:
            pass


def test_governor_soak_with_garbage_sensors(tmp_path):
    duration, dwell = 2.5, 0.25
    rng = np.random.default_rng(7)
    gov = Governor(SysfsSensors(str(tmp_path), loadavg=None), Thresholds(min_dwell_s=dwell),
                   tick_s=0.002, top_k=2)
    stop, errors, seen = threading.Event(), [], []

    def caller():
        n, modes = 0, set()
        try:
            while not stop.is_set():
                p = gov.plan()
                n, modes = n + 1, modes | {p.mode}
                if p.mode not in MODES or p.precision not in ("fp32", "int8") or p.top_k < 1:
                    errors.append(p)
        except Exception as e:                 # noqa: BLE001 -- any exception fails the soak
            errors.append(e)
        seen.append((n, modes))

    threads = [threading.Thread(target=_scribble, args=(tmp_path, rng, stop))]
    threads += [threading.Thread(target=caller) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert errors == [], errors[:3]
    assert len(seen) == 4 and all(n > 100 for n, _ in seen), seen
    assert len(set().union(*(m for _, m in seen))) >= 2          # the garbage did move the governor
    switches = gov.switches
    # toward more compute needs min_dwell in the mode, so ups <= duration / dwell + 1; each step
    # down needs an earlier step up (or the start, 2 ranks above critical)
    ups = sum(MODES.index(s.to_mode) < MODES.index(s.from_mode) for s in switches)
    assert ups <= elapsed / dwell + 1, ups
    assert len(switches) <= 2 * (elapsed / dwell + 1) + 2, len(switches)
