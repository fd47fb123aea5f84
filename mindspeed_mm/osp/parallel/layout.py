"""The parallel layout of a run (TP, PP, CP, SP, virtual stages) and megatron-core's process groups."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Layout:
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    context_parallel: int = 1
    sequence_parallel: bool = False
    virtual_pipeline: Optional[int] = None
    data_parallel: int = 1

    @property
    def model_parallel(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.context_parallel

    @property
    def sequence_shards(self) -> int:
        """Into how many pieces the residual stream's sequence is cut (CP, times TP under SP)."""
        return self.context_parallel * (self.tensor_parallel if self.sequence_parallel else 1)

    @property
    def chunks_per_stage(self) -> int:
        return self.virtual_pipeline or 1

    def check_model(self, *, heads: int, layers: int) -> None:
        """Raise before any allocation when a model with `heads` heads and `layers` blocks cannot be split."""
        tp, cp, pp = self.tensor_parallel, self.context_parallel, self.pipeline_parallel
        if heads % (tp * cp):
            raise ValueError(f"{heads} attention heads cannot be split over tensor_parallel {tp} x "
                             f"context_parallel {cp} = {tp * cp}; choose TP*CP dividing {heads}")
        stages = pp * self.chunks_per_stage
        if layers % stages:
            what = f"pipeline_parallel {pp}" + (f" x virtual_pipeline {self.virtual_pipeline}"
                                                if self.virtual_pipeline else "")
            raise ValueError(f"{layers} blocks cannot be split evenly over {what} = {stages} stages; "
                             f"choose a stage count dividing {layers}")

    def check_sequence(self, name: str, length: int) -> None:
        shards = self.sequence_shards
        if length % shards:
            raise ValueError(
                f"sequence {name!r} has {length} tokens, not divisible by {shards} "
                f"(context_parallel {self.context_parallel}"
                + (f" x tensor_parallel {self.tensor_parallel} under sequence_parallel" if self.sequence_parallel
                   else "") + "); change the frame count/resolution/text length or the layout")


_LAYOUT: Optional[Layout] = None


def current() -> Layout:
    if _LAYOUT is None:
        raise RuntimeError("mindspeed_mm.osp.parallel.initialize(...) has not been called")
    return _LAYOUT


def initialize(tensor_parallel: int = 1, pipeline_parallel: int = 1, context_parallel: int = 1,
               sequence_parallel: bool = False, virtual_pipeline: Optional[int] = None,
               seed: int = 1234) -> Layout:
    """Create megatron-core's process groups for this layout; torch.distributed must already be up (torchrun).

    Checks the layout against the world size before creating anything. Data parallel takes the remaining factor.
    """
    global _LAYOUT
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun and call "
                           "torch.distributed.init_process_group(backend) before parallel.initialize")
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel),
                        ("context_parallel", context_parallel)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    world = dist.get_world_size()
    mp = tensor_parallel * pipeline_parallel * context_parallel
    if world % mp:
        raise ValueError(f"world size {world} is not divisible by tensor_parallel {tensor_parallel} x "
                         f"pipeline_parallel {pipeline_parallel} x context_parallel {context_parallel} = {mp}")
    if virtual_pipeline is not None:
        if pipeline_parallel < 2:
            raise ValueError(f"virtual_pipeline={virtual_pipeline} needs pipeline_parallel >= 2")
        if virtual_pipeline < 2:
            raise ValueError(f"virtual_pipeline must be >= 2 (or None), got {virtual_pipeline}")
    if sequence_parallel and tensor_parallel == 1:
        raise ValueError("sequence_parallel=True needs tensor_parallel >= 2 (it splits the sequence over the "
                         "tensor-parallel group)")
    layout = Layout(tensor_parallel, pipeline_parallel, context_parallel, bool(sequence_parallel),
                    virtual_pipeline, world // mp)

    _adapt_megatron()
    from megatron.core import parallel_state, tensor_parallel as mtp
    if parallel_state.model_parallel_is_initialized():
        _destroy_model_parallel(parallel_state)
    from mindspeed_mm.osp.parallel.lifetime import dist_timeout
    timeout = dist_timeout()   # OSP_DIST_TIMEOUT also bounds megatron's own groups (its default: 30 min)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=virtual_pipeline,
        context_parallel_size=context_parallel,
        **({"distributed_timeout_minutes": timeout.total_seconds() / 60} if timeout else {}),
    )
    mtp.model_parallel_cuda_manual_seed(seed)
    _LAYOUT = layout
    return layout


def _adapt_megatron() -> None:
    """Version fixes (compat.py); then CPU: our redirect layer; Ascend: MindSpeed's megatron adaptor when
    installed; CUDA: nothing."""
    from mindspeed_mm.osp import platform
    from mindspeed_mm.osp.parallel import compat
    compat.apply()
    kind = platform.device_type()
    if kind == "cpu":
        from mindspeed_mm.osp.parallel import cpu_adaptor
        cpu_adaptor.apply()
    elif kind == "npu" and importlib.util.find_spec("mindspeed") is not None:
        importlib.import_module("mindspeed.megatron_adaptor")


def _destroy_model_parallel(parallel_state) -> None:
    """megatron's destroy_model_parallel only drops its references to the groups: their gloo threads (two per
    group) would live on, and a process that re-initialises layouts many times (the test launch) ends with
    thousands of them. The groups this rank belongs to are destroyed here too."""
    import torch.distributed as dist

    groups = {}
    for name, value in vars(parallel_state).items():
        if "GROUP" in name:
            for group in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(group, dist.ProcessGroup) and group is not dist.group.WORLD:
                    groups[id(group)] = group
    parallel_state.destroy_model_parallel()
    registered = dist.distributed_c10d._world.pg_map   # megatron also keeps handles torch no longer lists
    for group in groups.values():
        if group in registered:
            dist.destroy_process_group(group)
