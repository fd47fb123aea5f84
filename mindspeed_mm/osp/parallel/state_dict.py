"""Gathering a ParallelModel's weights back into the official (single-device) layout."""
from __future__ import annotations

import torch
from megatron.core import parallel_state


def _gather_tp(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False):
        return value.detach().clone()
    group = parallel_state.get_tensor_model_parallel_group()
    parts = [torch.empty_like(value) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, value.detach().contiguous(), group=group)
    return torch.cat(parts, dim=param.partition_dim)


def full_state_dict(pmodel, local: dict | None = None) -> dict:
    """The official-layout state dict (parameters and buffers), assembled on every rank. `local`: tensors shaped
    like this rank's parameters, by name (e.g. `ShardedEMA.local_tensors()`), gathered instead of the weights."""
    model = pmodel.model
    mine = {}
    for name, p in model.named_parameters():
        mine[name] = _gather_tp(p, p if local is None else local[name])
    for name, b in model.named_buffers():
        mine[name] = b.detach().clone()
    if pmodel.layout.pipeline_parallel == 1:
        return mine
    group = parallel_state.get_pipeline_model_parallel_group()
    pieces = [None] * torch.distributed.get_world_size(group)
    torch.distributed.all_gather_object(pieces, mine, group=group)
    merged = {}
    for piece in pieces:
        merged.update(piece)
    return merged


def load_state_dict(pmodel, state_dict: dict) -> None:
    """Copy a whole single-device state dict (the model's names, as `full_state_dict` returns, or the official
    checkpoint names) into this rank's part: its stages' tensors, its TP slice of the split ones. Keys are
    checked strictly against the whole model. Every rank passes the whole dict (load it with mmap)."""
    from mindspeed_mm.osp.checkpoints.keys import check_keys
    if any(hasattr(chunk, "module") for chunk in pmodel.chunks):
        raise RuntimeError("load_state_dict must come before make_optimizer (the optimizer keeps its own copy of "
                           "the weights); to resume training use parallel.load_checkpoint")
    meta = pmodel.meta_model
    expected = meta.state_dict()
    if set(state_dict) != set(expected) and hasattr(meta, "state_dict_from_official"):
        state_dict = meta.state_dict_from_official(state_dict)
    check_keys(expected, state_dict, what=type(meta).__name__)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, param in pmodel.model.named_parameters():
            full = state_dict[name]
            if getattr(param, "tensor_model_parallel", False):
                full = full.chunk(tp, dim=param.partition_dim)[tp_rank]
            param.copy_(full)
    pmodel.weights_loaded = True
