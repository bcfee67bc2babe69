#!/usr/bin/env python3
"""Elastic expert budget while adapting (issue 21): what a budget costs on real speakers.

    python experiments/budget_levers.py                          # plain, 2|8 and 1|2|8, seed 0
    python experiments/budget_levers.py --choices 1,2,8 --seed 1

Adapts the shipped base to the adaptation folds of data/speech_commands_real.npz with
qz.demo.ADAPT_RECIPE plus TrainConfig.budget_choices (each step draws the expert budget m from
the list; 8 = none), and scores the validation speakers (fold 3) at (top_k, budget) = (2, -),
(1, -), (1, 2), (2, 2), (1, 1). The test fold is never read here. Results are printed and
written to runs/levers/budget.json.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from qz import checkpoint, runtime  # noqa: E402
from qz.data import apply_input_norm, load_split  # noqa: E402
from qz.demo import ADAPT_RECIPE  # noqa: E402
from qz.finetune import FinetuneOptions, finetune  # noqa: E402

REAL = ROOT / "data" / "speech_commands_real.npz"
GRID = ((2, None), (1, None), (1, 2), (2, 2), (1, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--choices", action="append", help="budget choices, e.g. 2,8 (repeatable; default: "
                    "none, 2,8 and 1,2,8)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    runs = ([tuple(int(m) for m in c.split(",")) for c in args.choices] if args.choices
            else [(), (2, 8), (1, 2, 8)])
    raw = {s: load_split(REAL, s) for s in ("train", "val")}
    out_dir = ROOT / "runs" / "levers"
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {}
    for choices in runs:
        name = "|".join(map(str, choices)) or "none"
        path = out_dir / f"budget_{name.replace('|', '-')}_seed{args.seed}.safetensors"
        finetune(ROOT / "data" / "commands_base.safetensors", raw["train"],
                 FinetuneOptions(**ADAPT_RECIPE, budget_choices=choices, seed=args.seed), val=raw["val"],
                 out_path=path, log=None, progress=False)
        params, cfg, meta = checkpoint.load(path)
        model = runtime.prepare(params, cfg, "fp32")
        val = apply_input_norm(raw["val"], meta["input_norm"])
        row = {}
        for k, m in GRID:
            pred = runtime.infer(model, val.x, top_k=k, expert_budget=m).argmax(-1)
            row[f"top_k {k}, budget {m or '-'}"] = float(np.mean(pred == val.y))
        res[name] = row
        print(name, {k: round(100 * v, 1) for k, v in row.items()}, flush=True)
    (out_dir / "budget.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
