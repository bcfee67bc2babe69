"""qz eval: loss, accuracy and routing statistics of a checkpoint on held-out data."""
from __future__ import annotations

import argparse
import time

from .. import checkpoint
from ..data import apply_input_norm
from ..train import (
    evaluate,
)
from .common import (
    DEFAULT_TEXT,
    WARPS_HELP,
    UserError,
    _check_data_fits,
    _data_context,
    _emit,
    _warps,
    load_data_for,
)


def cmd_eval(args):
    params, cfg, meta = checkpoint.load(args.checkpoint)
    data_path, data_opts, seed = _data_context(meta, args.data, "a data set to evaluate on")
    if args.split != "val":
        from ..data import load_split
        raw_data = load_split(data_path, args.split)
    else:
        _, raw_data = load_data_for(data_path, cfg.mode, {**data_opts, "seq_len": cfg.max_len}, seed)
    val_data = apply_input_norm(raw_data, meta.get("input_norm"))
    _check_data_fits(cfg, val_data)
    warps = _warps(args.warps, cfg)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    # 0 is an error, not unset
    ks = [args.moe_top_k] if args.moe_top_k is not None else sorted({1, cfg.top_k})
    quants = [None] + ([meta["quant"]] if isinstance(meta.get("quant"), dict) else [])
    results = []
    for quant in quants:
        for k in ks:
            if not 1 <= k <= cfg.n_experts:
                raise UserError(f"--moe-top-k {k}: must be in 1..{cfg.n_experts}")
            t0 = time.perf_counter()
            res = evaluate(params, cfg, val_data, batch_size=args.batch_size, max_batches=args.max_batches,
                           top_k=k, quant=quant, expert_budget=args.expert_budget)
            res["expert_budget"] = args.expert_budget
            res["seconds"] = round(time.perf_counter() - t0, 3)
            res["precision"] = "fp32" if quant is None else "fake-int8"
            if warps:             # the same model, its softmax averaged over warped copies of each clip
                from ..tta import warp_accuracy
                res["warps"] = list(warps)
                res["accuracy_warps"] = warp_accuracy(params, cfg, raw_data, meta.get("input_norm"), warps,
                                                      top_k=k, quant=quant)
            results.append(res)
    for path in args.onnx or []:                  # the exported file through ONNX Runtime, same data
        results += _onnx_results(path, val_data, ks, args.batch_size, args.max_batches)
    lines = [f"{args.checkpoint} on {data_path} ({args.split} split, {results[0]['n']:,} predictions)"]
    for r in results:
        if "onnx" in r:
            lines.append(f"  {r['precision']} top_k {r['top_k']}: accuracy {r['accuracy']:.4f}  "
                         f"({r['onnx']})")
            continue
        lines.append(f"  {r['precision']} top_k {r['top_k']}: loss {r['loss']:.4f}  "
                     f"accuracy {r['accuracy']:.4f}  "
                     f"aux {r['aux']:.3f}  gate entropy {', '.join(f'{e:.3f}' for e in r['gate_entropy'])}")
        if "accuracy_warps" in r:
            lines.append(f"    with test-time warps {','.join(f'{w:g}' for w in r['warps'])}: "
                         f"accuracy {r['accuracy_warps']:.4f}")
        for i, load in enumerate(r.get("expert_load", [])):
            lines.append(f"    layer {i} expert load: " + " ".join(f"{x:.2f}" for x in load))
    _emit(args, {"checkpoint": args.checkpoint, "data": data_path, "results": results}, lines)
    return 0


def _onnx_results(path, data, ks, batch_size, max_batches):
    """Accuracy of an exported .onnx file (qz export --onnx) through ONNX Runtime."""
    import json

    import numpy as np

    from .. import onnx as qz_onnx
    sess = qz_onnx.session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    precision = "onnx " + json.loads(meta.get("precision", '"?"'))
    out = []
    for k in ks:
        t0, hits, n = time.perf_counter(), 0, 0
        for b, (x, y) in enumerate(data.eval_batches(batch_size, max_batches)):
            logits = qz_onnx.run(sess, x, k)
            hits += int(np.sum(np.argmax(logits, axis=-1) == y))
            n += int(np.size(y))
        out.append({"precision": precision, "onnx": str(path), "top_k": k, "n": n,
                    "accuracy": hits / max(n, 1), "seconds": round(time.perf_counter() - t0, 3)})
    return out


def add_parser(sub):
    e = sub.add_parser("eval", help="evaluate a checkpoint on held-out data",
                       description="Loss, accuracy and routing statistics (per-expert load, gate entropy) on "
                       "the held-out split of a data set, at the config's top_k and at top_k 1.")
    e.add_argument("checkpoint")
    e.add_argument("--data", help=f"data set (default {DEFAULT_TEXT} for LMs)")
    e.add_argument("--moe-top-k", type=int, help="evaluate with this many experts per token only "
                   "(default: 1 and the config's top_k)")
    e.add_argument("--top-k", dest="moe_top_k", type=int, help=argparse.SUPPRESS)   # the old name
    e.add_argument("--expert-budget", type=int, help="each input uses only its m experts of highest mean "
                   "gate probability per layer (docs/spec.md §4; default: all)")
    e.add_argument("--split", choices=["val", "test"], default="val",
                   help="val: the held-out split training used (default); test: an .npz's x_test/y_test")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-batches", type=int, default=None, help="limit the number of batches")
    e.add_argument("--warps", help=WARPS_HELP)
    e.add_argument("--onnx", action="append", metavar="FILE.onnx",
                   help="also score this exported file (qz export --onnx) through ONNX Runtime on the same "
                   "data (repeatable; needs the onnx extra)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)
