"""Input/output embeddings shared by the v1.3 and v1.5 denoisers (parameter names follow diffusers)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), float32, cos half first (diffusers Timesteps with
    flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers TimestepEmbedding)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """linear_1 -> activation -> linear_2 (diffusers PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int, act: str = "gelu_tanh"):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_1(x)
        h = F.gelu(h, approximate="tanh") if self.act == "gelu_tanh" else F.silu(h)
        return self.linear_2(h)


class PatchEmbed2D(nn.Module):
    """Per-frame Conv2d patchify: (B, C, T, H, W) -> (B, T*H/p*W/p, D), token order (t, h, w)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.proj(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, D, H', W')
        return y.flatten(2).transpose(1, 2).reshape(b, -1, y.shape[1])


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int
               ) -> torch.Tensor:
    """(B, N, pt*p*p*C) -> (B, C, T*pt, H*p, W*p) for a token grid (T, H, W)."""
    (t, h, w), (pt, ph, pw) = grid, patch
    b = x.shape[0]
    x = x.reshape(b, t, h, w, pt, ph, pw, channels)
    x = torch.einsum("nthwopqc->nctohpwq", x)
    return x.reshape(b, channels, t * pt, h * ph, w * pw)


def video_key_mask(attention_mask: torch.Tensor | None, patch: tuple[int, int, int]) -> torch.Tensor | None:
    """Latent mask (B, T, H, W), 1 = keep -> boolean key mask (B, N) over patches, True = masked.

    A patch is kept when any latent pixel in it is kept (max pooling, as the official models do)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be (B, T, H, W) with 1 = keep, got shape {tuple(attention_mask.shape)}")
    keep = F.max_pool3d(attention_mask[:, None].float(), kernel_size=patch, stride=patch)
    return keep.flatten(1) < 0.5


def text_key_mask(encoder_attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """Text mask (B, 1, L) or (B, L), 1 = keep -> boolean (B, L), True = masked."""
    if encoder_attention_mask is None:
        return None
    m = encoder_attention_mask.reshape(encoder_attention_mask.shape[0], -1)
    if m.shape != (batch, length):
        raise ValueError(f"encoder_attention_mask of shape {tuple(encoder_attention_mask.shape)} does not match "
                         f"{batch} prompts of {length} tokens; expected (B, 1, L) with 1 = keep")
    return m < 0.5
