"""WF-VAE building blocks. Attribute names equal the official state-dict names."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mindspeed_mm.osp.ops.attention import attention
from mindspeed_mm.osp.vae.causal_conv import CausalConv3d, FrameConv2d, per_frame


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, ...) tensors (official `Normalize(..., "layernorm")`).

    The output is contiguous in (B, C, ...) order, so the direct convolution after it needs no copy of its own.
    With `keep_channels_last` (set with the WF-VAE's CPU fast path) float32 CPU inference returns the
    channels-last result as a (B, C, ...) view instead: the Winograd convolution reads channels-last, so the
    transposing copy back is skipped (a direct convolution after it makes that copy itself)."""

    keep_channels_last = False

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x.movedim(1, -1)).movedim(-1, 1)
        if (self.keep_channels_last and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_grad_enabled()):
            return y
        return y.contiguous()


def silu_(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a fresh intermediate; in place at inference (one activation less held)."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _residual(shortcut: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """shortcut + h; at inference written into h (a fresh intermediate) instead of a new tensor."""
    return shortcut + h if torch.is_grad_enabled() else h.add_(shortcut)


class ResnetBlock2D(nn.Module):
    """Per-frame residual block: norm, SiLU, 3x3 conv, twice; 1x1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(in_channels)
        self.conv1 = FrameConv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm(out_channels)
        self.conv2 = FrameConv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = FrameConv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One expression, so conv1's output is freed once norm2 has read it (not held through conv2).
        h = self.conv2(silu_(self.norm2(self.conv1(silu_(self.norm1(x))))))
        return _residual(self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x, h)


class ResnetBlock3D(nn.Module):
    """Residual block with causal 3x3x3 convs; causal 1x1x1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One expression, so conv1's output is freed once norm2 has read it (not held through conv2).
        h = self.conv2(silu_(self.norm2(self.conv1(silu_(self.norm1(x))))))
        return _residual(self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x, h)


class AttnBlock3DFix(nn.Module):
    """Single-head self-attention over the pixels of each frame (scale 1/sqrt(C)), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if t == 0:
            return x
        y = self.norm(x)

        def tokens(z: torch.Tensor) -> torch.Tensor:  # (b*t, h*w, c)
            return z.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)

        out = attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)), layout="BSH", heads=1)
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Per-frame 2x spatial downsampling: zero pad right/bottom by 1, 3x3 conv stride 2. Keys `conv.*` (4-D)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Spatial2xTime2x3DDownsample(nn.Module):
    """2x down in time (causal) and space: zero pad right/bottom by 1, causal 3x3x3 conv stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Per-frame 2x nearest spatial upsampling followed by a 3x3 conv. Keys `conv.*` (4-D). Under the CPU fast
    path the upsampling runs on the 5-D tensor with a time factor of 1 (the same values, no transposing copy)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, flush: bool = True) -> torch.Tensor:
        if self.conv.fast_conv:
            return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
        return self.conv(per_frame(lambda f: F.interpolate(f, scale_factor=2.0, mode="nearest"), x))


class Spatial2xTime2x3DUpsample(nn.Module):
    """2x up in time and space, then a causal 3x3x3 conv: T -> 2T - 1.

    Frame 0 is only upsampled in space; frames 1.. are interpolated in time as their own sequence (half-pixel
    linear, or nearest), then bilinearly in space. Linear interpolation needs the next frame, so in streaming use
    the last frame seen is held back and its trailing output frame is emitted by the call with `flush=True`.
    """

    def __init__(self, channels: int, t_interpolation: str = "trilinear"):
        super().__init__()
        if t_interpolation not in ("trilinear", "nearest"):
            raise ValueError(f"t_interpolation must be 'trilinear' or 'nearest', got {t_interpolation!r}")
        self.t_interpolation = t_interpolation
        self.conv = CausalConv3d(channels, channels, 3, padding=1)
        self._started = False
        self._last = None  # last frame of the interpolated sequence (frames 1..), not yet fully used

    def reset_stream(self) -> None:
        self._started, self._last = False, None

    def _time_up(self, x: torch.Tensor, flush: bool) -> torch.Tensor:
        out = []
        if not self._started and x.shape[2]:
            out.append(x[:, :, :1])  # frame 0: spatial only
            x = x[:, :, 1:]
            self._started = True
        if self.t_interpolation == "nearest":
            if x.shape[2]:
                out.append(x.repeat_interleave(2, dim=2))
        else:
            if self._last is None and x.shape[2]:
                out.append(x[:, :, :1])  # first frame of the sequence is copied (half-pixel edge)
            seq = x if self._last is None else torch.cat([self._last, x], dim=2)
            if seq.shape[2] >= 2:
                a, b = seq[:, :, :-1], seq[:, :, 1:]
                pairs = torch.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], dim=3)
                out.append(pairs.flatten(2, 3))
            self._last = seq[:, :, -1:].clone() if seq.shape[2] else None
            if flush and self._last is not None:
                out.append(self._last)  # last frame of the sequence is copied (half-pixel edge)
                self._last = None
        if not out:
            return x[:, :, :0]
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]

    def forward(self, x: torch.Tensor, flush: bool = True) -> torch.Tensor:
        x = self._time_up(x, flush)
        if x.shape[2]:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="trilinear")
        else:
            x = x.new_zeros(*x.shape[:3], 2 * x.shape[3], 2 * x.shape[4])
        return self.conv(x)
