"""Gathering a ParallelModel's weights back into the official (single-device) layout."""
from __future__ import annotations

import torch
from megatron.core import parallel_state


def _gather_tp(param: torch.Tensor) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return param.detach().clone()
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(param) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, param.detach().contiguous(), group=group)
    return torch.cat(parts, dim=param.partition_dim)


def full_state_dict(pmodel) -> dict:
    """The official-layout state dict (parameters and buffers), assembled on every rank."""
    model = pmodel.model
    local = {}
    for name, p in model.named_parameters():
        local[name] = _gather_tp(p)
    for name, b in model.named_buffers():
        local[name] = b.detach().clone()
    if pmodel.layout.pipeline_parallel == 1:
        return local
    group = parallel_state.get_pipeline_model_parallel_group()
    pieces = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(pieces, local, group=group)
    merged = {}
    for piece in pieces:
        merged.update(piece)
    return merged
