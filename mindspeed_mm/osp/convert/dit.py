"""Denoiser checkpoints (v1.3 Skiparse DiT, v1.5 SUV): diffusers / official / Megatron (any TP x PP x VPP).

SRC: a diffusers `transformer/` folder (sharded or not), a checkpoint file (v1.5 `model_ema.pt`, `.pt`,
`.safetensors`), a Megatron folder at any TP/PP/VPP, or an `osp train` run / checkpoint (`--ema`: its EMA
weights). DST by `--to`:
  megatron   `latest_checkpointed_iteration.txt` + `release/mp_rank_XX[_YYY]/model_optim_rng.pt`
             (see mindspeed_mm/osp/convert/megatron.py for the layout; v1.3 names `--names mm|official`)
  official   one file: `.safetensors` or `.pt` (a plain state dict under the official names)
  diffusers  `config.json` + `diffusion_pytorch_model[-0000X-of-0000N].safetensors` (+ index when sharded)
  pipeline   (an `osp train` SRC only) a pipeline folder `osp sample --model` runs: the trained transformer
             with the VAE and text encoders the run's config names
Tensors are copied bit-exactly (dtypes kept).
"""
from __future__ import annotations

import sys
from pathlib import Path

NAME = "dit"
HELP = "DiT (v1.3 / v1.5): diffusers / official / Megatron TP x PP x VPP checkpoints (bit-exact)"
TARGETS = ("megatron", "official", "diffusers", "pipeline")


def pick_config(config, version: str, source_config):
    """--config (preset name or JSON file) or SRC's own config; v1.5 falls back to the 8B preset."""
    from mindspeed_mm.osp.dit.loading import read_config
    if config is not None:
        return read_config(config)
    if source_config is not None:
        return source_config
    return read_config("osp15_suv_8b") if version == "v15" else None


def convert(src, dst, to: str, *, version=None, tp: int = 1, pp: int = 1, vpp=None, pp_layers=None,
            names: str = "mm", ema: bool = False, trust_pickle: bool = False, max_shard_size="5GB",
            config=None, overwrite: bool = False, sampling=None, log=None) -> Path:
    """Convert `src` to the `to` layout at `dst`; `log(message)` hears one line per stage (default: silent)."""
    from mindspeed_mm.osp.files import check_target
    from mindspeed_mm.osp.progress import quiet
    from mindspeed_mm.osp.convert.megatron import check_against_config, structural_model, write_megatron
    from mindspeed_mm.osp.dit.loading import diffusers_config, read_checkpoint, write_diffusers_folder
    if to not in TARGETS:
        raise ValueError(f"--to {to!r}: choose one of {TARGETS}")
    dst = Path(dst)
    log = log or quiet
    if to == "pipeline":
        from mindspeed_mm.osp.training.export import export_pipeline, is_training_checkpoint
        if not is_training_checkpoint(src):
            raise ValueError(f"--to pipeline takes an `osp train` run or checkpoint; {src} is not one (for released "
                             "weights, assemble one with `osp make-pipeline`)")
        log(f"reading the training checkpoint {src}{' (EMA weights)' if ema else ''} and writing a pipeline folder")
        return export_pipeline(src, dst, ema=ema, overwrite=overwrite, max_shard_size=max_shard_size,
                               sampling=sampling)
    check_target(dst, overwrite)  # before reading a large checkpoint
    log(f"reading {src}")
    version, state_dict, source_config = read_checkpoint(src, version=version, ema=ema, trust_pickle=trust_pickle)
    n_values = sum(v.numel() for v in state_dict.values())
    log(f"converting {len(state_dict)} tensors ({n_values / 1e6:.1f}M values, {version[:2]}.{version[2:]} "
        f"{'SUV' if version == 'v15' else 'Skiparse DiT'}) to the {to} layout")
    explicit = config is not None or source_config is not None
    config = pick_config(config, version, source_config)
    if explicit or to == "diffusers":
        if config is None:
            raise ValueError(f"{src}: a v1.3 checkpoint without config.json; pass --config (a config.json or a "
                             "preset such as osp13_t2v_2b / osp13_i2v_2b) to write a diffusers folder")
        check_against_config(version, state_dict, config)
    if to == "megatron":
        log(f"writing {tp * pp} rank file(s) (TP {tp} x PP {pp}{f' x VPP {vpp}' if vpp else ''}) to {dst}")
        return write_megatron(state_dict, version, dst, tp=tp, pp=pp, vpp=vpp, pp_layers=pp_layers, names=names,
                              overwrite=overwrite)
    if to == "diffusers":
        model = structural_model(version, state_dict, config)
        limit = f"{max_shard_size} bytes" if isinstance(max_shard_size, int) else max_shard_size
        log(f"writing safetensors shards of at most {limit} to {dst}")
        return write_diffusers_folder(diffusers_config(model), state_dict, dst, max_shard_size, overwrite)
    log(f"writing {dst}")
    return _write_file(state_dict, dst)


def _write_file(state_dict: dict, dst: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from mindspeed_mm.osp.files import replace_file
    if dst.suffix not in (".safetensors", ".pt"):
        raise ValueError(f"{dst}: --to official writes one file; name it *.safetensors or *.pt")
    if dst.suffix == ".safetensors":
        replace_file(dst, lambda tmp: save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp))
    else:
        replace_file(dst, lambda tmp: torch.save(state_dict, tmp))
    return dst


def add_arguments(parser) -> None:
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
    import argparse
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated block counts, e.g. 14,18") from None


def run(args) -> int:
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
