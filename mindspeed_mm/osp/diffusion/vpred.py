"""v1.3 objective and sampler: DDPM family, v-prediction, zero-terminal-SNR linear betas (diffusers schedulers).

Training: DDPMScheduler, target v = sqrt(abar) * noise - sqrt(1 - abar) * x0, min-SNR-5 weights, timesteps drawn
uniformly from a per-data-parallel-rank stratum. Sampling: EulerAncestralDiscreteScheduler with "trailing" spacing,
exactly as the official v1.3 sample script configures it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

V13_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
)


def v13_sampler():
    """EulerAncestralDiscreteScheduler as the official v1.3 sampler: trailing spacing follows from zero-SNR betas."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(**V13_SCHEDULER_CONFIG, timestep_spacing="trailing")


def v13_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**V13_SCHEDULER_CONFIG)


def uniform_timesteps_for_rank(batch: int, rank: int, world_size: int, num_train_timesteps: int = 1000,
                               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Explicit uniform (stratified) sampling: rank r draws from [T/n*r - 0.5, T/n*(r+1) - 0.5] and rounds.

    Rounding the upper edge can give T; it is clamped to T - 1 (the official code relies on Python rounding).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a data-parallel group of size {world_size}")
    width = num_train_timesteps / world_size
    low = width * rank - 0.5
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    t = torch.round(low + u * width).long()
    return t.clamp_(0, num_train_timesteps - 1)


def masked_mean_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                     weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One masked mean of the squared error over the whole batch, as the official trainers reduce it:
    sum(err * mask * w) / sum(mask), `mask` (B, T, H, W) with 1 = valid latent position (broadcast over channels),
    `weights` (B,) per-sample loss weights. Not a mean of per-sample means: samples with more valid positions
    weigh more. Without a mask this is the plain (weighted) mean."""
    err = (pred.float() - target.float()) ** 2
    m = torch.ones_like(err) if mask is None else mask.to(err.dtype).unsqueeze(1).expand_as(err)
    w = m if weights is None else m * weights.to(err.dtype).reshape(-1, *([1] * (err.ndim - 1)))
    return (err * w).sum() / m.sum().clamp_min(1)


@dataclass
class VPredictionObjective:
    """Training side of v1.3: noisy input, v target and min-SNR-gamma weights from a DDPMScheduler."""

    snr_gamma: float = 5.0

    def __post_init__(self):
        self.scheduler = v13_train_scheduler()
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)

    def noisy_input(self, x0, noise, timesteps):
        return self.scheduler.add_noise(x0, noise, timesteps)

    def target(self, x0, noise, timesteps):
        return self.scheduler.get_velocity(x0, noise, timesteps)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        abar = self.alphas_cumprod[timesteps.cpu()]
        return abar / (1 - abar)

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """min(SNR, gamma) / (SNR + 1): the min-SNR weight for v-prediction."""
        snr = self.snr(timesteps)
        return (snr.clamp(max=self.snr_gamma) / (snr + 1)).to(torch.float32).to(timesteps.device)

    def loss(self, pred, x0, noise, timesteps, mask=None) -> torch.Tensor:
        """min-SNR-weighted v-prediction MSE, one masked mean over the batch."""
        return masked_mean_loss(pred, self.target(x0, noise, timesteps), mask, self.weights(timesteps))
