#!/usr/bin/env python3
"""The lever experiments behind docs/accuracy.md (real speakers): one run per call, one seed unless told.

    python experiments/real_speech_levers.py base [--data NPZ] [--norm speech_cmvn] [--steps 12000]
                                              [--ema 0.999] [--swa 0.5] [--d-model 96] [--n-syn 12000]
                                              [--select synthetic]
    python experiments/real_speech_levers.py adapt [--base CKPT] [--rotate 1] [--mix NPZ:0.3] [--ema 0.99]
                                               [--lr 3e-4] [--vtlp 0.25 --time-mask 10 --feature-mask 3]
                                               [--plan light] [--n-train 700] [--seeds 3]
                                               [--warps 0.9,1,1.1] [--top-k-choices 1,1,2]

`base` trains the command model on synthetic speech only (preset kws, elastic top-k 1/2, VTLP, the
shipped recipe's defaults) and scores it zero-shot on real speakers of data/speech_commands_real.npz:
*dev* = the adaptation folds 0-2 (never trained on here), *val* = fold 3, which also chooses the
checkpoint (--select synthetic: the synthetic validation voices choose instead). --swa F averages the
weights every steps/40 in the last F of training (stochastic weight averaging) and reports that.
Data variants are built first with scripts/make_speech_datasets.py --out-dir DIR and its flags
(--no-channel, --no-neural, --natural-share 0.7, ...) and passed as --data DIR/speech_commands.npz.

`adapt` fine-tunes a base on real speakers (qz.finetune; the shipped recipe qz.demo.ADAPT_RECIPE by
default) and scores the validation fold; --rotate R takes fold [3, 0, 1, 2][R] as validation and
trains on the other three of folds 0-3. The test fold (4) is never read here.

Results are printed and written to runs/levers/<name>.json (--name, default from the options).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qz import checkpoint  # noqa: E402
from qz.config import preset  # noqa: E402
from qz.augment import WarpedData  # noqa: E402
from qz.data import ArrayData, apply_input_norm, fit_input_norm, load_dataset, load_labelled  # noqa: E402
from qz.demo import ADAPT_RECIPE, BASE_RECIPE  # noqa: E402
from qz.finetune import FinetuneOptions, finetune, stratified_split  # noqa: E402
from qz.model import init_params  # noqa: E402
from qz.optim import adamw_init  # noqa: E402
from qz.train import TrainConfig, TrainState, evaluate, train  # noqa: E402

REAL = ROOT / "data" / "speech_commands_real.npz"
OUT = ROOT / "runs" / "levers"


def real_folds(path=REAL):
    """-> x (N, T, F) float32, y (N,), fold (N,), labels: every real clip with its speaker fold."""
    with np.load(path, allow_pickle=False) as z:
        x = np.concatenate([z["x"], z["x_val"], z["x_test"]]).astype(np.float32)
        y = np.concatenate([z["y"], z["y_val"], z["y_test"]])
        fold = np.concatenate([z["fold_train"], z["fold_val"], z["fold_test"]])
        labels = [str(v) for v in z["labels"]]
    return x, y, fold, labels


def scores(params, cfg, sets):
    return {f"{name}_top{k}": round(evaluate(params, cfg, d, 512, top_k=k)["accuracy"], 4)
            for name, d in sets.items() for k in (2, 1)}


def run_base(a):
    raw, syn_val = load_dataset(a.data, seed=a.seed)
    if a.n_syn:
        keep, _ = stratified_split(raw.y, 1 - a.n_syn / len(raw.y), 0)
        raw = raw.subset(keep)
    norm = fit_input_norm(raw, a.norm)
    real_dev = apply_input_norm(load_labelled(f"{a.real}:train"), norm)
    real_val = apply_input_norm(load_labelled(f"{a.real}:val"), norm)
    cfg = preset("kws", input_dim=raw.x.shape[2], max_len=raw.x.shape[1], n_classes=len(raw.labels),
                 d_model=a.d_model, d_ff=2 * a.d_model)
    every = max(a.steps // 20, 1)
    tcfg = TrainConfig(steps=a.steps, batch_size=BASE_RECIPE["batch_size"], lr=a.lr,
                       warmup=BASE_RECIPE["warmup"], top_k_choices=(1, 2), seed=a.seed, eval_every=every,
                       eval_batches=10 ** 6, patience=10 ** 6, augment=True, ema=a.ema)
    select = real_val if a.select == "real" else apply_input_norm(syn_val, norm)
    params = init_params(cfg, seed=a.seed)
    state = TrainState(params, adamw_init(params))
    src = WarpedData(raw, norm, 1 - a.vtlp, 1 + a.vtlp)
    t0, snaps = time.perf_counter(), []
    if a.swa:                       # train in slices, keep the weights of each evaluation in the last a.swa
        for stop in range(max(a.steps // 40, 1), a.steps + 1, max(a.steps // 40, 1)):
            state = train(cfg, tcfg, src, select, state=state, stop_at=stop, progress=False, log=None)
            if stop > a.steps * (1 - a.swa):
                snaps.append({n: v.copy() for n, v in state.params.items()})
        final = {n: np.mean([s[n] for s in snaps], axis=0).astype(np.float32) for n in snaps[0]}
    else:
        state = train(cfg, tcfg, src, select, state=state, progress=not a.quiet, log=None)
        final = state.params
    res = {"lever": "base", "options": vars(a), "seconds": round(time.perf_counter() - t0),
           "best_step": None if a.swa else state.best["step"], "n_averaged": len(snaps),
           **scores(final, cfg, {"dev": real_dev, "val": real_val}),
           "curve": [(h["step"], round(h["accuracy"], 4)) for h in state.history]}
    if a.save:
        checkpoint.save(a.save, final, cfg, input_norm=norm, labels=raw.labels)
    return res


def run_adapt(a):
    x, y, fold, labels = real_folds(a.real)
    val_fold = [3, 0, 1, 2][a.rotate]
    tr = (fold != 4) & (fold != val_fold)
    data = ArrayData(x[tr], y[tr], "real adaptation folds", labels)
    if a.n_train:
        keep, _ = stratified_split(data.y, 1 - a.n_train / len(data.y), 0)
        data = data.subset(keep)
    val = ArrayData(x[fold == val_fold], y[fold == val_fold], f"real fold {val_fold}", labels)
    mix, share = None, None
    if a.mix:
        path, _, share = a.mix.partition(":")
        mix = load_dataset(path, seed=0)[0]
    warps = tuple(float(w) for w in a.warps.split(",")) if a.warps else ()
    r = ADAPT_RECIPE
    opts = FinetuneOptions(plan=a.plan, steps=r["steps"], lr=a.lr, batch_size=r["batch_size"], vtlp=a.vtlp,
                           patience=r["patience"], eval_every=r["eval_every"], seeds=a.seeds, seed=a.seed,
                           time_mask=a.time_mask, feature_mask=a.feature_mask, ema=a.ema, warps=warps,
                           top_k_choices=tuple(int(k) for k in a.top_k_choices.split(",")),
                           **({"mix_share": float(share)} if share else {}))
    rep = finetune(a.base, data, opts, val=val, mix=mix, log=print, progress=False)
    return {"lever": "adapt", "options": vars(a), "val_fold": val_fold, "n_train": len(data),
            **{k: v for k, v in rep.items() if "accuracy" in k}, "runs": rep["runs"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("base", help="train a base model on synthetic speech, score it on real speakers")
    b.add_argument("--data", default=str(ROOT / "data" / "speech_commands.npz"))
    b.add_argument("--norm", default=BASE_RECIPE["utterance"], choices=["none", "cmn", "cmvn", "speech_cmvn"])
    b.add_argument("--steps", type=int, default=BASE_RECIPE["steps"])
    b.add_argument("--lr", type=float, default=BASE_RECIPE["lr"])
    b.add_argument("--vtlp", type=float, default=BASE_RECIPE["vtlp"])
    b.add_argument("--ema", type=float, default=BASE_RECIPE["ema"], help="0: no weight averaging")
    b.add_argument("--swa", type=float, default=0.0,
                   help="average the evaluations' weights in this last share")
    b.add_argument("--d-model", type=int, default=64, help="d_ff is twice this")
    b.add_argument("--n-syn", type=int, default=0, help="a stratified subset of this many synthetic clips")
    b.add_argument("--select", choices=["real", "synthetic"], default="real")
    b.add_argument("--save", help="write the model here")
    b.add_argument("--quiet", action="store_true")
    d = sub.add_parser("adapt", help="fine-tune a base on real speakers, score the validation fold")
    d.add_argument("--base", default=str(ROOT / "data" / "commands_base.safetensors"))
    d.add_argument("--rotate", type=int, default=0, choices=[0, 1, 2, 3])
    d.add_argument("--mix", metavar="NPZ[:SHARE]", help="rehearse this synthetic set")
    d.add_argument("--lr", type=float, default=ADAPT_RECIPE["lr"])
    d.add_argument("--vtlp", type=float, default=ADAPT_RECIPE["vtlp"])
    d.add_argument("--time-mask", type=int, default=6)
    d.add_argument("--feature-mask", type=int, default=2)
    d.add_argument("--ema", type=float, default=0.0)
    d.add_argument("--plan", default="all", choices=["head", "light", "all"])
    d.add_argument("--n-train", type=int, default=0, help="a stratified subset of this many adaptation clips")
    d.add_argument("--top-k-choices", default="1,2", help="elastic top-k while adapting, e.g. 1,1,2")
    d.add_argument("--seeds", type=int, default=1)
    d.add_argument("--warps", help="also score test-time warps, e.g. 0.9,1,1.1")
    for p in (b, d):
        p.add_argument("--real", default=str(REAL), help="the real speakers' features (a front-end variant's "
                       "must match its --data)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--name", help="result file name (default: from the options)")
    a = ap.parse_args(argv)
    res = run_base(a) if a.what == "base" else run_adapt(a)
    defaults = vars(ap.parse_args([a.what]))             # the run's name: the options it changed
    name = a.name or "_".join([a.what] + [f"{k}={v}" for k, v in sorted(vars(a).items())
                                          if k not in ("name", "quiet", "save", "real") and v != defaults[k]])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name.replace('/', '_')}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("curve", "runs")}))


if __name__ == "__main__":
    main()
