"""Entry into and exit from the parallel region where the residual stream is cut along the sequence.

Entry (after the embeddings): sequence tensors are split over CP, then scattered over TP under SP. Exit (after the
token-wise head): gathered back, so every rank holds the whole output. Per-sample tensors (conditioning) cross
unchanged, except that under SP their gradient is summed over TP on the way back (see layers.py).

Gradients w.r.t. context parallel follow megatron's convention: each CP rank's gradients are its own tokens'
share and are summed over CP by the data-parallel reduction (megatron scales the loss by the CP size).
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)


class _SplitShare(torch.autograd.Function):
    """Keep this rank's chunk along dim 0; backward puts the chunk's gradient back, zeros elsewhere."""

    @staticmethod
    def forward(ctx, x, rank, size):
        ctx.rank, ctx.size, ctx.shape = rank, size, x.shape
        return x.chunk(size, dim=0)[rank].contiguous()

    @staticmethod
    def backward(ctx, grad):
        out = grad.new_zeros(ctx.shape)
        out.chunk(ctx.size, dim=0)[ctx.rank].copy_(grad)
        return out, None, None


class _GatherSplit(torch.autograd.Function):
    """All-gather along dim 0 over `group`; backward keeps this rank's chunk (the loss is replicated)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        size = torch.distributed.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        rank = torch.distributed.get_rank(ctx.group)
        size = torch.distributed.get_world_size(ctx.group)
        return grad.chunk(size, dim=0)[rank].contiguous(), None


def enter(state: dict, sequence_keys, layout) -> dict:
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise TypeError(f"model state {key!r} must be a tensor, got {type(value).__name__}")
        if sequence_keys(key):
            layout.check_sequence(key, value.shape[0])
            if layout.context_parallel > 1:
                value = _SplitShare.apply(value, parallel_state.get_context_parallel_rank(),
                                          layout.context_parallel)
            if layout.sequence_parallel:
                value = scatter_to_sequence_parallel_region(value)
        elif layout.sequence_parallel and value.is_floating_point():
            value = copy_to_tensor_model_parallel_region(value)
        out[key] = value
    return out


def exit_(tokens: torch.Tensor, layout) -> torch.Tensor:
    if layout.sequence_parallel:
        tokens = gather_from_sequence_parallel_region(tokens, tensor_parallel_output_grad=False)
    if layout.context_parallel > 1:
        tokens = _GatherSplit.apply(tokens, parallel_state.get_context_parallel_group())
    return tokens
