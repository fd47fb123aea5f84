"""`osp env`: versions, devices and usable backends, known bad combinations (library: mindspeed_mm.osp.envinfo)."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("env", help="print versions, devices and usable backends (for bug reports)",
                              description="Print Python, torch, torch_npu/CANN, MindSpore, megatron-core, MindSpeed, "
                                          "transformers/diffusers, video readers, devices and usable attention "
                                          "backends; then a MISSING line per absent optional package (what it "
                                          "breaks, what to install) and a WARNING per known bad combination.")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mindspeed_mm.osp.envinfo import collect, format_report

    info = collect()
    if args.json:
        import json
        print(json.dumps(info, indent=1))
    else:
        print(format_report(info))
    return 0
