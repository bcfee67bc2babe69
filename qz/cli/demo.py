"""qz demo: the main job (qz/demo.py)."""
from __future__ import annotations

import argparse

from .common import _emit


def cmd_demo(args):
    from ..demo import DemoOptions, run_demo, summary_lines
    opts = DemoOptions(data_dir=args.data_dir, out_dir=args.out, seed=args.seed,
                       from_scratch=args.from_scratch,
                       **({"base_steps": args.base_steps} if args.base_steps else {}),
                       **({"adapt_steps": args.adapt_steps} if args.adapt_steps else {}))
    if not args.json:
        print(f"qz demo: {'train' if opts.from_scratch else 'load'} the base command model "
              "(synthetic speech) -> real unseen speakers -> adapt with real clips -> int8 -> governor; "
              f"writing {opts.out_dir}/",
              flush=True)
    report = run_demo(opts, log=None if args.json else print, progress=not (args.quiet or args.json))
    lines = ["", "qz demo report"] + summary_lines(report) + [
        f"report: {opts.out_dir / 'report.json'}" + (f", curves: {report['png']}" if report["png"] else ""),
        f"total {report['seconds_total']:.0f} s"]
    _emit(args, report, lines)
    return 0


def add_parser(sub):
    d = sub.add_parser("demo", help="the main job: spoken commands from real people, adapted, int8, governed",
                       description="Load the shipped base command model (trained on synthetic speech only), "
                       "score it on real people it never heard, adapt it with the shipped real clips of "
                       "other speakers and score it again on the unseen speakers, beside "
                       "a logistic-regression baseline; then int8 (PTQ and QAT) on the integer runtime, "
                       "the governor's modes and a simulated discharge, and one wav clip timed end to end. "
                       "Writes report.json (plus curves.png with matplotlib). About a minute on 2 cores.",
                       epilog="examples:\n  qz demo                      # about a minute\n"
                              "  qz demo --from-scratch       # also retrain the base model "
                              "(about 8 minutes in all)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--data-dir", default="data", help="where the shipped data sets are (default data)")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--from-scratch", action="store_true",
                   help="retrain the base model on the synthetic commands instead of loading "
                        "data/commands_base.safetensors (what scripts/make_base_model.py ships)")
    d.add_argument("--base-steps", type=int,
                   help="--from-scratch: base training steps (default: the shipped recipe)")
    d.add_argument("--adapt-steps", type=int,
                   help="at most this many adaptation steps (early stopping usually ends it sooner)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)
