"""qz train: train a model from scratch or resume one."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..config import PRESETS, active_params, n_params
from ..data import apply_input_norm, fit_input_norm
from ..optim import adamw_init
from ..train import (
    TrainConfig,
    TrainingDiverged,
    TrainState,
    load_training,
    save_training,
    train,
)
from .common import (
    DEFAULT_TEXT,
    UserError,
    _check_data_fits,
    _emit,
    _model_config,
    _train_config,
    _unigram_entropy,
    load_data_for,
    stop_requested,
)


def cmd_train(args):
    out = Path(args.out) if args.out else None
    if args.resume:
        cfg, tcfg_old, state = load_training(args.resume)
        tcfg = _train_config(args, tcfg_old)
        if tcfg.steps < state.step:
            raise UserError(f"--steps {tcfg.steps}: the checkpoint is already at step {state.step}")
        out = out or Path(args.resume)
        data_path = args.data or state.extra.get("data", {}).get("path")
        if data_path is None:
            raise UserError("--data: give the data set the checkpoint was trained on")
        train_data, val_data = load_data_for(data_path, cfg.mode, state.extra.get("data", {}), tcfg.seed,
                                             state.extra.get("input_norm"))
        _check_data_fits(cfg, train_data)
    else:
        tcfg = _train_config(args)
        data_path = args.data or str(DEFAULT_TEXT)
        data_opts = {"path": data_path, "seq_len": args.seq_len, "frames": args.frames,
                     "val_fraction": args.val_fraction}
        train_data, val_data = load_data_for(data_path, None, data_opts, tcfg.seed)
        extra = {"data": data_opts}
        if train_data.kind == "classifier" and not args.no_standardize:
            extra["input_norm"] = fit_input_norm(train_data, args.utterance_norm)   # training split only
            train_data = apply_input_norm(train_data, extra["input_norm"])
            val_data = apply_input_norm(val_data, extra["input_norm"])
        if getattr(train_data, "labels", None):
            extra["labels"] = train_data.labels
        cfg = _model_config(args, train_data, val_data)
        _check_data_fits(cfg, train_data)
        from ..model import init_params
        params = init_params(cfg, seed=tcfg.seed, dtype=np.dtype(args.dtype))
        state = TrainState(params=params, opt=adamw_init(params), extra=extra)
        out = out or Path("runs") / f"{Path(data_path).name.split('.')[0]}.safetensors"
    if args.skip_nonfinite is not None:   # not part of the math: may change on --resume
        tcfg = TrainConfig.from_dict({**tcfg.to_dict(), "skip_nonfinite": args.skip_nonfinite})
    for flag, values in (("--top-k-choices", tcfg.top_k_choices), ("--budget-choices", tcfg.budget_choices)):
        bad = [k for k in values if not 1 <= k <= cfg.n_experts]
        if bad:   # else the run fails only at the first step that draws it
            raise UserError(f"{flag}: {bad[0]} is not in 1..{cfg.n_experts} (the model's experts)")
    out.parent.mkdir(parents=True, exist_ok=True)

    if not args.json:
        print(f"qz train: {cfg.mode} model, {n_params(cfg):,} parameters "
              f"({active_params(cfg):,} active per token), data {data_path} "
              f"({len(train_data):,} train examples), {tcfg.steps} steps -> {out}", flush=True)
    t0 = time.perf_counter()
    with stop_requested() as stop:     # the final save runs under it too: a second Ctrl-C cannot cut it short
        try:
            state = train(cfg, tcfg, train_data, val_data, state=state, ckpt_path=out,
                          stop_at=args.stop_at, progress=not (args.quiet or args.json),
                          log=None if args.json else print, should_stop=lambda: stop["flag"])
            save_training(out, cfg, tcfg, state)
        except TrainingDiverged as e:
            save_training(out, cfg, tcfg, state)   # the bad step changed nothing: this is the last good state
            raise UserError(f"training stopped: {e}; saved it to {out} (--resume it with --skip-nonfinite N "
                            "to skip such batches)") from None
    seconds = time.perf_counter() - t0
    result = {"checkpoint": str(out), "step": state.step, "steps": tcfg.steps, "seconds": round(seconds, 2),
              "interrupted": stop["flag"], "skipped_nonfinite": state.skipped,
              "unigram_baseline_loss": round(_unigram_entropy(train_data), 4),
              "final": state.history[-1] if state.history else None}
    lines = []
    if stop["flag"]:
        lines.append(f"interrupted at step {state.step}; saved {out}. "
                     f"Continue with: qz train --resume {out} --data {data_path}")
    else:
        lines.append(f"saved {out} at step {state.step}/{tcfg.steps} in {seconds:.1f} s")
    if result["final"]:
        f = result["final"]
        lines.append(f"val loss {f['loss']:.4f} (unigram baseline {result['unigram_baseline_loss']:.4f}), "
                     f"accuracy {f['accuracy']:.4f}")
    _emit(args, result, lines)
    return 130 if stop["flag"] else 0


TRAIN_EPILOG = """examples:
  qz train                                   # character LM on data/kjv.txt.gz, preset tiny_lm
  qz train --data feats.npz --steps 2000     # any .npz with x (N,T,F) float + y (N,) labels
  qz train --data data/digits.csv.gz --frames 8 --val-fraction 0.2 --preset digits
  qz train --preset char_lm --top-k-choices 1,2 --out runs/lm.safetensors
  qz train --resume runs/lm.safetensors --steps 4000   # continue (bit-exact) and extend

Ctrl-C finishes the current step, saves a checkpoint and prints how to resume.
"""


def add_parser(sub):
    t = sub.add_parser("train", help="train a model on an .npz or a text file",
                       description="Train a model from scratch or resume one. The model's sizes that "
                       "depend on the data (input_dim, n_classes, vocab_size, max_len) are read off "
                       "the data.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", help="an .npz with x and y, a CSV of features with a label column, a folder "
                   "of wav files (one sub-folder per label, or files named <label>_*.wav; 49 x 13 MFCC), "
                   f"or a .txt/.txt.gz for a character LM (default {DEFAULT_TEXT})")
    t.add_argument("--preset", help=f"model preset: {', '.join(sorted(PRESETS))} "
                   "(default kws for features, tiny_lm for text)")
    t.add_argument("--config", help="a JSON file with a full model config (instead of --preset)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one config key, e.g. --set n_layers=4")
    t.add_argument("--seq-len", type=int, default=64, help="window length for text data (default 64)")
    t.add_argument("--frames", type=int, default=1,
                   help="CSV data: fold each row's features into this many frames (8 for 8x8 images)")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of rows held out when the file has no x_val/y_val (default 0.1)")
    t.add_argument("--utterance-norm", choices=["none", "cmn", "cmvn", "speech_cmvn"], default="none",
                   help="per-clip normalisation over time before the global scaling: cmn subtracts each "
                   "clip's mean, cmvn also divides by its std (helps speech from unseen voices/mics), "
                   "speech_cmvn takes both over the clip's speech frames only (what the command model uses)")
    t.add_argument("--no-standardize", action="store_true",
                   help="feed classifier features as they are (default: per-feature mean 0, std 1 from "
                   "the training split, stored in the checkpoint and reused by eval/finetune/run)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--steps", type=int, help="total optimizer steps (default 500)")
    t.add_argument("--batch-size", type=int, help="examples per step (default 32)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    t.add_argument("--warmup", type=int, help="linear warmup steps before the cosine decay (default 50)")
    t.add_argument("--weight-decay", type=float,
                   help="AdamW decoupled decay, not on norms/biases (default 0.01)")
    t.add_argument("--clip", type=float, help="global gradient-norm clip, 0 = off (default 1.0)")
    t.add_argument("--aux-coef", type=float, help="load-balancing loss weight (default 0.01)")
    t.add_argument("--top-k-choices", help="elastic top-k: each step draws k from this list, e.g. 1,2")
    t.add_argument("--budget-choices", help="elastic expert budget (docs/spec.md §4): each step draws m "
                   "from this list, the model's n_experts meaning none, e.g. 1,2,8")
    t.add_argument("--seed", type=int, help="seed for init, data order and top-k draws (default 0)")
    t.add_argument("--ema", type=float, help="weight averaging: evaluate and keep an exponential moving "
                   "average of the weights with this decay, e.g. 0.999 (default 0: off)")
    t.add_argument("--qat-start", type=int, help="quantization-aware training: fake-quant int8 from this "
                   "step on, observers updating (default: off)")
    t.add_argument("--qat-freeze", type=int, help="QAT: freeze the observers' ranges from this step on")
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (default: at the end only)")
    t.add_argument("--eval-batches", type=int, help="held-out batches per evaluation (default 20)")
    t.add_argument("--ckpt-every", type=int, help="save a checkpoint every N steps (default: at the end)")
    t.add_argument("--out", help="checkpoint path (default runs/<data>.safetensors, or the resumed file)")
    t.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint, exactly")
    t.add_argument("--stop-at", type=int,
                   help="stop after this step and save (the schedule still plans --steps)")
    t.add_argument("--skip-nonfinite", type=int, metavar="N", help="skip up to N batches whose loss or "
                   "gradient is NaN/Inf (no update) before stopping (default 0: stop at the first, keeping "
                   "the last good state)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=cmd_train)
