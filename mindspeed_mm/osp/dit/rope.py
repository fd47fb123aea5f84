"""3-D rotary position embedding of the Open-Sora Plan denoisers.

head_dim is split into three chunks (t, h, w); each chunk gets 1-D rotate-half RoPE with its own axis position
(0-based patch-grid index divided by the interpolation scale): inv_freq = 1 / theta^(arange(0, d, 2) / d),
angles = pos * inv_freq, table = cat(angles, angles).

* v1.3: three equal chunks (head_dim / 3), the angle table cast to the model dtype before cos/sin.
* v1.5: chunks (head_dim//16*4, head_dim//16*6, head_dim//16*6), tables in float32.

`frame_offset` shifts the t positions: a frame-sharded (context-parallel) run sets it to the index of its first
frame so every shard uses the global positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mindspeed_mm.osp.ops.fused import rotary_half


@dataclass
class RoPE3D:
    splits: tuple[int, int, int]
    theta: float = 10000.0
    interpolation_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    angles_in_model_dtype: bool = False
    frame_offset: int = 0

    @classmethod
    def v13(cls, head_dim: int, interpolation_scale=(1.0, 1.0, 1.0)) -> "RoPE3D":
        if head_dim % 6:
            raise ValueError(f"v1.3 RoPE needs head_dim divisible by 6 (3 even chunks), got {head_dim}")
        d = head_dim // 3
        return cls((d, d, d), interpolation_scale=tuple(interpolation_scale), angles_in_model_dtype=True)

    @classmethod
    def v15(cls, head_dim: int) -> "RoPE3D":
        dt, dhw = head_dim // 16 * 4, head_dim // 16 * 6
        if dt + 2 * dhw != head_dim or dt % 2 or dhw % 2:
            raise ValueError(f"v1.5 RoPE needs head_dim divisible by 16, got {head_dim}")
        return cls((dt, dhw, dhw))

    def tables(self, grid: tuple[int, int, int], device, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per axis (cos, sin) of shape (N, 1, 1, d_axis) for the flattened (t, h, w) token grid."""
        t, h, w = grid
        tt = torch.arange(t, device=device).repeat_interleave(h * w) + self.frame_offset
        hh = torch.arange(h, device=device).repeat_interleave(w).repeat(t)
        ww = torch.arange(w, device=device).repeat(t * h)
        out = []
        for pos, d, scale in zip((tt, hh, ww), self.splits, self.interpolation_scale):
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, device=device).float() / d))
            angles = (pos.float() / scale)[:, None] * inv_freq[None]
            if self.angles_in_model_dtype:
                angles = angles.to(dtype)
            angles = torch.cat([angles, angles], dim=-1)[:, None, None]
            out.append((angles.cos(), angles.sin()))
        return out

    def apply(self, x: torch.Tensor, tables: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x: (N, B, heads, head_dim) -> same shape with RoPE applied per axis chunk."""
        parts = x.split(list(self.splits), dim=-1)
        return torch.cat([rotary_half(p, c, s) for p, (c, s) in zip(parts, tables)], dim=-1)
