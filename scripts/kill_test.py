"""Kill `qz train` at random moments and check that nothing is lost.

    python scripts/kill_test.py [--kills 20] [--seed 0] [--steps 150] [--ckpt-every 1] [-v]

Trains a small digits classifier once without interruption, then again while
sending SIGKILL, SIGTERM or SIGINT (seeded choice, seeded random delay) to the
running process `--kills` times. After every kill the checkpoint must read and
the run resumes with `qz train --resume` (or starts over when the kill came
before the first checkpoint); each run that finishes must equal the
uninterrupted one bit for bit (parameters, AdamW moments, step). Exit status 1
on any failure or mismatch.

The harness (`kill_and_resume`) lives in reference_tests/test_reliability.py,
where CI runs a few kills: tests must not import scripts, and one copy cannot
drift. So this script needs pytest importable.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _import_harness():
    for p in (ROOT, ROOT / "reference_tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    import test_reliability  # noqa: E402  (needs qz and pytest importable)
    return test_reliability


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150, help="training steps per run (default 150)")
    ap.add_argument("--ckpt-every", type=int, default=1, help="checkpoint every N steps (default 1)")
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per process")
    args = ap.parse_args(argv)
    harness = _import_harness()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qz_kill_") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        s = harness.kill_and_resume(workdir, args.kills, seed=args.seed, steps=args.steps,
                                    ckpt_every=args.ckpt_every, log=print if args.verbose else None)
    by_signal = ", ".join(f"{k} {v}" for k, v in s["by_signal"].items())
    print(f"kills: {s['kills']} ({by_signal})")
    print(f"resumes from a checkpoint: {s['resumes']}; starts over (killed before the first checkpoint): "
          f"{s['restarts']}; SIGINTs that hit Python's own start-up: {s['startup_sigints']}")
    print(f"finished runs: {s['rounds']}, equal to the uninterrupted run bit for bit: {s['equal_rounds']}")
    print(f"stale temp files left by kills mid-save: {s['stale_temp_files']}")
    for failure in s["failures"]:
        print(f"FAILURE: {failure}")
    print(f"equal: {'yes' if s['equal'] else 'no'}  ({time.perf_counter() - t0:.0f} s)")
    return 0 if s["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
