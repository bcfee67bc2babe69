"""qz info: describe a checkpoint."""
from __future__ import annotations

import os

from .. import checkpoint
from ..config import active_params, n_params
from ..quant import precision_sizes
from .common import _emit


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
             f"({result['parameter_bytes']:,} parameters + {state_bytes:,} training state), "
             f"{', '.join(dtypes)}",
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


def add_parser(sub):
    i = sub.add_parser("info", help="describe a checkpoint",
                       description="Config, parameter count, active parameters per token at each top_k, "
                       "file size and training progress of a checkpoint.")
    i.add_argument("checkpoint")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
