"""Megatron tensor-parallel shard files <-> the official (TP=1) state dict, with the plans' split rules.

Layout written and read (MindSpeed-MM `mm-convert` output, specs/dit.md 7.1):
`<dir>/latest_checkpointed_iteration.txt` = "release" and `<dir>/release/mp_rank_{tp:02d}/model_optim_rng.pt`
= {"model": state_dict}. Column-parallel weights/biases are cut along dim 0, row-parallel weights along dim 1
(row biases replicated), everything else replicated.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

from mindspeed_mm.osp.parallel.layers import SPLIT_DIMS
from mindspeed_mm.osp.parallel.plan import ParallelPlan

RESHARD_COMMAND = "python -m mindspeed_mm.osp.cli reshard --model {model} --tp {tp} {src} {dst}"


def split_dim(plan: ParallelPlan, key: str) -> Optional[int]:
    """The dimension along which `key` (a parameter name) is cut over TP, or None when replicated."""
    module, _, leaf = key.rpartition(".")
    kind = plan.kind_of(module)
    if kind is None:
        return None
    weight_dim, bias_dim = SPLIT_DIMS[kind]
    return weight_dim if leaf == "weight" else bias_dim if leaf == "bias" else None


def shard(state_dict: Dict[str, torch.Tensor], plan: ParallelPlan, tp: int) -> List[Dict[str, torch.Tensor]]:
    """The official state dict cut into `tp` tensor-parallel shards."""
    shards = [{} for _ in range(tp)]
    for key, value in state_dict.items():
        dim = split_dim(plan, key)
        if dim is not None and value.shape[dim] % tp:
            raise ValueError(f"{key}: dimension {dim} of size {value.shape[dim]} cannot be split over TP={tp}")
        parts = value.chunk(tp, dim=dim) if dim is not None else [value] * tp
        for rank in range(tp):
            shards[rank][key] = parts[rank].clone()
    return shards


def merge(shards: List[Dict[str, torch.Tensor]], plan: ParallelPlan) -> Dict[str, torch.Tensor]:
    """The inverse of `shard`."""
    keys = list(shards[0])
    for rank, s in enumerate(shards[1:], 1):
        if list(s) != keys:
            raise ValueError(f"tensor-parallel shard {rank} has different keys than shard 0: "
                             f"{sorted(set(s) ^ set(keys))[:5]}")
    merged = {}
    for key in keys:
        dim = split_dim(plan, key)
        merged[key] = torch.cat([s[key] for s in shards], dim=dim) if dim is not None else shards[0][key]
    return merged


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_megatron(state_dict: Dict[str, torch.Tensor], plan: ParallelPlan, tp: int, out_dir) -> None:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new output folder")
    for rank, sd in enumerate(shard(state_dict, plan, tp)):
        _atomic_save({"model": sd}, out / "release" / f"mp_rank_{rank:02d}" / "model_optim_rng.pt")
    (out / "latest_checkpointed_iteration.txt").write_text("release")


def megatron_tp_size(path) -> int:
    ranks = [p.name for p in (Path(path) / "release").glob("mp_rank_*")]
    if not ranks:
        raise FileNotFoundError(f"{path}: no release/mp_rank_XX folders (not a Megatron checkpoint)")
    if any(re.fullmatch(r"mp_rank_\d{2}_\d{3}", r) for r in ranks):
        raise NotImplementedError(f"{path}: pipeline-parallel shards (mp_rank_XX_YYY) are not read yet")
    return len(ranks)


def load_megatron(path, plan: ParallelPlan, expect_tp: Optional[int] = None,
                  model: str = "v15") -> Dict[str, torch.Tensor]:
    """The official state dict from Megatron TP shards; with `expect_tp`, a different TP size is an error
    that names the reshard command."""
    tp = megatron_tp_size(path)
    if expect_tp is not None and tp != expect_tp:
        command = RESHARD_COMMAND.format(model=model, tp=expect_tp, src=path, dst=f"{path}_tp{expect_tp}")
        raise ValueError(f"{path} holds tensor-parallel shards for TP={tp}, this run uses TP={expect_tp}; "
                         f"reshard it first: {command}")
    shards = []
    for rank in range(tp):
        obj = torch.load(Path(path) / "release" / f"mp_rank_{rank:02d}" / "model_optim_rng.pt",
                         map_location="cpu", weights_only=True)
        shards.append({k: v for k, v in obj["model"].items() if "_extra_state" not in k})
    return merge(shards, plan)
