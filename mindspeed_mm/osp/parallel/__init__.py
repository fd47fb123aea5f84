"""Megatron-core tensor, sequence, pipeline and Ulysses context parallelism for the OSP denoisers.

    torch.distributed.init_process_group(platform.collective_backend())
    parallel.initialize(tensor_parallel=2, pipeline_parallel=2, sequence_parallel=True)
    pmodel = parallel.parallelize(SUVDiT.from_official(config, state_dict), recompute="full")
    out = parallel.forward(pmodel, **inputs)      # whole output on every rank
    sd = parallel.full_state_dict(pmodel)         # official layout
    parallel.save_checkpoint(pmodel, optimizer, "ckpts", iteration, extra={"consumed_samples": n})
    resumed = parallel.load_checkpoint(pmodel, optimizer, "ckpts")   # under any layout: .iteration, .extra

The models stay plain modules; per-class plans (plans.py) say which linears are split and how to run them
piecewise. See docs/parallel.md.
"""
from __future__ import annotations

from mindspeed_mm.osp.parallel.layout import Layout, current as current_layout, initialize
from mindspeed_mm.osp.parallel.plan import ParallelPlan


def register_plan(class_name: str, make_plan) -> None:
    """Make `plan_for` (and so `parallelize`) use `make_plan(model)` for models of class `class_name` (or a
    subclass of it)."""
    from mindspeed_mm.osp.parallel.plans import register_plan as _register_plan
    _register_plan(class_name, make_plan)


def parallelize(model, recompute="none", device=None):
    """This rank's part of `model`. `recompute`: activation recompute ("full", "none" or the number of leading
    blocks per stage). A model built on the meta device (e.g. `SUVDiT.from_preset(...)`) is never materialised
    whole: only this rank's tensors are allocated (on `device`, default the platform's), empty until
    `load_state_dict` or `load_checkpoint`."""
    from mindspeed_mm.osp.parallel.shard import parallelize as _parallelize
    return _parallelize(model, recompute, device)


def compile_blocks(pmodel, input_shapes: int) -> int:
    """torch.compile (inductor, static shapes) every block this rank runs, in place; see `shard.compile_blocks`."""
    from mindspeed_mm.osp.parallel.shard import compile_blocks as _compile_blocks
    return _compile_blocks(pmodel, input_shapes)


def forward(pmodel, num_microbatches: int = 1, **inputs):
    from mindspeed_mm.osp.parallel.pipeline import forward as _forward
    return _forward(pmodel, num_microbatches, **inputs)


def full_state_dict(pmodel, local=None):
    from mindspeed_mm.osp.parallel.state_dict import full_state_dict as _full_state_dict
    return _full_state_dict(pmodel, local)


def load_state_dict(pmodel, state_dict):
    from mindspeed_mm.osp.parallel.state_dict import load_state_dict as _load_state_dict
    return _load_state_dict(pmodel, state_dict)


def make_optimizer(pmodel, **kwargs):
    from mindspeed_mm.osp.parallel.train import make_optimizer as _make_optimizer
    return _make_optimizer(pmodel, **kwargs)


def train_step(pmodel, optimizer, loss_fn, num_microbatches: int = 1, loss_inputs=None, **inputs):
    from mindspeed_mm.osp.parallel.train import train_step as _train_step
    return _train_step(pmodel, optimizer, loss_fn, num_microbatches, loss_inputs, **inputs)


def save_checkpoint(pmodel, optimizer, directory: str, iteration: int, extra: dict | None = None,
                    tensors: dict | None = None) -> str:
    from mindspeed_mm.osp.parallel.checkpoint import save_checkpoint as _save
    return _save(pmodel, optimizer, directory, iteration, extra, tensors)


def load_checkpoint(pmodel, optimizer, directory: str, tensor_groups: tuple = ()):
    from mindspeed_mm.osp.parallel.checkpoint import load_checkpoint as _load
    return _load(pmodel, optimizer, directory, tensor_groups)


__all__ = ["Layout", "ParallelPlan", "current_layout", "forward", "full_state_dict", "initialize",
           "load_checkpoint", "load_state_dict", "make_optimizer", "parallelize", "register_plan",
           "save_checkpoint", "train_step"]
