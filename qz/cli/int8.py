"""qz quantize and qz export: post-training ranges and deployable fp32 / fp16 / int8 files."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import checkpoint
from .common import UserError, _data_context, _emit, load_data_for


def cmd_quantize(args):
    """Post-training quantization: calibrate the observers on training batches, store the ranges."""
    from ..ptq import calibrate
    params, cfg, meta = checkpoint.load(args.checkpoint)
    data_path, data_opts, seed = _data_context(meta, args.data,
                                               "data to calibrate on (the training split is used)")
    train_data, _ = load_data_for(data_path, cfg.mode, {**data_opts, "seq_len": cfg.max_len}, seed,
                                  meta.get("input_norm"))
    if args.calibrate < 1:
        raise UserError(f"--calibrate {args.calibrate}: need at least one batch")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    batches = (train_data.batch(step, args.batch_size, seed + 1)[0] for step in range(args.calibrate))
    ranges = calibrate(params, cfg, batches, args.observer, args.percentile)
    out = (Path(args.out) if args.out
           else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + "_ptq.safetensors"))
    keep = {k: v for k, v in meta.items() if k not in ("state", "quant")}
    method = f"ptq-{args.observer}" + (f"-{args.percentile:g}" if args.observer == "percentile" else "")
    checkpoint.save(out, params, cfg, quant={"ranges": ranges, "method": method,
                                             "calibration_batches": args.calibrate}, **keep)
    _emit(args, {"checkpoint": str(out), "ranges": ranges, "method": method},
          [f"saved {out}: {len(ranges)} observers calibrated on {args.calibrate} batches of "
           f"{args.batch_size} ({method}); qz eval {out} scores fp32 and fake-int8, "
           f"qz export {out} --int8 writes the int8 model"])
    return 0


def cmd_export(args):
    """Write deployable fp32 / fp16 / int8 files (docs/spec.md §3.3) from a checkpoint."""
    from ..export import CARRIED_META, save_export
    params, cfg, meta = checkpoint.load(args.checkpoint)
    precisions = [p for p in ("fp32", "fp16", "int8") if getattr(args, p)] or ([] if args.onnx else ["int8"])
    onnx_precisions = (["fp32"] + (["int8"] if args.int8 else [])) if args.onnx else []
    ranges = meta.get("quant", {}).get("ranges") if isinstance(meta.get("quant"), dict) else None
    if "int8" in precisions + onnx_precisions and not ranges:
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
    for precision in onnx_precisions:           # written from the model's structure (qz/onnx.py)
        from .. import onnx as qz_onnx
        from ..runtime import prepare
        model = prepare(params, cfg, precision, ranges if precision == "int8" else None, carried, lean=False)
        path = out_dir / f"{stem}{'.int8' if precision == 'int8' else ''}.onnx"
        qz_onnx.export(model, path)
        files[f"onnx_{precision}"] = {"path": str(path), "bytes": os.path.getsize(path)}
    ref = os.path.getsize(args.checkpoint)
    for precision, f in files.items():
        lines.append(f"saved {f['path']}: {f['bytes']:,} bytes")
    if "fp32" in files:
        base = files["fp32"]["bytes"]
        lines.append("size vs fp32 export: "
                     + ", ".join(f"{p} {f['bytes'] / base:.3f}x" for p, f in files.items()))
    _emit(args, {"files": files, "checkpoint_bytes": ref}, lines)
    return 0


def add_parser(sub):
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
    qp.add_argument("--percentile", type=float, default=99.99,
                    help="for --observer percentile (default 99.99)")
    qp.add_argument("--out", help="output checkpoint (default <name>_ptq.safetensors)")
    qp.add_argument("--json", action="store_true")
    qp.set_defaults(func=cmd_quantize)

    x = sub.add_parser("export", help="write deployable fp32 / fp16 / int8 model files",
                       description="Write inference-only model files from a checkpoint: int8 (int8 weights, "
                       "float32 per-channel scales, activation scale and zero point per observer; needs a "
                       "QAT-trained or `qz quantize`d checkpoint), fp16 (weights as float16, computed in "
                       "float32) and fp32. Files are named <checkpoint>.<precision>.safetensors.",
                       epilog="examples:\n"
                       "  qz train --data data/speech_commands.npz --qat-start 2500 "
                       "--out runs/kws.safetensors\n"
                       "  qz export runs/kws.safetensors --int8 --fp16 --fp32\n"
                       "  qz quantize runs/float.safetensors && qz export runs/float_ptq.safetensors --int8\n"
                       "  qz export runs/kws.safetensors --onnx --int8   # + runs/kws.onnx, "
                       "runs/kws.int8.onnx (docs/deploy.md)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("checkpoint")
    x.add_argument("--int8", action="store_true", help="int8 model (the default when no precision is given)")
    x.add_argument("--fp16", action="store_true", help="float16 weights")
    x.add_argument("--fp32", action="store_true", help="float32 weights without training state")
    x.add_argument("--onnx", action="store_true",
                   help="also write <checkpoint>.onnx (fp32) and, with --int8, <checkpoint>.int8.onnx for "
                   "ONNX Runtime (needs the onnx extra: pip install -e \".[onnx]\"); alone, only the "
                   "fp32 .onnx")
    x.add_argument("--out-dir", help="folder for the files (default: the checkpoint's folder)")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_export)
