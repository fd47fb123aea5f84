"""Distributed checkpoints of a ParallelModel and its distributed optimizer, reloadable under any layout.

    parallel.save_checkpoint(pmodel, optimizer, "ckpts", 1000, extra={"consumed_samples": n})  # ckpts/iter_0001000
    resumed = parallel.load_checkpoint(pmodel, optimizer, "ckpts")   # any TP/PP/CP/DP layout
    resumed.iteration, resumed.extra, resumed.rng_restored

megatron-core `dist_checkpointing` (torch_dist format): every parameter is a ShardedTensor keyed by its official
(single-device) name, cut along its TP axis and replicated over DP x CP; the distributed optimizer's main weights
and Adam moments use megatron's model-shaped format (`fully_reshardable` in 0.16, `fully_sharded_model_space` in
0.12), so a checkpoint saved under one layout loads under any other. Besides: the LR scheduler's state, the
caller's `extra` dict (rank 0's copy) and every rank's RNG states (rng.py), which are restored only under the
layout they were saved with. Three resume bugs of megatron's distributed optimizer with torch's Adam (no apex /
Transformer Engine) are worked around here: its state is created before loading, state entries the format does
not hold (`step`) are kept instead of looked up, and the Adam step counter,
which megatron restores as one tensor shared by every parameter, is given back to each parameter on its own.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state

from mindspeed_mm.osp.checkpoints.runs import LATEST, iteration_dir, resolve
from mindspeed_mm.osp.parallel import rng
from mindspeed_mm.osp.parallel.train import use_fused_cpu_adam

logger = logging.getLogger(__name__)


@dataclass
class Resumed:
    """What `load_checkpoint` gives back besides the weights and optimizer state."""
    iteration: int
    extra: dict = field(default_factory=dict)   # the dict passed to save_checkpoint(extra=...)
    rng_restored: bool = False                   # False when the layout differs from the saved one
    tensors: dict = field(default_factory=dict)  # {group: {name: this rank's tensor}} for the groups asked for


def _model_sharded_state_dict(pmodel, values: dict | None = None, prefix: str = "") -> dict:
    """This rank's parameters (or `values`: tensors shaped like them, by name) as ShardedTensors under their
    official names (layout-independent keys), with `prefix` before each key."""
    from megatron.core.dist_checkpointing import ShardedTensor
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    sharded = {}
    for name, param in pmodel.model.named_parameters():
        data, key = (param if values is None else values[name]), prefix + name
        if getattr(param, "tensor_model_parallel", False):
            sharded[name] = ShardedTensor.from_rank_offsets(key, data, (param.partition_dim, tp_rank, tp),
                                                            replica_id=(0, 0, dp_rank))
        else:
            sharded[name] = ShardedTensor.from_rank_offsets(key, data, replica_id=(0, tp_rank, dp_rank))
    return sharded


def _inner_optimizers(optimizer):
    """The torch optimizers inside megatron's (chained, distributed) optimizer."""
    return [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]


def _init_adam_state(optimizer) -> None:
    """Give a fresh torch Adam its state (step 0, zero moments), as megatron's loader expects it to exist."""
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}


def _unshare_adam_steps(optimizer) -> None:
    """megatron restores one `step` tensor for every parameter; Adam increments it in place once per parameter."""
    for inner in _inner_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state:
                state["step"] = state["step"].detach().clone()


def _load_optimizer_state(optimizer, state) -> None:
    """megatron copies every state entry of a parameter from the checkpoint's model-shaped tensors, `step`
    included, which that format does not hold (KeyError 'step'): keep entries the checkpoint lacks as they are."""
    patched = []
    for dist_opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not hasattr(dist_opt, "_set_main_param_and_optimizer_states"):
            continue
        original = dist_opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors, dist_opt=dist_opt, original=original):
            current = dist_opt._get_main_param_and_optimizer_states(model_param)
            original(model_param, {**{k: v for k, v in current.items() if k not in tensors}, **tensors})

        dist_opt._set_main_param_and_optimizer_states = set_states
        patched.append(dist_opt)
    try:
        optimizer.load_state_dict(state)
    finally:
        for dist_opt in patched:
            del dist_opt._set_main_param_and_optimizer_states  # back to the class's method
    _unshare_adam_steps(optimizer)
    use_fused_cpu_adam(optimizer)   # the loaded param groups carry the saving run's settings


def _optimizer_format() -> dict:
    """The layout-independent distributed-optimizer format, as this megatron-core version names it."""
    import inspect
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    if "metadata" in inspect.signature(DistributedOptimizer.sharded_state_dict).parameters:  # 0.13+
        return {"metadata": {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}}
    return {"sharding_type": "fully_sharded_model_space"}  # 0.12


def _sharded_state_dict(pmodel, optimizer, is_loading: bool, tensors: dict | None = None) -> dict:
    model = _model_sharded_state_dict(pmodel)
    state = {"model": model}
    for group, values in (tensors or {}).items():
        state[f"tensors.{group}"] = _model_sharded_state_dict(pmodel, values, prefix=f"{group}.")
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model, is_loading=is_loading, **_optimizer_format())
    return state


def _barrier():
    torch.distributed.barrier()


def _rng_object(states):
    """This rank's RNG states, one slot per global rank (only loadable under the same world size)."""
    from megatron.core.dist_checkpointing import ShardedObject
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    return ShardedObject("rng_state", states, (world,), (rank,), replica_id=0)


def _in_process_save_strategy():
    """megatron's `torch_dist` format, written by the calling process.

    megatron writes each rank's files from processes it forks (0.16: one per file bucket; 0.12: a writer
    process holding a Manager server). A fork of a trainer with live communicator threads can deadlock in the
    child; on gloo we saw one rank never return from its writers while the others waited in the save's last
    barrier. Here the same write plan, files and metadata are produced without any fork: each bucket is written
    by megatron's own per-bucket writer in this process, and the results travel through a plain queue."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    class InProcessTorchDistSave(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir):
            filesystem_async._results_queue = queue.Queue()  # not megatron's Manager: nothing outlives the save
            request = self.async_save(sharded_state_dict, checkpoint_dir)
            if request.async_fn is not None:
                transforms = request.async_fn.args[0]
                _, buckets, results = request.async_fn_args
                if request.preload_fn is not None:
                    buckets = request.preload_fn()
                written, pending = queue.Queue(), queue.Queue()
                for index, bucket in enumerate(buckets):
                    pending.put(index)
                    filesystem_async.FileSystemWriterAsync.write_preloaded_data(transforms, index, bucket, written,
                                                                               pending, True)
                outcome = dict(written.get() for _ in buckets)
                failed = [r for r in outcome.values() if isinstance(r, Exception)]
                results.put(failed[0] if failed else outcome)
            torch.distributed.barrier()   # every rank's files exist before the coordinator writes the metadata
            for finalize in request.finalize_fns:
                finalize()

    return InProcessTorchDistSave("torch_dist", 1)


def save_checkpoint(pmodel, optimizer, directory: str, iteration: int, extra: dict | None = None,
                    tensors: dict | None = None) -> str:
    """Write `directory/iter_XXXXXXX` (through a temporary folder, renamed when complete) and `directory/latest`.

    Every rank calls it. Saved: weights, optimizer state and LR scheduler (when `optimizer` is given), every
    rank's RNG states, `extra` (picklable progress such as consumed samples; rank 0's copy) and `tensors`
    (`{group: {parameter name: tensor shaped like this rank's parameter}}`, e.g. EMA weights: saved sharded like
    the parameters, so they reload under any layout). An existing iteration folder is an error, never
    overwritten."""
    from megatron.core import dist_checkpointing
    final = iteration_dir(directory, iteration)
    if os.path.exists(final):
        raise FileExistsError(f"checkpoint {final} already exists; remove it or save under another iteration")
    tmp = os.path.join(directory, f".tmp_iter_{iteration:07d}")
    if torch.distributed.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted save
        os.makedirs(tmp)
    _barrier()
    state = _sharded_state_dict(pmodel, optimizer, is_loading=False, tensors=tensors)
    state.update(iteration=iteration, layout=repr(pmodel.layout), extra=dict(extra or {}),
                 tensor_groups=sorted(tensors or {}),
                 rng_state=_rng_object(rng.capture()))
    scheduler = getattr(optimizer, "param_scheduler", None)
    if scheduler is not None:
        state["param_scheduler"] = scheduler.state_dict()
    dist_checkpointing.save(state, tmp, sharded_strategy=_in_process_save_strategy())
    _barrier()
    if torch.distributed.get_rank() == 0:
        os.replace(tmp, final)
        marker = os.path.join(directory, f".{LATEST}.tmp")
        with open(marker, "w") as f:
            f.write(f"{iteration}\n")
        os.replace(marker, os.path.join(directory, LATEST))
    _barrier()
    return final


def _note(message: str) -> None:
    if torch.distributed.get_rank() == 0:
        logger.warning(message)


def _check_schedule(optimizer, saved) -> None:
    """Before anything is loaded: the LR schedule must be the checkpoint's (only its step count goes on)."""
    scheduler = getattr(optimizer, "param_scheduler", None)
    if scheduler is None or saved is None:
        return
    differ = {k: (v, saved[k]) for k, v in scheduler.state_dict().items() if k != "num_steps" and v != saved.get(k)}
    if differ:
        raise ValueError("the LR schedule differs from the checkpoint's (setting: (now, saved)) "
                         f"{differ}; pass make_optimizer the schedule the checkpoint was trained with")


def _load_scheduler(optimizer, saved) -> None:
    scheduler = getattr(optimizer, "param_scheduler", None)
    if scheduler is None:
        return
    if saved is None:
        _note("the checkpoint has no LR scheduler state: the schedule starts at step 0")
        return
    scheduler.num_steps = 0  # megatron's loader adds the saved step count to the current one
    scheduler.load_state_dict(saved)


def load_checkpoint(pmodel, optimizer, directory: str, tensor_groups: tuple = ()) -> Resumed:
    """Load weights (with `optimizer`: also its state, the LR scheduler and RNG) saved under any layout.

    `directory` is a checkpoint root (its `latest` iteration is loaded) or one iteration folder. RNG states are
    per rank, so they are restored only when the layout (and world size) equals the saved one; otherwise a note
    is logged and this process keeps its current RNG (as megatron does). `tensor_groups`: the `tensors` groups
    of save_checkpoint to load (this rank's part, in `Resumed.tensors`)."""
    from megatron.core import dist_checkpointing
    path = resolve(directory)
    common = dist_checkpointing.load_common_state_dict(path)
    absent = sorted(set(tensor_groups) - set(common.get("tensor_groups", ())))
    if absent:
        raise KeyError(f"checkpoint {path} holds no {', '.join(absent)} tensors (it has: "
                       f"{', '.join(common.get('tensor_groups', ())) or 'none'})")
    if optimizer is not None:
        _check_schedule(optimizer, common.get("param_scheduler"))
        _init_adam_state(optimizer)
    templates = {g: {n: torch.empty_like(p, dtype=torch.float32) for n, p in pmodel.model.named_parameters()}
                 for g in tensor_groups}
    state = _sharded_state_dict(pmodel, optimizer, is_loading=True, tensors=templates)
    restore_rng = optimizer is not None and common.get("layout") == repr(pmodel.layout)
    if restore_rng:
        state["rng_state"] = _rng_object(rng.capture())
    elif optimizer is not None:
        _note(f"checkpoint {path} was saved under {common.get('layout')}, this run is {pmodel.layout!r}: "
              "random number generator states are per rank and are not restored (the current ones are kept)")
    loaded = dist_checkpointing.load(state, path)
    params = dict(pmodel.model.named_parameters())
    with torch.no_grad():
        for name, tensor in loaded["model"].items():
            if tensor is not params[name]:
                params[name].copy_(tensor)
    if optimizer is not None:
        _load_optimizer_state(optimizer, loaded["optimizer"])
        _load_scheduler(optimizer, common.get("param_scheduler"))
    if restore_rng:
        rng.restore(loaded["rng_state"])
    pmodel.weights_loaded = True
    return Resumed(int(common["iteration"]), dict(common.get("extra", {})), restore_rng,
                   {g: dict(loaded[f"tensors.{g}"]) for g in tensor_groups})
