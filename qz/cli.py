"""The `qz` command line: demo, train, eval, finetune, quantize, generate, info.

Every user error (bad file, bad option, bad data) ends with a one-line
`qz: error: ...` on stderr and exit code 1, never a traceback. `--json`
prints machine-readable results on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, checkpoint
from .config import PRESETS, Config, active_params, n_params
from .data import apply_input_norm, fit_input_norm, load_dataset
from .errors import InputError
from .memory import keep_freed_memory
from .optim import adamw_init
from .quant import precision_sizes
from .train import (
    TrainConfig,
    TrainingDiverged,
    TrainState,
    evaluate,
    load_training,
    save_training,
    train,
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


def _train_config(args, resumed=None):
    d = resumed.to_dict() if resumed is not None else {}
    for key in ("steps", "batch_size", "lr", "warmup", "weight_decay", "clip", "aux_coef", "seed",
                "eval_every", "eval_batches", "ckpt_every", "qat_start", "qat_freeze", "ema"):
        value = getattr(args, key, None)
        if value is not None:
            d[key] = value
    if args.top_k_choices is not None:
        try:
            d["top_k_choices"] = [int(k) for k in args.top_k_choices.split(",") if k.strip()]
        except ValueError:
            raise UserError(f"--top-k-choices {args.top_k_choices!r}: expected a list like 1,2") from None
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
        from .model import init_params
        params = init_params(cfg, seed=tcfg.seed, dtype=np.dtype(args.dtype))
        state = TrainState(params=params, opt=adamw_init(params), extra=extra)
        out = out or Path("runs") / f"{Path(data_path).name.split('.')[0]}.safetensors"
    if args.skip_nonfinite is not None:   # not part of the math: may change on --resume
        tcfg = TrainConfig.from_dict({**tcfg.to_dict(), "skip_nonfinite": args.skip_nonfinite})
    bad_k = [k for k in tcfg.top_k_choices if not 1 <= k <= cfg.n_experts]
    if bad_k:   # else the run fails only at the first step that draws it
        raise UserError(f"--top-k-choices: {bad_k[0]} is not in 1..{cfg.n_experts} (the model's experts)")
    out.parent.mkdir(parents=True, exist_ok=True)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True  # finish the step in flight, then save and exit

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if not args.json:
        print(f"qz train: {cfg.mode} model, {n_params(cfg):,} parameters "
              f"({active_params(cfg):,} active per token), data {data_path} "
              f"({len(train_data):,} train examples), {tcfg.steps} steps -> {out}", flush=True)
    t0 = time.perf_counter()
    try:
        state = train(cfg, tcfg, train_data, val_data, state=state, ckpt_path=out,
                      stop_at=args.stop_at, progress=not (args.quiet or args.json),
                      log=None if args.json else print, should_stop=lambda: stop["flag"])
        save_training(out, cfg, tcfg, state)   # still under on_signal: a second Ctrl-C cannot cut it short
    except TrainingDiverged as e:
        save_training(out, cfg, tcfg, state)   # the bad step changed nothing: this is the last good state
        raise UserError(f"training stopped: {e}; saved it to {out} (--resume it with --skip-nonfinite N "
                        "to skip such batches)") from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
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


def _check_data_fits(cfg, data):
    if data.seq_len > cfg.max_len:
        raise UserError(f"the data's sequences ({data.seq_len}) are longer than the model's max_len {cfg.max_len}")
    if data.kind != cfg.mode:
        raise UserError(f"the data is for a {data.kind} but the model is a {cfg.mode}")
    if cfg.mode == "classifier" and data.x.shape[2] != cfg.input_dim:
        raise UserError(f"the data has {data.x.shape[2]} features per frame, the model expects {cfg.input_dim}")


def _data_context(meta, data_arg, what):
    """(data path, data options, seed) a checkpoint was trained with; --data overrides the path."""
    data_opts = meta.get("data", {}) if isinstance(meta.get("data"), dict) else {}
    seed = meta.get("train", {}).get("seed", 0) if isinstance(meta.get("train"), dict) else 0
    data_path = data_arg or data_opts.get("path")
    if data_path is None:
        raise UserError(f"--data: give {what}")
    return data_path, data_opts, seed


def cmd_eval(args):
    params, cfg, meta = checkpoint.load(args.checkpoint)
    data_path, data_opts, seed = _data_context(meta, args.data, "a data set to evaluate on")
    if args.split != "val":
        from .data import load_split
        raw_data = load_split(data_path, args.split)
    else:
        _, raw_data = load_data_for(data_path, cfg.mode, {**data_opts, "seq_len": cfg.max_len}, seed)
    val_data = apply_input_norm(raw_data, meta.get("input_norm"))
    _check_data_fits(cfg, val_data)
    warps = _warps(args.warps, cfg)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    ks = [args.moe_top_k] if args.moe_top_k is not None else sorted({1, cfg.top_k})   # 0 is an error, not unset
    quants = [None] + ([meta["quant"]] if isinstance(meta.get("quant"), dict) else [])
    results = []
    for quant in quants:
        for k in ks:
            if not 1 <= k <= cfg.n_experts:
                raise UserError(f"--moe-top-k {k}: must be in 1..{cfg.n_experts}")
            t0 = time.perf_counter()
            res = evaluate(params, cfg, val_data, batch_size=args.batch_size, max_batches=args.max_batches,
                           top_k=k, quant=quant)
            res["seconds"] = round(time.perf_counter() - t0, 3)
            res["precision"] = "fp32" if quant is None else "fake-int8"
            if warps:             # the same model, its softmax averaged over warped copies of each clip
                from .tta import warp_accuracy
                res["warps"] = list(warps)
                res["accuracy_warps"] = warp_accuracy(params, cfg, raw_data, meta.get("input_norm"), warps,
                                                      top_k=k, quant=quant)
            results.append(res)
    lines = [f"{args.checkpoint} on {data_path} ({args.split} split, {results[0]['n']:,} predictions)"]
    for r in results:
        lines.append(f"  {r['precision']} top_k {r['top_k']}: loss {r['loss']:.4f}  accuracy {r['accuracy']:.4f}  "
                     f"aux {r['aux']:.3f}  gate entropy {', '.join(f'{e:.3f}' for e in r['gate_entropy'])}")
        if "accuracy_warps" in r:
            lines.append(f"    with test-time warps {','.join(f'{w:g}' for w in r['warps'])}: "
                         f"accuracy {r['accuracy_warps']:.4f}")
        for i, load in enumerate(r["expert_load"]):
            lines.append(f"    layer {i} expert load: " + " ".join(f"{x:.2f}" for x in load))
    _emit(args, {"checkpoint": args.checkpoint, "data": data_path, "results": results}, lines)
    return 0


def _warps(text, cfg=None):
    """--warps '0.9,1,1.1' -> a tuple of warp factors (None when not given); speech classifiers only."""
    if text is None:
        return None
    from .tta import parse_warps
    if cfg is not None and cfg.mode != "classifier":
        raise UserError("--warps: test-time warps are for classifiers on speech features, not language models")
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


def cmd_finetune(args):
    from .data import load_labelled
    from .finetune import FinetuneOptions, finetune
    try:
        ks = tuple(int(k) for k in args.top_k_choices.split(",") if k.strip())
    except ValueError:
        raise UserError(f"--top-k-choices {args.top_k_choices!r}: expected a list like 1,2") from None
    try:
        opts = FinetuneOptions(plan=args.plan, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               val_fraction=args.val_fraction, patience=args.patience, seeds=args.seeds,
                               seed=args.seed, eval_every=args.eval_every, top_k_choices=ks,
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
    out = Path(args.out) if args.out else Path("runs") / f"finetuned_{Path(args.data).name.split('.')[0]}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.json:
        n_labels = len(data.labels) if data.labels else int(data.y.max()) + 1
        print(f"qz finetune: {args.base} -> {n_labels} labels, {len(data):,} samples "
              f"(plan {opts.plan}, {opts.seeds} seed{'s' if opts.seeds > 1 else ''}) -> {out}", flush=True)

    stop = {"flag": False}

    def on_signal(signum, frame):   # Ctrl-C or SIGTERM: finish the step, save the best so far
        stop["flag"] = True

    old = {sg: signal.signal(sg, on_signal) for sg in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = finetune(args.base, data, opts, test=test, val=val, out_path=out, mix=mix,
                          log=None if args.json else print, progress=not (args.quiet or args.json),
                          should_stop=lambda: stop["flag"])
    finally:
        for sg, handler in old.items():
            signal.signal(sg, handler)
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
                     f"{report['val_accuracy_warps']['mean']:.4f} +- {report['val_accuracy_warps']['std']:.4f}")
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


def cmd_demo(args):
    from .demo import DemoOptions, run_demo, summary_lines
    opts = DemoOptions(data_dir=args.data_dir, out_dir=args.out, seed=args.seed, from_scratch=args.from_scratch,
                       **({"base_steps": args.base_steps} if args.base_steps else {}),
                       **({"adapt_steps": args.adapt_steps} if args.adapt_steps else {}))
    if not args.json:
        print(f"qz demo: {'train' if opts.from_scratch else 'load'} the base command model (synthetic speech) -> "
              f"real unseen speakers -> adapt with real clips -> int8 -> governor; writing {opts.out_dir}/",
              flush=True)
    report = run_demo(opts, log=None if args.json else print, progress=not (args.quiet or args.json))
    lines = ["", "qz demo report"] + summary_lines(report) + [
        f"report: {opts.out_dir / 'report.json'}" + (f", curves: {report['png']}" if report["png"] else ""),
        f"total {report['seconds_total']:.0f} s"]
    _emit(args, report, lines)
    return 0


def cmd_generate(args):
    """Continue a prompt with a KV-cached decoder; stream to a terminal, then one metrics line."""
    from .generate import complete, encode, metrics_line
    from .runtime import load_bundle
    bundle = load_bundle(args.checkpoint)
    cfg = bundle.cfg
    if cfg.mode != "lm":
        raise UserError(f"{args.checkpoint[0]} is a classifier; generate needs a language model")
    prompt = encode(args.prompt)
    if prompt.size == 0:
        raise UserError("--prompt: give at least one character")
    if prompt.max() >= cfg.vocab_size:
        raise UserError(f"--prompt: has bytes outside the model's vocabulary of {cfg.vocab_size}")
    if args.sample_top_k is not None and args.sample_top_k < 1:
        raise UserError(f"--sample-top-k: must be >= 1, got {args.sample_top_k}")
    gov = _governor(args, cfg.top_k)
    stream = not args.json and sys.stdout.isatty()
    if stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    t0 = time.perf_counter()
    out = complete(bundle, prompt, args.max_new_tokens, temperature=args.temperature, sample_top_k=args.sample_top_k,
                   seed=args.seed, moe_top_k=args.moe_top_k, precision=args.precision, kv_cache=args.kv_cache,
                   plan_fn=gov.plan if gov is not None else None,
                   on_token=(lambda piece: (sys.stdout.write(piece), sys.stdout.flush())) if stream else None)
    seconds = time.perf_counter() - t0
    if stream:
        print()
        print(metrics_line(out.metrics))
        return 0
    _emit(args, {"text": out.text, "new_tokens": out.metrics["new_tokens"], "seconds": round(seconds, 3),
                 "metrics": out.metrics}, [out.text, metrics_line(out.metrics)])
    return 0


def cmd_quantize(args):
    """Post-training quantization: calibrate the observers on training batches, store the ranges."""
    from .ptq import calibrate
    params, cfg, meta = checkpoint.load(args.checkpoint)
    data_path, data_opts, seed = _data_context(meta, args.data, "data to calibrate on (the training split is used)")
    train_data, _ = load_data_for(data_path, cfg.mode, {**data_opts, "seq_len": cfg.max_len}, seed,
                                  meta.get("input_norm"))
    if args.calibrate < 1:
        raise UserError(f"--calibrate {args.calibrate}: need at least one batch")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    batches = (train_data.batch(step, args.batch_size, seed + 1)[0] for step in range(args.calibrate))
    ranges = calibrate(params, cfg, batches, args.observer, args.percentile)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + "_ptq.safetensors")
    keep = {k: v for k, v in meta.items() if k not in ("state", "quant")}
    method = f"ptq-{args.observer}" + (f"-{args.percentile:g}" if args.observer == "percentile" else "")
    checkpoint.save(out, params, cfg, quant={"ranges": ranges, "method": method,
                                             "calibration_batches": args.calibrate}, **keep)
    _emit(args, {"checkpoint": str(out), "ranges": ranges, "method": method},
          [f"saved {out}: {len(ranges)} observers calibrated on {args.calibrate} batches of {args.batch_size} "
           f"({method}); qz eval {out} scores fp32 and fake-int8, qz export {out} --int8 writes the int8 model"])
    return 0


def cmd_export(args):
    """Write deployable fp32 / fp16 / int8 files (docs/spec.md §3.3) from a checkpoint."""
    from .export import CARRIED_META, save_export
    params, cfg, meta = checkpoint.load(args.checkpoint)
    precisions = [p for p in ("fp32", "fp16", "int8") if getattr(args, p)] or ["int8"]
    ranges = meta.get("quant", {}).get("ranges") if isinstance(meta.get("quant"), dict) else None
    if "int8" in precisions and not ranges:
        raise UserError(f"{args.checkpoint} has no activation ranges for int8: train with --qat-start N "
                        f"or calibrate with `qz quantize {args.checkpoint}` first")
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.checkpoint).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(args.checkpoint).name.removesuffix(".safetensors")
    carried = {k: meta[k] for k in CARRIED_META if k in meta}
    files, lines = {}, []
    for precision in precisions:
        path = out_dir / f"{stem}.{precision}.safetensors"
        save_export(path, params, cfg, precision, ranges if precision == "int8" else None, **carried)
        files[precision] = {"path": str(path), "bytes": os.path.getsize(path)}
    ref = os.path.getsize(args.checkpoint)
    for precision, f in files.items():
        lines.append(f"saved {f['path']}: {f['bytes']:,} bytes")
    if "fp32" in files:
        base = files["fp32"]["bytes"]
        lines.append("size vs fp32 export: " + ", ".join(f"{p} {f['bytes'] / base:.3f}x" for p, f in files.items()))
    _emit(args, {"files": files, "checkpoint_bytes": ref}, lines)
    return 0


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
    from .governor import Governor
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
    from .governor import (
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


def cmd_run(args):
    """Classify wav files (or an .npz of features) with a model bundle under the governor."""
    from .audio import wav_features
    from .data import ArrayData
    from .runtime import Runtime, infer, load_bundle
    bundle = load_bundle(args.models)
    if bundle.cfg.mode != "classifier":
        raise UserError("qz run classifies inputs; for a language model use qz generate")
    gov = _governor(args, bundle.cfg.top_k)
    rt = Runtime(bundle, gov)
    for m in bundle.models.values():   # compile / load the kernels now, so latencies are per request
        infer(m, np.zeros((1, bundle.cfg.max_len, bundle.cfg.input_dim), np.float32))
    labels = bundle.meta.get("labels") or [str(i) for i in range(bundle.cfg.n_classes)]
    norm = bundle.meta.get("input_norm")
    results, failed = [], 0
    for path in args.inputs:
        try:
            x = wav_features(path)[None] if str(path).lower().endswith(".wav") else None
            if x is None:
                raise UserError(f"{path}: not a .wav file")
            if norm is not None:
                x = apply_input_norm(ArrayData(x, np.zeros(1, np.int64), str(path)), norm).x
            t0 = time.perf_counter()
            logits, info = rt.infer(x.astype(np.float32))
            ms = 1000 * (time.perf_counter() - t0)
        except (InputError, OSError) as e:   # one bad file never stops the rest
            failed += 1
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"qz: error: {msg}", file=sys.stderr)
            continue
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        c = int(np.argmax(p))
        results.append({"input": str(path), "label": labels[c], "confidence": round(float(p[c]), 4),
                        **info, "latency_ms": round(ms, 3)})
    summary = {}
    for r in results:
        s = summary.setdefault(r["mode"], {"requests": 0, "latency_ms": []})
        s["requests"] += 1
        s["latency_ms"].append(r["latency_ms"])
    for s in summary.values():
        s["mean_latency_ms"] = round(float(np.mean(s.pop("latency_ms"))), 3)
    lines = [f"{r['input']}: {r['label']} ({r['confidence']:.2f})  {r['mode']} {r['precision']} "
             f"top_k {r['top_k']}  {r['latency_ms']:.2f} ms" for r in results]
    lines += [f"{mode}: {s['requests']} requests, mean {s['mean_latency_ms']:.2f} ms" for mode, s in summary.items()]
    lines += [f"note: {n}" for n in rt.notes]
    _emit(args, {"results": results, "summary": summary, "failed": failed, "notes": rt.notes}, lines)
    return 1 if failed else 0


def cmd_governor(args):
    """`qz governor status`: what the sensors say and the mode; `simulate`: replay a discharge."""
    from .governor import Governor, plan_for
    if args.action == "status":
        gov = Governor(_sensors(args), tick_s=0.0)
        plan, state = gov.plan(), gov.state
        res = {"state": {k: getattr(state, k) for k in ("battery_pct", "charging", "temp_c", "cpu_util")},
               "sources": dict(state.sources), "mode": plan.mode, "plan": plan_for(plan.mode, 2).__dict__}
        lines = [f"battery {state.battery_pct}%, charging {state.charging}, temp {state.temp_c} C, "
                 f"cpu {state.cpu_util} -> {plan.mode} ({plan.precision}, top_k {plan.top_k or 'config'})"]
        lines += [f"  {k}: {v}" for k, v in state.sources.items()]
        _emit(args, res, lines)
        return 0
    from . import simulate as sim
    from .data import load_split
    from .governor import load_trace
    from .runtime import load_bundle
    if not args.models or not args.data:
        raise UserError("governor simulate needs model files and --data (an .npz with a test split)")
    bundle = load_bundle(args.models)
    test = apply_input_norm(load_split(args.data, "test"), bundle.meta.get("input_norm"))
    costs = sim.measure_modes(bundle, test, repeats=args.repeats)
    trace = load_trace(args.trace) if args.trace else None
    cfg = sim.SimConfig(capacity_wh=args.capacity_wh, rate_hz=args.rate, baseline_w=args.baseline_w)
    res = sim.compare(costs, cfg, trace)
    res["modes"] = {m: {"precision": c.precision, "top_k": c.top_k, "energy_j": c.energy_j,
                        "mean_ms": round(c.mean_ms, 4), "p95_ms": round(c.p95_ms, 4), "accuracy": c.accuracy}
                    for m, c in costs.items()}
    res["sweep_baseline_w"] = sim.sweep(costs, sim=cfg, trace=trace)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = sim.write_timeline(res, str(out))
    lines = [f"{m}: {c['precision']} top_k {c['top_k']}, {c['energy_j'] * 1e6:.2f} uJ/request (estimated), "
             f"{c['mean_ms']:.3f} ms (p95 {c['p95_ms']:.3f}), accuracy {c['accuracy']:.4f}" for m, c in res["modes"].items()]
    for name, run in res["runs"].items():
        lines.append(f"{name:>11}: {run['requests']:,} requests in {run['hours']:.1f} h, accuracy {run['accuracy']:.4f}, "
                     f"mean latency {run['mean_latency_ms']:.3f} ms")
    lines.append(f"governed vs always-performance: {res['governed_vs_performance_requests']:.2f}x requests, "
                 f"{res['governed_vs_performance_accuracy_points']:+.2f} accuracy points")
    lines.append(f"wrote {out}.json, {out}.csv" + (f", {png}" if png else ""))
    _emit(args, {k: v for k, v in res.items() if k != "runs"} | {"runs": {k: {kk: vv for kk, vv in v.items() if kk != "timeline"}
                                                                        for k, v in res["runs"].items()}}, lines)
    return 0


def cmd_info(args):
    params, cfg, meta = checkpoint.load(args.checkpoint)
    size = os.path.getsize(args.checkpoint)
    dtypes = sorted({str(p.dtype) for p in params.values()})
    active = {k: active_params(cfg, k) for k in range(1, cfg.n_experts + 1)}
    state_bytes = sum(a.nbytes for a in meta.get("state", {}).values())
    result = {"checkpoint": args.checkpoint, "config": cfg.to_dict(), "mode": cfg.mode,
              "parameters": n_params(cfg), "active_parameters_per_token": active, "dtypes": dtypes,
              "file_bytes": size, "parameter_bytes": sum(p.nbytes for p in params.values()),
              "training_state_bytes": state_bytes, "step": meta.get("step"),
              "last_eval": (meta.get("history") or [None])[-1], "sizes": precision_sizes(params)}
    lines = [f"{args.checkpoint}: {cfg.mode} model, {size:,} bytes on disk "
             f"({result['parameter_bytes']:,} parameters + {state_bytes:,} training state), {', '.join(dtypes)}",
             "config: " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None),
             f"parameters: {n_params(cfg):,}",
             "size by precision: fp32 {fp32_bytes:,} B, fp16 {fp16_bytes:,} B, int8 {int8_bytes:,} B "
             "({int8_vs_fp32:.3f}x fp32; {int8_bits_per_quantized_weight} bits per quantized weight "
             "with scales)".format(**result["sizes"]),
             "active per token: " + ", ".join(f"top_k {k}: {v:,}" for k, v in active.items())]
    if result["step"] is not None:
        lines.append(f"trained steps: {result['step']}")
    if result["last_eval"]:
        e = result["last_eval"]
        lines.append(f"last eval: loss {e['loss']:.4f}, accuracy {e['accuracy']:.4f}")
    _emit(args, result, lines)
    return 0


# ----------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------
TRAIN_EPILOG = """examples:
  qz train                                   # character LM on data/kjv.txt.gz, preset tiny_lm
  qz train --data feats.npz --steps 2000     # any .npz with x (N,T,F) float + y (N,) labels
  qz train --data data/digits.csv.gz --frames 8 --val-fraction 0.2 --preset digits
  qz train --preset char_lm --top-k-choices 1,2 --out runs/lm.safetensors
  qz train --resume runs/lm.safetensors --steps 4000   # continue (bit-exact) and extend

Ctrl-C finishes the current step, saves a checkpoint and prints how to resume.
"""


WARPS_HELP = ("also score with test-time warps: average the softmax over these vocal tract length warps "
              "of each clip, e.g. 0.9,1,1.1 (speech features; one forward pass per warp; default: off)")
FINETUNE_EPILOG = """examples:
  qz finetune runs/commands.safetensors --data my_words/            # my_words/<label>/*.wav
  qz finetune runs/commands.safetensors --data clips/ --include '*_george_*.wav' \\
      --test clips/ --test-include '*_jackson_*.wav' --seeds 3   # train on one speaker, test on another
  qz finetune runs/kws.safetensors --data feats.csv --plan head     # a linear probe on CSV features
  R=data/speech_commands_real.npz                                  # real speakers, split by speaker
  qz finetune data/commands_base.safetensors --data $R --val $R:val --test $R:test \
      --steps 2000 --lr 1e-3 --eval-every 50 --patience 10 --vtlp 0.15 --seeds 3   # the demo's adaptation
"""


def build_parser():
    p = _Parser(prog="qz", description="Qingzhou-mini: a small Mixture-of-Experts "
                                "transformer for CPU-only devices (train, evaluate, inspect).")
    p.add_argument("--version", action="version", version=f"qz {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model on an .npz or a text file",
                       description="Train a model from scratch or resume one. The model's sizes that "
                       "depend on the data (input_dim, n_classes, vocab_size, max_len) are read off the data.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--data", help="an .npz with x and y, a CSV of features with a label column, a folder of wav "
                   "files (one sub-folder per label, or files named <label>_*.wav; 49 x 13 MFCC), or a "
                   f".txt/.txt.gz for a character LM (default {DEFAULT_TEXT})")
    t.add_argument("--preset", help=f"model preset: {', '.join(sorted(PRESETS))} "
                   "(default kws for features, tiny_lm for text)")
    t.add_argument("--config", help="a JSON file with a full model config (instead of --preset)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key, e.g. --set n_layers=4")
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
    t.add_argument("--weight-decay", type=float, help="AdamW decoupled decay, not on norms/biases (default 0.01)")
    t.add_argument("--clip", type=float, help="global gradient-norm clip, 0 = off (default 1.0)")
    t.add_argument("--aux-coef", type=float, help="load-balancing loss weight (default 0.01)")
    t.add_argument("--top-k-choices", help="elastic top-k: each step draws k from this list, e.g. 1,2")
    t.add_argument("--seed", type=int, help="seed for init, data order and top-k draws (default 0)")
    t.add_argument("--ema", type=float, help="weight averaging: evaluate and keep an exponential moving average "
                   "of the weights with this decay, e.g. 0.999 (default 0: off)")
    t.add_argument("--qat-start", type=int, help="quantization-aware training: fake-quant int8 from this step on, "
                   "observers updating (default: off)")
    t.add_argument("--qat-freeze", type=int, help="QAT: freeze the observers' ranges from this step on")
    t.add_argument("--eval-every", type=int, help="evaluate every N steps (default: at the end only)")
    t.add_argument("--eval-batches", type=int, help="held-out batches per evaluation (default 20)")
    t.add_argument("--ckpt-every", type=int, help="save a checkpoint every N steps (default: at the end)")
    t.add_argument("--out", help="checkpoint path (default runs/<data>.safetensors, or the resumed file)")
    t.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint, exactly")
    t.add_argument("--stop-at", type=int, help="stop after this step and save (the schedule still plans --steps)")
    t.add_argument("--skip-nonfinite", type=int, metavar="N", help="skip up to N batches whose loss or gradient "
                   "is NaN/Inf (no update) before stopping (default 0: stop at the first, keeping the last good state)")
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on held-out data",
                       description="Loss, accuracy and routing statistics (per-expert load, gate entropy) on "
                       "the held-out split of a data set, at the config's top_k and at top_k 1.")
    e.add_argument("checkpoint")
    e.add_argument("--data", help=f"data set (default {DEFAULT_TEXT} for LMs)")
    e.add_argument("--moe-top-k", type=int, help="evaluate with this many experts per token only "
                   "(default: 1 and the config's top_k)")
    e.add_argument("--top-k", dest="moe_top_k", type=int, help=argparse.SUPPRESS)   # the old name
    e.add_argument("--split", choices=["val", "test"], default="val",
                   help="val: the held-out split training used (default); test: an .npz's x_test/y_test")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-batches", type=int, default=None, help="limit the number of batches")
    e.add_argument("--warps", help=WARPS_HELP)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

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
    f.add_argument("--mix", metavar="DATA[:SHARE]", help="rehearsal: also train on DATA (e.g. the base model's own "
                   "data set; its labels must be among the task's), SHARE of every batch (default 0.5), so the "
                   "model keeps what it knew")
    f.add_argument("--frames", type=int, default=1, help="CSV data: fold features into this many frames")
    f.add_argument("--plan", choices=["head", "light", "all"], default="all",
                   help="what trains: head only, head + gates + norms, or everything (default)")
    f.add_argument("--steps", type=int, default=600, help="at most this many steps (default 600)")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--val-fraction", type=float, default=0.2, help="stratified validation share (default 0.2)")
    f.add_argument("--eval-every", type=int, default=25, help="validate every N steps (default 25)")
    f.add_argument("--patience", type=int, default=8, help="stop after N validations without improvement")
    f.add_argument("--top-k-choices", default="1,2", help="elastic top-k during fine-tuning (default 1,2)")
    f.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds and report the spread")
    f.add_argument("--qat-start", type=int, default=-1, help="quantization-aware fine-tuning: fake-quant int8 "
                   "from this step (also writes <out>.int8.safetensors; default: off)")
    f.add_argument("--qat-freeze", type=int, default=-1, help="QAT: freeze the observers from this step")
    f.add_argument("--vtlp", type=float, default=0.0, help="warp each training clip's frequency axis by a random "
                   "factor in 1 +- VTLP (MFCC features; unseen voices: 0.25 in the demo, 0 = off)")
    f.add_argument("--ema", type=float, default=0.0, help="weight averaging with this decay, e.g. 0.99 "
                   "(default 0: off)")
    f.add_argument("--warps", help=WARPS_HELP)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", help="adapted checkpoint (default runs/finetuned_<data>.safetensors)")
    f.add_argument("--report", help="JSON report path (default: next to the checkpoint)")
    f.add_argument("--quiet", action="store_true")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_finetune)

    d = sub.add_parser("demo", help="the main job: spoken commands from real people, adapted, int8, governed",
                       description="Load the shipped base command model (trained on synthetic speech only), "
                       "score it on real people it never heard, adapt it with the shipped real clips of other "
                       "speakers and score it again on the unseen speakers, beside "
                       "a logistic-regression baseline; then int8 (PTQ and QAT) on the integer runtime, the "
                       "governor's modes and a simulated discharge, and one wav clip timed end to end. Writes "
                       "report.json (plus curves.png with matplotlib). About a minute on 2 cores.",
                       epilog="examples:\n  qz demo                      # about a minute\n"
                              "  qz demo --from-scratch       # also retrain the base model (about 8 minutes in all)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--data-dir", default="data", help="where the shipped data sets are (default data)")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--from-scratch", action="store_true",
                   help="retrain the base model on the synthetic commands instead of loading "
                        "data/commands_base.safetensors (what scripts/make_base_model.py ships)")
    d.add_argument("--base-steps", type=int, help="--from-scratch: base training steps (default: the shipped recipe)")
    d.add_argument("--adapt-steps", type=int,
                   help="at most this many adaptation steps (early stopping usually ends it sooner)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("generate", help="sample text from a character language model",
                       description="Continue a prompt with a trained character LM, one byte at a time, "
                       "with a KV cache: the prompt runs once (prefill), then each new byte runs alone. "
                       "Give a training checkpoint and/or exports (qz export) of the same model; "
                       "prints time to first token, prefill and decode tokens/s and peak RSS at the end.")
    g.add_argument("checkpoint", nargs="+", help="checkpoint or export file(s), at most one per precision")
    g.add_argument("--prompt", default="And God said", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more varied")
    g.add_argument("--sample-top-k", type=int, help="sample only among the k most likely next bytes")
    g.add_argument("--top-k", dest="sample_top_k", type=int, help=argparse.SUPPRESS)   # the old name
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--moe-top-k", type=int, help="experts per token (default: the config's top_k)")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="which loaded model serves (default the most precise; a missing one falls back)")
    g.add_argument("--kv-cache", choices=("fp32", "int8"), default="fp32",
                   help="KV cache storage: fp32 (exact) or int8 (per token and head, ~1/3.6 the memory)")
    _add_governor_args(g, "off", " (the plan is read once per request: a KV cache belongs to one precision; "
                       "--precision and --moe-top-k win over it)")
    g.add_argument("--json", action="store_true", help="print text and metrics as JSON")
    g.set_defaults(func=cmd_generate)

    qp = sub.add_parser("quantize", help="post-training quantization: calibrate int8 activation ranges",
                        description="Run a trained model on N training batches, record each observer's "
                        "min/max (docs/spec.md §3.2) and save a checkpoint whose fake-int8 model qz eval "
                        "can score: the baseline that quantization-aware training (qz train --qat-start) is "
                        "compared with.")
    qp.add_argument("checkpoint")
    qp.add_argument("--calibrate", type=int, default=16, metavar="N", help="calibration batches (default 16)")
    qp.add_argument("--batch-size", type=int, default=32)
    qp.add_argument("--data", help="data to calibrate on (default: the checkpoint's training data)")
    qp.add_argument("--observer", choices=["minmax", "percentile"], default="minmax",
                    help="minmax: widest range seen (default); percentile: mean of each batch's "
                    "percentile range, so rare outliers clip")
    qp.add_argument("--percentile", type=float, default=99.99, help="for --observer percentile (default 99.99)")
    qp.add_argument("--out", help="output checkpoint (default <name>_ptq.safetensors)")
    qp.add_argument("--json", action="store_true")
    qp.set_defaults(func=cmd_quantize)

    x = sub.add_parser("export", help="write deployable fp32 / fp16 / int8 model files",
                       description="Write inference-only model files from a checkpoint: int8 (int8 weights, "
                       "float32 per-channel scales, activation scale and zero point per observer; needs a "
                       "QAT-trained or `qz quantize`d checkpoint), fp16 (weights as float16, computed in "
                       "float32) and fp32. Files are named <checkpoint>.<precision>.safetensors.",
                       epilog="examples:\n  qz train --data data/speech_commands.npz --qat-start 2500 --out runs/kws.safetensors\n"
                       "  qz export runs/kws.safetensors --int8 --fp16 --fp32\n"
                       "  qz quantize runs/float.safetensors && qz export runs/float_ptq.safetensors --int8",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("checkpoint")
    x.add_argument("--int8", action="store_true", help="int8 model (the default when no precision is given)")
    x.add_argument("--fp16", action="store_true", help="float16 weights")
    x.add_argument("--fp32", action="store_true", help="float32 weights without training state")
    x.add_argument("--out-dir", help="folder for the files (default: the checkpoint's folder)")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_export)

    r = sub.add_parser("run", help="classify wav files with a model bundle under the governor",
                       description="Load one model at one or more precisions (exports from qz export, or a "
                       "training checkpoint as fp32) and classify wav files. Each request runs with the "
                       "governor's plan (docs/spec.md §4): performance = fp32 at the config top_k, "
                       "balanced = int8, "
                       "low_power = int8 at top_k 1, critical = int8, top_k 1, one thread. Prints label, "
                       "confidence, mode, precision, top_k and latency per file, then a summary per mode.",
                       epilog="examples:\n  qz run runs/demo/commands.fp32.safetensors runs/demo/commands.int8.safetensors "
                       "--inputs data/wav/*.wav\n  qz run MODELS --inputs a.wav --battery 15 --charging no   # low_power\n"
                       "  qz run MODELS --inputs a.wav --governor trace.csv   # replay time,battery,charging,temp,cpu_util",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("models", nargs="+", help="model files: one per precision")
    r.add_argument("--inputs", nargs="+", required=True, help="wav files to classify")
    _add_governor_args(r, "auto")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    gv = sub.add_parser("governor", help="device state and mode now, or a simulated battery discharge",
                        description="status: read this device's battery, temperature and CPU load (or a trace, "
                        "or overrides) and print the mode the governor picks. simulate: replay a discharge from "
                        "100 %% against the model under always-performance, always-balanced and the governed "
                        "policy, with each mode's energy estimated (qz/energy.py) and its latency and accuracy "
                        "measured here; writes JSON, CSV and (with matplotlib) PNG.",
                        epilog="examples:\n  qz governor status --battery 15 --charging no\n"
                        "  qz governor simulate runs/demo/commands.fp32.safetensors runs/demo/commands.int8.safetensors "
                        "--data data/speech_commands.npz\n  qz governor simulate MODELS --data D --trace heat.csv "
                        "--baseline-w 0.1 --rate 10",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    gv.add_argument("action", choices=["status", "simulate"])
    gv.add_argument("models", nargs="*", help="simulate: model files, one per precision")
    gv.add_argument("--data", help="simulate: an .npz whose test split scores each mode")
    gv.add_argument("--governor", default="auto", help="status: auto (this device) or a trace file")
    gv.add_argument("--trace", help="simulate: CSV/JSON rows of time, battery, charging, temp, cpu_util "
                    "(battery is simulated; default: a synthetic profile with a heat-up every 10 h)")
    gv.add_argument("--battery", type=float, help="status: override the battery level, percent")
    gv.add_argument("--temp", type=float, help="status: override the temperature, C")
    gv.add_argument("--charging", help="status: override charging, yes or no")
    gv.add_argument("--capacity-wh", type=float, default=15.0, help="battery capacity (default 15 Wh, a phone)")
    gv.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50: a 20 ms hop)")
    gv.add_argument("--baseline-w", type=float, default=0.03, help="the rest of the device's power (default 0.03 W)")
    gv.add_argument("--repeats", type=int, default=200, help="latency samples per mode (default 200)")
    gv.add_argument("--out", default="runs/governor/simulation", help="output path stem")
    gv.add_argument("--json", action="store_true")
    gv.set_defaults(func=cmd_governor)

    i = sub.add_parser("info", help="describe a checkpoint",
                       description="Config, parameter count, active parameters per token at each top_k, "
                       "file size and training progress of a checkpoint.")
    i.add_argument("checkpoint")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    keep_freed_memory()  # this process owns its allocator: no page faults every step
    try:
        return args.func(args)
    except (InputError, OSError) as e:   # bad input: one line; anything else is a bug and keeps its traceback
        if os.environ.get("QZ_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"qz: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
