#!/usr/bin/env python3
"""Build data/commands_base.safetensors: the base command model that `qz demo` loads.

    python scripts/make_base_model.py [--steps N] [--seed S] [--out PATH]

The recipe is qz.demo.BASE_RECIPE, run by qz.demo.train_base (the same code as
`qz demo --from-scratch`): preset kws trained on the synthetic commands of
data/speech_commands.npz only, the checkpoint chosen on the real validation
speakers of data/speech_commands_real.npz (no real clip is trained on). The file
holds the parameters and the metadata the demo needs (input scaling, labels,
recipe), not the optimizer state. Deterministic for a seed on one machine
(BLAS rounding can differ between machines).
"""
import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qz import checkpoint  # noqa: E402
from qz.demo import BASE, BASE_RECIPE, train_base  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data")
    ap.add_argument("--steps", type=int, default=BASE_RECIPE["steps"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / BASE)
    args = ap.parse_args(argv)
    params, cfg, meta, history = train_base(args.data_dir, args.steps, args.seed)
    meta["history"] = [{"step": h["step"], "accuracy": round(h["accuracy"], 4)} for h in history]
    checkpoint.save(args.out, params, cfg, **meta)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB, best step {meta['best_step']}, "
          f"sha256 {digest}")


if __name__ == "__main__":
    main()
