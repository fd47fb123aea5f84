"""Multi-process sampling under torchrun: the denoiser runs tensor / context parallel through
`mindspeed_mm.osp.parallel`; every rank encodes the same prompts and draws the same seeded noise, rank 0 writes."""
from __future__ import annotations

import os


def setup_parallel(tensor_parallel: int, context_parallel: int) -> bool:
    """Start torch.distributed (from torchrun's environment) and megatron's groups; True on the writing rank."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit(f"error: --tp {tensor_parallel} / --cp {context_parallel} need a multi-process launch, e.g. "
                         f"torchrun --nproc_per_node {tensor_parallel * context_parallel} -m mindspeed_mm.osp.cli sample ...")
    import torch.distributed as dist

    from .. import parallel, platform

    if not dist.is_initialized():
        dist.init_process_group(platform.collective_backend())
    world = dist.get_world_size()
    if world != tensor_parallel * context_parallel:
        raise SystemExit(f"error: {world} processes for --tp {tensor_parallel} x --cp {context_parallel}; "
                         f"launch exactly {tensor_parallel * context_parallel} (data-parallel sampling is not supported)")
    parallel.initialize(tensor_parallel=tensor_parallel, context_parallel=context_parallel)
    return dist.get_rank() == 0


def parallelize_pipeline(pipe) -> None:
    """Shard the denoiser and route the pipeline's denoiser calls through the parallel forward."""
    from .. import parallel

    if pipe.offload is not None:
        raise SystemExit("error: --offload blocks cannot be combined with --tp/--cp (each rank already holds a shard)")
    pipe.transformer = parallel.parallelize(pipe.transformer)
    pipe.forward_fn = lambda model, **kwargs: parallel.forward(model, **kwargs)
