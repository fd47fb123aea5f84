"""`osp convert <model> --to <layout> SRC DST`: one subcommand per converter (the converters themselves:
mindspeed_mm.osp.convert.wfvae, .mindspore, .dit).

Each subcommand has its arguments (`_<name>_arguments`), `--overwrite` added here, and a handler that turns the
library's errors into one `osp convert <name>: error: ...` line. The handlers import the converters (torch,
safetensors), so building the parser stays light. Add new converters to CONVERTERS.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mindspeed_mm.osp.convert.dit import TARGETS

DESCRIPTION = ("Convert checkpoints between the official layouts and ours: `osp convert MODEL --to LAYOUT SRC DST`. "
               "`osp convert MODEL --help` lists a converter's layouts and flags; DST is never overwritten without "
               "--overwrite.")


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert checkpoints between official layouts and ours",
                                   description=DESCRIPTION)
    models = parser.add_subparsers(dest="model", metavar="MODEL")
    for name, help_text, add_arguments, run in CONVERTERS:
        sub = models.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
        sub.set_defaults(func=run)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


# ------------------------------------------------------------------------------------------ `osp convert wfvae`
def _wfvae_arguments(parser) -> None:
    parser.add_argument("--to", required=True, choices=("osp", "official"),
                        help="osp: official -> ours; official: ours -> official")
    parser.add_argument("src", help="source checkpoint file or directory")
    parser.add_argument("dst", help="output directory (or, with --to official, a .ckpt/.pt/.safetensors file)")
    parser.add_argument("--config", help="official config.json to use (default: SRC's or the one beside it; "
                                         "shape-derived fields are inferred from the weights)")
    parser.add_argument("--unsafe-pickle", action="store_true",
                        help="load torch pickles with weights_only=False (only for checkpoints you trust)")


def _wfvae(args) -> int:
    from mindspeed_mm.osp.checkpoints.tensors import UntrustedPickleError
    try:
        return _wfvae_run(args)
    except UntrustedPickleError as err:
        print(f"osp convert wfvae: error: {err.describe('if you trust the file, pass --unsafe-pickle')}",
              file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"osp convert wfvae: error: {err}", file=sys.stderr)
        return 2


def _wfvae_run(args) -> int:
    from mindspeed_mm.osp.convert.wfvae import official_to_osp, osp_to_official
    from mindspeed_mm.osp.progress import stage_printer, wrote

    log = stage_printer("convert wfvae")
    if args.to == "osp":
        config = json.loads(Path(args.config).read_text()) if args.config else None
        out = official_to_osp(args.src, args.dst, overwrite=args.overwrite, config=config,
                              weights_only=not args.unsafe_pickle, log=log)
    else:
        if args.config:
            raise SystemExit("--config applies to --to osp only")
        out = osp_to_official(args.src, args.dst, overwrite=args.overwrite, log=log)
    print(wrote(out))
    return 0


# ------------------------------------------------------------------------------------------ `osp convert mindspore`
def _mindspore_arguments(parser) -> None:
    parser.add_argument("src", help="a .safetensors file, a .ckpt file, or a WF-VAE folder (config.json + model.safetensors)")
    parser.add_argument("dst", help="target: .ckpt for a .safetensors SRC, .safetensors for a .ckpt SRC, a folder for a folder")


def _mindspore(args) -> int:
    try:
        return _mindspore_run(args)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"osp convert mindspore: error: {err}", file=sys.stderr)
        return 2


def _mindspore_run(args) -> int:
    from mindspeed_mm.osp.convert.mindspore import ckpt_to_safetensors, safetensors_to_ckpt, wfvae_to_ckpt
    from mindspeed_mm.osp.progress import stage_printer, wrote

    log = stage_printer("convert mindspore")
    src, dst, overwrite = args.src, args.dst, getattr(args, "overwrite", False)
    if not os.path.exists(src):
        raise FileNotFoundError(f"problem: {src} does not exist; fix: check the path")
    if os.path.isdir(src):
        log(f"reading the WF-VAE folder {src} and writing config.json + model.ckpt to {dst}")
        cfg, ckpt = wfvae_to_ckpt(src, dst, overwrite=overwrite)
        print(f"wrote {cfg} and {wrote(ckpt)[len('wrote '):]}")
    elif src.endswith(".safetensors") and dst.endswith(".ckpt"):
        log(f"reading {src} and writing the MindSpore checkpoint {dst}")
        safetensors_to_ckpt(src, dst, overwrite=overwrite)
        print(wrote(dst))
    elif src.endswith(".ckpt") and dst.endswith(".safetensors"):
        log(f"reading {src} and writing the safetensors file {dst}")
        ckpt_to_safetensors(src, dst, overwrite=overwrite)
        print(wrote(dst))
    else:
        raise SystemExit(f"osp convert mindspore: cannot convert {src!r} to {dst!r}; use .safetensors -> .ckpt, "
                         ".ckpt -> .safetensors, or a WF-VAE folder -> a folder")
    return 0


# ------------------------------------------------------------------------------------------ `osp convert dit`
def _dit_arguments(parser) -> None:
    parser.add_argument("--to", required=True, choices=TARGETS, help="layout to write")
    parser.add_argument("src", help="diffusers transformer/ folder, checkpoint file or Megatron folder")
    parser.add_argument("dst", help="output folder (megatron, diffusers) or file (official: .safetensors / .pt)")
    parser.add_argument("--model", choices=("v13", "v15"), help="model family (default: told by the key names)")
    parser.add_argument("--tp", type=int, default=1, help="megatron: tensor-parallel size")
    parser.add_argument("--pp", type=int, default=1, help="megatron: pipeline-parallel size")
    parser.add_argument("--vpp", type=int, help="megatron: virtual stages per pipeline rank (interleaved)")
    parser.add_argument("--pp-layers", type=_counts, help="megatron: blocks per chunk, comma-separated, in chunk order "
                                            "vpp_index * pp + pp_rank (default: even split)")
    parser.add_argument("--names", choices=("mm", "official"), default="mm",
                        help="megatron, v1.3: MindSpeed-MM names (videodit_sparse_blocks, self_atten, ...) or the "
                             "diffusers ones")
    parser.add_argument("--ema", action="store_true",
                        help="Megatron SRC: read its 'ema_model' weights; `osp train` SRC: its EMA weights")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load torch pickles fully (training saves hold args, RNG states; trusted files only)")
    parser.add_argument("--max-shard-size", default="5GB", help="diffusers: largest safetensors shard (e.g. 2GB)")
    parser.add_argument("--config", help="official kwargs (preset name or JSON): checks the keys; needed for a "
                                         "v1.3 diffusers folder from a non-diffusers SRC (v1.5 default osp15_suv_8b)")
    parser.add_argument("--sampling", metavar="SAMPLING.json",
                        help="pipeline: the model's own sampling settings, a JSON object with any of template "
                             "(v1.3, v1.5, none), shift (v1.5 sampler), num_frames, height, width, steps, "
                             "guidance_scale, guidance_rescale, fps (default: the released model's)")


def _counts(text: str) -> list:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated block counts, e.g. 14,18") from None


def _dit(args) -> int:
    from mindspeed_mm.osp.convert.dit import convert
    from mindspeed_mm.osp.files import read_json_object
    from mindspeed_mm.osp.progress import stage_printer, wrote

    if args.sampling is not None and args.to != "pipeline":
        print("osp convert dit: error: --sampling applies to --to pipeline only", file=sys.stderr)
        return 2
    try:
        shard = int(args.max_shard_size) if args.max_shard_size.isdigit() else args.max_shard_size
        out = convert(args.src, args.dst, args.to, version=args.model, tp=args.tp, pp=args.pp, vpp=args.vpp,
                      pp_layers=args.pp_layers, names=args.names, ema=args.ema, trust_pickle=args.trust_pickle,
                      max_shard_size=shard, config=args.config, overwrite=args.overwrite,
                      sampling=None if args.sampling is None else read_json_object(args.sampling, "--sampling"),
                      log=stage_printer("convert dit"))
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"osp convert dit: error: {err}", file=sys.stderr)
        return 2
    print(wrote(out))
    return 0


# (name, help and description, arguments, handler), in the order `osp convert --help` lists them
CONVERTERS = (
    ("wfvae", "WF-VAE: official checkpoint <-> mindspeed_mm.osp layout (bit-exact)", _wfvae_arguments, _wfvae),
    ("mindspore", "torch safetensors <-> MindSpore .ckpt (bit-exact; a WF-VAE folder -> folder with model.ckpt)",
     _mindspore_arguments, _mindspore),
    ("dit", "DiT (v1.3 / v1.5): diffusers / official / Megatron TP x PP x VPP checkpoints (bit-exact)",
     _dit_arguments, _dit),
)
