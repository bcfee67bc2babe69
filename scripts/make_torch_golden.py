#!/usr/bin/env python3
"""Build reference_tests/golden/torch_twin.npz: the PyTorch twin's answers on small seeded models.

    pip install torch==2.13.0 && python scripts/make_torch_golden.py [--out PATH]

For each case (a classifier with a shared expert, a causal LM, the LM with every gate zeroed so that
all experts tie) the file holds the float64 parameters (qz.init_params), the batch, and what the twin
of scripts/torch_twin.py computes from them: logits, aux, loss (cross-entropy + 0.01 aux) and the
gradient of every parameter. reference_tests/test_torch_golden.py checks qz against it with no
torch installed, llm.c style; where torch is installed it also checks that this script still
reproduces the file. Deterministic: float64, seeded, one thread.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import qz  # noqa: E402
from torch_twin import AUX_COEF, twin_inputs, twin_loss, twin_params  # noqa: E402

GOLDEN = ROOT / "reference_tests" / "golden" / "torch_twin.npz"
FORMAT = 1


def cases():
    """name -> (config, top_k, batch (B, T), zero the gates)."""
    clf = qz.Config(input_dim=5, n_classes=3, d_model=8, n_heads=2, n_layers=2, n_experts=4, top_k=2,
                    d_ff=12, max_len=6, n_shared_experts=1)
    lm = qz.Config(vocab_size=11, causal=True, d_model=8, n_heads=2, n_layers=2, n_experts=5, top_k=2,
                   d_ff=6, max_len=7, n_shared_experts=0)
    return {"classifier": (clf, 2, (3, 6), False), "lm": (lm, 2, (2, 7), False),
            "lm_ties": (lm, 3, (2, 5), True)}


def batch(cfg, B, T, rng):
    if cfg.mode == "lm":
        return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))
    return rng.standard_normal((B, T, cfg.input_dim)), rng.integers(0, cfg.n_classes, B)


def build(torch):
    torch.set_num_threads(1)
    arrays, meta = {}, {"format": FORMAT, "torch": torch.__version__, "aux_coef": AUX_COEF, "cases": {}}
    for i, (name, (cfg, k, (B, T), ties)) in enumerate(cases().items()):
        params = qz.init_params(cfg, seed=i, dtype=np.float64)
        if ties:
            for layer in range(cfg.n_layers):
                params[f"blocks.{layer}.gate"][:] = 0.0
        x, y = batch(cfg, B, T, np.random.default_rng(100 + i))
        tp = twin_params(torch, params)
        xt, yt = twin_inputs(torch, cfg, x, y, np.float64)
        loss, logits, aux = twin_loss(torch, tp, cfg, xt, yt, k)
        loss.backward()
        meta["cases"][name] = {"config": cfg.to_dict(), "top_k": k}
        arrays[f"{name}/x"], arrays[f"{name}/y"] = np.asarray(x), np.asarray(y)
        arrays[f"{name}/logits"] = logits.detach().numpy()
        arrays[f"{name}/aux"], arrays[f"{name}/loss"] = np.float64(aux.item()), np.float64(loss.item())
        for n, a in params.items():
            arrays[f"{name}/params/{n}"] = a
            arrays[f"{name}/grads/{n}"] = tp[n].grad.numpy()
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=GOLDEN)
    args = ap.parse_args(argv)
    import torch
    arrays = build(torch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays)} arrays, {args.out.stat().st_size / 1024:.0f} KiB "
          f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
