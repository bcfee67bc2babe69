"""Adapt a trained model to a new labelled task from about a thousand samples.

    base checkpoint + new labels  ->  new head, chosen weights trained, early stopping
                                  ->  adapted checkpoint + JSON report

* The new task's label set gets a fresh classification head; every other
  weight starts from the base model.
* A *plan* says what trains: ``head`` (the head only: a linear probe),
  ``light`` (head, gates and norm gains) or ``all`` (everything).
* A fixed, seeded, stratified train/validation split of the user's data;
  early stopping on validation accuracy; the best validation checkpoint is kept.
* ``seeds`` repeats the run with different seeds (split, init, order) and
  reports mean and spread; the saved model is the seed with the best
  validation accuracy (chosen without looking at any test data).
* An optional test set (for example another speaker) is only evaluated,
  never used for any choice.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint
from .config import Config
from .augment import MixedData, WarpedData
from .data import ArrayData, apply_input_norm
from .errors import InputError
from .export import save_export
from .optim import adamw_init
from .train import TrainConfig, TrainState, evaluate, quant_of, save_training, train
from .tta import parse_warps, warp_accuracy
from .streams import stream

__all__ = ["FREEZE_PLANS", "FinetuneOptions", "stratified_split", "new_head", "finetune", "confusion_matrix"]

# what a fine-tuning plan trains (name prefixes; () = everything); the governor's PLANS are another thing
FREEZE_PLANS = {
    "head": ("head.",),
    "light": ("head.", "gate", "attn_norm", "ffn_norm", "final_norm", "in_proj."),
    "all": (),
}


@dataclass(frozen=True)
class FinetuneOptions:
    plan: str = "all"
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.01
    aux_coef: float = 0.01
    top_k_choices: tuple = (1, 2)
    budget_choices: tuple = ()    # elastic expert budget while adapting (train.TrainConfig)
    augment: bool = True          # feature augmentation (augment.augment_features) while fine-tuning
    time_mask: int = 6            # ... its widest SpecAugment time mask (frames)
    feature_mask: int = 2         # ... and feature mask (coefficients)
    mixup: float = 0.0            # mixup Beta(a, a) while fine-tuning (0: off)
    label_smoothing: float = 0.0
    vtlp: float = 0.0             # vocal tract length warp of the training clips by 1 +- vtlp
                                  # (augment.vtlp_mfcc; 0: off)
    val_fraction: float = 0.2
    eval_every: int = 25
    patience: int = 8
    seeds: int = 1
    seed: int = 0
    qat_start: int = -1           # QAT while fine-tuning (docs/spec.md §5): fake-quant from here (-1: off)
    qat_freeze: int = -1          # ... observers frozen from this step (-1: never)
    warps: tuple = ()             # also score with test-time warps (qz.tta), e.g. (0.9, 1.0, 1.1); (): off
    ema: float = 0.0              # weight averaging while fine-tuning (TrainConfig.ema; 0: off)
    mix_share: float = 0.5        # rehearsal (finetune's `mix`): share of each batch drawn from the mix data
    keep_head: bool = True        # when the task's labels are the base model's, start from its head

    def __post_init__(self):
        if self.plan not in FREEZE_PLANS:
            raise InputError(f"plan: {self.plan!r} is not one of {', '.join(FREEZE_PLANS)}")
        if not 0 <= self.vtlp < 0.5:
            raise InputError(f"vtlp: must be in [0, 0.5), got {self.vtlp}")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise InputError(f"seeds: must be an integer >= 1, got {self.seeds!r}")
        if self.qat_freeze >= 0 and not 0 <= self.qat_start <= self.qat_freeze:
            raise InputError(f"qat_freeze: {self.qat_freeze} needs qat_start in 0..{self.qat_freeze}, "
                             f"got {self.qat_start}")
        if not 0 < self.mix_share < 1:
            raise InputError(f"mix_share: must be in (0, 1), got {self.mix_share}")
        if self.warps:
            object.__setattr__(self, "warps", parse_warps(self.warps))    # the dataclass is frozen


def stratified_split(y, val_fraction, seed):
    """-> (train_idx, val_idx): each class split in the same proportion, seeded."""
    rng = stream(seed, "split")
    tr, va = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)   # both sides see every class of 2+ samples
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def relabelled(data: ArrayData, labels, what="mix"):
    """`data` with its class ids renumbered to `labels` by name (each of its labels must be one of them)."""
    names = data.labels or [str(c) for c in range(int(data.y.max()) + 1)]
    missing = [n for n in names if n not in labels]
    if missing:
        raise InputError(f"{what}: labels {missing} are not among the task's labels {labels}")
    index = np.array([labels.index(n) for n in names], np.int64)
    return ArrayData(data.x, index[data.y], data.name, list(labels))


def base_head(params, cfg: Config, base_labels, labels):
    """A copy of params whose head keeps the base model's columns, reordered to `labels` (same set)."""
    order = np.array([base_labels.index(n) for n in labels])
    out = {n: p.copy() for n, p in params.items()}
    out["head.weight"], out["head.bias"] = (params["head.weight"][:, order].copy(),
                                            params["head.bias"][order].copy())
    return out, cfg


def new_head(params, cfg: Config, n_classes: int, seed: int):
    """A copy of params with a fresh head for n_classes (N(0, 1/d) weights, zero bias)."""
    rng = stream(seed, "head")
    dtype = params["head.weight"].dtype
    out = {n: p.copy() for n, p in params.items()}
    out["head.weight"] = (rng.standard_normal((cfg.d_model, n_classes)) / np.sqrt(cfg.d_model)).astype(dtype)
    out["head.bias"] = np.zeros(n_classes, dtype=dtype)
    return out, cfg.replace(n_classes=n_classes)


def confusion_matrix(params, cfg, data, top_k=None, batch_size=128, quant=None):
    """(C, C) counts: row = true class, column = predicted class (of the fake-quant model when quant
    is given)."""
    from .model import forward
    C = cfg.n_classes
    cm = np.zeros((C, C), dtype=np.int64)
    for s in range(0, len(data), batch_size):
        logits, _ = forward(params, cfg, data.x[s:s + batch_size], top_k=top_k, quant=quant)
        np.add.at(cm, (data.y[s:s + batch_size], np.argmax(logits, axis=1)), 1)
    return cm


def finetune(base_path, data: ArrayData, opts: FinetuneOptions, test: ArrayData | None = None,
             out_path=None, log=print, progress=True, val: ArrayData | None = None, should_stop=None,
             mix: ArrayData | None = None):
    """Run the fine-tuning; returns the report dict (and writes out_path when given).

    should_stop: a callable polled after every step (a Ctrl-C / SIGTERM flag). When it fires,
    the seed in progress stops, later seeds are skipped, and the best state so far is saved
    and reported with "interrupted": true.

    `data`, `val` and `test` are raw features; the base model's input scaling is applied here.
    With `val` (e.g. clips of other voices), all of `data` trains and `val` drives early
    stopping and the choice of seed; without it a stratified share of `data` is held out.
    `mix` (raw features, labels among the task's) is rehearsed: opts.mix_share of every batch.
    When the task's labels are the base model's labels (in any order) and opts.keep_head, the
    base model's head is kept (its columns reordered); otherwise a new head starts from random.
    """
    params0, cfg0, meta = checkpoint.load(base_path)
    if cfg0.mode != "classifier":
        raise InputError(f"{base_path}: fine-tuning needs a classifier model, this one is a {cfg0.mode}")
    if data.kind != "classifier" or data.x.shape[-1] != cfg0.input_dim:
        raise InputError(f"data: expected features (N, T, {cfg0.input_dim}), got {data.x.shape}")
    if data.x.shape[1] > cfg0.max_len:
        raise InputError(f"data: {data.x.shape[1]} frames, the base model takes at most {cfg0.max_len}")
    norm = meta.get("input_norm")
    raw, raw_val, raw_test = data, val, test     # the test-time warps run on raw features
    data = apply_input_norm(data, norm)
    test = apply_input_norm(test, norm)
    val = apply_input_norm(val, norm)
    labels = data.labels or [str(c) for c in range(int(data.y.max()) + 1)]
    n_classes = max(len(labels), 2)
    base_labels = meta.get("labels")
    keep = bool(opts.keep_head and base_labels and sorted(base_labels) == sorted(labels))
    if mix is not None:
        if mix.kind != "classifier" or mix.x.shape[1:] != data.x.shape[1:]:
            raise InputError(f"mix: expected features (N, {data.x.shape[1]}, {data.x.shape[2]}), "
                             f"got {mix.x.shape}")
        mix = relabelled(mix, labels)
    runs, best = [], None
    t_all = time.perf_counter()
    for r in range(opts.seeds):
        seed = opts.seed + r
        if val is None:
            tr_idx, va_idx = stratified_split(data.y, opts.val_fraction, seed)
            tr, va = data.subset(tr_idx), data.subset(va_idx)
        else:
            tr_idx, va = np.arange(len(data)), val
            tr = data.subset(tr_idx)
        if opts.vtlp:     # the warp mixes raw coefficients, so it runs before the input scaling
            tr = WarpedData(raw.subset(tr_idx), norm, 1.0 - opts.vtlp, 1.0 + opts.vtlp)
        if mix is not None:
            rehearse = WarpedData(mix, norm, 1.0 - opts.vtlp, 1.0 + opts.vtlp) if opts.vtlp else \
                apply_input_norm(mix, norm)
            tr = MixedData(tr, rehearse, opts.mix_share)
        params, cfg = base_head(params0, cfg0, base_labels, labels) if keep else \
            new_head(params0, cfg0, n_classes, seed)
        tcfg = TrainConfig(steps=opts.steps, batch_size=opts.batch_size, lr=opts.lr, warmup=opts.warmup,
                           weight_decay=opts.weight_decay, aux_coef=opts.aux_coef,
                           top_k_choices=tuple(k for k in opts.top_k_choices if k <= cfg.n_experts),
                           budget_choices=tuple(opts.budget_choices),
                           seed=seed, eval_every=opts.eval_every, eval_batches=10 ** 6,
                           patience=opts.patience,
                           trainable=FREEZE_PLANS[opts.plan], augment=opts.augment,
                           time_mask=opts.time_mask, feature_mask=opts.feature_mask,
                           mixup=opts.mixup, label_smoothing=opts.label_smoothing,
                           qat_start=opts.qat_start, qat_freeze=opts.qat_freeze, ema=opts.ema)
        t0 = time.perf_counter()
        state = train(cfg, tcfg, tr, va, state=TrainState(params, adamw_init(params)),
                      progress=progress, log=None, should_stop=should_stop)
        interrupted = should_stop is not None and bool(should_stop())   # train() kept the best state
        seconds = time.perf_counter() - t0
        run = {"seed": seed, "seconds": round(seconds, 2), "steps_run": state.step,
               "best_step": state.best["step"] if state.best else state.step,
               "n_train": len(tr), "n_val": len(va)}
        q = quant_of(state)           # with QAT: scored as the int8 model (equal to the int8 runtime's)
        for k in sorted({1, cfg.top_k}):
            run[f"val_accuracy_top{k}"] = evaluate(state.params, cfg, va, batch_size=256, top_k=k,
                                                   quant=q)["accuracy"]
            if test is not None:
                run[f"test_accuracy_top{k}"] = evaluate(state.params, cfg, test, batch_size=256, top_k=k,
                                                        quant=q)["accuracy"]
                if q is not None:
                    run[f"test_accuracy_fp32_top{k}"] = evaluate(state.params, cfg, test, batch_size=256,
                                                                 top_k=k)["accuracy"]
        if opts.warps:                # test-time warps at the model's top_k, as the int8 model where QAT ran
            va_raw = raw_val if raw_val is not None else raw.subset(va_idx)
            run["val_accuracy_warps"] = warp_accuracy(state.params, cfg, va_raw, norm, opts.warps, quant=q)
            if test is not None:
                run["test_accuracy_warps"] = warp_accuracy(state.params, cfg, raw_test, norm, opts.warps,
                                                           quant=q)
        runs.append(run)
        if log:
            log(f"seed {seed}: val accuracy {run[f'val_accuracy_top{cfg.top_k}']:.4f}"
                + (f", test accuracy {run[f'test_accuracy_top{cfg.top_k}']:.4f}" if test is not None else "")
                + f" (best step {run['best_step']}, {seconds:.1f} s)")
        key = run[f"val_accuracy_top{cfg.top_k}"]
        if best is None or key > best[0]:
            best = (key, run, state, cfg, tcfg, va)
        if interrupted:
            run["interrupted"] = True
            break
    _, best_run, state, cfg, tcfg, va = best
    report = {"base": str(base_path), "plan": opts.plan, "options": {**opts.__dict__},
              "head": "base" if keep else "new",
              "mix": None if mix is None else {"name": mix.name, "n": len(mix)},
              "precision": "int8 (QAT)" if state.ranges else "fp32",
              "labels": labels, "runs": runs, "chosen_seed": best_run["seed"],
              "interrupted": any(r.get("interrupted") for r in runs),
              "seconds_total": round(time.perf_counter() - t_all, 2)}
    for key in runs[0]:
        if "accuracy" in key:
            vals = np.array([r[key] for r in runs])
            report[key] = {"mean": round(float(vals.mean()), 4), "std": round(float(vals.std()), 4)}
    ev_data = test if test is not None else va
    report["confusion_on"] = "test" if test is not None else "val"
    q = quant_of(state)               # the model the report's precision names: int8 where QAT ran
    report["confusion"] = confusion_matrix(state.params, cfg, ev_data, quant=q).tolist()
    report["expert_load"] = evaluate(state.params, cfg, ev_data, batch_size=256, quant=q)["expert_load"]
    if out_path is not None:
        state.extra = {"input_norm": norm, "labels": labels, "finetuned_from": str(base_path),
                       "finetune_plan": opts.plan}
        save_training(out_path, cfg, tcfg, state)
        report["checkpoint"] = str(out_path)
        if state.ranges:              # QAT: the int8 file a device ships, beside the checkpoint
            int8_path = Path(str(out_path).removesuffix(".safetensors") + ".int8.safetensors")
            save_export(int8_path, state.params, cfg, "int8", state.ranges, **state.extra)
            report["int8_export"] = str(int8_path)
    return report
