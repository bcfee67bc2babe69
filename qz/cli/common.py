"""What the commands share: the one-line error type, argument parsing helpers, data and
config from arguments, the governor's options."""
from __future__ import annotations

import argparse
import json
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..config import PRESETS, Config
from ..data import apply_input_norm, load_dataset
from ..errors import InputError
from ..train import (
    TrainConfig,
)

DEFAULT_TEXT = Path("data") / "kjv.txt.gz"


class UserError(InputError):
    """A bad command line, reported as one line and exit code 1."""


class _Parser(argparse.ArgumentParser):
    # argparse's own errors (unknown option, bad int) also get one line and exit code 1
    def error(self, message):
        self.exit(1, f"qz: error: {message} (see: {self.prog} --help)\n")


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _parse_sets(items):
    """--set key=value pairs -> dict, values parsed as JSON where they can be (4, true, null)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _model_config(args, train_data, val_data):
    """Config from --config/--preset, with the data's sizes filled in, then --set overrides."""
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"--config {args.config}: {e}") from None
        if not isinstance(base, dict):
            raise UserError(f"--config {args.config}: expected a JSON object")
    else:
        name = args.preset or ("kws" if train_data.kind == "classifier" else "tiny_lm")
        if name not in PRESETS:
            raise UserError(f"--preset {name!r}: unknown (choose from {', '.join(sorted(PRESETS))})")
        base = dict(PRESETS[name])
    T = train_data.seq_len
    if train_data.kind == "classifier":
        n_classes = int(max(train_data.y.max(), val_data.y.max() if val_data is not None else 0)) + 1
        base.update(input_dim=int(train_data.x.shape[2]), n_classes=max(2, n_classes), max_len=T)
        base.pop("vocab_size", None)
        base.pop("causal", None)
    else:
        arrays = getattr(train_data, "x", None)
        vocab = 256 if arrays is None else int(max(arrays.max(), train_data.y.max())) + 1
        base.update(vocab_size=max(vocab, base.get("vocab_size") or 0), max_len=max(T, 1))
        base.pop("input_dim", None)
        base.pop("n_classes", None)
    base.update(_parse_sets(args.set))
    return Config.from_dict(base)


def int_list(text, flag):
    """'1,2' -> [1, 2]; one clear error for anything else."""
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected a list like 1,2") from None


def _train_config(args, resumed=None):
    d = resumed.to_dict() if resumed is not None else {}
    for key in ("steps", "batch_size", "lr", "warmup", "weight_decay", "clip", "aux_coef", "seed",
                "eval_every", "eval_batches", "ckpt_every", "qat_start", "qat_freeze", "ema"):
        value = getattr(args, key, None)
        if value is not None:
            d[key] = value
    if args.top_k_choices is not None:
        d["top_k_choices"] = int_list(args.top_k_choices, "--top-k-choices")
    if getattr(args, "budget_choices", None) is not None:
        d["budget_choices"] = int_list(args.budget_choices, "--budget-choices")
    return TrainConfig.from_dict(d)


def _emit(args, result, lines):
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in lines:
            print(line)


def _unigram_entropy(train_data):
    """Cross-entropy (nats) of the best context-free guess: the baseline to beat."""
    y = train_data.y if hasattr(train_data, "y") else train_data.tokens
    counts = np.bincount(np.asarray(y).reshape(-1)).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------
def load_data_for(path, cfg_mode, data_opts, seed, input_norm=None):
    """(train, val) as a model saw them: same split options, same input scaling."""
    train_data, val_data = load_dataset(path, seq_len=data_opts.get("seq_len", 64), seed=seed,
                                        val_fraction=data_opts.get("val_fraction", 0.1),
                                        frames=data_opts.get("frames", 1))
    if cfg_mode is not None and train_data.kind != cfg_mode:
        raise UserError(f"{path} is data for a {train_data.kind}, but the model is a {cfg_mode}")
    return apply_input_norm(train_data, input_norm), apply_input_norm(val_data, input_norm)


def _check_data_fits(cfg, data):
    if data.seq_len > cfg.max_len:
        raise UserError(f"the data's sequences ({data.seq_len}) are longer than the model's "
                        f"max_len {cfg.max_len}")
    if data.kind != cfg.mode:
        raise UserError(f"the data is for a {data.kind} but the model is a {cfg.mode}")
    if cfg.mode == "classifier" and data.x.shape[2] != cfg.input_dim:
        raise UserError(f"the data has {data.x.shape[2]} features per frame, "
                        f"the model expects {cfg.input_dim}")


def _data_context(meta, data_arg, what):
    """(data path, data options, seed) a checkpoint was trained with; --data overrides the path."""
    data_opts = meta.get("data", {}) if isinstance(meta.get("data"), dict) else {}
    seed = meta.get("train", {}).get("seed", 0) if isinstance(meta.get("train"), dict) else 0
    data_path = data_arg or data_opts.get("path")
    if data_path is None:
        raise UserError(f"--data: give {what}")
    return data_path, data_opts, seed


def _warps(text, cfg=None):
    """--warps '0.9,1,1.1' -> a tuple of warp factors (None when not given); speech classifiers only."""
    if text is None:
        return None
    from ..tta import parse_warps
    if cfg is not None and cfg.mode != "classifier":
        raise UserError("--warps: test-time warps are for classifiers on speech features, "
                        "not language models")
    try:
        return parse_warps(text)
    except ValueError as e:
        raise UserError(f"--{e}") from None


def _mix_arg(text):
    """'DATA[:SHARE]' -> (path or None, share or None); a suffix that is not a number is part of the path."""
    if not text:
        return None, None
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, None


def _add_governor_args(p, default, note=""):
    """--governor, the overrides and --tick, shared by `qz run` and `qz generate`."""
    p.add_argument("--governor", default=default, help="auto (read this device's sensors), off (always the "
                   "best loaded precision at the config top_k), or a trace file (CSV/JSON); default "
                   f"{default}{note}")
    p.add_argument("--battery", type=float, help="override the battery level, percent")
    p.add_argument("--temp", type=float, help="override the temperature, degrees C")
    p.add_argument("--charging", help="override charging: yes or no")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between sensor reads (default 1)")


def _governor(args, top_k):
    """The Governor for --governor (None for off), after checking the overrides."""
    from ..governor import Governor
    for flag, value, lo, hi in (("--battery", args.battery, 0, 100), ("--temp", args.temp, -273.15, 1000)):
        if value is not None and not lo <= value <= hi:   # else every request would fail at the governor
            raise UserError(f"{flag} {value}: expected a number in [{lo}, {hi}]")
    if args.governor == "off":
        if any(v is not None for v in (args.battery, args.temp, args.charging)):
            raise UserError("--battery/--temp/--charging need a governor: add --governor auto")
        return None
    return Governor(_sensors(args), top_k=top_k, tick_s=args.tick)


def _sensors(args):
    """The governor's sensor source for `qz run`: live sysfs, a replayed trace, plus overrides."""
    from ..governor import (
        SysfsSensors,
        TraceSensors,
        load_trace,
        override,
        parse_charging,
    )
    if args.governor == "auto":
        inner = SysfsSensors()
    else:
        rows = load_trace(args.governor)
        t0 = time.monotonic()
        inner = TraceSensors(rows, clock=lambda: rows[0][0] + (time.monotonic() - t0))
    charging = parse_charging(args.charging) if args.charging is not None else None

    class Overridden:
        def read(self):
            return override(inner.read(), battery=args.battery, charging=charging, temp=args.temp)
    return Overridden()


WARPS_HELP = ("also score with test-time warps: average the softmax over these vocal tract length warps "
              "of each clip, e.g. 0.9,1,1.1 (speech features; one forward pass per warp; default: off)")


@contextmanager
def stop_requested():
    """Ctrl-C or SIGTERM while training: the yielded flag turns True, the loop finishes the step in
    flight and the caller saves; the previous handlers come back on exit (also on an exception).
    -> a dict {"flag": bool} (a callable would do: should_stop=lambda: stop["flag"])."""
    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
