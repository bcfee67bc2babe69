"""qz finetune: adapt a trained classifier to a new label set or new speakers."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .. import checkpoint
from .common import WARPS_HELP, UserError, _emit, _mix_arg, _warps, int_list, stop_requested


def cmd_finetune(args):
    from ..data import load_labelled
    from ..finetune import FinetuneOptions, finetune
    ks = tuple(int_list(args.top_k_choices, "--top-k-choices"))
    budgets = tuple(int_list(args.budget_choices, "--budget-choices"))
    try:
        opts = FinetuneOptions(plan=args.plan, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               val_fraction=args.val_fraction, patience=args.patience, seeds=args.seeds,
                               seed=args.seed, eval_every=args.eval_every, top_k_choices=ks,
                               budget_choices=budgets,
                               qat_start=args.qat_start, qat_freeze=args.qat_freeze, vtlp=args.vtlp,
                               warps=_warps(args.warps) or (), ema=args.ema)
    except ValueError as e:
        raise UserError(str(e)) from None
    mix_path, share = _mix_arg(args.mix)
    try:
        opts = dataclasses.replace(opts, mix_share=share) if share is not None else opts
    except ValueError as e:
        raise UserError(f"--mix: {e}") from None
    checkpoint.load(args.base)                     # a bad base file fails before any data work
    data = load_labelled(args.data, include=args.include, frames=args.frames)
    mix = load_labelled(mix_path, frames=args.frames) if mix_path else None
    test = load_labelled(args.test, include=args.test_include, frames=args.frames) if args.test else None
    val = load_labelled(args.val, include=args.val_include, frames=args.frames) if args.val else None
    if test is not None and data.labels and test.labels and test.labels != data.labels:
        raise UserError(f"--test labels {test.labels} differ from the training labels {data.labels}")
    out = (Path(args.out) if args.out
           else Path("runs") / f"finetuned_{Path(args.data).name.split('.')[0]}.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.json:
        n_labels = len(data.labels) if data.labels else int(data.y.max()) + 1
        print(f"qz finetune: {args.base} -> {n_labels} labels, {len(data):,} samples "
              f"(plan {opts.plan}, {opts.seeds} seed{'s' if opts.seeds > 1 else ''}) -> {out}", flush=True)

    with stop_requested() as stop:     # Ctrl-C or SIGTERM: finish the step, save the best so far
        report = finetune(args.base, data, opts, test=test, val=val, out_path=out, mix=mix,
                          log=None if args.json else print, progress=not (args.quiet or args.json),
                          should_stop=lambda: stop["flag"])
    report_path = Path(args.report) if args.report else out.with_suffix(".report.json")
    checkpoint.atomic_write_text(report_path, json.dumps(report, indent=2))
    if report.get("interrupted"):
        print(f"qz: interrupted: saved the best state so far to {out} (report {report_path}); "
              "run the command again to fine-tune in full", file=sys.stderr)
        return 130
    k = max(int(x[len("val_accuracy_top"):]) for x in report if x.startswith("val_accuracy_top"))
    lines = [f"saved {out} (seed {report['chosen_seed']}), report {report_path}",
             f"validation accuracy (top_k {k}): {report[f'val_accuracy_top{k}']['mean']:.4f} "
             f"+- {report[f'val_accuracy_top{k}']['std']:.4f} over {opts.seeds} seed(s)"]
    if "val_accuracy_warps" in report:
        lines.append(f"validation accuracy with test-time warps {','.join(f'{w:g}' for w in opts.warps)}: "
                     f"{report['val_accuracy_warps']['mean']:.4f} "
                     f"+- {report['val_accuracy_warps']['std']:.4f}")
    if test is not None:
        for key in sorted(x for x in report if x.startswith("test_accuracy")):
            lines.append(f"test accuracy ({key[len('test_accuracy_'):]}): {report[key]['mean']:.4f} "
                         f"+- {report[key]['std']:.4f}")
    labels = report["labels"]
    lines.append(f"confusion on {report['confusion_on']} (rows: true, columns: predicted):")
    width = max(len(str(lab)) for lab in labels) + 1
    lines.append(" " * width + "".join(f"{str(lab)[:5]:>6}" for lab in labels))
    for lab, row in zip(labels, report["confusion"]):
        lines.append(f"{str(lab):>{width}}" + "".join(f"{v:6d}" for v in row))
    _emit(args, report, lines)
    return 0


FINETUNE_EPILOG = """examples:
  qz finetune runs/commands.safetensors --data my_words/            # my_words/<label>/*.wav
  qz finetune runs/commands.safetensors --data clips/ --include '*_george_*.wav' \\
      --test clips/ --test-include '*_jackson_*.wav' --seeds 3   # train on one speaker, test on another
  qz finetune runs/kws.safetensors --data feats.csv --plan head     # a linear probe on CSV features
  R=data/speech_commands_real.npz                                  # real speakers, split by speaker
  qz finetune data/commands_base.safetensors --data $R --val $R:val --test $R:test \
      --steps 2000 --lr 1e-3 --eval-every 50 --patience 10 --vtlp 0.15 --seeds 3   # the demo's adaptation
"""


def add_parser(sub):
    f = sub.add_parser("finetune", help="adapt a trained classifier to new labels from ~1000 samples",
                       description="Give a trained classifier a new head for a new label set and train it "
                       "on your labelled data, with a seeded stratified validation split and early stopping. "
                       "Writes the adapted checkpoint and a JSON report (accuracy, confusion, expert load, "
                       "spread over seeds).", epilog=FINETUNE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("base", help="the trained classifier checkpoint to start from")
    f.add_argument("--data", required=True, help="a folder of wav files (one sub-folder per label, or files "
                   "named <label>_*.wav), a CSV of features with a label column, or an .npz with x and y "
                   "(FILE.npz:val or :test takes that split of it)")
    f.add_argument("--include", default="*.wav", help="glob on wav file names, e.g. '*_george_*.wav'")
    f.add_argument("--val", help="validation data for early stopping and the seed choice (default: a "
                   "stratified --val-fraction of --data)")
    f.add_argument("--val-include", default="*.wav", help="glob on the validation folder's wav file names")
    f.add_argument("--test", help="data only evaluated at the end (never used for any choice)")
    f.add_argument("--test-include", default="*.wav", help="glob on the test folder's wav file names")
    f.add_argument("--mix", metavar="DATA[:SHARE]", help="rehearsal: also train on DATA (e.g. the base "
                   "model's own data set; its labels must be among the task's), SHARE of every batch "
                   "(default 0.5), so the model keeps what it knew")
    f.add_argument("--frames", type=int, default=1, help="CSV data: fold features into this many frames")
    f.add_argument("--plan", choices=["head", "light", "all"], default="all",
                   help="what trains: head only, head + gates + norms, or everything (default)")
    f.add_argument("--steps", type=int, default=600, help="at most this many steps (default 600)")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--val-fraction", type=float, default=0.2,
                   help="stratified validation share (default 0.2)")
    f.add_argument("--eval-every", type=int, default=25, help="validate every N steps (default 25)")
    f.add_argument("--patience", type=int, default=8, help="stop after N validations without improvement")
    f.add_argument("--top-k-choices", default="1,2", help="elastic top-k during fine-tuning (default 1,2)")
    f.add_argument("--budget-choices", default="", help="elastic expert budget during fine-tuning, e.g. "
                   "1,2,8 (n_experts: none; default: off)")
    f.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds and report the spread")
    f.add_argument("--qat-start", type=int, default=-1, help="quantization-aware fine-tuning: "
                   "fake-quant int8 from this step (also writes <out>.int8.safetensors; default: off)")
    f.add_argument("--qat-freeze", type=int, default=-1, help="QAT: freeze the observers from this step")
    f.add_argument("--vtlp", type=float, default=0.0, help="warp each training clip's frequency axis by a "
                   "random factor in 1 +- VTLP (MFCC features; unseen voices: 0.25 in the demo, 0 = off)")
    f.add_argument("--ema", type=float, default=0.0, help="weight averaging with this decay, e.g. 0.99 "
                   "(default 0: off)")
    f.add_argument("--warps", help=WARPS_HELP)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", help="adapted checkpoint (default runs/finetuned_<data>.safetensors)")
    f.add_argument("--report", help="JSON report path (default: next to the checkpoint)")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_finetune)
