"""WF-VAE checkpoints: official layouts <-> ours (config.json + model.safetensors), tensors copied bit-exactly.

Official input: a checkpoint file (.ckpt/.pt/.pth/.bin/.safetensors, training dict or bare state dict, any
released form) or a directory with config.json and one checkpoint file. Official output: a directory with the
official config.json and `merged.ckpt` = {"ema_state_dict": sd, "state_dict": {"gen_model": sd}} (sharing
storage), or just the checkpoint when DST ends in .ckpt/.pt/.safetensors. Haar filters are never written
(the official loader builds them and loads with strict=False).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.files import replace_dir, replace_file

OFFICIAL_CHECKPOINT_NAME = "merged.ckpt"
FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def _check_target(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite (overwrite=True) to replace it")


def read_official(src: str | os.PathLike, config: Optional[dict] = None, weights_only: bool = True):
    """(WFVAEConfig, state dict with official names, Haar filters dropped, dtypes untouched).
    A torch pickle holding non-tensor objects raises `UntrustedPickleError` unless `weights_only=False`."""
    from mindspeed_mm.osp.checkpoints.tensors import load_tensor_file
    from mindspeed_mm.osp.vae.checkpoint import find_checkpoint_in_dir
    from mindspeed_mm.osp.vae.official import parse_official
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"problem: {src} does not exist; fix: check the path")
    if src.is_dir():
        if config is None and (src / "config.json").is_file():
            config = json.loads((src / "config.json").read_text())
        ckpt = find_checkpoint_in_dir(src)
        if ckpt is None:
            raise ValueError(f"no checkpoint file ({', '.join(FILE_SUFFIXES)}) in {src}")
        src = ckpt
    elif config is None and (src.parent / "config.json").is_file():
        config = json.loads((src.parent / "config.json").read_text())
    cfg, weights = parse_official(config, load_tensor_file(src, trust_pickle=not weights_only))
    _check_keys(cfg, weights)
    return cfg, weights


def _check_keys(cfg, weights) -> None:
    """Strict key and shape check against the architecture (built on the meta device, no memory)."""
    import torch

    from mindspeed_mm.osp.vae.model import WFVAE
    with torch.device("meta"):
        model = WFVAE(cfg)
    model.load_weights({k: v.to("meta") for k, v in weights.items()})


def official_to_osp(src, dst, overwrite: bool = False, config: Optional[dict] = None,
                    weights_only: bool = True, log=None) -> Path:
    """Official checkpoint -> our directory (config.json + model.safetensors). `log(message)`: one line per stage."""
    from safetensors.torch import save_file

    from mindspeed_mm.osp.progress import quiet
    from mindspeed_mm.osp.vae.official import CONFIG_FILE, WEIGHTS_FILE, folder_config
    dst = Path(dst)
    log = log or quiet
    _check_target(dst, overwrite)
    log(f"reading {src}")
    cfg, weights = read_official(src, config, weights_only)
    log(f"converting {len(weights)} tensors (WF-VAE, latent_dim {cfg.latent_dim}) to the osp layout")
    meta = folder_config(cfg)
    tensors = {k: v.contiguous() for k, v in weights.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    log(f"writing {WEIGHTS_FILE} and {CONFIG_FILE} to {dst}")
    replace_dir(dst, write)
    return dst


def osp_to_official(src, dst, overwrite: bool = False, log=None) -> Path:
    """Our directory -> official directory (config.json + merged.ckpt) or a single checkpoint file.
    `log(message)`: one line per stage."""
    import torch
    from safetensors.torch import save_file

    from mindspeed_mm.osp.checkpoints.tensors import load_tensor_file
    from mindspeed_mm.osp.progress import quiet
    from mindspeed_mm.osp.vae.official import CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE, config_from_json
    src, dst = Path(src), Path(dst)
    log = log or quiet
    log(f"reading {src}")
    if not src.exists():
        raise FileNotFoundError(f"problem: {src} does not exist; fix: check the path")
    meta = json.loads((src / CONFIG_FILE).read_text()) if (src / CONFIG_FILE).is_file() else {}
    cfg, _ = config_from_json(meta)
    if cfg is None:
        raise ValueError(f"{src} is not a mindspeed_mm.osp WF-VAE directory (config.json with format {FORMAT_NAME!r})")
    weights = load_tensor_file(src / WEIGHTS_FILE)
    log(f"converting {len(weights)} tensors (WF-VAE, latent_dim {cfg.latent_dim}) to the official layout")
    _check_keys(cfg, weights)
    _check_target(dst, overwrite)
    log(f"writing {dst}")
    if dst.suffix in FILE_SUFFIXES:
        if dst.suffix == ".safetensors":
            replace_file(dst, lambda tmp: save_file(weights, tmp))
        else:
            replace_file(dst, lambda tmp: torch.save({"ema_state_dict": weights, "state_dict": {"gen_model": weights}},
                                                     tmp))
        return dst

    def write(tmp: Path) -> None:
        torch.save({"ema_state_dict": weights, "state_dict": {"gen_model": weights}}, tmp / OFFICIAL_CHECKPOINT_NAME)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_official(), indent=1) + "\n")
    replace_dir(dst, write)
    return dst
