"""Fuzz the checkpoint reader (docs/spec.md §6) for longer than CI does.

    python scripts/fuzz_checkpoint.py [libFuzzer flags] [corpus dir]   # atheris, coverage-guided
        e.g.  -max_total_time=600   or   -runs=1000000
    python scripts/fuzz_checkpoint.py --no-atheris N [--seed S]         # N seeded mutations

Each input goes to a temp file, then to `read_safetensors` and `load`.
CheckpointError (naming the file) is the expected way to fail; any other
exception, or a successful read that disagrees with the header, is a crash.

The mutator, the seed files and the checks are the ones CI runs, imported from
reference_tests/test_checkpoint.py (`mutate`, `base_checkpoints`, `check_file`):
tests must not import scripts, the reverse is merely unusual, and one copy
cannot drift. So this script needs the test extra (pytest, hypothesis). Under
atheris, `mutate` is a custom mutator taking turns with libFuzzer's own.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _import_helpers():
    for p in (ROOT, ROOT / "reference_tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    import test_checkpoint  # noqa: E402  (needs qz, pytest and hypothesis importable)
    return test_checkpoint


def run_seeded(n: int, seed: int, workdir: Path) -> int:
    """N mutations of the CI base files, seeded; returns an exit status."""
    tc = _import_helpers()
    bases = tc.base_checkpoints(workdir)
    names = sorted(bases)
    rng = np.random.default_rng(seed)
    path = workdir / "fuzz.safetensors"
    outcomes: dict[str, int] = {}
    start = time.perf_counter()
    for i in range(n):
        name = names[int(rng.integers(0, len(names)))]
        raw = tc.mutate(bases[name], rng)
        path.write_bytes(raw)
        try:
            outcome, _ = tc.check_file(path, raw)
        except Exception as e:
            crash = Path.cwd() / f"fuzz-crash-{seed}-{i}.safetensors"
            crash.write_bytes(raw)
            print(f"CRASH at case {i} (seed {seed}, base {name}): {type(e).__name__}: {e}; "
                  f"input saved to {crash}")
            return 1
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"fuzz_checkpoint: {n} mutated checkpoints, seed {seed}, {outcomes}, 0 crashes, "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def run_atheris(argv: list[str], workdir: Path) -> int:
    try:
        import atheris
    except ImportError:
        print("fuzz_checkpoint: atheris is not installed (pip install atheris); "
              "use --no-atheris N for the seeded fuzz")
        return 2
    with atheris.instrument_imports(include=["qz.checkpoint", "qz.config"]):
        import qz.checkpoint  # noqa: F401  (instrumented before the helpers import it)
    tc = _import_helpers()
    path = workdir / "input.safetensors"

    def test_one_input(data: bytes):
        path.write_bytes(data)
        tc.check_file(path, data)  # raises, and atheris records a crash, on anything but CheckpointError

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        if rng.integers(0, 2):
            return tc.mutate(data, rng)[:max_size]
        return atheris.Mutate(data, max_size)

    if not any(not a.startswith("-") for a in argv[1:]):  # no corpus given: seed one
        corpus = workdir / "corpus"
        corpus.mkdir()
        tc.base_checkpoints(corpus)
        argv = [*argv, str(corpus)]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--no-atheris", type=int, metavar="N",
                        help="run N seeded mutations without atheris")
    parser.add_argument("--seed", type=int, help="seed for --no-atheris (default: fresh, printed)")
    args, rest = parser.parse_known_args(argv[1:])
    with tempfile.TemporaryDirectory(prefix="fuzz_checkpoint.") as d:
        if args.no_atheris is not None:
            seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
            return run_seeded(args.no_atheris, seed, Path(d))
        return run_atheris([argv[0], *rest], Path(d))


if __name__ == "__main__":
    sys.exit(main())
