"""Loading released denoiser weights into the models: the layouts, told apart by what a path holds.

Layouts read here (`read_checkpoint` / `from_pretrained` pick by what they find):

* diffusers style (v1.3 as released; v1.5 as written by `osp convert dit --to diffusers`): a `transformer/`
  folder (or its parent) with `config.json` and `diffusion_pytorch_model.safetensors`, or shards listed in
  `diffusion_pytorch_model.safetensors.index.json`.
* v1.5, MindSpeed-MM / PKU: `model_ema.pt` (`{"ema_state_dict": sd}` or a plain state dict, `module.` prefixes
  allowed), a `model_optim_rng.pt` (`{"model": sd}`) or a .safetensors file. PKU key names (`to_q`,
  `add_q_proj`, ...) are renamed to the MindSpeed-MM ones.
* Megatron folders (`latest_checkpointed_iteration.txt`, `mp_rank_XX[_YYY]/`) of either version at any TP x PP
  (x VPP), merged under the parallel plan's split rules (`split_plan`).
The model family (v1.3 / v1.5) is told by the key names. The formats themselves (files, key names, presets,
Megatron folders) are in `mindspeed_mm.osp.checkpoints`.

Checkpoints trained with TP > 1 in the PKU branch carry unused text-stream weights for the last block
(`attn1.to_add_out`, `norm2.norm_enc`, `ff_enc`); they are dropped with a logged note. Any other unexpected or
missing key is an error that names the keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from mindspeed_mm.osp.checkpoints.diffusers import read_diffusers_folder
from mindspeed_mm.osp.checkpoints.keys import (
    StateDict, check_keys, detect_version, drop_tp_leftovers, strip_prefix, to_official_names, v13_blocks,
    v15_num_layers,
)
from mindspeed_mm.osp.checkpoints.megatron import is_megatron_folder, read_megatron
from mindspeed_mm.osp.checkpoints.presets import read_config, read_preset
from mindspeed_mm.osp.checkpoints.tensors import load_tensor_file
from mindspeed_mm.osp.dit.osp13 import OSP13Config, OSP13DiT
from mindspeed_mm.osp.dit.suv import SUVConfig, SUVDiT

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------ structure
def structural_model(version: str, state_dict: StateDict, config: Optional[dict] = None):
    """The model on the meta device: from `config` when given, else from the tiny preset with the block
    structure read from the keys (enough for the parallel plan's split and placement rules)."""
    keys = list(state_dict)
    inpaint = any(k.startswith("pos_embed_masked_hidden_states.") for k in keys)
    if version == "v13":
        if config is None:
            blocks = v13_blocks(keys)
            config = dict(read_preset("osp13_tiny"), num_layers=len(blocks))
        cfg = OSP13Config.from_official(config, inpaint=inpaint or None)
        cls = OSP13DiT
    else:
        if config is None:
            num_layers = v15_num_layers(keys)
            skip = any(k.startswith("skip_norm_linear") for k in keys)
            config = dict(read_preset("osp15_suv_tiny"), num_layers=num_layers, sparse_n=[1] * len(num_layers),
                          skip_connection=skip)
        cfg, cls = SUVConfig.from_official(config), SUVDiT
    with torch.device("meta"):
        return cls(cfg)


def check_against_config(version: str, state_dict: StateDict, config: dict) -> None:
    """Strict key/shape check of an official state dict against the model `config` describes."""
    model = structural_model(version, state_dict, config)
    if version == "v15":
        state_dict = drop_tp_leftovers(state_dict, model.config.num_layers)
    expected = model.official_state_dict() if hasattr(model, "official_state_dict") else model.state_dict()
    check_keys(expected, state_dict, what=f"{version} DiT")


def split_plan(version: str):
    """The TP split rules of a model family (they do not depend on the model size): the parallel plan of its tiny
    preset, what `checkpoints.megatron.read_megatron` merges Megatron shards by."""
    from mindspeed_mm.osp.parallel.plans import plan_for
    preset = read_preset("osp13_tiny" if version == "v13" else "osp15_suv_tiny")
    return plan_for(structural_model(version, {}, preset))


def diffusers_config(model) -> dict:
    """What a diffusers config.json holds for `model`: its official kwargs and `_class_name`."""
    config = dict(model.config.to_official())
    config.setdefault("_class_name", "SparseUMMDiT" if type(model).__name__ == "SUVDiT" else type(model).__name__)
    return config


# ------------------------------------------------------------------------------------------------ reading
def read_mindspeed_checkpoint(path: PathLike, trust_pickle: bool = False, ema: bool = False) -> dict:
    """State dict of a checkpoint file (model_ema.pt, model_optim_rng.pt, .safetensors) or of a folder holding
    model_ema.pt / model.pt or a Megatron checkpoint (merged from any TP x PP; `ema`: its "ema_model")."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model_ema.pt", path / "model.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None and is_megatron_folder(path):
            return read_megatron(path, split_plan, ema=ema, trust_pickle=trust_pickle)[1]
        if found is None:
            raise FileNotFoundError(f"{path}: no model_ema.pt, model.pt, config.json or Megatron mp_rank_* folders")
        path = found
    obj = load_tensor_file(path, trust_pickle)
    if isinstance(obj, dict):
        for key in ("ema_state_dict", "model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if "_extra_state" not in k}  # Megatron/TE extra states
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict found (looked for ema_state_dict / model / a plain dict of tensors)")
    return strip_prefix(obj)


def read_checkpoint(path: PathLike, *, version: Optional[str] = None, ema: bool = False,
                    trust_pickle: bool = False) -> tuple[str, dict, Optional[dict]]:
    """(version "v13"/"v15", state dict under the official names, the folder's config.json or None) of any
    supported source: a diffusers `transformer/` folder (sharded or not; or its weights file), a v1.5
    `model_ema.pt` / `.pt` / `.safetensors`, a Megatron folder of either version at any TP x PP x VPP
    (`ema`: its "ema_model" weights), or an `osp train` run / checkpoint (`ema`: its EMA weights). `version` must agree with the key names, and decides when they do not tell."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"problem: {path} does not exist; fix: check the path")
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file():
        path = path.parent
    if path.is_dir() and _is_training_checkpoint(path):
        from mindspeed_mm.osp.training.export import read_training_checkpoint
        found, state_dict, config = read_training_checkpoint(path, ema=ema)
        if version is not None and version != found:
            raise ValueError(f"{path} is a {found} training checkpoint, not {version}")
        return found, state_dict, config
    if path.is_dir() and ((path / "config.json").is_file() or (path / "transformer" / "config.json").is_file()):
        config, state_dict = read_diffusers_folder(path)
    elif is_megatron_folder(path):
        return (*read_megatron(path, split_plan, ema=ema, trust_pickle=trust_pickle, version=version), None)
    else:
        config, state_dict = None, read_mindspeed_checkpoint(path, trust_pickle, ema)
    version = detect_version(list(state_dict), str(path), version)
    return version, to_official_names(state_dict, version), config


def _is_training_checkpoint(path: Path) -> bool:
    from mindspeed_mm.osp.training.export import is_training_checkpoint
    return is_training_checkpoint(path)


def from_pretrained(path: PathLike, config: Optional[Union[dict, str, PathLike]] = None, *,
                    dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
                    trust_pickle: bool = False, ema: bool = False) -> nn.Module:
    """Load a denoiser from any source `read_checkpoint` reads. `config` = official kwargs (dict, JSON path or
    preset name; default: the folder's config.json, else preset `osp15_suv_8b` for v1.5; required for a v1.3
    checkpoint without one)."""
    version, state_dict, official_config = read_checkpoint(path, ema=ema, trust_pickle=trust_pickle)
    if config is not None:
        official_config = read_config(config)
    if official_config is None:
        if version == "v13":
            raise ValueError(f"{path} is a v1.3 checkpoint without config.json: pass its config (config=... / "
                             "--transformer-config: a config.json or a preset such as osp13_t2v_2b)")
        official_config = read_config("osp15_suv_8b")
    cls = OSP13DiT if version == "v13" else SUVDiT
    return cls.from_official(official_config, state_dict, dtype=dtype, device=device)

