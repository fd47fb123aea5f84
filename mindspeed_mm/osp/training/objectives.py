"""Training objectives as the engine consumes them: a batch of latents and text -> (model inputs, loss inputs),
and the loss of one micro-batch.

Noise, sigmas and timesteps of each sample are drawn from a generator seeded by (seed, step, the sample's index in
the global batch), so they do not depend on how the batch is cut over data-parallel ranks and micro-batches, nor on
the process that draws them: resumed and re-laid-out runs see the same noise. The v1.3 timesteps are the
exception the official recipe asks for: they are stratified by data-parallel rank (`uniform_timesteps_for_rank`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from mindspeed_mm.osp.diffusion.flow import FlowMatchingObjective
from mindspeed_mm.osp.diffusion.vpred import VPredictionObjective, masked_mean_loss, uniform_timesteps_for_rank


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator of one sample's training noise."""
    entropy = np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(entropy[0] >> np.uint64(1)))


def per_sample_noise(latents: torch.Tensor, seed: int, step: int, first_index: int) -> tuple[torch.Tensor, list]:
    """Gaussian noise like `latents` and the per-sample generators (to draw more per-sample values from)."""
    gens = [sample_generator(seed, step, first_index + i) for i in range(latents.shape[0])]
    noise = torch.stack([torch.randn(latents.shape[1:], generator=g, dtype=torch.float32) for g in gens])
    return noise.to(device=latents.device, dtype=latents.dtype), gens


def loss_fn(output: torch.Tensor, data: dict) -> torch.Tensor:
    """The engine's per-micro-batch loss: weighted squared error, one masked mean over the micro-batch."""
    return masked_mean_loss(output, data["target"], data.get("loss_mask"), data.get("loss_weight"))


@dataclass
class FlowMatchingTask:
    """v1.5: sigma = shift(sigmoid(N(0, 1))) with the resolution-dependent shift, x = sigma noise + (1 - sigma)
    x0, timestep 1000 sigma, target noise - x0, weight 1."""
    objective: FlowMatchingObjective

    def prepare(self, latents, text, text_mask, pooled, *, seed: int, step: int, first_index: int,
                dp_rank: int = 0, dp_size: int = 1, latent_mask=None) -> tuple[dict, dict]:
        noise, gens = per_sample_noise(latents, seed, step, first_index)
        h, w = latents.shape[-2:]
        sigmas = torch.cat([self.objective.sample_sigmas(1, h, w, generator=g) for g in gens]).to(latents.device)
        inputs = {"hidden_states": self.objective.noisy_input(latents, noise, sigmas),
                  "timestep": self.objective.model_timesteps(sigmas), "encoder_hidden_states": text,
                  "encoder_attention_mask": text_mask, "pooled_projections": pooled}
        loss = {"target": self.objective.target(latents, noise)}
        if latent_mask is not None:
            loss["loss_mask"] = latent_mask
        return inputs, loss


@dataclass
class VPredictionTask:
    """v1.3: DDPM v-prediction on zero-terminal-SNR betas, min-SNR-5 weights, timesteps stratified over the
    data-parallel ranks. I2V models get `[noisy | masked-video latent | mask]` on channels (`condition`)."""
    objective: VPredictionObjective

    def prepare(self, latents, text, text_mask, pooled=None, *, seed: int, step: int, first_index: int,
                dp_rank: int = 0, dp_size: int = 1, latent_mask=None,
                condition: Optional[torch.Tensor] = None) -> tuple[dict, dict]:
        noise, gens = per_sample_noise(latents, seed, step, first_index)
        timesteps = torch.cat([uniform_timesteps_for_rank(1, dp_rank, dp_size, generator=g) for g in gens])
        timesteps = timesteps.to(latents.device)
        noisy = self.objective.noisy_input(latents, noise, timesteps)
        if condition is not None:
            noisy = torch.cat([noisy, condition.to(noisy.dtype)], dim=1)
        inputs = {"hidden_states": noisy, "timestep": timesteps, "encoder_hidden_states": text,
                  "encoder_attention_mask": text_mask}
        loss = {"target": self.objective.target(latents, noise, timesteps),
                "loss_weight": self.objective.weights(timesteps)}
        if latent_mask is not None:
            loss["loss_mask"] = latent_mask
        return inputs, loss
