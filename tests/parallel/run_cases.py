"""Run parallel layouts against the single-device model in one torchrun launch; rank 0 writes JSON.

    torchrun --nproc_per_node 4 tests/parallel/run_cases.py --out result.json --cases toy/cp2 v15/tp2_sp_pp2 ...

A case is <model>/<layout>: model toy (tests/parallel/toy.py), v13 or v15 (the 4-head official fixtures);
layout tp<N>, pp<N>, cp<N>, vpp<N> and "sp", joined by "_" (e.g. tp2_sp_pp2). Each case checks, on every rank:
forward output vs the single-device model, and the gathered official state dict vs the original weights. Prefixes
train_ / recompute_ / resume_ / guarded_ / outlier_ (spike_: the same without the drop) select training checks;
tokens "bf16" and rcfull / rc<N> (recompute) modify them.
Model "job" runs the `osp train` job (config from --job-config) under the layout and reports its JSONL metrics.
"""
from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import os
import re
import shutil
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import torch  # noqa: E402

from mindspeed_mm.osp import parallel  # noqa: E402


def parse_layout(case: str) -> dict:
    kw = dict(tensor_parallel=1, pipeline_parallel=1, context_parallel=1, sequence_parallel="sp" in case.split("_"),
              virtual_pipeline=None)
    for key, name in (("tp", "tensor_parallel"), ("pp", "pipeline_parallel"), ("cp", "context_parallel"),
                      ("vpp", "virtual_pipeline")):
        m = re.search(rf"(?<![a-z]){key}(\d+)", case)
        if m:
            kw[name] = int(m.group(1))
    return kw


def parse_recompute(case: str):
    """Token rcfull (every block) or rc<N> (the first N blocks of each stage); none otherwise."""
    m = re.search(r"(?<![a-z])rc(full|\d+)", case)
    return "none" if m is None else "full" if m.group(1) == "full" else int(m.group(1))


def max_across_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


FORKS = []  # forks of this rank: checkpoints are written without any (a fork with live gloo threads can deadlock)
os.register_at_fork(before=lambda: FORKS.append(1))
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "dit")


def fixture_files(name: str):
    """(model class, official config, official weights, inputs, official output) of a 4-head fixture."""
    from safetensors.torch import load_file
    from mindspeed_mm.osp.dit.osp13 import OSP13DiT
    from mindspeed_mm.osp.dit.suv import SUVDiT
    folder = os.path.join(FIXTURES, {"v13": "v13_t2v_h4", "v15": "v15_suv_h4"}[name])
    config = json.load(open(os.path.join(folder, "meta.json")))["config"]
    weights = {k: v.float() for k, v in load_file(os.path.join(folder, "weights.safetensors")).items()}
    tensors = load_file(os.path.join(folder, "tensors.safetensors"))
    expected = tensors.pop("output")
    return (OSP13DiT if name == "v13" else SUVDiT), config, weights, tensors, expected


def fixture_model(name: str):
    """(build, inputs, official output) for an official-implementation fixture, loaded like a user would."""
    cls, config, weights, tensors, expected = fixture_files(name)
    return (lambda: cls.from_official(config, weights)), tensors, expected


def meta_case(case: str, name: str) -> dict:
    """Build the model on the meta device, parallelize it (only this rank's tensors are allocated), then load the
    official weights: the output equals the official one, and this rank holds only its share of the weights."""
    from mindspeed_mm.osp.dit.osp13 import OSP13Config
    from mindspeed_mm.osp.dit.suv import SUVConfig
    parallel.initialize(**parse_layout(case))
    cls, config, weights, inputs, expected = fixture_files(name)
    with torch.device("meta"):
        model = cls((OSP13Config if name == "v13" else SUVConfig).from_official(config))
    pmodel = parallel.parallelize(model)
    try:
        parallel.forward(pmodel, **inputs)
        not_loaded_error = None
    except RuntimeError as exc:
        not_loaded_error = str(exc)
    parallel.load_state_dict(pmodel, weights)  # official key names
    out = parallel.forward(pmodel, num_microbatches=2, **inputs)
    local = sum(p.numel() for p in pmodel.model.parameters())
    return {"official_max_diff": max_across_ranks((out - expected).abs().max().item()),
            "not_loaded_error": not_loaded_error,
            "largest_rank_share": max_across_ranks(local / sum(v.numel() for v in weights.values()))}


def forward_case(case: str, build, inputs, num_microbatches: int, expected=None) -> dict:
    parallel.initialize(**parse_layout(case))
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        reference = model(**inputs)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    pmodel = parallel.parallelize(copy.deepcopy(model))
    out = parallel.forward(pmodel, num_microbatches=num_microbatches, **inputs)
    sd = parallel.full_state_dict(pmodel)
    result = {"reference_abs_mean": reference.abs().mean().item(),
            "forward_max_diff": max_across_ranks((out - reference).abs().max().item()),
            "state_dict_keys_equal": sorted(sd) == sorted(full),
            "state_dict_max_diff": max_across_ranks(max((sd[k] - full[k]).abs().max().item() for k in full))}
    if expected is not None:
        result["official_max_diff"] = max_across_ranks((out - expected).abs().max().item())
    return result


def _loss(output, inputs):
    target = torch.sin(3 * inputs["hidden_states"])[..., : output.shape[-1]]
    return torch.nn.functional.mse_loss(output.float(), target)


def _reference_optimizer(model, lr, wd, eps):
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and not n.endswith(".bias")]
    other = [p for n, p in model.named_parameters() if not (p.dim() > 1 and not n.endswith(".bias"))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}],
                             lr=lr, eps=eps)


# the resume cases' learning-rate schedule: 2 warmup steps to the peak, cosine decay after it
SCHEDULE = dict(lr_warmup_steps=2, lr_decay_steps=8, lr_decay_style="cosine", min_lr=1e-4)


def _train_parallel(model, inputs, steps: int, recompute="none", bf16=False, lr=1e-3, wd=0.1, eps=1e-8, clip=1.0):
    """`steps` AdamW steps (distributed optimizer) of a copy of `model` (in bf16 with fp32 main weights when
    `bf16`) under the current layout: losses, grad norms, the gathered weights and how many block forwards this
    rank ran (recomputed ones included)."""
    from megatron.core import parallel_state
    pmodel = parallel.parallelize(copy.deepcopy(model).to(torch.bfloat16 if bf16 else torch.float32),
                                  recompute=recompute)
    runs, run_block = [0], pmodel.plan.run_block

    def counted(m, i, state):
        runs[0] += 1
        return run_block(m, i, state)

    pmodel.plan.run_block = counted
    optimizer = parallel.make_optimizer(pmodel, lr=lr, weight_decay=wd, eps=eps, clip_grad=clip, bf16=bf16)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    local = {k: v.chunk(dp)[dp_rank] for k, v in inputs.items()}
    micro = 2 if parallel.current_layout().pipeline_parallel > 1 else 1
    losses, norms = zip(*[parallel.train_step(pmodel, optimizer, _loss, num_microbatches=micro, **local)
                          for _ in range(steps)])
    return list(losses), list(norms), parallel.full_state_dict(pmodel), runs[0]


def _reference_steps(model, inputs, steps: int, schedule=None, bf16=False, lr=1e-3, wd=0.1, eps=1e-8, clip=1.0):
    """The same AdamW steps on one device (under megatron's LR scheduler with `schedule`; with `bf16`, forward and
    backward of a bf16 copy and fp32 master weights in `model`): losses, grad norms, learning rates after every
    step, final weights (the bf16 copy's with `bf16`)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    ref_opt = _reference_optimizer(model, lr, wd, eps)
    work = copy.deepcopy(model).to(torch.bfloat16) if bf16 else model
    scheduler = None
    if schedule is not None:
        ref_opt.param_groups[1]["wd_mult"] = 0.0  # biases and 1-D parameters, as in megatron's grouping
        scheduler = OptimizerParamScheduler(
            ref_opt, init_lr=0.0, max_lr=lr, min_lr=schedule["min_lr"], lr_warmup_steps=schedule["lr_warmup_steps"],
            lr_decay_steps=schedule["lr_decay_steps"], lr_decay_style=schedule["lr_decay_style"], start_wd=wd,
            end_wd=wd, wd_incr_steps=1, wd_incr_style="constant")
    losses, norms, lrs = [], [], []
    for _ in range(steps):
        work.zero_grad()
        loss = _loss(work(**inputs), inputs)
        loss.backward()
        for master, p in zip(model.parameters(), work.parameters()):
            # megatron steps every parameter (weight decay on unused ones too)
            master.grad = p.grad.float() if p.grad is not None else torch.zeros_like(master)
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item())
        ref_opt.step()
        if work is not model:
            with torch.no_grad():
                for master, p in zip(model.parameters(), work.parameters()):
                    p.copy_(master)
        if scheduler is not None:
            scheduler.step(1)
        losses.append(loss.item())
        lrs.append(ref_opt.param_groups[0]["lr"])
    return losses, norms, lrs, work.state_dict()


def _max_diff(a, b) -> float:
    return max_across_ranks(max(abs(x - y) for x, y in zip(a, b)))


def _weights_diff(sd, ref_sd) -> float:
    return max_across_ranks(max((sd[k].float() - ref_sd[k]).abs().max().item() for k in ref_sd))


def train_case(layout: str, build, inputs, steps: int = 3) -> dict:
    """`steps` AdamW steps (distributed optimizer) vs the same fp32 steps on one device, same global batch; in
    bf16 also vs the same mixed-precision steps on one device."""
    parallel.initialize(**parse_layout(layout))
    torch.manual_seed(0)
    model = build()
    bf16 = "bf16" in layout.split("_")
    ref_losses, ref_norms, _, ref_sd = _reference_steps(copy.deepcopy(model), inputs, steps)
    losses, norms, sd, _ = _train_parallel(model, inputs, steps, recompute=parse_recompute(layout), bf16=bf16)
    result = {"loss_max_diff": _max_diff(losses, ref_losses), "grad_norm_max_diff": _max_diff(norms, ref_norms),
              "weight_max_diff": _weights_diff(sd, ref_sd),
              "weights_moved": max((ref_sd[k] - v).abs().max().item() for k, v in model.state_dict().items()),
              "last_loss": ref_losses[-1]}
    if bf16:  # the same mixed-precision steps on one device, fp32 master weights starting (as megatron's main
        # parameters do) from the bf16 model's weights
        rounded = copy.deepcopy(model).to(torch.bfloat16).float()
        one_losses, one_norms, _, one_sd = _reference_steps(rounded, inputs, steps, bf16=True)
        result["vs_one_device_bf16"] = {"loss_max_diff": _max_diff(losses, one_losses),
                                        "grad_norm_max_diff": _max_diff(norms, one_norms),
                                        "weight_max_diff": _weights_diff(sd, {k: v.float() for k, v in
                                                                              one_sd.items()})}
        try:  # an fp32 model with bf16=True is refused before anything is wrapped
            parallel.make_optimizer(parallel.parallelize(copy.deepcopy(model)), lr=1e-3, bf16=True)
            result["dtype_error"] = None
        except ValueError as exc:
            result["dtype_error"] = str(exc)
    return result


# the guarded step's cases: per step, the factor on the loss (the third plants a spike the adaptive clip scales)
GUARDED_LOSS_SCALES = (1.0, 1.0, 30.0, 1.0)


def _scaled_loss(output, inputs):
    return _loss(output, inputs) * inputs["loss_scale"].mean()


def _reference_guarded(model, inputs, lr=1e-3, wd=0.1, eps=1e-8, decay=0.5):
    """The guarded steps on one device: AdamW, the adaptive clip rule (megatron's clip coefficient
    threshold / (norm + 1e-6)) and the v1.5 EMA warm-up, on the whole batch."""
    from mindspeed_mm.osp.training.clipping import AdaptiveGradClip
    clip, opt = AdaptiveGradClip(max_init=1e3, extreme_floor=1e6), _reference_optimizer(model, lr, wd, eps)
    ema = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses, norms, actions = [], [], []
    for k, scale in enumerate(GUARDED_LOSS_SCALES, 1):
        model.zero_grad()
        loss = _loss(model(**inputs), inputs) * scale
        loss.backward()
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item()
        decision = clip.decide(norm)
        if decision.action == "clip":
            for p in model.parameters():
                p.grad.mul_(decision.threshold / (norm + 1e-6))
        opt.step()
        d = min(decay, (1 + k) / (10 + k))
        with torch.no_grad():
            for name, p in model.named_parameters():
                ema[name].mul_(d).add_(p, alpha=1 - d)
        losses.append(loss.item()), norms.append(norm), actions.append(decision.action)
    return losses, norms, actions, ema, model.state_dict()


def guarded_case(layout: str, build, inputs) -> dict:
    """training.step.training_step with adaptive clipping and the sharded EMA (sharded over DP x CP) vs the same
    steps on one device: losses, norms, clip actions, weights, and the gathered EMA."""
    from megatron.core import parallel_state

    from mindspeed_mm.osp.training.clipping import AdaptiveGradClip
    from mindspeed_mm.osp.training.ema import ShardedEMA
    from mindspeed_mm.osp.training.step import training_step
    parallel.initialize(**parse_layout(layout))
    torch.manual_seed(0)
    model = build()
    ref_losses, ref_norms, ref_actions, ref_ema, ref_sd = _reference_guarded(copy.deepcopy(model), inputs)
    pmodel = parallel.parallelize(copy.deepcopy(model))
    optimizer = parallel.make_optimizer(pmodel, lr=1e-3, weight_decay=0.1, eps=1e-8)
    clip, ema = AdaptiveGradClip(max_init=1e3, extreme_floor=1e6), ShardedEMA(pmodel, optimizer, decay=0.5)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    local = {k: v.chunk(dp)[dp_rank] for k, v in inputs.items()}
    micro = 2 if parallel.current_layout().pipeline_parallel > 1 else 1
    results = []
    for scale in GUARDED_LOSS_SCALES:
        scales = torch.full((len(local["hidden_states"]),), scale)
        results.append(training_step(pmodel, optimizer, _scaled_loss, local, {"loss_scale": scales},
                                     num_microbatches=micro, clip=clip, ema=ema))
    gathered = parallel.full_state_dict(pmodel, local=ema.local_tensors())
    return {"loss_max_diff": _max_diff([r.loss for r in results], ref_losses),
            "grad_norm_max_rel_diff": max_across_ranks(max(abs(r.grad_norm / n - 1) for r, n in zip(results,
                                                                                                      ref_norms))),
            "actions": [r.action for r in results], "reference_actions": ref_actions,
            "clipped_norm_rel_diff": max_across_ranks(abs(results[2].clipped_norm / results[2].threshold - 1)),
            "weight_max_diff": _weights_diff(parallel.full_state_dict(pmodel), ref_sd),
            "ema_max_diff": _weights_diff(gathered, ref_ema),
            "ema_vs_weights": max((gathered[k] - ref_sd[k]).abs().max().item() for k in ref_ema)}


# the per-rank outlier drop's cases (2 data-parallel ranks): per step, the factor on each DP rank's loss. Step 3
# plants a spike on rank 1 only (dropped: the update is rank 0's alone); step 5 on both (every rank an outlier:
# the step is skipped).
OUTLIER_LOSS_SCALES = ((1.0, 1.0), (1.0, 1.0), (1.0, 50.0), (1.0, 1.0), (50.0, 50.0), (1.0, 1.0))


def _reference_outlier(model, shards, drop: bool, lr=1e-3, wd=0.1, eps=1e-8, decay=0.99):
    """The steps on one device, the v1.3 rule written out: each shard's gradient and norm gn_r; with `drop`, shard r
    is zeroed when gn_r - ema > 3 sqrt(var) (first step: ema = 3 max gn, var = 0), the kept ones averaged; then
    ema = d ema + (1-d) m, var = d var + (1-d) (ema - m)^2 with m the largest kept norm; all dropped: no step."""
    opt = _reference_optimizer(model, lr, wd, eps)
    ema = var = None
    norms, dropped, stats = [], [], []
    for scales in OUTLIER_LOSS_SCALES:
        grads, step_norms = [], []
        for shard, scale in zip(shards, scales):
            model.zero_grad()
            (_loss(model(**shard), shard) * scale).backward()
            g = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            grads.append(g)
            step_norms.append(torch.cat([x.reshape(-1) for x in g]).double().norm().item())
        if drop and ema is None:
            ema, var = 3 * max(step_norms), 0.0
        out = [r for r, n in enumerate(step_norms) if drop and n - ema > 3 * var ** 0.5]
        kept = [r for r in range(len(shards)) if r not in out]
        norms.append(step_norms), dropped.append(out)
        if kept:
            for i, p in enumerate(model.parameters()):
                p.grad = sum(grads[r][i] for r in kept) / len(kept)
            opt.step()
            if drop:
                m = max(step_norms[r] for r in kept)
                ema = decay * ema + (1 - decay) * m
                var = decay * var + (1 - decay) * (ema - m) ** 2
        stats.append([ema, var])
    return norms, dropped, stats, model.state_dict()


def outlier_case(layout: str, build, inputs) -> dict:
    """training.step.training_step with (outlier_) or without (spike_) the per-rank outlier drop, 2 data-parallel
    ranks under `layout`, vs the rule on one device: per-rank norms, dropped ranks, statistics, weights."""
    from megatron.core import parallel_state

    from mindspeed_mm.osp.training.clipping import RankOutlierDrop
    from mindspeed_mm.osp.training.step import training_step
    drop = layout.startswith("outlier_")
    parallel.initialize(**parse_layout(layout))
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    assert dp == 2, dp
    torch.manual_seed(0)
    model = build()
    shards = [{k: v.chunk(dp)[r] for k, v in inputs.items()} for r in range(dp)]
    ref_norms, ref_dropped, ref_stats, ref_sd = _reference_outlier(copy.deepcopy(model), shards, drop)
    pmodel = parallel.parallelize(copy.deepcopy(model))
    optimizer = parallel.make_optimizer(pmodel, lr=1e-3, weight_decay=0.1, eps=1e-8)
    rank_drop = RankOutlierDrop() if drop else None
    local = shards[dp_rank]
    results, stats = [], []
    for scales in OUTLIER_LOSS_SCALES:
        loss_scale = torch.full((len(local["hidden_states"]),), scales[dp_rank])
        results.append(training_step(pmodel, optimizer, _scaled_loss, local, {"loss_scale": loss_scale},
                                     rank_drop=rank_drop))
        stats.append([rank_drop.ema, rank_drop.var] if drop else [None, None])
    out = {"actions": [r.action for r in results], "weight_max_diff": _weights_diff(parallel.full_state_dict(pmodel),
                                                                                   ref_sd),
           "reference_dropped": ref_dropped}
    # the other rule's reference: how far apart dropping the spike and keeping it put the weights
    other_sd = _reference_outlier(copy.deepcopy(model), shards, not drop)[3]
    out["weight_diff_vs_other_rule"] = _weights_diff(parallel.full_state_dict(pmodel), other_sd)
    if drop:
        out.update({"dropped": [r.rank_drop.dropped for r in results],
                    "norm_max_rel_diff": max_across_ranks(max(abs(a / b - 1) for r, ns in zip(results, ref_norms)
                                                              for a, b in zip(r.rank_drop.norms, ns))),
                    "stats_max_rel_diff": max_across_ranks(max(abs(a / b - 1) for s, rs in zip(stats, ref_stats)
                                                               for a, b in zip(s, rs) if b)),
                    "counts": rank_drop.counts, "spike_over_bound": results[2].rank_drop.norms[1]
                    / results[2].rank_drop.threshold})
    return out


def recompute_case(layout: str, build, inputs, steps: int = 3) -> dict:
    """The same training steps under one layout without and with activation recompute."""
    parallel.initialize(**parse_layout(layout))
    torch.manual_seed(0)
    model = build()
    losses, norms, sd, runs = _train_parallel(model, inputs, steps)
    rc_losses, rc_norms, rc_sd, rc_runs = _train_parallel(model, inputs, steps,
                                                          recompute=parse_recompute(layout))
    return {"loss_max_diff": _max_diff(rc_losses, losses), "grad_norm_max_diff": _max_diff(rc_norms, norms),
            "weight_max_diff": _weights_diff(rc_sd, sd), "block_runs": runs, "recompute_block_runs": rc_runs,
            "weights_moved": _weights_diff(sd, model.state_dict())}


def _lr(optimizer) -> float:
    lrs = {g["lr"] for g in optimizer.param_groups}
    assert len(lrs) == 1, lrs
    return lrs.pop()


def _train_under(layout: str, model, inputs, steps: int, load_from=None, lr=1e-3, wd=0.1, eps=1e-8, clip=1.0):
    """Train `steps` scheduled steps under `layout` (after loading `load_from`); the losses, learning rates after
    each step, and the random numbers drawn right after loading."""
    from megatron.core import parallel_state
    parallel.initialize(**parse_layout(layout))
    pmodel = parallel.parallelize(model)
    optimizer = parallel.make_optimizer(pmodel, lr=lr, weight_decay=wd, eps=eps, clip_grad=clip, **SCHEDULE)
    resumed = parallel.load_checkpoint(pmodel, optimizer, load_from) if load_from else None
    draws = _draw_random() if load_from else None
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    local = {k: v.chunk(dp)[dp_rank] for k, v in inputs.items()}
    micro = 2 if parallel.current_layout().pipeline_parallel > 1 else 1
    losses, lrs = [], []
    for _ in range(steps):
        losses.append(parallel.train_step(pmodel, optimizer, _loss, num_microbatches=micro, **local)[0])
        lrs.append(_lr(optimizer))
    return pmodel, optimizer, resumed, losses, lrs, draws


def _draw_random() -> list:
    """One number from each generator a checkpoint restores, this rank's megatron tracker included."""
    import random
    import numpy as np
    from megatron.core import tensor_parallel
    with tensor_parallel.get_cuda_rng_tracker().fork():  # what dropout inside TP regions draws from
        tracked = torch.rand(1).item()
    return [random.random(), float(np.random.rand()), torch.rand(1).item(), tracked]


def _scramble_random(seed: int) -> None:
    import random
    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _adam_steps(optimizer) -> list:
    """[smallest, largest] Adam step count over every parameter shard of every rank."""
    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    steps = [float(s["step"]) for o in inner for s in o.state.values()]
    return [-max_across_ranks(-min(steps)), max_across_ranks(max(steps))]


def resume_case(spec: str, build, inputs, root: str) -> dict:
    """Train 2 scheduled steps under the first layout, save; for every other layout: load into a differently
    initialised model, train 2 more steps. Losses and learning rates must equal 4 uninterrupted single-device
    steps; under the saved layout the random numbers drawn after loading equal those drawn after saving."""
    save_layout, *load_layouts = spec.split("-")
    torch.manual_seed(0)
    model = build()
    ref_losses, _, ref_lrs, ref_sd = _reference_steps(copy.deepcopy(model), inputs, 4, SCHEDULE)
    if torch.distributed.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)
    torch.distributed.barrier()
    pmodel, optimizer, _, first, first_lrs, _ = _train_under(save_layout, copy.deepcopy(model), inputs, 2)
    _scramble_random(100 + torch.distributed.get_rank())  # every rank's generators in their own state
    _draw_random()  # advance the tracker too (as dropout would)
    extra = {"consumed_samples": 8, "loader": {"epoch": 0, "position": 2}}
    parallel.save_checkpoint(pmodel, optimizer, root, iteration=2, extra=extra)
    saved_draws = _draw_random()  # the uninterrupted run's next random numbers
    try:
        parallel.save_checkpoint(pmodel, optimizer, root, iteration=2)
        overwrite_error = None
    except FileExistsError as exc:
        overwrite_error = str(exc)
    result = {"first_loss_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(first, ref_losses))),
              "first_lr_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(first_lrs, ref_lrs))),
              "overwrite_error": overwrite_error, "latest": open(os.path.join(root, "latest")).read().strip()}
    for layout in load_layouts:
        _scramble_random(1)  # other initial weights and RNG: everything must come from the checkpoint
        pmodel, optimizer, resumed, losses, lrs, draws = _train_under(layout, build(), inputs, 2, load_from=root)
        sd = parallel.full_state_dict(pmodel)
        result[layout] = {"iteration": resumed.iteration, "extra_equal": resumed.extra == extra,
                          "rng_restored": resumed.rng_restored, "adam_steps": _adam_steps(optimizer),
                          "draws_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(draws, saved_draws))),
                          "loss_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(losses, ref_losses[2:]))),
                          "lr_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(lrs, ref_lrs[2:]))),
                          "weight_max_diff": max_across_ranks(max((sd[k] - ref_sd[k]).abs().max().item()
                                                                  for k in ref_sd))}
    pmodel = parallel.parallelize(build())  # under the last layout, with another schedule: refused
    optimizer = parallel.make_optimizer(pmodel, lr=1e-3, weight_decay=0.1, **{**SCHEDULE, "lr_decay_steps": 9})
    try:
        parallel.load_checkpoint(pmodel, optimizer, root)
        result["schedule_error"] = None
    except ValueError as exc:
        result["schedule_error"] = str(exc)
    return result


def job_case(layout: str, config_path: str, root: str) -> dict:
    """`osp train` (training.job.train) of the JSON config at `config_path` under `layout`: its JSONL metrics."""
    from mindspeed_mm.osp.training.config import load_config
    from mindspeed_mm.osp.training.job import train

    kw = parse_layout(layout)
    overrides = [f"parallel.tensor={kw['tensor_parallel']}", f"parallel.pipeline={kw['pipeline_parallel']}",
                 f"parallel.context={kw['context_parallel']}",
                 f"parallel.sequence_parallel={'true' if kw['sequence_parallel'] else 'false'}"]
    out = os.path.join(root, "job_" + layout)
    code = train(load_config(config_path, overrides), out, resume="none")
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))] if \
        torch.distributed.get_rank() == 0 else []
    return {"exit_code": code, "loss": [r["loss"] for r in records], "grad_norm": [r["grad_norm"] for r in records],
            "action": [r["action"] for r in records], "output": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--job-config", help="osp train config of the job/<layout> cases")
    ap.add_argument("--hang-timeout", type=float, default=300, help="seconds one case may take")
    args = ap.parse_args()
    torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {}
    try:
        parallel.initialize(tensor_parallel=3)
        results["world_size_error"] = None
    except ValueError as exc:
        results["world_size_error"] = str(exc)
    seconds = results["seconds"] = {}  # wall time per case, for keeping the launch short
    for case in args.cases:
        faulthandler.dump_traceback_later(args.hang_timeout, exit=True)  # a hang becomes a traceback
        started = time.perf_counter()
        model, _, layout = case.rpartition("/")
        if model == "job":
            build = inputs = expected = None
        elif model in ("", "toy"):
            from toy import ToyDiT, toy_inputs
            build, inputs, expected = ToyDiT, toy_inputs(), None
        else:
            build, inputs, expected = fixture_model(model)
        try:
            if model == "job":
                results[case] = job_case(layout, args.job_config, os.path.dirname(os.path.abspath(args.out)))
            elif layout.startswith("resume_"):
                root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "ckpt_" + layout)
                results[case] = resume_case(layout[len("resume_"):], build, inputs, root)
            elif layout.startswith("meta_"):
                results[case] = meta_case(layout[len("meta_"):], model)
            elif layout.startswith("recompute_"):
                results[case] = recompute_case(layout[len("recompute_"):], build, inputs)
            elif layout.startswith(("outlier_", "spike_")):
                results[case] = outlier_case(layout, build, inputs)
            elif layout.startswith("guarded_"):
                results[case] = guarded_case(layout[len("guarded_"):], build, inputs)
            elif layout.startswith("train_"):
                results[case] = train_case(layout[len("train_"):], build, inputs)
            else:
                results[case] = forward_case(layout, build, inputs, num_microbatches=2, expected=expected)
        except Exception:  # the other ranks would wait in a collective: end the whole launch
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        seconds[case] = round(time.perf_counter() - started, 1)
    results["forks"] = len(FORKS)
    if torch.distributed.get_rank() == 0:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
