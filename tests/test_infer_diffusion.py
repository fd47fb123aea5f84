"""Samplers and objectives against diffusers and the spec's formulas (dit.md section 4)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.diffusion import (
    FlowMatchEulerSampler,
    FlowMatchingObjective,
    VPredictionObjective,
    classifier_free_guidance,
    dynamic_shift,
    load_sampler,
    shift_sigmas,
    uniform_timesteps_for_rank,
    v13_sampler,
)


def _toy_model(x, t):
    return torch.tanh(x) * (1 + float(t) / 1000)


def test_v13_sampler_matches_a_direct_diffusers_instance_step_by_step():
    from diffusers import EulerAncestralDiscreteScheduler

    ours = v13_sampler()
    ref = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                          prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                          timestep_spacing="trailing")
    assert ours.config.prediction_type == "v_prediction" and ours.config.timestep_spacing == "trailing"
    for s in (ours, ref):
        s.set_timesteps(10)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert float(ours.timesteps[0]) == 999.0  # trailing spacing starts at the zero-SNR end
    x0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    xa, xb = x0 * ours.init_noise_sigma, x0 * ref.init_noise_sigma
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for t in ours.timesteps:
        xa = ours.step(_toy_model(ours.scale_model_input(xa, t), t), t, xa, generator=ga).prev_sample
        xb = ref.step(_toy_model(ref.scale_model_input(xb, t), t), t, xb, generator=gb).prev_sample
        assert torch.equal(xa, xb)


def test_v13_sampler_differs_from_leading_spacing():
    """Negative control: the official config is not diffusers' default spacing."""
    from diffusers import EulerAncestralDiscreteScheduler

    leading = EulerAncestralDiscreteScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    leading.set_timesteps(10)
    ours = v13_sampler()
    ours.set_timesteps(10)
    assert not torch.equal(leading.timesteps, ours.timesteps)


def test_flow_sampler_schedule_is_shifted_linspace():
    s = FlowMatchEulerSampler(shift=7.0)
    s.set_timesteps(4)
    base = np.linspace(1, 0, 5)
    expect = 7 * base / (1 + 6 * base)
    np.testing.assert_allclose(s.sigmas.numpy(), expect, rtol=0, atol=1e-7)
    np.testing.assert_allclose(s.timesteps.numpy(), expect[:-1] * 1000, rtol=1e-6)


def test_flow_sampler_matches_diffusers_with_explicit_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps = 8
    ours = FlowMatchEulerSampler(shift=7.0)
    ours.set_timesteps(steps)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0)
    ref.set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1].tolist())
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=1e-3)
    xa = xb = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for ta, tb in zip(ours.timesteps, ref.timesteps):
        xa = ours.step(_toy_model(xa, ta), ta, xa)
        xb = ref.step(_toy_model(xb, tb), tb, xb).prev_sample
    torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


def test_diffusers_default_flow_schedule_differs_as_documented():
    """diffusers' own spacing is linspace(1, shift(1/1000), steps) before the shift, not linspace(1, 0, steps + 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=7.0)
    ref.set_timesteps(8)
    ours = FlowMatchEulerSampler(shift=7.0)
    ours.set_timesteps(8)
    sigma_min = shift_sigmas(torch.tensor(1e-3, dtype=torch.float64), 7.0)
    assert abs(float(ref.sigmas[-2]) - float(shift_sigmas(sigma_min, 7.0))) < 1e-6
    assert abs(float(ours.sigmas[-2]) - float(shift_sigmas(torch.tensor(1 / 8), 7.0))) < 1e-6


def test_flow_euler_with_exact_velocity_recovers_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    s = FlowMatchEulerSampler(shift=7.0)
    s.set_timesteps(5)
    x = noise.clone()
    for t in s.timesteps:
        x = s.step(noise - x0, t, x)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-5)


def test_flow_sampler_round_trips_through_a_folder(tmp_path):
    FlowMatchEulerSampler(shift=3.5).save_pretrained(tmp_path / "scheduler")
    loaded = load_sampler(tmp_path / "scheduler")
    assert isinstance(loaded, FlowMatchEulerSampler) and loaded.shift == 3.5
    v13_sampler().save_pretrained(tmp_path / "s13")
    s13 = load_sampler(tmp_path / "s13")
    assert s13.config.timestep_spacing == "trailing" and s13.config.rescale_betas_zero_snr


def test_guidance_rescale_matches_diffusers():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    ours = classifier_free_guidance(u, c, 7.0, rescale=0.7)
    guided = u + 7.0 * (c - u)
    torch.testing.assert_close(ours, rescale_noise_cfg(guided, c, guidance_rescale=0.7), rtol=0, atol=1e-6)
    assert torch.equal(classifier_free_guidance(u, c, 7.0, rescale=0.0), guided)


@pytest.mark.parametrize("height,width,expect", [(288, 512, 1.740), (576, 1024, 2.332)])
def test_dynamic_shift_numbers_from_the_spec(height, width, expect):
    assert round(dynamic_shift(height // 8, width // 8), 3) == expect


def test_flow_objective_target_and_sigmas():
    obj = FlowMatchingObjective()
    g = torch.Generator().manual_seed(0)
    sig = obj.sample_sigmas(4096, 36, 64, generator=g)
    assert 0 < float(sig.min()) and float(sig.max()) < 1
    # median of sigmoid(N(0,1)) is 0.5, shifted by 1.740 -> 1.74*0.5/(1+0.74*0.5)
    assert abs(float(sig.median()) - 1.740 * 0.5 / (1 + 0.740 * 0.5)) < 0.02
    x0, noise = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2)
    s = torch.tensor([0.25, 0.75])
    xt = obj.noisy_input(x0, noise, s)
    torch.testing.assert_close(xt[1], 0.75 * noise[1] + 0.25 * x0[1])
    assert float(obj.loss(noise - x0, x0, noise)) == 0.0
    assert float(obj.loss(torch.zeros_like(x0), x0, noise)) > 0


def test_uniform_timesteps_strata_per_rank():
    for rank in range(4):
        t = uniform_timesteps_for_rank(2000, rank, 4, generator=torch.Generator().manual_seed(rank))
        assert int(t.min()) >= max(0, 250 * rank) and int(t.max()) <= min(999, 250 * (rank + 1))
        assert int(t.max()) - int(t.min()) >= 240  # the whole stratum is covered
    with pytest.raises(ValueError, match="rank"):
        uniform_timesteps_for_rank(1, 4, 4)


def test_vprediction_target_and_min_snr_weights():
    obj = VPredictionObjective()
    abar = obj.scheduler.alphas_cumprod.double()
    assert float(abar[-1]) == 0.0  # zero terminal SNR
    t = torch.tensor([0, 500, 999])
    x0, noise = torch.randn(3, 2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2)
    a = abar[t].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(obj.target(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0, rtol=0, atol=1e-6)
    snr = abar[t] / (1 - abar[t])
    expect = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1)
    torch.testing.assert_close(obj.weights(t), expect.float())
    assert float(obj.weights(torch.tensor([999]))) == 0.0 and math.isclose(float(obj.weights(torch.tensor([0]))), 5 / (float(snr[0]) + 1), rel_tol=1e-5)
    mask = torch.ones(3, 1, 2, 2)
    mask[:, :, 1] = 0
    pred = obj.target(x0, noise, t).clone()
    pred[..., 1, :] += 100  # only masked-out positions are wrong
    assert float(obj.loss(pred, x0, noise, t, mask)) == 0.0
    assert float(obj.loss(pred, x0, noise, t)) > 0
