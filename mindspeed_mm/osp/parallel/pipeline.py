"""Running a ParallelModel: the state carried between pipeline stages, and megatron-core's schedules.

Between stages the whole model state (residual streams, long-skip stacks, conditioning, masks, RoPE tables) is
packed into one flat tensor of fixed capacity, so the schedules' single-tensor p2p carries everything, and
gradients flow back through the same tensor. The layout of that tensor at each stage boundary comes from a
shape-only run of the model on the meta device.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from torch.utils.checkpoint import checkpoint

from mindspeed_mm.osp.parallel import regions

Schema = List[Tuple[str, torch.Size, torch.dtype]]


def _to_meta(value):
    return torch.empty_like(value, device="meta") if torch.is_tensor(value) else value


def boundary_schemas(pmodel, inputs: dict) -> Dict[int, Schema]:
    """block index -> local (this rank's) schema of the state entering that block; also the output shape."""
    key = tuple((k, tuple(v.shape), v.dtype) if torch.is_tensor(v) else (k, v) for k, v in sorted(inputs.items()))
    if key in pmodel._schemas:
        return pmodel._schemas[key]
    plan, layout, meta = pmodel.plan, pmodel.layout, pmodel.meta_model
    meta_inputs = {k: _to_meta(v) for k, v in inputs.items()}
    schemas = {}
    with torch.no_grad(), torch.device("meta"):
        state = plan.embed(meta, meta_inputs)
        for i in range(len(plan.blocks(meta))):
            schemas[i] = _local_schema(state, plan, layout)
            state = plan.run_block(meta, i, state)
        out = plan.finish(meta, plan.head(meta, state), meta_inputs)
        schemas["out"] = (out.shape, out.dtype)
    pmodel._schemas[key] = schemas
    return schemas


def _local_schema(state, plan, layout) -> Schema:
    schema = []
    for k, v in state.items():
        shape = v.shape
        if plan.sequence_keys(k):
            layout.check_sequence(k, shape[0])
            shape = torch.Size((shape[0] // layout.sequence_shards,) + tuple(shape[1:]))
        schema.append((k, shape, v.dtype))
    return schema


def pack(state: dict, schema: Schema, capacity: int, dtype) -> torch.Tensor:
    parts = [state[k].reshape(-1).to(dtype) for k, _, _ in schema]
    if [k for k, _, _ in schema] != list(state):
        raise RuntimeError(f"state keys {list(state)} differ from the planned {[k for k, _, _ in schema]}")
    flat = torch.cat(parts)
    return torch.nn.functional.pad(flat, (0, capacity - flat.numel())).view(capacity, 1, 1)


def unpack(flat: torch.Tensor, schema: Schema) -> dict:
    flat = flat.reshape(-1)
    state, offset = {}, 0
    for k, shape, dtype in schema:
        n = shape.numel()
        state[k] = flat[offset:offset + n].view(shape).to(dtype)
        offset += n
    return state


def run_chunk(chunk, inputs, schemas, capacity):
    """One stage's forward for one micro-batch: packed state in, packed state (or the full output) out."""
    model, plan, layout = chunk.model, chunk.config.osp_plan, chunk.config.osp_layout
    if chunk.first:
        state = regions.enter(plan.embed(model, inputs), plan.sequence_keys, layout)
    else:
        state = unpack(chunk.input_tensor, schemas[chunk.start])
    for i in range(chunk.start, chunk.end):
        if i - chunk.start < chunk.recompute and torch.is_grad_enabled():
            # keeps only the block's input; the forward reruns in backward (RNG replayed, hooks and collectives too)
            state = checkpoint(plan.run_block, model, i, state, use_reentrant=False)
        else:
            state = plan.run_block(model, i, state)
    if chunk.last:
        return plan.finish(model, regions.exit_(plan.head(model, state), layout), inputs)
    return pack(state, schemas[chunk.end], capacity, chunk.config.pipeline_dtype)


def split_microbatches(inputs: dict, num_microbatches: int) -> List[dict]:
    batch = {v.shape[0] for v in inputs.values() if torch.is_tensor(v) and v.dim() > 0}
    if len(batch) != 1:
        raise ValueError(f"inputs disagree on the batch size: {sorted(batch)}")
    (b,) = batch
    if b % num_microbatches:
        raise ValueError(f"batch {b} is not divisible into {num_microbatches} micro-batches")
    return [{k: (v.chunk(num_microbatches)[m] if torch.is_tensor(v) and v.dim() > 0 else v)
             for k, v in inputs.items()} for m in range(num_microbatches)]


def carrier_dtype(schemas, chunk) -> torch.dtype:
    """The dtype of the tensor between stages: the widest floating dtype of the state, so that fp32 entries of a
    bf16 model (such as a conditioning vector kept in fp32) cross stages unrounded."""
    dtype = getattr(chunk, "module", chunk).config.params_dtype
    for k, schema in schemas.items():
        if k != "out":
            for _, _, entry in schema:
                if entry.is_floating_point:
                    dtype = torch.promote_types(dtype, entry)
    return dtype


def schedule(pmodel, microbatches: List[dict], *, forward_only: bool, loss_fn=None,
             loss_data: Optional[List[dict]] = None):
    """Run megatron's schedule (no pipelining / 1F1B / interleaved) over the micro-batches.

    `loss_data`: per micro-batch tensors only the loss reads (targets, weights, masks); `loss_fn` gets them merged
    into the model inputs. Returns the last stage's outputs (forward_only) or per-micro-batch loss dicts.
    """
    if not pmodel.weights_loaded:
        raise RuntimeError("this model was built on the meta device and has no weights yet: call "
                           "parallel.load_state_dict(pmodel, state_dict) or parallel.load_checkpoint(...) first")
    schemas = boundary_schemas(pmodel, microbatches[0])
    capacity = max(sum(s.numel() for _, s, _ in sch) for k, sch in schemas.items() if k != "out")
    carrier = carrier_dtype(schemas, pmodel.chunks[0])
    for chunk in pmodel.chunks:
        config = getattr(chunk, "module", chunk).config
        config.osp_plan, config.osp_layout = pmodel.plan, pmodel.layout
        config.pipeline_dtype = chunk.config.pipeline_dtype = carrier  # the model's and the DDP wrapper's config

    def step(data_iterator, chunk):
        chunk = getattr(chunk, "module", chunk)  # megatron DDP wraps chunks for training
        inputs, extra = next(data_iterator)
        out = run_chunk(chunk, inputs, schemas, capacity)
        if loss_fn is None:  # keep the output (megatron's "non-loss data"; 0.12 needs a callable here)
            return out, lambda output, non_loss_data=True: output
        return out, lambda output: loss_fn(output, {**inputs, **extra})

    layout = pmodel.layout
    fb = get_forward_backward_func()
    pairs = list(zip(microbatches, loss_data or [{}] * len(microbatches)))
    iterators = [iter(pairs) for _ in pmodel.chunks]
    return fb(forward_step_func=step,
              data_iterator=iterators if len(iterators) > 1 else iterators[0],
              model=list(pmodel.chunks) if len(pmodel.chunks) > 1 else pmodel.chunks[0],
              num_microbatches=len(microbatches), seq_length=capacity * layout.sequence_shards,
              micro_batch_size=1, forward_only=forward_only, collect_non_loss_data=loss_fn is None), schemas


def forward(pmodel, num_microbatches: int = 1, **inputs) -> torch.Tensor:
    """Forward through the pipeline; every rank returns the whole output."""
    microbatches = split_microbatches(inputs, num_microbatches)
    with torch.no_grad():
        outputs, schemas = schedule(pmodel, microbatches, forward_only=True)
    if pmodel.layout.pipeline_parallel == 1:
        return torch.cat(outputs)
    out_shape, out_dtype = schemas["out"]
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        result = torch.cat(outputs)
    else:
        result = torch.empty((out_shape[0] * num_microbatches,) + tuple(out_shape[1:]), dtype=out_dtype)
    torch.distributed.broadcast(result, parallel_state.get_pipeline_model_parallel_last_rank(),
                                group=parallel_state.get_pipeline_model_parallel_group())
    return result
