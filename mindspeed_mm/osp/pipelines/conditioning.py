"""Image-to-video conditioning of the v1.3 inpainting DiT (spec dit.md section 5).

The DiT input is `[noisy latent (C) | VAE latent of the masked video (C) | compressed mask (temporal_factor)]`.
Pixel mask: 1 = frame to generate, 0 = frame given. As in the official inference pipeline, frames to generate are
black (-1 in [-1, 1]) in the video that is VAE-encoded.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F


def masked_video_and_mask(frames: Dict[int, torch.Tensor], num_frames: int, height: int, width: int):
    """Place given frames ((3, H, W) in [-1, 1], keyed by index, negative = from the end) on a black clip.

    Returns video (1, 3, F, H, W) and pixel mask (1, 1, F, H, W) with 1 = to generate.
    """
    if not frames:
        raise ValueError("image-to-video needs at least one conditioning frame")
    video = torch.full((1, 3, num_frames, height, width), -1.0)
    mask = torch.ones(1, 1, num_frames, height, width)
    for index, image in frames.items():
        i = index + num_frames if index < 0 else index
        if not 0 <= i < num_frames:
            raise ValueError(f"conditioning frame index {index} is outside a {num_frames}-frame video")
        if tuple(image.shape) != (3, height, width):
            raise ValueError(f"conditioning frame {index} has shape {tuple(image.shape)}, expected (3, {height}, {width})")
        video[0, :, i] = image.float()
        mask[0, :, i] = 0
    return video, mask


def compress_mask(mask: torch.Tensor, temporal_factor: int, spatial_factor: int = 8) -> torch.Tensor:
    """(B, 1, F, H, W) pixel mask -> (B, temporal_factor, T_lat, H/s, W/s), as the official MaskCompressor.

    Bilinear resize per frame; for an odd frame count the first frame is repeated temporal_factor times (the
    causal VAE's convention), then groups of temporal_factor frames become channels.
    """
    b, _, f, h, w = mask.shape
    small = F.interpolate(mask.transpose(1, 2).reshape(b * f, 1, h, w).float(),
                          size=(h // spatial_factor, w // spatial_factor), mode="bilinear", align_corners=False)
    small = small.reshape(b, f, 1, h // spatial_factor, w // spatial_factor).transpose(1, 2)
    if f % 2 == 1:
        small = torch.cat([small[:, :, :1].repeat(1, 1, temporal_factor - 1, 1, 1), small], dim=2)
    t_lat = small.shape[2] // temporal_factor
    small = small.reshape(b, t_lat, temporal_factor, *small.shape[-2:])
    return small.transpose(1, 2).contiguous()
