"""megatron-core linears that stand in for a model's plain `nn.Linear` (same call, same output tensor).

Gradient convention inside the parallel region (the blocks and the token-wise head): a replicated activation's
gradient on one rank is that rank's contribution (from its own tokens); the region's entry and exit turn these
back into whole gradients (see `regions.py`). Replicated parameters in the region are marked
`sequence_parallel` under SP so that megatron's `finalize_model_grads` sums them over the TP group.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_tensor_model_parallel_region,
)

from mindspeed_mm.osp.parallel.plan import SPLIT_DIMS


def model_parallel_config(layout, dtype: torch.dtype, *, sequence_parallel: bool) -> ModelParallelConfig:
    return ModelParallelConfig(
        tensor_model_parallel_size=layout.tensor_parallel,
        pipeline_model_parallel_size=layout.pipeline_parallel,
        virtual_pipeline_model_parallel_size=layout.virtual_pipeline,
        context_parallel_size=layout.context_parallel,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        perform_initialization=False,
        use_cpu_initialization=True,
    )


def _copy_shard(param: torch.nn.Parameter, full: torch.Tensor, dim: int) -> None:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    if full.shape[dim] % tp:
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} cannot be split over tensor_parallel {tp}")
    if not full.is_meta:  # a model built on the meta device gets its weights later (parallel.load_state_dict)
        with torch.no_grad():
            param.copy_(full.chunk(tp, dim=dim)[rank])
    # megatron sets these only when it initialises the weights itself
    param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, dim, 1


def _from_linear(cls, kind: str, linear: torch.nn.Linear, layout, device, *, sequence_parallel: bool, **kwargs):
    """A megatron linear of class `cls` holding this rank's part of `linear`, cut per `SPLIT_DIMS[kind]` (a
    linear on the meta device keeps uninitialised tensors: the weights come later)."""
    config = model_parallel_config(layout, linear.weight.dtype, sequence_parallel=sequence_parallel)
    layer = cls(linear.in_features, linear.out_features, config=config, init_method=lambda w: None,
                bias=linear.bias is not None, **kwargs)
    layer.to(device)
    layer.single_rank = layout.tensor_parallel == 1
    weight_dim, bias_dim = SPLIT_DIMS[kind]
    _copy_shard(layer.weight, linear.weight, weight_dim)
    if linear.bias is not None and bias_dim is not None:
        _copy_shard(layer.bias, linear.bias, bias_dim)
    elif linear.bias is not None and not linear.bias.is_meta:
        with torch.no_grad():
            layer.bias.copy_(linear.bias)
    return layer


class ColumnLinear(ColumnParallelLinear):
    """Output features split over TP (heads / FFN neurons); under SP it first gathers the sequence.

    `input_gathered`: the enclosing module already gathered the sequence (one gather for q, k and v; its
    backward reduce-scatter sums the input gradient), so this is a plain local matmul. At tensor parallel 1
    (`single_rank`, set by `_from_linear`) all three linears of this file are plain matmuls: megatron's path
    would add only identity collectives and its Python autograd function (about 0.1 ms per linear per step, 4%
    of the default model's CPU step).
    """

    input_gathered = False

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, layout, device) -> "ColumnLinear":
        return _from_linear(cls, "column", linear, layout, device, sequence_parallel=layout.sequence_parallel,
                            gather_output=False)

    def forward(self, x):
        if self.input_gathered or self.single_rank:
            return F.linear(x, self.weight, self.bias)
        return super().forward(x)[0]


class RowLinear(RowParallelLinear):
    """Input features split over TP; all-reduce (reduce-scatter over the sequence under SP) of the output."""

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, layout, device) -> "RowLinear":
        layer = _from_linear(cls, "row", linear, layout, device, sequence_parallel=layout.sequence_parallel,
                             input_is_parallel=True, skip_bias_add=False)
        if linear.bias is not None and layout.sequence_parallel:
            layer.bias.sequence_parallel = True  # megatron marks it too; its grad is per-token-shard
        return layer

    def forward(self, x):
        if self.single_rank:
            return F.linear(x, self.weight, self.bias)
        return super().forward(x)[0]


class ConditioningLinear(ColumnParallelLinear):
    """A column-parallel linear on a per-sample conditioning vector (AdaLN modulation), output gathered.

    Without SP it is megatron's ColumnParallelLinear(gather_output=True). Under SP its output is broadcast over
    sequence shards, so the output gradient is summed over TP first and the input gradient is left as this
    rank's share (the region entry sums it).
    """

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, layout, device) -> "ConditioningLinear":
        layer = _from_linear(cls, "conditioning", linear, layout, device, sequence_parallel=False,
                             gather_output=False)
        layer.split_sequence = layout.sequence_parallel
        return layer

    def forward(self, x):
        if self.single_rank:
            return F.linear(x, self.weight, self.bias)
        if self.split_sequence:
            y = F.linear(x, self.weight, self.bias)
            return copy_to_tensor_model_parallel_region(gather_from_tensor_model_parallel_region(y))
        return gather_from_tensor_model_parallel_region(super().forward(x)[0])


KINDS = {"column": ColumnLinear, "row": RowLinear, "conditioning": ConditioningLinear}
