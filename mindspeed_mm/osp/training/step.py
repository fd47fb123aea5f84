"""One guarded training step on the parallel engine: forward/backward, then the optimizer step only when the loss
and the gradients are finite, with fixed or adaptive gradient clipping and the EMA update; optionally the v1.3
per-rank outlier drop before the data-parallel reduction (`RankOutlierDrop`).

A skipped step changes nothing: weights, Adam state, LR schedule, EMA and clipping statistics stay as they were
(the gradients are dropped by the next step's zeroing). `NonFiniteGuard` counts skips in a row and stops the run
after `max_consecutive` of them, before anything is saved, so the last checkpoint stays the last good one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from mindspeed_mm.osp.parallel.train import forward_backward
from mindspeed_mm.osp.training.clipping import AdaptiveGradClip, RankDropDecision, RankOutlierDrop
from mindspeed_mm.osp.training.ema import ShardedEMA


class TrainingStopped(RuntimeError):
    """The run cannot go on (too many skipped steps in a row, or an extreme gradient with on_extreme="stop")."""


@dataclass
class StepResult:
    loss: float
    grad_norm: Optional[float]      # before clipping; None when the loss was not finite
    applied: bool                   # False: the step was skipped
    action: str                     # "keep", "clip", "skip: <reason>"
    clipped_norm: Optional[float] = None   # the norm after clipping (measured), when clipped
    lr: float = 0.0                 # the learning rate this step used
    threshold: float = math.inf     # the clipping threshold this step was held to
    rank_drop: Optional[RankDropDecision] = None   # per-rank norms and dropped ranks (with a RankOutlierDrop)


def _clip_gradients(optimizer, max_norm: float, grad_norm: float) -> float:
    """Scale every main gradient by max_norm / grad_norm; returns the norm measured afterwards."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = inner.get_parameters()
        if params:
            clip_grad_by_total_norm_fp32(params, max_norm, grad_norm)
    return float(optimizer.get_grad_norm())


def rank_drop_hook(drop: RankOutlierDrop, decisions: list):
    """`before_grad_reduce` for `forward_backward`: gather every data-parallel rank's local gradient norm, decide,
    zero this rank's buffers when it is an outlier, else scale them by N/M; the decision goes to `decisions`."""
    from megatron.core import parallel_state

    from mindspeed_mm.osp.parallel.train import local_grad_norm, scale_local_grads

    def hook(chunks):
        norm = local_grad_norm(chunks)
        group = parallel_state.get_data_parallel_group()
        device = next(p for chunk in chunks for p in chunk.parameters()).device
        mine = torch.tensor([norm], dtype=torch.float32, device=device)
        gathered = [torch.zeros_like(mine) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(gathered, mine, group=group)
        decision = drop.decide([float(g) for g in gathered])
        me = parallel_state.get_data_parallel_rank()
        scale_local_grads(chunks, 0.0 if me in decision.dropped else decision.scale)
        decisions.append(decision)

    return hook


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def training_step(pmodel, optimizer, loss_fn, inputs: dict, loss_inputs: Optional[dict] = None, *,
                  num_microbatches: int = 1, clip: Union[AdaptiveGradClip, float, None] = None,
                  ema: Optional[ShardedEMA] = None, rank_drop: Optional[RankOutlierDrop] = None) -> StepResult:
    """One step. `clip`: an AdaptiveGradClip, a fixed max norm (> 0), or None. `rank_drop`: drop outlier
    data-parallel ranks' gradients before the reduction (the clipping then sees the survivors' mean). Every rank
    calls it and gets the same result (loss and norms are reduced over the model's groups); the loss is the mean
    over all ranks, dropped ones included, and `grad_norm` the norm of the reduced gradient."""
    if not isinstance(clip, (AdaptiveGradClip, type(None))) and not float(clip) > 0:
        raise ValueError(f"clip must be an AdaptiveGradClip, a max gradient norm > 0, or None; got {clip!r}")
    if rank_drop is not None and pmodel.layout.context_parallel > 1:
        raise ValueError("the per-rank outlier drop needs context parallel 1: a context-parallel rank holds only "
                         "part of its replica's gradient before the reduction")
    lr = current_lr(optimizer)
    decisions = []
    hook = rank_drop_hook(rank_drop, decisions) if rank_drop is not None else None
    loss = forward_backward(pmodel, optimizer, loss_fn, num_microbatches, loss_inputs, before_grad_reduce=hook,
                            **inputs)
    drop = decisions[-1] if decisions else None
    found_inf = bool(optimizer.prepare_grads())
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(loss):
        return StepResult(loss, None, False, "skip: non-finite loss", lr=lr, rank_drop=drop)
    if drop is not None and drop.all_dropped:
        rank_drop.note_all_dropped()
        return StepResult(loss, grad_norm, False, "skip: every rank's gradient is an outlier", lr=lr,
                          rank_drop=drop)
    if found_inf or not math.isfinite(grad_norm):
        return StepResult(loss, grad_norm, False, "skip: non-finite gradients", lr=lr, rank_drop=drop)
    action, threshold = "keep", math.inf
    if isinstance(clip, AdaptiveGradClip):
        decision = clip.decide(grad_norm)
        action, threshold = decision.action, decision.threshold
        if action == "stop":
            raise TrainingStopped(f"gradient norm {grad_norm:.4g} is above the adaptive clipping's extreme bound "
                                  f"(threshold {threshold:.4g}); the run stops as clip.on_extreme='stop' asks")
        if action == "skip":
            return StepResult(loss, grad_norm, False, "skip: extreme gradient norm", lr=lr, threshold=threshold,
                              rank_drop=drop)
    elif clip is not None:
        threshold = float(clip)
        action = "clip" if grad_norm > threshold else "keep"
    clipped = _clip_gradients(optimizer, threshold, grad_norm) if action == "clip" else None
    optimizer.step_with_ready_grads()
    optimizer.param_scheduler.step(1)
    if ema is not None:
        ema.update()
    if rank_drop is not None:
        rank_drop.commit()
    return StepResult(loss, grad_norm, True, action, clipped, lr, threshold, drop)


@dataclass
class NonFiniteGuard:
    """Stops the run after `max_consecutive` skipped steps in a row; counts all skips."""
    max_consecutive: int = 10
    in_a_row: int = 0
    total: int = 0

    def __post_init__(self):
        if self.max_consecutive < 1:
            raise ValueError(f"max_consecutive skipped steps must be >= 1, got {self.max_consecutive}")

    def observe(self, result: StepResult, step: int) -> None:
        self.count(result)
        self.check(result, step)

    def count(self, result: StepResult) -> None:
        if result.applied:
            self.in_a_row = 0
        else:
            self.in_a_row += 1
            self.total += 1

    def check(self, result: StepResult, step: int) -> None:
        """Raise TrainingStopped once `max_consecutive` steps in a row were skipped (after `count`)."""
        if self.in_a_row >= self.max_consecutive:
            raise TrainingStopped(f"{self.in_a_row} steps in a row were skipped (last at step {step}: "
                                  f"{result.action.removeprefix('skip: ')}, loss {result.loss}); the weights were not "
                                  "changed by them and the last checkpoint is intact. Lower the learning rate or "
                                  "check the data of these steps, then resume")

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.total = int(state["in_a_row"]), int(state["total"])
