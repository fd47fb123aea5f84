"""Diagonal Gaussian posterior of the WF-VAE encoder."""
from __future__ import annotations

from typing import Optional

import torch


class DiagonalGaussian:
    """`moments` = concat(mean, logvar) on the channel axis; logvar is clamped to [-30, 20].

    `original_size` is the (T, H, W) of the encoded video before any padding (pass it to `decode(output_size=)`).
    """

    def __init__(self, moments: torch.Tensor, original_size: Optional[tuple[int, int, int]] = None):
        self.moments = moments
        self.original_size = original_size
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL divergence to N(0, I), summed over all but the batch axis."""
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=list(range(1, self.mean.dim())))
