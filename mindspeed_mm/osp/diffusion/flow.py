"""v1.5 flow matching: x_sigma = sigma * noise + (1 - sigma) * x0, the model predicts v = noise - x0.

Sampling uses Euler steps on sigma = linspace(1, 0, steps + 1) with a static shift (7 for v1.5); training draws
sigma from a logit-normal and applies a resolution-dependent ("dynamic") shift.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

# Dynamic shift: log(shift) is linear in the number of spatial tokens per frame, through (256, 0.5) and (4096, 1.15).
_BASE_TOKENS, _MAX_TOKENS, _BASE_LOG_SHIFT, _MAX_LOG_SHIFT = 256, 4096, 0.5, 1.15


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma' = shift * sigma / (1 + (shift - 1) * sigma); shift 1 is the identity."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dynamic_shift(latent_height: int, latent_width: int, patch: int = 2) -> float:
    """exp(L * k + b) with L = spatial tokens per latent frame, (h * w) // patch^2 as the official trainer counts
    them (288x512 video -> 1.740, 576x1024 -> 2.332)."""
    tokens = (latent_height * latent_width) // (patch * patch)
    k = (_MAX_LOG_SHIFT - _BASE_LOG_SHIFT) / (_MAX_TOKENS - _BASE_TOKENS)
    b = _BASE_LOG_SHIFT - _BASE_TOKENS * k
    return math.exp(tokens * k + b)


@dataclass
class FlowMatchEulerSampler:
    """Euler sampler for flow matching with a static sigma shift; timesteps given to the model are sigma * 1000.

    Same calling convention as the diffusers schedulers the v1.3 pipeline uses (`set_timesteps`, `timesteps`,
    `init_noise_sigma`, `scale_model_input`, `step`), so one denoising loop serves both model versions.
    """

    shift: float = 7.0
    num_train_timesteps: int = 1000

    def __post_init__(self):
        self.sigmas = torch.empty(0)
        self.timesteps = torch.empty(0)
        self.init_noise_sigma = 1.0

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        sigmas = shift_sigmas(torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float64), self.shift)
        self.sigmas = sigmas.to(torch.float32).to(device)
        self.timesteps = self.sigmas[:-1] * self.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def _index(self, timestep) -> int:
        hits = (self.timesteps == torch.as_tensor(timestep, dtype=self.timesteps.dtype, device=self.timesteps.device)).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in this sampler's schedule (call set_timesteps first)")
        return int(hits[0])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None) -> torch.Tensor:
        """x <- x + (sigma_next - sigma) * v, computed in float32 and cast back to the sample's dtype."""
        i = self._index(timestep)
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return (sample.float() + dt * model_output.float()).to(sample.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return sigma * noise + (1 - sigma) * x0

    # diffusers-style folder I/O: scheduler/scheduler_config.json
    def save_pretrained(self, folder) -> None:
        from mindspeed_mm.osp.files import replace_file

        payload = {"_class_name": type(self).__name__, **asdict(self)}
        replace_file(Path(folder) / "scheduler_config.json",
                     lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))

    @classmethod
    def from_pretrained(cls, folder) -> "FlowMatchEulerSampler":
        config = json.loads((Path(folder) / "scheduler_config.json").read_text())
        config.pop("_class_name", None)
        return cls(**config)


@dataclass
class FlowMatchingObjective:
    """v1.5 training: logit-normal sigma (mean 0, std 1), dynamic shift by resolution, target noise - x0, weight 1."""

    logit_mean: float = 0.0
    logit_std: float = 1.0
    use_dynamic_shift: bool = True
    patch: int = 2

    def sample_sigmas(self, batch: int, latent_height: int, latent_width: int,
                      generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        u = torch.randn(batch, generator=generator, device=device) * self.logit_std + self.logit_mean
        sigmas = torch.sigmoid(u)
        if self.use_dynamic_shift:
            sigmas = shift_sigmas(sigmas, dynamic_shift(latent_height, latent_width, self.patch))
        return sigmas

    @staticmethod
    def noisy_input(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        s = sigmas.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return s * noise + (1 - s) * x0

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    @staticmethod
    def model_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
        return sigmas * 1000

    def loss(self, pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
             mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MSE against noise - x0, one masked mean over the batch; `mask` (B, T, H, W), 1 = valid position."""
        from .vpred import masked_mean_loss

        return masked_mean_loss(pred, self.target(x0, noise), mask)
