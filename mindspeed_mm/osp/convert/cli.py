"""`osp convert <model> --to <layout> SRC DST`: one subcommand per converter module.

A converter module exposes `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`, and keeps heavy
imports (torch, safetensors) inside its functions. Add new converters to CONVERTER_MODULES.
"""
from __future__ import annotations

import importlib

CONVERTER_MODULES = (
    "mindspeed_mm.osp.convert.wfvae",
    "mindspeed_mm.osp.convert.mindspore",
    "mindspeed_mm.osp.convert.dit",
)


DESCRIPTION = ("Convert checkpoints between the official layouts and ours: `osp convert MODEL --to LAYOUT SRC DST`. "
               "`osp convert MODEL --help` lists a converter's layouts and flags; DST is never overwritten without "
               "--overwrite.")


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert checkpoints between official layouts and ours",
                                   description=DESCRIPTION)
    models = parser.add_subparsers(dest="model", metavar="MODEL")
    for name in CONVERTER_MODULES:
        module = importlib.import_module(name)
        sub = models.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
        sub.set_defaults(func=module.run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
