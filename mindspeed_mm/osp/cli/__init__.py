"""The `osp` command: one module per top-level command, each with `register(subparsers)` (the argparse
definition) and its handlers (argument checks, printing, calls into the library). Heavy imports happen inside the
handlers, so building the parser loads neither torch nor numpy."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# The command modules, in the order `osp --help` lists them.
COMMAND_MODULES = (
    "mindspeed_mm.osp.cli.env",
    "mindspeed_mm.osp.cli.data",
    "mindspeed_mm.osp.cli.text",
    "mindspeed_mm.osp.cli.vae",
    "mindspeed_mm.osp.cli.adavg",
    "mindspeed_mm.osp.cli.convert",
    "mindspeed_mm.osp.cli.train",
    "mindspeed_mm.osp.cli.download",
    "mindspeed_mm.osp.cli.sample",
    "mindspeed_mm.osp.cli.make_pipeline",
    "mindspeed_mm.osp.cli.eval",
    "mindspeed_mm.osp.cli.plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osp", description="Open-Sora Plan on Ascend and CUDA (mindspeed_mm.osp)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        from mindspeed_mm.osp.envinfo import missing_package

        message = missing_package(e)
        if message is None:   # not an optional package: a broken install or a bug, keep the traceback
            raise
        command = " ".join(w for w in (argv if argv is not None else sys.argv[1:])[:2] if not w.startswith("-"))
        print(f"osp {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line, no traceback. Outputs are written through temporary files that are removed on the way
        # out, so nothing half-written is left under the output names.
        print("interrupted", file=sys.stderr)
        return 130
