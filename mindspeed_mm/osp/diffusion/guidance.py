"""Classifier-free guidance with the standard-deviation rescale of Lin et al. (2023), as in diffusers."""
from __future__ import annotations

import torch


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend `guided` with a copy rescaled to the per-sample std of `cond` (rescale 0 returns `guided`)."""
    if rescale == 0:
        return guided
    dims = list(range(1, guided.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return rescale * rescaled + (1 - rescale) * guided


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """uncond + scale * (cond - uncond), then the optional std rescale."""
    guided = uncond + scale * (cond - uncond)
    return rescale_guidance(guided, cond, rescale)
