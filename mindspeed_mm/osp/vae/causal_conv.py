"""Time-causal convolutions with explicit streaming state, per-frame 2-D convs, and stream alignment.

Every temporal module here processes a clip either whole or as consecutive chunks; the streaming state
(`reset_stream()` clears it) makes the chunked output identical to the whole-clip output for any chunk size.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mindspeed_mm.osp.ops import winograd


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class FastConvMixin:
    """`fast_conv = True` routes float32 CPU inference of 3x3 (stride 1, padding 1) convs through Winograd
    F(4x4, 3x3) (ops/winograd.py); everything else, and `fast_conv = False` (the default), runs the direct
    convolution, which stays the reference. The weights are transformed on each call, not cached: a cache would
    hold 4x the conv weights (2 GB for the v1.3 WF-VAE). A conv's first fast-path call moves its weight into
    `winograd.fast_layout` (same values, same size); turning the fast path off moves it back."""

    fast_conv = False

    def _winograd(self, conv: nn.modules.conv._ConvNd, segments: list) -> Optional[torch.Tensor]:
        """The fast-path output for a time-padded input given as frame segments (see winograd.winograd_conv),
        or None where the fast path does not apply."""
        frames = sum(seg.shape[2] for seg in segments)
        if not (self.fast_conv and winograd.supported(conv, segments[-1], frames)):
            return None
        if not winograd.in_fast_layout(conv.weight):
            conv.weight.data = winograd.fast_layout(conv.weight.data)
        return winograd.winograd_conv(segments, conv.weight, conv.bias)


class CausalConv3d(FastConvMixin, nn.Module):
    """Conv3d whose time axis is padded on the left with `kt - 1` copies of the first frame (no look-ahead).

    Spatial padding is zero padding as given; temporal padding of `nn.Conv3d` is always 0. In streaming use
    the not-yet-consumed input frames (at most `kt - 1 + st - 1`) are kept between calls. Keys: `conv.weight/bias`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        k, s, p = _triple(kernel_size), _triple(stride), _triple(padding)
        self.conv = nn.Conv3d(in_channels, out_channels, k, stride=s, padding=(0, p[1], p[2]), bias=bias)
        self._pending: Optional[torch.Tensor] = None

    def reset_stream(self) -> None:
        self._pending = None

    def _empty_output(self, x: torch.Tensor) -> torch.Tensor:
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = self.conv.kernel_size, self.conv.stride, self.conv.padding
        h = (x.shape[3] + 2 * ph - kh) // sh + 1
        w = (x.shape[4] + 2 * pw - kw) // sw + 1
        return x.new_zeros(x.shape[0], self.conv.out_channels, 0, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt, st = self.conv.kernel_size[0], self.conv.stride[0]
        # The padded input as segments along time: [first frame repeated kt - 1 times (a view), x] at the start
        # of a stream, [frames carried over from the previous call, x] after it.
        if self._pending is None:
            if x.shape[2] == 0:
                return self._empty_output(x)
            segments = [x[:, :, :1].expand(-1, -1, kt - 1, -1, -1), x] if kt > 1 else [x]
        else:
            segments = [self._pending, x] if self._pending.shape[2] else [x]
        n = sum(seg.shape[2] for seg in segments)
        n_out = (n - kt) // st + 1 if n >= kt else 0
        self._pending = _tail(segments, n - n_out * st)
        if n_out == 0:
            return self._empty_output(x)
        return self._conv(segments, (n_out - 1) * st + kt)

    def _conv(self, segments: list, frames: int) -> torch.Tensor:
        """The conv over the first `frames` frames of the concatenated segments."""
        fast = self._winograd(self.conv, segments) if frames == sum(s.shape[2] for s in segments) else None
        if fast is not None:
            return fast
        x = torch.cat(segments, dim=2) if len(segments) > 1 else segments[0]
        x = x[:, :, :frames]
        # PyTorch's CPU heuristic sends conv3d inputs with small B*C*T*H (short chunks, narrow layers) to an
        # im2col kernel that is several times slower and allocates a large column buffer; oneDNN is used
        # directly for float32 CPU inference instead (same result up to float rounding).
        if _plain_cpu_inference(x):
            c = self.conv
            if self.fast_conv:
                return _direct_fast(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups)
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), c.weight, c.bias, list(c.padding),
                                                     list(c.stride), list(c.dilation), c.groups)
        return self.conv(x)


def _tail(segments: list, count: int) -> torch.Tensor:
    """A copy of the last `count` frames of the time-concatenation of `segments`."""
    if count == 0:
        return segments[-1][:, :, :0].clone()
    parts, need = [], count
    for seg in reversed(segments):
        take = min(need, seg.shape[2])
        if take:
            parts.append(seg[:, :, seg.shape[2] - take:])
        need -= take
        if not need:
            break
    return torch.cat(parts[::-1], dim=2) if len(parts) > 1 else parts[0].clone()


class FrameConv2d(FastConvMixin, nn.Conv2d):
    """nn.Conv2d applied to every frame of a (B, C, T, H, W) tensor. Keys: `weight`, `bias`.

    Under the fast path, a conv that Winograd does not take runs as one oneDNN conv3d with a 1 x kh x kw kernel
    on the 5-D tensor (a 1x1 one as a GEMM, `_pointwise`): no transposing copy of the input to (B * T, C, H, W)
    frames, and a channels-last input (the fast path's LayerNorm output) stays channels-last. The result equals
    the per-frame conv2d (bit for bit through a whole v1.3 WF-VAE; tests hold it to 1e-6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.shape[2]:
            return per_frame(super().forward, x)
        fast = self._winograd(self, [x])
        if fast is None and self.fast_conv and _plain_cpu_inference(x) and isinstance(self.padding, tuple):
            return _direct_fast(x, self.weight.unsqueeze(2), self.bias, (0, *self.padding), (1, *self.stride),
                                (1, *self.dilation), self.groups)
        return per_frame(super().forward, x) if fast is None else fast


def _direct_fast(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding, stride, dilation,
                 groups: int) -> torch.Tensor:
    """The fast path's direct conv3d of (B, C, T, H, W): a channels-last input (a Winograd conv's output, the
    fast LayerNorm's) is read as it is, not copied; a 1x1x1 conv is one GEMM in the input's layout, which also
    spares oneDNN's reordered copy (at the shortcut of the decoder's widening residual block, that copy raised the
    chunked decode's memory peak)."""
    if (tuple(weight.shape[2:]) == (1, 1, 1) and tuple(stride) == (1, 1, 1) and tuple(padding) == (0, 0, 0)
            and groups == 1):
        b, c, t, h, w = x.shape
        matrix = weight.reshape(weight.shape[0], c)
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            out = x.permute(0, 2, 3, 4, 1) @ matrix.t()          # (B, T, H, W, Co), viewed channels-first below
            out = out if bias is None else out.add_(bias)
            return out.permute(0, 4, 1, 2, 3)
        out = matrix @ x.reshape(b, c, -1)
        out = out if bias is None else out.add_(bias[:, None])
        return out.view(b, -1, t, h, w)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d)):
        x = x.contiguous()
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), list(stride), list(dilation), groups)


def _plain_cpu_inference(x: torch.Tensor) -> bool:
    """Float32 CPU inference with oneDNN available: where `torch.ops.aten.mkldnn_convolution` is called directly."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available())


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 4-D (N, C, H, W) function to each frame of a 5-D (B, C, T, H, W) tensor."""
    b, c, t, h, w = x.shape
    if t == 0:
        probe = fn(x.new_zeros(1, c, h, w))
        return probe.new_zeros(b, probe.shape[1], 0, probe.shape[2], probe.shape[3])
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class FrameAligner(nn.Module):
    """Pairs two frame streams that advance at different speeds: returns the frames both sides have.

    Frames one side produced ahead of the other are kept until the other side catches up. In a whole-clip
    call both sides have the same length, so nothing is kept.
    """

    def __init__(self):
        super().__init__()
        self._pending: list[Optional[torch.Tensor]] = [None, None]

    def reset_stream(self) -> None:
        self._pending = [None, None]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        streams = []
        for i, x in enumerate((a, b)):
            if self._pending[i] is not None:
                x = torch.cat([self._pending[i], x], dim=2)
            streams.append(x)
        n = min(s.shape[2] for s in streams)
        self._pending = [s[:, :, n:].clone() if s.shape[2] > n else None for s in streams]
        return streams[0][:, :, :n], streams[1][:, :, :n]


def set_fast_conv(module: nn.Module, enabled: bool) -> None:
    """Turn the Winograd fast path of every conv in `module` on or off (see FastConvMixin)."""
    for m in module.modules():
        if isinstance(m, FastConvMixin):
            m.fast_conv = bool(enabled)
            conv = m.conv if isinstance(m, CausalConv3d) else m
            if not enabled and not conv.weight.is_contiguous():   # back from winograd.fast_layout
                conv.weight.data = conv.weight.data.contiguous()


def reset_streams(module: nn.Module) -> None:
    """Clear the streaming state of every submodule (start of a new clip)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_stream"):
            m.reset_stream()
