"""A deterministic moving-pattern clip for demos and tests (no files, no downloads)."""
from __future__ import annotations

import math

import torch


def moving_pattern(num_frames: int = 17, height: int = 64, width: int = 64) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` RGB: drifting colour waves plus a soft disc moving across the frame."""
    t = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1)
    phase = 2 * math.pi * t / max(num_frames, 1)
    r = 0.5 + 0.35 * torch.sin(2 * math.pi * (x + y) + phase)
    g = 0.5 + 0.35 * torch.cos(2 * math.pi * (2 * x - y) - phase)
    b = 0.5 + 0.35 * torch.sin(2 * math.pi * (3 * y - x) + 2 * phase)
    cx = 0.2 + 0.6 * t / max(num_frames - 1, 1)
    cy = 0.5 + 0.25 * torch.sin(phase)
    disc = torch.sigmoid((0.15 - torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)) * 60)
    rgb = torch.stack([r, g, b], dim=-1) * (1 - disc.unsqueeze(-1)) + disc.unsqueeze(-1) * 0.95
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)
