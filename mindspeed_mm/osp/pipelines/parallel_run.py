"""Multi-process sampling under torchrun.

The world is split into data-parallel groups of tp x cp processes. Within a group the denoiser runs tensor /
context parallel through `mindspeed_mm.osp.parallel` (every rank encodes the same prompts and draws the same seeded
noise); the groups take turns over the prompt list (prompt i goes to group i mod dp); the first rank of each group
decodes and writes its videos.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SampleRanks:
    data_parallel_rank: int = 0
    data_parallel_size: int = 1
    writer: bool = True          # decodes and writes this group's videos
    model_parallel: bool = False  # the denoiser is sharded (tp or cp > 1)

    def owns(self, index: int) -> bool:
        return index % self.data_parallel_size == self.data_parallel_rank


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_parallel(tensor_parallel: int, context_parallel: int) -> SampleRanks:
    """Start torch.distributed (from torchrun's environment) and, for tp/cp > 1, megatron's groups."""
    from ..parallel.lifetime import die_with_launcher, dist_timeout

    die_with_launcher()   # under torchrun: SIGKILLed when torchrun dies (the worker runs in a session of its own)
    model_parallel = tensor_parallel * context_parallel
    if not launched_by_torchrun():
        if model_parallel > 1:
            raise SystemExit(f"error: --tp {tensor_parallel} / --cp {context_parallel} need a multi-process launch, "
                             f"e.g. torchrun --nproc_per_node {model_parallel} -m mindspeed_mm.osp.cli sample ...")
        return SampleRanks()
    import torch.distributed as dist

    from .. import platform

    if not dist.is_initialized():
        timeout = dist_timeout()   # OSP_DIST_TIMEOUT: how long a collective waits for a dead or hung rank
        dist.init_process_group(platform.collective_backend(), **({"timeout": timeout} if timeout else {}))
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % model_parallel:
        raise SystemExit(f"error: {world} processes cannot be split into groups of --tp {tensor_parallel} x "
                         f"--cp {context_parallel} = {model_parallel}")
    if model_parallel == 1:
        return SampleRanks(rank, world, True, False)
    from megatron.core import parallel_state

    from .. import parallel

    parallel.initialize(tensor_parallel=tensor_parallel, context_parallel=context_parallel)
    writer = parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_context_parallel_rank() == 0
    return SampleRanks(parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size(),
                       writer, True)


def parallelize_pipeline(pipe) -> None:
    """Shard the denoiser and route the pipeline's denoiser calls through the parallel forward."""
    from .. import parallel

    if pipe.offload is not None:
        raise SystemExit("error: --offload blocks cannot be combined with --tp/--cp (each rank already holds a shard)")
    pipe.transformer = parallel.parallelize(pipe.transformer)
    pipe.forward_fn = lambda model, **kwargs: parallel.forward(model, **kwargs)
