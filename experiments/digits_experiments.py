#!/usr/bin/env python3
"""Experiments toward the spoken-digits bar (issue 4: >= 95 % on unseen voices from <= 1000 clips).

Every choice is made on the validation voices; the test voices are scored only with --test.

    python experiments/digits_experiments.py finetune --tag base                  # the current recipe
    python experiments/digits_experiments.py finetune --vtlp 0.15 --tag vtlp15
    python experiments/digits_experiments.py base --vtlp 0.15 \\
        --out runs/digits_exp/commands_vtlp15.safetensors
    python experiments/digits_experiments.py finetune --base runs/digits_exp/commands_vtlp15.safetensors \\
        --vtlp 0.15

Results are appended to runs/digits_exp/results.jsonl.
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qz.config import preset  # noqa: E402
from qz.augment import WarpedData  # noqa: E402
from qz.data import apply_input_norm, fit_input_norm, load_dataset, load_split  # noqa: E402
from qz.finetune import FinetuneOptions, finetune  # noqa: E402
from qz.memory import keep_freed_memory  # noqa: E402
from qz.model import init_params  # noqa: E402
from qz.optim import adamw_init  # noqa: E402
from qz.train import TrainConfig, TrainState, evaluate, save_training, train  # noqa: E402

OUT = ROOT / "runs" / "digits_exp"


def record(row):
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def run_base(args):
    """The command model as the demo trains it (qz.demo.train_commands), optionally with VTLP."""
    path = Path(args.data_dir) / "speech_commands.npz"
    raw_tr, raw_val = load_dataset(path, seed=args.seed)
    norm = fit_input_norm(raw_tr, "cmvn")
    tr = apply_input_norm(raw_tr, norm)
    val = apply_input_norm(raw_val, norm)
    if args.vtlp:
        tr = WarpedData(raw_tr, norm, 1.0 - args.vtlp, 1.0 + args.vtlp)
    cfg = preset("kws", input_dim=raw_tr.x.shape[2], max_len=raw_tr.x.shape[1], n_classes=len(raw_tr.labels),
                 **({"d_model": args.d_model, "d_ff": 2 * args.d_model} if args.d_model else {}))
    tcfg = TrainConfig(steps=args.steps, batch_size=32, lr=3e-3, warmup=100, top_k_choices=(1, 2),
                       seed=args.seed, eval_every=max(args.steps // 20, 1), eval_batches=10 ** 6,
                       patience=10 ** 6, augment=True)
    params = init_params(cfg, seed=args.seed)
    state = TrainState(params, adamw_init(params), extra={"input_norm": norm, "labels": raw_tr.labels})
    t0 = time.perf_counter()
    state = train(cfg, tcfg, tr, val, state=state, progress=False, log=None)
    save_training(args.out, cfg, tcfg, state)
    row = {"kind": "base", "data_dir": args.data_dir, "d_model": cfg.d_model, "vtlp": args.vtlp,
           "steps": args.steps, "seed": args.seed, "out": str(args.out),
           "seconds": round(time.perf_counter() - t0, 1), "best_step": state.best["step"],
           "commands_val_accuracy": state.best["accuracy"]}
    if args.test:
        row["commands_test_accuracy_top2"] = evaluate(state.params, cfg,
                                                      apply_input_norm(load_split(path, "test"), norm),
                                                      512, top_k=2)["accuracy"]
    record(row)


def run_finetune(args):
    path = Path(args.data_dir) / "spoken_digits.npz"
    dtrain, dval = load_split(path, "train"), load_split(path, "val")
    dtest = load_split(path, "test") if args.test else None
    opts = FinetuneOptions(steps=args.steps, patience=20, seeds=args.seeds, seed=args.seed, lr=args.lr,
                           batch_size=64, plan=args.plan, vtlp=args.vtlp, mixup=args.mixup,
                           label_smoothing=args.smoothing,
                           **(dict(time_mask=args.specaug[0], feature_mask=args.specaug[1])
                              if args.specaug else {}))
    out = OUT / f"digits_{args.tag}.safetensors" if args.save else None
    rep = finetune(args.base, dtrain, opts, val=dval, test=dtest, out_path=out, log=print, progress=False)
    row = {"kind": "finetune", "data_dir": args.data_dir, "tag": args.tag, "base": str(args.base),
           "options": rep["options"],
           "val_top2": rep["val_accuracy_top2"], "val_top1": rep["val_accuracy_top1"],
           "runs": rep["runs"], "seconds": rep["seconds_total"]}
    if dtest is not None:
        row["test_top2"], row["test_top1"] = rep["test_accuracy_top2"], rep["test_accuracy_top1"]
    record(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["base", "finetune"])
    ap.add_argument("--base", default=str(ROOT / "runs" / "accuracy" / "commands.safetensors"))
    ap.add_argument("--out", default=str(OUT / "commands.safetensors"))
    ap.add_argument("--data-dir", default=str(ROOT / "data"),
                    help="where speech_commands.npz and spoken_digits.npz are (default: the shipped data; "
                         "another build of scripts/make_speech_datasets.py --out-dir)")
    ap.add_argument("--d-model", type=int, default=0,
                    help="base: a wider kws model (d_ff = 2 d_model; default: the preset's 64)")
    ap.add_argument("--vtlp", type=float, default=0.0)
    ap.add_argument("--mixup", type=float, default=0.0)
    ap.add_argument("--smoothing", type=float, default=0.0)
    ap.add_argument("--specaug", type=int, nargs=2, default=None, metavar=("T", "F"),
                    help="max time-mask frames and feature-mask coefficients (default 6 2)")
    ap.add_argument("--plan", default="all")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--test", action="store_true", help="also score the test voices (final candidates only)")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()
    if args.steps is None:
        args.steps = 3000 if args.what == "base" else 1500
    (run_base if args.what == "base" else run_finetune)(args)


if __name__ == "__main__":
    main()
