"""Denoiser checkpoints (v1.3 Skiparse DiT, v1.5 SUV): diffusers / official / Megatron (any TP x PP x VPP).

SRC: a diffusers `transformer/` folder (sharded or not), a checkpoint file (v1.5 `model_ema.pt`, `.pt`,
`.safetensors`), a Megatron folder at any TP/PP/VPP, or an `osp train` run / checkpoint (`--ema`: its EMA
weights). DST by `--to`:
  megatron   `latest_checkpointed_iteration.txt` + `release/mp_rank_XX[_YYY]/model_optim_rng.pt`
             (see mindspeed_mm/osp/checkpoints/megatron.py for the layout; v1.3 names `--names mm|official`)
  official   one file: `.safetensors` or `.pt` (a plain state dict under the official names)
  diffusers  `config.json` + `diffusion_pytorch_model[-0000X-of-0000N].safetensors` (+ index when sharded)
  pipeline   (an `osp train` SRC only) a pipeline folder `osp sample --model` runs: the trained transformer
             with the VAE and text encoders the run's config names
Tensors are copied bit-exactly (dtypes kept).
"""
from __future__ import annotations

from pathlib import Path

TARGETS = ("megatron", "official", "diffusers", "pipeline")


def pick_config(config, version: str, source_config):
    """--config (preset name or JSON file) or SRC's own config; v1.5 falls back to the 8B preset."""
    from mindspeed_mm.osp.checkpoints.presets import read_config
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
    from mindspeed_mm.osp.checkpoints.diffusers import write_diffusers_folder
    from mindspeed_mm.osp.convert.megatron import write_megatron
    from mindspeed_mm.osp.dit.loading import check_against_config, diffusers_config, read_checkpoint, structural_model
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
