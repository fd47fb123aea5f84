"""Turn a plain model (full weights on every rank) into this rank's part: TP/SP linears, Ulysses cores, stages."""
from __future__ import annotations

import copy
from typing import List

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType

from mindspeed_mm.osp import platform
from mindspeed_mm.osp.parallel import layout as _layout
from mindspeed_mm.osp.parallel.layers import KINDS, model_parallel_config
from mindspeed_mm.osp.parallel.plan import ParallelPlan
from mindspeed_mm.osp.parallel.plans import plan_for
from mindspeed_mm.osp.parallel.ulysses import heads_to_sequence, sequence_to_heads


class Dropped(torch.nn.Module):
    """Placeholder for a module that lives on another pipeline stage."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this module lives on another pipeline stage")


class Chunk(torch.nn.Module):
    """One pipeline (virtual) stage: blocks[start:end], plus the embeddings / head when first / last."""

    def __init__(self, model, plan: ParallelPlan, start: int, end: int, first: bool, last: bool, config,
                 recompute: int = 0):
        super().__init__()
        names = plan.blocks(model)
        self.blocks = torch.nn.ModuleList(model.get_submodule(n) for n in names[start:end])
        owned = [n for n, i in plan.attached.items() if start <= i < end]
        owned += list(plan.pre) if first else []
        owned += list(plan.post) if last else []
        self.extra = torch.nn.ModuleList(m for m in map(lambda n: _get(model, n), owned)
                                         if isinstance(m, torch.nn.Module))
        self.extra_params = torch.nn.ParameterList(p for p in map(lambda n: _get(model, n), owned)
                                                   if isinstance(p, torch.nn.Parameter))
        self.start, self.end, self.first, self.last = start, end, first, last
        self.recompute = recompute  # this many leading blocks keep only their input and rerun in backward
        self.config = config
        self.model_type = ModelType.encoder_or_decoder
        self.input_tensor = None
        object.__setattr__(self, "model", model)  # not a submodule: the chunk owns only its own parameters

    def set_input_tensor(self, tensor):
        self.input_tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor


class ParallelModel(torch.nn.Module):
    """This rank's chunks of a model; run it with `parallel.forward` / train it with `parallel.train_step`.

    `weights_loaded` is False for a model built on the meta device until `parallel.load_state_dict` or
    `parallel.load_checkpoint` fills this rank's (uninitialised) parameters."""

    def __init__(self, model, plan, chunks: List[Chunk], meta_model, layout, weights_loaded: bool):
        super().__init__()
        self.chunks = torch.nn.ModuleList(chunks)
        self.plan, self.layout, self.weights_loaded = plan, layout, weights_loaded
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "meta_model", meta_model)
        self._schemas = {}


def _meta_clone(model: torch.nn.Module) -> torch.nn.Module:
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = torch.nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(
            t, torch.nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _get(model, name):
    """A submodule or a parameter by dotted name."""
    parent, _, child = name.rpartition(".")
    return getattr(model.get_submodule(parent) if parent else model, child)


def _set(model, name, module):
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    if isinstance(getattr(owner, child), torch.nn.Parameter):
        delattr(owner, child)  # a parameter slot cannot hold a module
    setattr(owner, child, module)


def chunk_ranges(num_blocks: int, layout) -> List[tuple]:
    """(global chunk index, start, end) for this rank's virtual stages, megatron's interleaved order."""
    pp, vpp = layout.pipeline_parallel, layout.chunks_per_stage
    per = num_blocks // (pp * vpp)
    rank = parallel_state.get_pipeline_model_parallel_rank()
    return [(v * pp + rank, (v * pp + rank) * per, (v * pp + rank + 1) * per) for v in range(vpp)]


def recompute_count(recompute, blocks_per_chunk: int) -> int:
    """How many leading blocks of each chunk recompute: "full" = all, "none" = 0, or a number (megatron's
    "block" method: the first N blocks of every pipeline stage / virtual stage)."""
    if recompute == "full":
        return blocks_per_chunk
    if recompute in ("none", None):
        return 0
    if isinstance(recompute, bool) or not isinstance(recompute, int) or recompute < 0:
        raise ValueError(f"recompute must be 'full', 'none' or a number of blocks >= 0, got {recompute!r}")
    if recompute > blocks_per_chunk:
        raise ValueError(f"recompute={recompute} blocks, but each pipeline stage holds {blocks_per_chunk}; "
                         f"use at most {blocks_per_chunk} or 'full'")
    return recompute


def parallelize(model: torch.nn.Module, recompute="none", device=None) -> ParallelModel:
    """This rank's part of `model` under the current layout. `recompute`: activation recompute ("full", "none" or
    the number of leading blocks per stage), block by block with torch's non-reentrant checkpoint. A model on the
    meta device gets only this rank's tensors, allocated on `device` (default: the platform's) and uninitialised."""
    layout = _layout.current()
    plan = plan_for(model)
    names = list(plan.blocks(model))
    layout.check_model(heads=plan.heads(model), layers=len(names))  # before any allocation
    on_meta = any(p.is_meta for p in model.parameters())
    if device is None:
        device = platform.default_device() if on_meta else next(model.parameters()).device
    meta_model = _meta_clone(model)

    ranges = chunk_ranges(len(names), layout)
    recompute = recompute_count(recompute, ranges[0][2] - ranges[0][1])
    total = layout.pipeline_parallel * layout.chunks_per_stage
    owned = {i for _, s, e in ranges for i in range(s, e)}
    first = any(c == 0 for c, _, _ in ranges)
    last = any(c == total - 1 for c, _, _ in ranges)
    for i, name in enumerate(names):
        if i not in owned:
            _set(model, name, Dropped())
    for name, i in plan.attached.items():
        if i not in owned:
            _set(model, name, Dropped())
    for name in (plan.pre if not first else ()) + (plan.post if not last else ()):
        _set(model, name, Dropped())

    _shard_linears(model, plan, layout, device)
    if on_meta:  # allocate only what this rank keeps: its stages, TP shards of the split linears
        model.to_empty(device=device)
    if layout.context_parallel > 1:
        _hook_ulysses(model, plan)
    if layout.sequence_parallel:
        _gather_module_inputs(model, plan)
        _mark_sequence_parallel(model, plan, names)
    _mark_head_local(model, plan)

    dtype = next(model.parameters()).dtype
    config = model_parallel_config(layout, dtype, sequence_parallel=layout.sequence_parallel)
    config.hidden_size = 1  # the pipeline carries a flat (packed) state: see pipeline.py
    config.batch_p2p_comm = layout.virtual_pipeline is None  # PP=2 interleaved + batched p2p is wrong (trap)
    chunks = [Chunk(model, plan, s, e, c == 0, c == total - 1, config, recompute) for c, s, e in ranges]
    return ParallelModel(model, plan, chunks, meta_model, layout, weights_loaded=not on_meta)


def compile_blocks(pmodel: ParallelModel, input_shapes: int) -> int:
    """Compile every block this rank runs with torch.compile (inductor), in place: the module objects, parameter
    names, checkpoints and the DDP hooks stay as they are; embeddings, head and optimizer run eager. Shapes are
    static (inductor's dynamic-shape path fails on these blocks, torch 2.13), so every new block input shape
    (a bucket's token count) compiles again, and blocks of the same kind share compiled code. Dynamo's recompile
    limit is raised to blocks x `input_shapes`, so that no block falls back to eager once it has seen more shapes
    than torch's default 8. Returns that limit."""
    layout = pmodel.layout
    if layout.model_parallel > 1:
        raise ValueError("compiled blocks are verified with data parallelism only (tensor, context and pipeline "
                         f"parallel 1; this layout is TP{layout.tensor_parallel} CP{layout.context_parallel} "
                         f"PP{layout.pipeline_parallel}): leave the blocks eager under model parallelism")
    import torch._dynamo

    blocks = [block for chunk in pmodel.chunks for block in getattr(chunk, "module", chunk).blocks]  # DDP: .module
    device = next(p for block in blocks for p in block.parameters()).device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"compiled blocks need inductor, which targets CPU and CUDA; this model is on {device.type}: "
                         "leave the blocks eager (model.compile=false)")
    limit = max(torch._dynamo.config.recompile_limit, len(blocks) * max(1, input_shapes))
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, limit)
    for block in blocks:
        block.compile(dynamic=False)
    return limit


def _shard_linears(model, plan, layout, device) -> None:
    for name, module in list(model.named_modules()):
        kind = plan.kind_of(name)
        if kind is None:
            continue
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(f"{name} is planned as a {kind}-parallel linear but is a {type(module).__name__}")
        _set(model, name, KINDS[kind].from_linear(module, layout, device))


def _hook_ulysses(model, plan) -> None:
    """All-to-all over CP after the q/k/v projections and before the output projections."""
    group = parallel_state.get_context_parallel_group()
    for name, module in model.named_modules():
        role = plan.ulysses_role(name)
        if role is None or isinstance(module, Dropped):
            continue
        if role == "in":
            module.register_forward_hook(lambda mod, args, out: sequence_to_heads(out, group))
        else:
            module.register_forward_pre_hook(lambda mod, args: (heads_to_sequence(args[0], group),) + args[1:])


def _gather_module_inputs(model, plan) -> None:
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
    from mindspeed_mm.osp.parallel.layers import ColumnLinear
    for name, module in model.named_modules():
        n = plan.gathered_args(name)
        if n is None or isinstance(module, Dropped):
            continue

        def before(mod, args, kwargs, n=n):
            gathered = tuple(gather_from_sequence_parallel_region(a) for a in args[:n])
            return gathered + tuple(args[n:]), kwargs

        module.register_forward_pre_hook(before, with_kwargs=True)
        for sub in module.modules():
            if isinstance(sub, ColumnLinear):
                sub.input_gathered = True


def _mark_head_local(model, plan) -> None:
    from fnmatch import fnmatchcase
    for name, module in model.named_modules():
        if any(fnmatchcase(name, p) for p in plan.head_local) and not isinstance(module, Dropped):
            for p in module.parameters():
                p.grad_sum_over_tp = True


def _mark_sequence_parallel(model, plan, block_names) -> None:
    """Replicated parameters that see only this rank's tokens: their grads are summed over TP."""
    for name in list(block_names) + list(plan.post) + list(plan.attached):
        obj = _get(model, name)
        for p in ([obj] if isinstance(obj, torch.nn.Parameter) else obj.parameters()):
            if not getattr(p, "tensor_model_parallel", False):
                p.sequence_parallel = p.grad_sum_over_tp = True
