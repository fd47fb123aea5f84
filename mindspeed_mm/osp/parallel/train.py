"""Training a ParallelModel: megatron DDP (ZeRO-1 distributed optimizer) + megatron's optimizer, one step.

    optimizer = parallel.make_optimizer(pmodel, lr=1e-4, weight_decay=1e-4, eps=1e-15, clip_grad=1.0,
                                        lr_warmup_steps=1000, lr_decay_steps=100000, lr_decay_style="cosine")
    loss, grad_norm = parallel.train_step(pmodel, optimizer, loss_fn, num_microbatches=2, **inputs)

`loss_fn(output, inputs)` gets the whole model output of one micro-batch (on every TP/CP rank of the last
stage) and returns a scalar. Each data-parallel rank passes its own samples. Weight decay skips biases and 1-D
parameters (megatron's default grouping); the optimizer is torch AdamW when neither apex nor Transformer
Engine is installed. The learning rate follows megatron's `OptimizerParamScheduler` (`optimizer.param_scheduler`,
counted in optimizer steps; `train_step` advances it): linear warmup from 0 over `lr_warmup_steps`, then
`lr_decay_style` ("constant", "linear", "cosine", "inverse-square-root"; "WSD": constant until
`lr_decay_steps` - `lr_wsd_decay_steps`, then `lr_wsd_decay_style`) down to `min_lr` at `lr_decay_steps`.
Like megatron, the first step runs with the learning rate of step 0 (0 under warmup). `bf16=True` trains a
bfloat16 model with megatron's mixed precision (fp32 gradient reduction, fp32 main weights and Adam moments).
"""
from __future__ import annotations

import inspect

import torch
from megatron.core import parallel_state

from mindspeed_mm.osp.parallel.pipeline import schedule, split_microbatches


_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
_WSD_DECAY_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")


def _check_schedule(lr_warmup_steps: int, lr_decay_steps, lr_decay_style: str, lr_wsd_decay_steps,
                    lr_wsd_decay_style: str) -> None:
    if lr_decay_style not in _DECAY_STYLES:
        raise ValueError(f"lr_decay_style {lr_decay_style!r} is not one of {_DECAY_STYLES}")
    if lr_decay_style != "constant" and lr_decay_steps is None:
        raise ValueError(f"lr_decay_style={lr_decay_style!r} needs lr_decay_steps (the step where it reaches min_lr)")
    if lr_decay_steps is not None and lr_decay_steps <= lr_warmup_steps:
        raise ValueError(f"lr_decay_steps {lr_decay_steps} must be larger than lr_warmup_steps {lr_warmup_steps}")
    if lr_decay_style == "WSD":
        if lr_wsd_decay_steps is None or not 0 < lr_wsd_decay_steps <= lr_decay_steps - lr_warmup_steps:
            raise ValueError(f"lr_decay_style='WSD' needs lr_wsd_decay_steps in [1, lr_decay_steps - lr_warmup_steps "
                             f"= {lr_decay_steps - lr_warmup_steps}], got {lr_wsd_decay_steps}")
        if lr_wsd_decay_style not in _WSD_DECAY_STYLES:
            raise ValueError(f"lr_wsd_decay_style {lr_wsd_decay_style!r} is not one of {_WSD_DECAY_STYLES}")


def _check_dtype(dtype: torch.dtype, bf16: bool) -> None:
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the model's parameters are {dtype}; the engine trains float32 models, or bfloat16 ones "
                         "with bf16=True")
    if bf16 != (dtype == torch.bfloat16):
        raise ValueError(f"the model's parameters are {dtype} but bf16={bf16}: " + (
            "build the model in bfloat16 (e.g. from_official(..., dtype=torch.bfloat16) or model.to(torch.bfloat16)) "
            "before parallel.parallelize" if bf16 else "pass bf16=True for a bfloat16 model (fp32 main weights)"))


def make_optimizer(pmodel, *, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8,
                   clip_grad: float = 0.0, distributed: bool = True, lr_warmup_steps: int = 0,
                   lr_decay_steps: int | None = None, lr_decay_style: str = "constant", min_lr: float = 0.0,
                   lr_wsd_decay_steps: int | None = None, lr_wsd_decay_style: str = "linear", bf16: bool = False):
    """Wrap the chunks in megatron DDP (fp32 grad buffers) and build megatron's (distributed) Adam(W) with its
    LR scheduler as `optimizer.param_scheduler`. `bf16=True`: mixed precision for a model whose parameters are
    bfloat16 (fp32 main parameters and Adam moments in the optimizer, bf16 weights for the forward)."""
    _check_schedule(lr_warmup_steps, lr_decay_steps, lr_decay_style, lr_wsd_decay_steps, lr_wsd_decay_style)
    _check_dtype(pmodel.chunks[0].config.params_dtype, bf16)
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer import TransformerConfig

    layout = pmodel.layout
    dtype = pmodel.chunks[0].config.params_dtype
    # DDP only reads the parallel sizes and dtypes from this config; the shape fields are required placeholders.
    heads = layout.tensor_parallel * layout.context_parallel
    tconfig = TransformerConfig(num_layers=layout.pipeline_parallel * layout.chunks_per_stage,
                                hidden_size=heads, num_attention_heads=heads,
                                tensor_model_parallel_size=layout.tensor_parallel,
                                pipeline_model_parallel_size=layout.pipeline_parallel,
                                virtual_pipeline_model_parallel_size=layout.virtual_pipeline,
                                context_parallel_size=layout.context_parallel,
                                sequence_parallel=layout.sequence_parallel, params_dtype=dtype,
                                pipeline_dtype=dtype)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=distributed)
    chunks = [DistributedDataParallel(tconfig, ddp_config, chunk) for chunk in pmodel.chunks]
    # The schedules read the DDP wrapper's config from now on: the same p2p shape / settings as the chunks'.
    tconfig.hidden_size = 1
    tconfig.batch_p2p_comm = pmodel.chunks[0].config.batch_p2p_comm
    for chunk in chunks:
        chunk.broadcast_params()
    pmodel.chunks = torch.nn.ModuleList(chunks)
    config = OptimizerConfig(optimizer="adam", lr=lr, weight_decay=weight_decay, adam_beta1=betas[0],
                             adam_beta2=betas[1], adam_eps=eps, clip_grad=clip_grad,
                             min_lr=min_lr, use_distributed_optimizer=distributed, params_dtype=dtype, bf16=bf16)
    optimizer = get_megatron_optimizer(config, chunks)
    use_fused_cpu_adam(optimizer)
    # sets every group's lr and weight decay (from its multipliers) for step 0
    optimizer.param_scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=lr, min_lr=min_lr, lr_warmup_steps=lr_warmup_steps,
        lr_decay_steps=lr_decay_steps or lr_warmup_steps + 1, lr_decay_style=lr_decay_style,
        start_wd=weight_decay, end_wd=weight_decay, wd_incr_steps=1, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False, wsd_decay_steps=lr_wsd_decay_steps,
        lr_wsd_decay_style=lr_wsd_decay_style)
    return optimizer


def use_fused_cpu_adam(optimizer) -> None:
    """Switch torch Adam(W)s whose parameters are all on the CPU to torch's fused CPU kernel. By default torch
    updates CPU parameters one at a time (a few element-wise ops each); the fused kernel does the same update in
    one pass, 3x faster for the default model's 234 parameters, equal within float rounding (5e-7 apart after 30
    steps; benchmarks/cpu_train_overheads.py). The checkpoint loader calls it again, as loading restores the saved
    groups' flags. Megatron builds torch's AdamW when neither apex nor Transformer Engine is installed; on
    accelerators those fused optimizers (or torch's foreach default) are kept."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if not isinstance(torch_optimizer, torch.optim.Adam):   # AdamW is a subclass
            continue
        groups = torch_optimizer.param_groups
        if all(p.device.type == "cpu" for g in groups for p in g["params"]) and not any(
                g.get("differentiable") or g.get("capturable") for g in groups):
            for g in groups:
                g["fused"], g["foreach"] = True, False


def local_grad_norm(chunks) -> float:
    """L2 norm of this data-parallel rank's own gradient (the grad buffers before the data-parallel reduction),
    over its whole model replica: squares summed over the TP x PP group, TP duplicates and shared parameters
    counted once (megatron's rule for the global norm). Every rank of the replica gets the same value."""
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
    from megatron.core.transformer.module import param_is_not_shared

    device = next(p for chunk in chunks for p in chunk.parameters()).device
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for chunk in chunks:
        for p in chunk.parameters():
            grad = getattr(p, "main_grad", None)
            if grad is not None and p.requires_grad and param_is_not_shared(p) and \
                    param_is_not_tensor_parallel_duplicate(p):
                total += grad.detach().double().pow(2).sum()
    group = parallel_state.get_model_parallel_group()
    if torch.distributed.get_world_size(group) > 1:
        total = total.float()   # float32 on the wire (not every collective backend reduces float64)
        torch.distributed.all_reduce(total, group=group)
    return float(total.double().sqrt())


def scale_local_grads(chunks, factor: float) -> None:
    """Multiply this rank's grad buffers by `factor` before the data-parallel reduction; 0 zeroes them (NaN and inf
    included)."""
    for chunk in chunks:
        for buffer in list(chunk.buffers) + list(getattr(chunk, "expert_parallel_buffers", [])):
            if factor == 0.0:
                buffer.grad_data.zero_()
            elif factor != 1.0:
                buffer.grad_data.mul_(factor)


def _finalize_grads(chunks, layout, before_reduce=None) -> None:
    """Sum the grads of replicated parameters that saw only this rank's tokens (SP) or heads (qk-norms) over
    TP, then reduce grads over DP x CP (megatron's order). `before_reduce(chunks)` runs right before the
    data-parallel reduction (megatron DDP pre-scales by 1/DP and reduces inside `finish_grad_sync`), when every
    rank's buffers still hold its own gradient."""
    if layout.tensor_parallel > 1:
        group = parallel_state.get_tensor_model_parallel_group()
        for chunk in chunks:
            for p in chunk.parameters():
                if getattr(p, "grad_sum_over_tp", False) and p.requires_grad:
                    torch.distributed.all_reduce(p.main_grad, group=group)
    if before_reduce is not None:
        before_reduce(chunks)
    for chunk in chunks:
        if _all_reduce_instead_of_reduce_scatter(chunk):
            chunk.finish_grad_sync(force_all_reduce=True)
        else:
            chunk.finish_grad_sync()


def _all_reduce_instead_of_reduce_scatter(chunk) -> bool:
    """On gloo, the distributed optimizer's gradients are all-reduced rather than reduce-scattered (megatron's
    `force_all_reduce`, 0.13+; each rank then reads its own shard, whose sums are the same): gloo's reduce-scatter
    of a buffer is slower than its all-reduce (3.6M fp32 gradients, 2 processes on 2 cores: 1.2-2x,
    benchmarks/cpu_train_overheads.py)."""
    if not getattr(chunk, "ddp_config", None) or not chunk.ddp_config.use_distributed_optimizer:
        return False
    if "force_all_reduce" not in inspect.signature(chunk.finish_grad_sync).parameters:
        return False
    return torch.distributed.get_backend(parallel_state.get_data_parallel_group()) == "gloo"


def forward_backward(pmodel, optimizer, loss_fn, num_microbatches: int = 1, loss_inputs: dict | None = None,
                     before_grad_reduce=None, **inputs) -> float:
    """Zero the gradients, then forward and backward over `num_microbatches` micro-batches with gradients
    reduced over data parallel. `loss_inputs` are split like the inputs and merged into what `loss_fn` gets (the
    model never sees them). `before_grad_reduce(chunks)`: called on every rank right before the data-parallel
    reduction (see `_finalize_grads`). Returns the mean loss over micro-batches and data-parallel ranks, on every
    rank."""
    chunks = list(pmodel.chunks)
    finalize = lambda *args, **kwargs: _finalize_grads(chunks, pmodel.layout, before_grad_reduce)  # noqa: E731
    for chunk in chunks:
        chunk.zero_grad_buffer()
        chunk.config.finalize_model_grads_func = finalize  # the schedule reads the DDP wrapper's config
    optimizer.zero_grad()

    def megatron_loss(output, inputs):
        loss = loss_fn(output, inputs)
        return loss, {"loss": loss.detach().clone()}  # megatron scales `loss` in place afterwards

    loss_data = split_microbatches(loss_inputs, num_microbatches) if loss_inputs else None
    losses, _ = schedule(pmodel, split_microbatches(inputs, num_microbatches), forward_only=False,
                         loss_fn=megatron_loss, loss_data=loss_data)
    loss = torch.zeros(1)
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        loss[0] = torch.stack([d["loss"] for d in losses]).mean()
    if pmodel.layout.pipeline_parallel > 1:
        torch.distributed.broadcast(loss, parallel_state.get_pipeline_model_parallel_last_rank(),
                                    group=parallel_state.get_pipeline_model_parallel_group())
    # the mean over data-parallel ranks (each saw its own samples)
    torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    loss /= parallel_state.get_data_parallel_world_size()
    return float(loss)


def train_step(pmodel, optimizer, loss_fn, num_microbatches: int = 1, loss_inputs: dict | None = None, **inputs):
    """One optimizer step over `num_microbatches` micro-batches; returns (mean loss, grad norm) on every rank."""
    loss = forward_backward(pmodel, optimizer, loss_fn, num_microbatches, loss_inputs, **inputs)
    updated, grad_norm, _ = optimizer.step()
    if updated:
        optimizer.param_scheduler.step(1)
    return loss, float(grad_norm) if grad_norm is not None else None
