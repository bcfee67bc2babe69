"""The `qz` command line: one module per command (train, eval, finetune, demo, generate, quantize and
export, run and governor, info), each with its `add_parser`; `main` runs one.

Bad input (a bad file, option or data: qz.errors.InputError) ends with a one-line `qz: error: ...`
on stderr and exit code 1; any other exception is a bug and keeps its traceback (QZ_DEBUG=1 shows it
for bad input too). `--json` prints machine-readable results on stdout.
"""
from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import InputError
from ..memory import keep_freed_memory
from . import demo, eval, finetune, generate, info, int8, serve, train
from .common import UserError, _mix_arg, _Parser  # noqa: F401  (_mix_arg: tests)

__all__ = ["main", "build_parser", "UserError"]

COMMANDS = (train, eval, finetune, demo, generate, int8, serve, info)   # in --help order


def build_parser():
    p = _Parser(prog="qz", description="Qingzhou-mini: a small Mixture-of-Experts "
                                "transformer for CPU-only devices (train, evaluate, inspect).")
    p.add_argument("--version", action="version", version=f"qz {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
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
