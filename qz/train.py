"""The training loop: AdamW, clipping, warmup + cosine, aux loss, elastic top-k,
evaluation, checkpoints and exact resume (docs/spec.md §5).

Exact resume rests on one rule: everything random in step ``s`` (the batch,
the elastic top-k draw) is derived from ``(seed, s)`` alone. The checkpoint
then needs only the parameters, the AdamW moments and the step count, and a
run of 2N steps equals N steps + resume + N steps bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint
from .augment import augment_features, soft_targets
from .errors import InputError
from .model import forward_stats, loss_grads_logits, observe_ranges
from .ops import cross_entropy_forward
from .optim import adamw_init, adamw_step, clip_grad_norm, lr_at
from .progress import Progress
from .quant import observe_update
from .streams import stream

__all__ = ["TrainConfig", "TrainState", "TrainingDiverged", "train", "evaluate",
           "save_training", "load_training", "top_k_for_step", "budget_for_step"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    clip: float = 1.0             # global gradient norm; 0 turns clipping off
    aux_coef: float = 0.01
    top_k_choices: tuple = ()     # elastic top-k: each step draws k from this list; () = config top_k
    budget_choices: tuple = ()    # elastic expert budget (docs/spec.md §4): each step draws m from
                                  # this list (n_experts: no budget); () = no budget
    seed: int = 0
    eval_every: int = 0           # 0: evaluate only at the end
    eval_batches: int = 20
    ckpt_every: int = 0           # 0: checkpoint only at the end (and on a stop)
    patience: int = 0             # early stopping: stop after this many evaluations without a better
                                  # validation accuracy, and keep the best parameters (0: off)
    trainable: tuple = ()         # names (or prefixes ending in '.') that train; () = all
    augment: bool = False         # classifier features: shift, SpecAugment masks, noise
                                  # (augment.augment_features)
    time_mask: int = 6            # ... the widest time mask, in frames
    feature_mask: int = 2         # ... the widest feature mask, in coefficients
    mixup: float = 0.0            # classifier: mixup Beta(a, a) within each batch (data.soft_targets; 0: off)
    label_smoothing: float = 0.0  # classifier: share of the target spread over all classes (0: off)
    qat_start: int = -1           # QAT (docs/spec.md §5): fake-quant from this step on (-1: never) ...
    qat_freeze: int = -1          # ... with observers updating until this step, frozen after
                                  # (-1: never frozen)
    skip_nonfinite: int = 0       # batches with a non-finite loss or gradient that may be skipped (no update)
                                  # before the run stops with TrainingDiverged (0: stop at the first)
    ema: float = 0.0              # weight averaging: evaluate and keep an exponential moving average of the
                                  # weights, ema <- ema * decay + (1 - decay) * weights each step (0: off)

    def __post_init__(self):
        for key in ("steps", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{key}: must be an integer >= 1, got {v!r}")
        for key in ("warmup", "eval_every", "eval_batches", "ckpt_every", "seed", "patience",
                    "skip_nonfinite", "time_mask", "feature_mask"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{key}: must be an integer >= 0, got {v!r}")
        for key in ("lr", "weight_decay", "clip", "aux_coef", "eps", "mixup"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{key}: must be a finite number >= 0, got {v!r}")
        if not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise InputError(f"ema: must be in [0, 1), got {self.ema!r}")
        for key in ("beta1", "beta2", "min_lr_ratio", "label_smoothing"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise InputError(f"{key}: must be in [0, 1], got {v!r}")
        object.__setattr__(self, "top_k_choices", tuple(int(k) for k in self.top_k_choices))
        object.__setattr__(self, "budget_choices", tuple(int(m) for m in self.budget_choices))
        object.__setattr__(self, "trainable", tuple(str(n) for n in self.trainable))
        if self.patience and not self.eval_every:
            raise InputError("patience: early stopping needs eval_every > 0")
        for key in ("qat_start", "qat_freeze"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < -1:
                raise InputError(f"{key}: must be an integer >= -1, got {v!r}")
        if self.qat_freeze >= 0 and (self.qat_start < 0 or self.qat_freeze < self.qat_start):
            raise InputError("qat_freeze: must come at or after qat_start")

    def is_trainable(self, name):
        return not self.trainable or any(name == t or (t.endswith(".") and name.startswith(t))
                                         or name.endswith("." + t) for t in self.trainable)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"{unknown[0]}: unknown training option")
        return cls(**d)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["top_k_choices"] = list(self.top_k_choices)
        d["budget_choices"] = list(self.budget_choices)
        d["trainable"] = list(self.trainable)
        return d


@dataclass
class TrainState:
    params: dict
    opt: dict                      # AdamW moments m.<name>, v.<name>
    step: int = 0                  # steps done
    history: list = field(default_factory=list)
    best: dict | None = None       # early stopping: {"step", "accuracy", "params"} of the best evaluation
    stopped_early: bool = False
    ranges: dict = field(default_factory=dict)   # QAT observers: name -> (lo, hi)
    extra: dict = field(default_factory=dict)   # JSON metadata carried with the model (input_norm, labels)
    skipped: list = field(default_factory=list)  # steps whose batch was skipped as non-finite
                                                 # (tcfg.skip_nonfinite)


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the parameters are the last good ones."""


def top_k_for_step(cfg, tcfg, step):
    """Elastic top-k (docs/spec.md §5): a seeded draw from tcfg.top_k_choices, else cfg.top_k."""
    if not tcfg.top_k_choices:
        return cfg.top_k
    rng = stream(tcfg.seed, "top_k", step)
    return tcfg.top_k_choices[int(rng.integers(len(tcfg.top_k_choices)))]


def budget_for_step(cfg, tcfg, step):
    """Elastic expert budget: a seeded draw from tcfg.budget_choices (None: no budget)."""
    if not tcfg.budget_choices:
        return None
    m = tcfg.budget_choices[int(stream(tcfg.seed, "budget", step).integers(len(tcfg.budget_choices)))]
    return None if m >= cfg.n_experts else m


def evaluate(params, cfg, data, batch_size=64, max_batches=None, top_k=None, quant=None, expert_budget=None):
    """Loss, accuracy, aux and routing statistics on a held-out set.

    load[i][e] is the share of layer i's routed slots that went to expert e
    (1/E each under perfect balance); entropy[i] is the mean gate entropy in
    nats (log E when the gate cannot tell experts apart).
    """
    E = cfg.n_experts
    tot_loss = tot_correct = tot_count = tot_aux = n_batches = 0.0
    load = np.zeros((cfg.n_layers, E))
    entropy = np.zeros(cfg.n_layers)
    for x, y in data.eval_batches(batch_size, max_batches):
        logits, aux, stats = forward_stats(params, cfg, x, top_k=top_k, quant=quant,
                                           expert_budget=expert_budget)
        V = logits.shape[-1]
        z, t = logits.reshape(-1, V), y.reshape(-1)
        ce, _ = cross_entropy_forward(z, t)
        tot_loss += float(ce) * len(t)
        tot_correct += int(np.sum(np.argmax(z, axis=1) == t))
        tot_count += len(t)
        tot_aux += float(aux)
        n_batches += 1
        for i, st in enumerate(stats):
            load[i] += st["load"]
            entropy[i] += st["entropy"]
    if not tot_count:
        raise InputError("evaluate: the data set gave no batches")
    load /= load.sum(axis=1, keepdims=True)
    return {
        "loss": tot_loss / tot_count,
        "accuracy": tot_correct / tot_count,
        "aux": tot_aux / n_batches,
        "top_k": cfg.top_k if top_k is None else int(top_k),
        "expert_load": load.round(4).tolist(),
        "gate_entropy": (entropy / n_batches).round(4).tolist(),
        "n": int(tot_count),
    }


def train(cfg, tcfg, train_data, val_data=None, state=None, params=None, ckpt_path=None,
          stop_at=None, progress=True, log=print, should_stop=None):
    """Run steps state.step .. min(tcfg.steps, stop_at) - 1; return the TrainState.

    params: the starting parameters (a new run); state: a resumed TrainState.
    should_stop: a callable polled after each step (e.g. a SIGINT flag); when it
    returns True the loop stops early, and the caller saves a checkpoint.
    """
    if state is None:
        state = TrainState(params=params, opt=adamw_init(params))
    end = tcfg.steps if stop_at is None else min(tcfg.steps, stop_at)
    T = train_data.seq_len
    bar = Progress(end, "step", enabled=None if progress else False, initial=state.step)
    t_last, tokens = time.perf_counter(), 0
    recent_loss, recent_acc = [], []
    while state.step < end:
        step = state.step
        x, y = train_data.batch(step, tcfg.batch_size, tcfg.seed)
        if tcfg.augment and train_data.kind == "classifier":
            x = augment_features(x, stream(tcfg.seed, "augment", step),
                                 max_time_mask=tcfg.time_mask, max_feature_mask=tcfg.feature_mask)
        soft = None
        if (tcfg.mixup or tcfg.label_smoothing) and train_data.kind == "classifier":
            x, soft = soft_targets(x, y, cfg.n_classes, stream(tcfg.seed, "mixup", step),
                                   tcfg.mixup, tcfg.label_smoothing)
        k = top_k_for_step(cfg, tcfg, step)
        ranges_before = state.ranges   # qat_phase sets the observers from the first QAT batch
        quant, observed = qat_phase(cfg, tcfg, state, x, k)
        if quant is not None and not all(math.isfinite(v) for r in state.ranges.values() for v in r):
            # observers first set from a non-finite batch: no range to quantize with
            loss = gnorm = math.nan
        else:
            loss, grads, logits = loss_grads_logits(state.params, cfg, x, y, aux_coef=tcfg.aux_coef, top_k=k,
                                                    quant=quant, observed=observed, soft_targets=soft,
                                                    expert_budget=budget_for_step(cfg, tcfg, step))
            gnorm = clip_grad_norm(grads, tcfg.clip)
        lr = lr_at(step, tcfg.lr, tcfg.warmup, tcfg.steps, tcfg.min_lr_ratio)
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            # no update at all: params, moments and observers stay those of the last good step
            state.ranges = ranges_before
            _skip_or_stop(state, tcfg, f"step {step}: non-finite loss {loss} or gradient norm {gnorm}",
                          bar, log)
        else:
            # frozen parameters (a fine-tuning plan) keep their values and zero moments
            live = {n: p for n, p in state.params.items() if tcfg.is_trainable(n)}
            adamw_step(live, grads, state.opt, step + 1, lr, tcfg.beta1, tcfg.beta2, tcfg.eps,
                       tcfg.weight_decay)
            if tcfg.ema:
                ema_update(state, tcfg.ema)
            if observed:   # observers move toward this batch (they quantize from the next step on)
                state.ranges = observe_update(state.ranges, observed)
            recent_loss = (recent_loss + [loss])[-20:]          # smoothed over the last 20 steps
            recent_acc = (recent_acc + [float(np.mean(np.argmax(logits, axis=-1) == y))])[-20:]
        state.step += 1   # a skipped batch still uses up its step: step s draws the same batch in every run
        tokens += x.shape[0] * T
        now = time.perf_counter()
        if recent_loss:
            bar.update(state.step, loss=float(np.mean(recent_loss)), acc=float(np.mean(recent_acc)),
                       lr=lr, k=k, **{"tok/s": f"{tokens / max(now - t_last, 1e-9):.0f}"})
        # an evaluation belongs to its step, also when the run stops there (stop_at): resume stays exact
        if val_data is not None and tcfg.eval_every and state.step % tcfg.eval_every == 0 \
                and state.step < tcfg.steps:
            _eval_and_log(state, cfg, tcfg, val_data, bar, log)
            if tcfg.patience and _no_better_for(state, tcfg.patience):
                state.stopped_early = True
                break
        if ckpt_path and tcfg.ckpt_every and state.step % tcfg.ckpt_every == 0 and state.step < end:
            save_training(ckpt_path, cfg, tcfg, state)
        if should_stop is not None and should_stop():
            break
    bar.final()
    if val_data is not None and state.step == tcfg.steps:
        _eval_and_log(state, cfg, tcfg, val_data, bar, log)
    if tcfg.ema and state.step == tcfg.steps:   # a finished run keeps the averaged weights
        for name, p in state.params.items():
            p[...] = state.opt["ema." + name]
    if tcfg.patience and state.best is not None:
        for name, value in state.best["params"].items():   # restore the best evaluation's weights
            state.params[name][...] = value
        state.ranges = dict(state.best["ranges"])         # ... and the observer ranges they were scored with
    return state


def _skip_or_stop(state, tcfg, what, bar, log):
    """A non-finite batch: skip it while tcfg.skip_nonfinite allows, else raise TrainingDiverged."""
    if len(state.skipped) >= tcfg.skip_nonfinite:
        before = f" ({len(state.skipped)} bad batches skipped before)" if state.skipped else ""
        raise TrainingDiverged(f"{what}; the parameters are those of the last good step{before}")
    state.skipped.append(state.step)
    if log:
        bar.final()
        log(f"{what}: batch skipped, no update ({len(state.skipped)} of {tcfg.skip_nonfinite} allowed)")


def ema_update(state, decay):
    """The weight average (TrainConfig.ema) after a step: ema.<name> in the optimizer state, started at
    the weights themselves, moves by (1 - decay) toward them. It rides in the checkpoint, so resume is
    exact."""
    for name, p in state.params.items():
        avg = state.opt.setdefault("ema." + name, p.copy())
        avg *= decay
        avg += (1.0 - decay) * p


def scored_params(state, tcfg):
    """The weights a run is evaluated and kept with: the average (ema) when it is on, else the weights."""
    if not tcfg.ema or "ema." + next(iter(state.params)) not in state.opt:
        return state.params
    return {name: state.opt["ema." + name] for name in state.params}


def qat_phase(cfg, tcfg, state, x, k):
    """-> (quant for this step or None, dict to collect observations or None).

    Phases (docs/spec.md §5): float before qat_start; from qat_start, fake-quant with
    observers updating (each batch moves the ranges by an EMA after its step,
    the first QAT batch sets them by a float observation pass); from
    qat_freeze on, the ranges stay as they are.
    """
    if tcfg.qat_start < 0 or state.step < tcfg.qat_start:
        return None, None
    if not state.ranges:
        state.ranges = observe_update({}, observe_ranges(state.params, cfg, x, top_k=k))
    frozen = tcfg.qat_freeze >= 0 and state.step >= tcfg.qat_freeze
    return {"ranges": state.ranges}, (None if frozen else {})


def quant_of(state):
    """The quant argument matching a training state: fake-quant once QAT has begun, else None."""
    return {"ranges": state.ranges} if state.ranges else None


def _score(h):
    """What early stopping and the best checkpoint are chosen by: the validation accuracy, or
    for an elastic top-k run the mean accuracy over the k it trains with (it is served at each)."""
    return h.get("score", h["accuracy"])


def _no_better_for(state, patience):
    """True when the last `patience` evaluations did not beat the best one before them."""
    if len(state.history) <= patience:
        return False
    best_before = max(_score(h) for h in state.history[:-patience])
    return all(_score(h) <= best_before for h in state.history[-patience:])


def _eval_and_log(state, cfg, tcfg, val_data, bar, log):
    params = scored_params(state, tcfg)
    res = evaluate(params, cfg, val_data, batch_size=max(tcfg.batch_size, 32),
                   max_batches=tcfg.eval_batches, quant=quant_of(state))
    res["step"] = state.step
    ks = sorted(set(tcfg.top_k_choices))
    if len(ks) > 1:      # elastic top-k: score the checkpoint at every k the governor may serve it with
        acc = {k: res["accuracy"] if k == res["top_k"] else
               evaluate(params, cfg, val_data, batch_size=max(tcfg.batch_size, 32),
                        max_batches=tcfg.eval_batches, top_k=k, quant=quant_of(state))["accuracy"]
               for k in ks}
        res.update({f"accuracy_top{k}": a for k, a in acc.items()})
        res["score"] = float(np.mean(list(acc.values())))
    state.history.append(res)
    if tcfg.patience and (state.best is None or _score(res) > state.best["score"]):
        state.best = {"step": state.step, "accuracy": res["accuracy"], "score": _score(res),
                      "ranges": dict(state.ranges), "params": {n: p.copy() for n, p in params.items()}}
    if log:
        bar.final()
        per_k = "".join(f"  top_k {k} {res[f'accuracy_top{k}']:.4f}" for k in ks if f"accuracy_top{k}" in res)
        log(f"step {state.step}: val loss {res['loss']:.4f}  accuracy {res['accuracy']:.4f}{per_k}  "
            f"gate entropy {', '.join(f'{e:.3f}' for e in res['gate_entropy'])}")


def save_training(path, cfg, tcfg, state):
    """A checkpoint with everything `--resume` needs (docs/spec.md §6). An unfinished run with early
    stopping also keeps its best evaluation (weights as best.<name> beside the moments), which the
    end of the run restores."""
    opt, best = state.opt, {}
    if tcfg.patience and state.best is not None and state.step < tcfg.steps and not state.stopped_early:
        opt = {**opt, **{"best." + n: v for n, v in state.best["params"].items()}}
        best = {"best": {k: state.best[k] for k in ("step", "accuracy", "score", "ranges")}}
    checkpoint.save(path, state.params, cfg, state=opt, train=tcfg.to_dict(), step=state.step, **best,
                    rng={"seed": tcfg.seed, "scheme": "qz.streams: default_rng([seed, *index, id])"},
                    data_position={"step": state.step, "batch_size": tcfg.batch_size},
                    history=state.history, **({"quant": {"ranges": state.ranges}} if state.ranges else {}),
                    **({"skipped_steps": state.skipped} if state.skipped else {}),
                    **state.extra)


def load_training(path):
    """-> (cfg, tcfg, TrainState) from a checkpoint written by save_training."""
    params, cfg, meta = checkpoint.load(path)
    if "train" not in meta or "step" not in meta:
        raise checkpoint.CheckpointError(f"{path}: not a training checkpoint (no training state to resume)")
    try:
        tcfg = TrainConfig.from_dict(meta["train"])
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: training options do not validate: {e}") from None
    opt = meta.get("state", {})
    best_params = {k[len("best."):]: opt.pop(k) for k in [k for k in opt if k.startswith("best.")]}
    best = None
    if best_params or "best" in meta:
        b = meta.get("best")
        fields = {"step", "accuracy", "score", "ranges"}
        if set(best_params) != set(params) or not isinstance(b, dict) or fields - set(b):
            raise checkpoint.CheckpointError(f"{path}: the best evaluation's weights and record do not match")
        try:
            best = {"step": int(b["step"]), "accuracy": float(b["accuracy"]), "score": float(b["score"]),
                    "ranges": {str(n): (float(lo), float(hi)) for n, (lo, hi) in b["ranges"].items()},
                    "params": best_params}
        except (TypeError, ValueError, AttributeError):
            raise checkpoint.CheckpointError(f"{path}: the best evaluation's record is malformed") from None
    has_ema = any(k.startswith("ema.") for k in opt)     # the weight average starts at the first good step
    if has_ema and not tcfg.ema:
        raise checkpoint.CheckpointError(f"{path}: the optimizer state holds a weight average but ema is off")
    want = {p + n for n in params for p in ("m.", "v.") + (("ema.",) if has_ema else ())}
    if set(opt) != want:
        missing = sorted(want - set(opt))[:1] or sorted(set(opt) - want)[:1]
        raise checkpoint.CheckpointError(f"{path}: optimizer state does not match the parameters "
                                         f"({missing[0]})")
    for name, arr in opt.items():
        ref = params[name.split(".", 1)[1]]
        if arr.shape != ref.shape or arr.dtype != ref.dtype:
            raise checkpoint.CheckpointError(f"{path}: optimizer state {name} has shape/dtype "
                                             f"{arr.shape}/{arr.dtype}, expected {ref.shape}/{ref.dtype}")
    step = meta["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= tcfg.steps:
        raise checkpoint.CheckpointError(f"{path}: step {step!r} is not in 0..{tcfg.steps}")
    known = {"train", "step", "rng", "data_position", "history", "state", "quant", "skipped_steps", "best"}
    extra = {k: v for k, v in meta.items() if k not in known}
    ranges = {}
    if "quant" in meta:
        try:
            ranges = {str(n): (float(lo), float(hi)) for n, (lo, hi) in meta["quant"]["ranges"].items()}
        except (TypeError, ValueError, KeyError, AttributeError):
            raise checkpoint.CheckpointError(
                f"{path}: quant ranges are not a map of name -> [lo, hi]") from None
    skipped = meta.get("skipped_steps", [])
    if not (isinstance(skipped, list)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in skipped)):
        raise checkpoint.CheckpointError(f"{path}: skipped_steps is not a list of step numbers")
    return cfg, tcfg, TrainState(params=params, opt=opt, step=step, history=list(meta.get("history", [])),
                                 extra=extra, ranges=ranges, skipped=skipped, best=best)
