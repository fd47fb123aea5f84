"""The guarded training step on the engine (one gloo process, tiny v1.5 SUV): adaptive clipping really clips a
planted spike, non-finite steps change nothing, the sharded EMA follows its formula, and EMA / clip state survive a
checkpoint; plus the objectives' reductions and noise draws."""
from __future__ import annotations

import copy
import math
import socket

import pytest
import torch

from mindspeed_mm.osp import parallel
from mindspeed_mm.osp.diffusion import FlowMatchingObjective, VPredictionObjective, dynamic_shift
from mindspeed_mm.osp.diffusion.vpred import masked_mean_loss
from mindspeed_mm.osp.dit.suv import SUVDiT
from mindspeed_mm.osp.training.clipping import AdaptiveGradClip
from mindspeed_mm.osp.training.ema import ShardedEMA
from mindspeed_mm.osp.training.objectives import FlowMatchingTask, VPredictionTask, loss_fn, per_sample_noise
from mindspeed_mm.osp.training.step import NonFiniteGuard, TrainingStopped, training_step


# ---------------------------------------------------------------------------------------------------- clipping
def test_adaptive_clip_rule_by_hand():
    clip = AdaptiveGradClip()
    first = clip.decide(0.2)                           # starts ema = min(3 * 0.2, 1) = 0.6, var 0: 0.2 is kept
    assert first.action == "keep" and first.scale == 1.0
    ema = 0.99 * 0.6 + 0.01 * 0.2
    assert clip.ema == pytest.approx(ema) and clip.var == pytest.approx(0.01 * (ema - 0.2) ** 2)
    before = clip.state_dict()
    threshold = clip.ema + 3 * math.sqrt(clip.var)
    spike = clip.decide(2.0)                           # above the threshold, below the extreme bound 5.0
    assert spike.action == "clip" and spike.scale == pytest.approx(threshold / 2.0) and spike.scale < 1
    assert {k: before[k] for k in ("ema", "var")} == {k: clip.state_dict()[k] for k in ("ema", "var")}
    assert clip.decide(6.0).action == "skip"           # above max(ema + 5 sd, 5)
    assert AdaptiveGradClip(on_extreme="clip", ema=0.5, started=True).decide(50.0).scale == pytest.approx(0.01)
    assert clip.counts == {"kept": 1, "clipped": 1, "extreme": 1}
    again = AdaptiveGradClip()
    again.load_state_dict(clip.state_dict())
    assert again.decide(2.0).scale == pytest.approx(threshold / 2.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip.decide(float("nan"))
    with pytest.raises(ValueError, match="on_extreme"):
        AdaptiveGradClip(on_extreme="ignore")


def test_rank_outlier_drop_rule_by_hand():
    """The v1.3 per-rank rule: drop rank i when gn_i - ema > 3 sqrt(var); survivors x N/M; statistics from the
    largest kept norm, taken in only on commit (an applied step); non-finite norms are outliers."""
    from mindspeed_mm.osp.training.clipping import RankOutlierDrop

    drop = RankOutlierDrop()
    first = drop.decide([1.0, 2.0])                  # start: ema = 3 x 2, var = 0 -> nothing dropped
    assert (first.dropped, first.scale, first.threshold) == ([], 1.0, 6.0) and not drop.started
    drop.commit()
    ema = 0.99 * 6.0 + 0.01 * 2.0
    var = 0.01 * (ema - 2.0) ** 2
    assert drop.started and (drop.ema, drop.var) == pytest.approx((ema, var), rel=1e-12)
    bound = 3 * math.sqrt(var)
    spike = drop.decide([1.0, ema + bound * 1.01, float("nan"), ema + bound * 0.99])
    assert spike.dropped == [1, 2] and spike.scale == 2.0 and spike.threshold == pytest.approx(ema + bound)
    assert (drop.ema, drop.var) == pytest.approx((ema, var), rel=1e-12)     # not before commit
    drop.commit()
    m = ema + bound * 0.99                            # the largest kept norm, not the dropped spike
    ema2 = 0.99 * ema + 0.01 * m
    assert (drop.ema, drop.var) == pytest.approx((ema2, 0.99 * var + 0.01 * (ema2 - m) ** 2), rel=1e-12)
    assert drop.counts == {"steps_with_drops": 1, "ranks_dropped": 2, "all_dropped": 0}
    state = drop.state_dict()
    every = drop.decide([100.0, 200.0])
    assert every.all_dropped and every.scale == 0.0
    drop.note_all_dropped()
    drop.commit()                                     # nothing pending: the statistics stay
    assert (drop.ema, drop.var) == (state["ema"], state["var"]) and drop.counts["all_dropped"] == 1
    again = RankOutlierDrop()
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_first_step_starts_at_most_max_init():
    clip = AdaptiveGradClip()
    decision = clip.decide(3.0)                        # ema starts at min(9, 1) = 1: clipped to 1
    assert decision.action == "clip" and decision.scale == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------------- objectives
def test_masked_mean_is_one_mean_over_the_batch():
    pred, target = torch.zeros(2, 1, 1, 1, 2), torch.tensor([[1.0, 1.0], [3.0, 3.0]]).view(2, 1, 1, 1, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    # sum(err * mask) / sum(mask) = (1 + 1 + 9) / 3, not the mean of per-sample means (1 + 9) / 2
    assert float(masked_mean_loss(pred, target, mask)) == pytest.approx(11 / 3)
    assert float(masked_mean_loss(pred, target, mask, torch.tensor([2.0, 0.5]))) == pytest.approx((4 + 4.5) / 3)
    assert float(masked_mean_loss(pred, target)) == pytest.approx(5.0)


def test_dynamic_shift_counts_tokens_as_the_official_trainer():
    # (9 * 16) // 4 = 36 tokens, where (9 // 2) * (16 // 2) would give 32
    k = (1.15 - 0.5) / (4096 - 256)
    assert dynamic_shift(9, 16) == pytest.approx(math.exp(0.5 + (36 - 256) * k))


def test_noise_does_not_depend_on_how_the_batch_is_cut():
    latents = torch.zeros(4, 2, 1, 2, 2)
    whole, _ = per_sample_noise(latents, seed=3, step=7, first_index=0)
    halves = [per_sample_noise(latents[:2], 3, 7, 0)[0], per_sample_noise(latents[2:], 3, 7, 2)[0]]
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole, per_sample_noise(latents, 3, 8, 0)[0])


def test_tasks_build_the_official_inputs():
    latents, text = torch.randn(2, 8, 1, 4, 4), torch.randn(2, 5, 24)
    mask, pooled = torch.ones(2, 5), torch.randn(2, 20)
    inputs, loss = FlowMatchingTask(FlowMatchingObjective()).prepare(latents, text, mask, pooled, seed=0, step=0,
                                                                    first_index=0)
    sigma = inputs["timestep"] / 1000
    noise = (inputs["hidden_states"] - (1 - sigma.view(-1, 1, 1, 1, 1)) * latents) / sigma.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(loss["target"], noise - latents, rtol=0, atol=1e-4)
    assert float(loss_fn(loss["target"], loss)) == 0.0
    inputs, loss = VPredictionTask(VPredictionObjective()).prepare(latents, text, mask, seed=0, step=0,
                                                                  first_index=0, dp_rank=3, dp_size=4,
                                                                  condition=torch.zeros(2, 12, 1, 4, 4))
    assert inputs["hidden_states"].shape[1] == 8 + 12
    assert bool(((inputs["timestep"] >= 749) & (inputs["timestep"] <= 999)).all())   # rank 3 of 4's stratum
    assert set(loss) == {"target", "loss_weight"}


# ---------------------------------------------------------------------------------------------------- engine
@pytest.fixture(scope="module")
def engine():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    parallel.initialize()
    yield
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def _model():
    torch.manual_seed(0)
    model = SUVDiT.from_preset("osp15_suv_tiny", device="cpu")
    with torch.no_grad():   # the zero-initialised output layers would leave most gradients at exactly zero
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    return model


def _batch(step: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(100 + step)
    latents = torch.randn(2, 8, 1, 4, 4, generator=g) * scale
    text, pooled = torch.randn(2, 5, 24, generator=g), torch.randn(2, 20, generator=g)
    return FlowMatchingTask(FlowMatchingObjective()).prepare(latents, text, torch.ones(2, 5), pooled, seed=0,
                                                             step=step, first_index=0)


def _build(lr=1e-3):
    pmodel = parallel.parallelize(_model())
    return pmodel, parallel.make_optimizer(pmodel, lr=lr, weight_decay=0.01, eps=1e-8)


def _main_weights(pmodel):
    return {k: v.clone() for k, v in parallel.full_state_dict(pmodel).items()}


def test_wsd_schedule_warms_up_holds_the_rate_then_decays_to_min_lr(engine):
    """lr_decay_style="WSD" (megatron's warm-up / stable / decay): the rate of scheduler step s is the warm-up's
    s / 2, the peak until lr_decay_steps - lr_wsd_decay_steps = 6, then linear down to min_lr at step 10 and after."""
    pmodel = parallel.parallelize(_model())
    with pytest.raises(ValueError, match="needs lr_wsd_decay_steps in"):
        parallel.make_optimizer(pmodel, lr=1e-3, lr_warmup_steps=2, lr_decay_steps=10, lr_decay_style="WSD")
    optimizer = parallel.make_optimizer(pmodel, lr=1e-3, lr_warmup_steps=2, lr_decay_steps=10, lr_decay_style="WSD",
                                        min_lr=1e-4, lr_wsd_decay_steps=4, lr_wsd_decay_style="linear")
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.param_scheduler.step(1)
    decay = [1e-4 + 9e-4 * c for c in (0.75, 0.5, 0.25, 0.0)]
    assert rates == pytest.approx([0.0, 5e-4] + [1e-3] * 5 + decay + [1e-4], rel=1e-12)


def test_planted_spike_is_clipped_to_the_threshold(engine):
    pmodel, optimizer = _build()
    clip = AdaptiveGradClip(max_init=1e3, extreme_floor=1e6)   # first ema = 3 gn: the warm-up steps are kept
    for step in range(3):
        inputs, loss = _batch(step)
        result = training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=clip)
        assert result.action == "keep" and result.applied
    stats = clip.state_dict()
    threshold = clip.threshold()
    inputs, loss = _batch(3)
    loss["target"] = loss["target"] * 100            # the spike: a far larger gradient
    result = training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=clip)
    assert result.grad_norm > 10 * threshold
    assert result.action == "clip" and result.applied
    # the gradients that the optimizer applied have the threshold's norm, measured after scaling
    assert result.threshold == threshold and result.clipped_norm == pytest.approx(threshold, rel=1e-4)
    assert (clip.ema, clip.var) == (stats["ema"], stats["var"])


def test_non_finite_step_changes_nothing(engine):
    pmodel, optimizer = _build()
    ema, clip = ShardedEMA(pmodel, optimizer, decay=0.9), AdaptiveGradClip()
    inputs, loss = _batch(0)
    assert training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=clip, ema=ema).applied
    weights, ema_state, clip_state = _main_weights(pmodel), copy.deepcopy(ema.shadow), clip.state_dict()
    lr_steps = optimizer.param_scheduler.num_steps
    guard = NonFiniteGuard(max_consecutive=2)
    inputs, loss = _batch(1)
    loss["target"][0, 0, 0, 0, 0] = float("nan")     # a planted NaN
    result = training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=clip, ema=ema)
    assert not result.applied and result.action == "skip: non-finite loss"
    guard.observe(result, 1)
    after = _main_weights(pmodel)
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert all(torch.equal(a, b) for a, b in zip(ema_state, ema.shadow)) and ema.num_updates == 1
    assert clip.state_dict() == clip_state and optimizer.param_scheduler.num_steps == lr_steps
    inputs, loss = _batch(2)                          # a good step afterwards trains normally
    good = training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=clip, ema=ema)
    assert good.applied and ema.num_updates == 2
    assert not torch.equal(weights["proj_out.weight"], _main_weights(pmodel)["proj_out.weight"])
    guard.observe(good, 2)                            # resets the count in a row
    guard.observe(result, 3)
    with pytest.raises(TrainingStopped, match="2 steps in a row were skipped"):
        guard.observe(result, 4)
    assert guard.total == 3


def test_sharded_ema_follows_its_formula_and_survives_a_checkpoint(engine, tmp_path):
    pmodel, optimizer = _build()
    ema = ShardedEMA(pmodel, optimizer, decay=0.5, warmup="v1.5")
    expected = {k: v.float() for k, v in _main_weights(pmodel).items()}
    for step in range(3):
        inputs, loss = _batch(step)
        training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=1.0, ema=ema)
        d = min(0.5, (2 + step) / (11 + step))        # update k = step + 1 uses (1 + k) / (10 + k)
        now = _main_weights(pmodel)
        expected = {k: d * expected[k] + (1 - d) * now[k].float() for k in expected}
    got = parallel.full_state_dict(pmodel, local=ema.local_tensors())
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) < 1e-6
    assert max((got[k] - now[k]).abs().max().item() for k in expected) > 1e-4   # the EMA is not the weights

    parallel.save_checkpoint(pmodel, optimizer, str(tmp_path), 3, extra={"ema": ema.state_dict()},
                             tensors={"ema": ema.local_tensors()})
    pmodel2, optimizer2 = _build()
    ema2 = ShardedEMA(pmodel2, optimizer2, decay=0.5, warmup="v1.5")
    resumed = parallel.load_checkpoint(pmodel2, optimizer2, str(tmp_path), tensor_groups=("ema",))
    ema2.load_local_tensors(resumed.tensors["ema"])
    ema2.load_state_dict(resumed.extra["ema"])
    assert ema2.num_updates == 3
    back = parallel.full_state_dict(pmodel2, local=ema2.local_tensors())
    assert all(torch.equal(back[k], got[k]) for k in got)
    with pytest.raises(ValueError, match="decay"):
        ShardedEMA(pmodel2, optimizer2, decay=0.9).load_state_dict(resumed.extra["ema"])
    with pytest.raises(ValueError, match="max gradient norm > 0"):
        training_step(pmodel2, optimizer2, loss_fn, inputs, loss, clip=-1.0)
    with pytest.raises(KeyError, match="no clip tensors"):
        parallel.load_checkpoint(pmodel2, optimizer2, str(tmp_path), tensor_groups=("clip",))


def _torch_adams(optimizer):
    return [inner.optimizer for inner in getattr(optimizer, "chained_optimizers", [optimizer])]


def test_cpu_adam_runs_fused_and_updates_like_the_per_parameter_loop(engine, tmp_path):
    """On CPU the engine's torch AdamW uses the fused kernel, also after a resume; its weights follow torch's
    per-parameter update within float rounding."""
    runs = {}
    for fused in (True, False):
        pmodel, optimizer = _build()
        groups = [g for adam in _torch_adams(optimizer) for g in adam.param_groups]
        assert groups and all(g["fused"] and not g["foreach"] for g in groups)
        if not fused:
            for g in groups:
                g["fused"], g["foreach"] = False, False
        for step in range(3):
            inputs, loss = _batch(step)
            assert training_step(pmodel, optimizer, loss_fn, inputs, loss, clip=1.0).applied
        runs[fused] = (_main_weights(pmodel), pmodel, optimizer)
    fused_w, plain_w = runs[True][0], runs[False][0]
    assert max((fused_w[k] - plain_w[k]).abs().max().item() for k in fused_w) < 1e-6

    _, pmodel, optimizer = runs[False]   # saved by a run on the per-parameter loop
    parallel.save_checkpoint(pmodel, optimizer, str(tmp_path), 3)
    pmodel2, optimizer2 = _build()
    parallel.load_checkpoint(pmodel2, optimizer2, str(tmp_path))
    assert all(g["fused"] for adam in _torch_adams(optimizer2) for g in adam.param_groups)


def test_cpu_grad_norm_and_scaling_match_megatrons_local_fallbacks(engine):
    """On CPU megatron's clip_grads runs the adaptor's foreach norm and scaling, which agree with megatron's own
    per-parameter fallbacks (the ones it uses without apex / Transformer Engine)."""
    from megatron.core import utils
    from megatron.core.optimizer import clip_grads

    from mindspeed_mm.osp.parallel.cpu_adaptor import foreach_l2_norm, foreach_scale

    assert clip_grads.l2_norm_impl is foreach_l2_norm and clip_grads.multi_tensor_scale_impl is foreach_scale
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=g) for shape in [(3, 5), (7,), (1,), (4, 2, 2)]]
    mine, _ = foreach_l2_norm(2048, None, [grads], False)
    megatrons, _ = utils.local_multi_tensor_l2_norm(2048, None, [grads], False)
    assert mine.shape == megatrons.shape == (1,) and mine.dtype == torch.float32
    torch.testing.assert_close(mine, megatrons.to(mine.device), rtol=1e-6, atol=0)
    assert float(foreach_l2_norm(2048, None, [[]], False)[0]) == 0.0
    in_place, expected = [t.clone() for t in grads], [t * 0.25 for t in grads]
    foreach_scale(2048, None, [in_place, in_place], 0.25)
    targets = [torch.zeros_like(t, dtype=torch.float64) for t in grads]
    foreach_scale(2048, None, [grads, targets], 0.25)
    for a, b, c in zip(in_place, targets, expected):
        assert torch.equal(a, c) and torch.equal(b, c.double())


def test_tensor_parallel_1_linears_equal_megatrons_path(engine):
    """At tensor parallel 1 the engine's linears are plain matmuls; megatron's autograd path gives the same loss
    and gradients."""
    from mindspeed_mm.osp.parallel.layers import ColumnLinear, ConditioningLinear, RowLinear
    from mindspeed_mm.osp.parallel.train import forward_backward

    pmodel, optimizer = _build()
    layers = [m for m in pmodel.modules() if isinstance(m, (ColumnLinear, RowLinear, ConditioningLinear))]
    assert {type(m) for m in layers} == {ColumnLinear, RowLinear, ConditioningLinear}
    assert all(m.single_rank for m in layers)
    inputs, loss_inputs = _batch(0)
    runs = []
    for single_rank in (True, False):
        for m in layers:
            m.single_rank = single_rank
        loss = forward_backward(pmodel, optimizer, loss_fn, 1, loss_inputs, **inputs)
        runs.append((loss, {n: p.main_grad.clone() for n, p in pmodel.named_parameters()}))
    (loss_fast, g_fast), (loss_megatron, g_megatron) = runs
    assert loss_fast == pytest.approx(loss_megatron, rel=1e-6)
    assert any(g.abs().sum() > 0 for g in g_fast.values())
    for name in g_fast:
        torch.testing.assert_close(g_fast[name], g_megatron[name], rtol=1e-4, atol=1e-7)
