#!/usr/bin/env python3
"""More levers toward the spoken-digits bar (issue 4), beside experiments/digits_experiments.py.

The fine-tuning is the recipe of measure_accuracy.py's DIGITS_RECIPE (1500 steps,
batch 64, lr 1e-3, VTLP 0.25, early stopping on the validation voices, patience
20 evaluations of 25 steps), written out here so that levers can be added:

  --share S        rehearsal: the command model's own training clips join the digits as
                   extra classes (digits 0..9, commands 10..21, the command columns of
                   the new head copied from the base model's head), S of the union being
                   command clips; the digit columns alone are kept at the end, which is
                   an argmax restricted to the digits
  --lp-steps N     LP-FT (Kumar et al. 2022): N head-only steps before the full fine-tuning,
                   so a random head does not distort the features at the start
  --soup           the seeds share one head initialisation, and their weights are averaged
                   at the end (a uniform model soup, Wortsman et al. 2022)
  --noise LO HI    noise-floor augmentation in the feature domain: the clip's smoothed log-mel
                   spectrum (inverse DCT of the MFCC) plus noise at its own floor (10th
                   percentile over frames, per band) raised by LO..HI dB, a random tilt of
                   +-6 dB across the bands and 2 dB jitter, on half the training clips
                   (a lower SNR than the clip was recorded at)
  --n-train N      fine-tune on a stratified, seeded subset of N training clips: the learning
                   curve of the bar's "<= 1000 clips"
  --warp-grids     also score each seed with test-time warps (qz.tta), one grid at a time
                   (WARP_GRIDS): how measure_accuracy.py's TTA_WARPS was chosen
  --digits PATH    another build of spoken_digits.npz (scripts/make_speech_datasets.py
                   --out-dir ...), e.g. --espeak-only: its val and test splits are the
                   shipped ones, only the training clips differ

Choices are made on the validation voices; --test also scores the test voices.
The figures of the session of 2026-12-07 (third) are in the README (*Accuracy*).

    python experiments/digits_levers.py --share 0.5 --steps 3000
    python experiments/digits_levers.py --lp-steps 300
    python experiments/digits_levers.py --seeds 3 --soup
    python experiments/digits_levers.py --noise 0 20
    python experiments/digits_levers.py --seeds 3 --digits /tmp/espeak/spoken_digits.npz --test
    python experiments/digits_levers.py --seeds 3 --warp-grids
    python experiments/digits_levers.py --seeds 3 --n-train 250
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
from qz.audio import N_MELS, _dct_matrix  # noqa: E402
from qz.augment import WarpedData, vtlp_mfcc  # noqa: E402
from qz.data import ArrayData, apply_input_norm, load_split  # noqa: E402
from qz.finetune import new_head, stratified_split  # noqa: E402
from qz.memory import keep_freed_memory  # noqa: E402
from qz.optim import adamw_init  # noqa: E402
from qz.train import TrainConfig, TrainState, evaluate, save_training, train  # noqa: E402
from qz.tta import warp_accuracy  # noqa: E402


def noise_floor_mfcc(x, rng, lo_db, hi_db, share=0.5, jitter_db=2.0, tilt_db=6.0):
    """Raw MFCC clips (N, T, C) with the noise floor of a `share` of them raised by lo_db..hi_db.

    Zero added noise gives back x: the MFCC is log-mel @ d with d's columns orthonormal,
    so (x @ d.T) @ d = x.
    """
    N, T, C = x.shape
    d = _dct_matrix(N_MELS, C)                                            # (M, C)
    log_mel = x.astype(np.float64) @ d.T                                  # (N, T, M)
    floor = np.percentile(log_mel, 10, axis=1, keepdims=True)             # (N, 1, M)
    nat = np.log(10) / 10                                                 # dB of power -> nats
    raise_db = rng.uniform(lo_db, hi_db, (N, 1, 1))
    tilt = rng.uniform(-tilt_db, tilt_db, (N, 1, 1)) * np.linspace(-0.5, 0.5, N_MELS)
    noise = floor + nat * (raise_db + tilt + jitter_db * rng.standard_normal((N, T, N_MELS)))
    out = x.astype(np.float64)
    use = rng.random(N) < share
    out[use] = np.logaddexp(log_mel[use], noise[use]) @ d
    return out.astype(x.dtype)


# the test-time warp grids compared for measure_accuracy.py's TTA_WARPS (one pass, two 3-warp grids, 5, 9)
WARP_GRIDS = {"1": (1.0,), "3n": (0.95, 1.0, 1.05), "3": (0.9, 1.0, 1.1), "5": (0.9, 0.95, 1.0, 1.05, 1.1),
              "9": tuple(round(0.8 + 0.05 * i, 2) for i in range(9))}


class NoisyData(WarpedData):
    """WarpedData (VTLP, then the input scaling) with noise_floor_mfcc between the two."""

    def __init__(self, raw, norm, low, high, noise_db):
        super().__init__(raw, norm, low, high)
        self.noise_db = noise_db

    def batch(self, step, batch_size, seed):
        x, y = self.raw.batch(step, batch_size, seed)
        x = vtlp_mfcc(x, np.random.default_rng([seed, step, 5]), self.low, self.high)
        x = noise_floor_mfcc(x, np.random.default_rng([seed, step, 7]), *self.noise_db)
        return apply_input_norm(ArrayData(x, y), self.norm).x, y


def training_set(digits, commands, share):
    """-> (raw ArrayData, classes): the digits alone, or digits + command clips (labels + 10) with the
    digits repeated so that command clips are `share` of the union."""
    if share <= 0:
        return digits, 10
    reps = max(1, int(round(len(commands) * (1 - share) / share / len(digits))))
    x = np.concatenate([np.tile(digits.x, (reps, 1, 1)), commands.x])
    y = np.concatenate([np.tile(digits.y, reps), commands.y + 10])
    return ArrayData(x, y), 10 + int(commands.y.max()) + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(ROOT / "runs" / "accuracy" / "commands.safetensors"))
    ap.add_argument("--digits", default=str(ROOT / "data" / "spoken_digits.npz"))
    ap.add_argument("--commands", default=str(ROOT / "data" / "speech_commands.npz"))
    ap.add_argument("--share", type=float, default=0.0,
                    help="rehearsal: share of command clips (default 0: off)")
    ap.add_argument("--lp-steps", type=int, default=0, help="LP-FT: head-only steps first (default 0: off)")
    ap.add_argument("--lp-lr", type=float, default=3e-3)
    ap.add_argument("--noise", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="noise-floor augmentation, dB above the clip's floor (default off)")
    ap.add_argument("--soup", action="store_true", help="average the seeds' weights (one shared head init)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vtlp", type=float, default=0.25)
    ap.add_argument("--specaug", type=int, nargs=2, default=(6, 2), metavar=("T", "F"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--test", action="store_true", help="also score the test voices (final candidates only)")
    ap.add_argument("--save", default="", help="write the first seed's model (or the soup) here")
    ap.add_argument("--n-train", type=int, default=0,
                    help="fine-tune on a stratified subset of this many training clips (a learning curve)")
    ap.add_argument("--warp-grids", action="store_true",
                    help="also score each seed with the test-time warp grids of WARP_GRIDS (qz.tta)")
    a = ap.parse_args()
    if not 0 <= a.share < 1:
        ap.error(f"--share: in [0, 1), got {a.share}")
    if not 0 <= a.n_train < 1000:
        ap.error(f"--n-train: a subset of the 1000 training clips, 1..999 (0: all), got {a.n_train}")
    keep_freed_memory()
    p0, cfg0, meta = checkpoint.load(a.base)
    norm = meta["input_norm"]
    dtr, dva, dte = (load_split(a.digits, s) for s in ("train", "val", "test"))
    if a.n_train:                 # a learning curve: a stratified, seeded subset of the training clips
        keep, _ = stratified_split(dtr.y, 1.0 - a.n_train / len(dtr), seed=0)
        dtr = dtr.subset(keep)
    raw, n_classes = training_set(dtr, load_split(a.commands, "train") if a.share else None, a.share)
    if a.noise:
        tr = NoisyData(raw, norm, 1 - a.vtlp, 1 + a.vtlp, tuple(a.noise))
    else:
        tr = WarpedData(raw, norm, 1 - a.vtlp, 1 + a.vtlp) if a.vtlp else apply_input_norm(raw, norm)
    va, te = apply_input_norm(dva, norm), apply_input_norm(dte, norm)
    runs, models = [], []
    for s in range(a.seed, a.seed + a.seeds):
        params, cfg = new_head(p0, cfg0, n_classes, a.seed if a.soup else s)
        if n_classes > 10:        # the command columns start where the base model's head is
            params["head.weight"][:, 10:] = p0["head.weight"]
            params["head.bias"][10:] = p0["head.bias"]
        common = dict(batch_size=64, warmup=20, weight_decay=0.01, aux_coef=0.01, top_k_choices=(1, 2),
                      augment=True, time_mask=a.specaug[0], feature_mask=a.specaug[1])
        t0 = time.perf_counter()
        if a.lp_steps:
            lp = TrainConfig(steps=a.lp_steps, lr=a.lp_lr, seed=s + 1000, trainable=("head.",), **common)
            params = train(cfg, lp, tr, None, state=TrainState(params, adamw_init(params)),
                           progress=False, log=None).params
        tcfg = TrainConfig(steps=a.steps, lr=a.lr, seed=s, eval_every=25, eval_batches=10 ** 6, patience=20,
                           **common)
        st = train(cfg, tcfg, tr, va, state=TrainState(params, adamw_init(params)), progress=False, log=None)
        p = dict(st.params, **{"head.weight": st.params["head.weight"][:, :10].copy(),
                               "head.bias": st.params["head.bias"][:10].copy()})
        c10 = cfg.replace(n_classes=10)
        run = {"seed": s, "best_step": st.best["step"], "seconds": round(time.perf_counter() - t0),
               **{f"val_top{k}": evaluate(p, c10, va, 256, top_k=k)["accuracy"] for k in (2, 1)}}
        if a.test:
            run["test_top2"] = evaluate(p, c10, te, 256, top_k=2)["accuracy"]
        if a.warp_grids:          # test-time warps (qz.tta): each grid on the validation (and test) voices
            for name, grid in WARP_GRIDS.items():
                run[f"val_warps_{name}"] = warp_accuracy(p, c10, dva, norm, grid)
                if a.test:
                    run[f"test_warps_{name}"] = warp_accuracy(p, c10, dte, norm, grid)
        print(json.dumps(run), flush=True)
        runs.append(run)
        models.append(p)
    summary = {"options": vars(a), **{k: round(float(np.mean([r[k] for r in runs])), 4)
                                     for k in runs[0] if k.startswith(("val", "test"))}}
    keep = models[0]
    if a.soup:
        keep = {n: np.mean([m[n] for m in models], axis=0).astype(models[0][n].dtype) for n in models[0]}
        summary["soup_val_top2"] = evaluate(keep, c10, va, 256, top_k=2)["accuracy"]
        if a.test:
            summary["soup_test_top2"] = evaluate(keep, c10, te, 256, top_k=2)["accuracy"]
    print("summary", json.dumps(summary), flush=True)
    if a.save:
        save_training(a.save, c10, tcfg, TrainState(keep, adamw_init(keep),
                                                    extra={"input_norm": norm, "labels": dtr.labels}))


if __name__ == "__main__":
    main()
