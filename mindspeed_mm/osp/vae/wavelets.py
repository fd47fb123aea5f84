"""Haar wavelet transforms as space-to-depth plus a fixed sign matrix (no convolutions).

Channel order is band-major (`out_channel = band * C_in + c`), as in the official WF-VAE:
- 3-D bands `b = 4*bt + 2*bh + bw` (LLL, W, H, HW, T, TW, TH, THW), filter value `0.3536 * (-1)^(bt*dt + bh*dh + bw*dw)`;
  the literal 0.3536 (not 1/(2*sqrt 2)) keeps bit compatibility with the released checkpoints.
- 2-D bands `b = bh + 2*bw` (LL, H, W, HH), filter value `0.5 * (-1)^(bh*dh + bw*dw)`.

The 3-D forward transform is causal in time: the first frame is replicated once in front, so it pairs frames
`[x0, x0], [x1, x2], [x3, x4], ...`. In chunked (streaming) use it keeps an odd trailing frame for the next call.
The inverse 3-D transform drops the first output frame of the whole stream (T -> 2T - 1).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

HAAR3D_VALUE = 0.3536
HAAR2D_VALUE = 0.5


def haar3d_matrix() -> torch.Tensor:
    """(8 bands, 8 offsets) matrix; offset index `4*dt + 2*dh + dw`."""
    m = torch.empty(8, 8, dtype=torch.float64)
    for (bt, bh, bw), (dt, dh, dw) in itertools.product(itertools.product((0, 1), repeat=3), repeat=2):
        m[4 * bt + 2 * bh + bw, 4 * dt + 2 * dh + dw] = (-1) ** (bt * dt + bh * dh + bw * dw)
    return (m * HAAR3D_VALUE).float()


def haar2d_matrix() -> torch.Tensor:
    """(4 bands, 4 offsets) matrix; band `bh + 2*bw`, offset `2*dh + dw`."""
    m = torch.empty(4, 4, dtype=torch.float64)
    for (bh, bw), (dh, dw) in itertools.product(itertools.product((0, 1), repeat=2), repeat=2):
        m[bh + 2 * bw, 2 * dh + dw] = (-1) ** (bh * dh + bw * dw)
    return (m * HAAR2D_VALUE).float()


def _check_even(h: int, w: int) -> None:
    if h % 2 or w % 2:
        raise ValueError(f"Haar transform needs even height and width, got {h}x{w}")


class HaarWavelet3D(nn.Module):
    """Forward 3-D Haar: (B, C, T, H, W) -> (B, 8C, floor((T-1)/2)+1, H/2, W/2)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("matrix", haar3d_matrix(), persistent=False)
        self._pending: torch.Tensor | None = None  # frames not yet paired (streaming state)

    def reset_stream(self) -> None:
        self._pending = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, h, w = x.shape
        _check_even(h, w)
        if self._pending is None:
            if x.shape[2] == 0:
                return x.new_zeros(b, 8 * c, 0, h // 2, w // 2)
            x = torch.cat([x[:, :, :1], x], dim=2)
        elif self._pending.shape[2]:
            x = torch.cat([self._pending, x], dim=2)
        t = x.shape[2] // 2
        self._pending = x[:, :, 2 * t:].clone()
        x = x[:, :, : 2 * t].reshape(b, c, t, 2, h // 2, 2, w // 2, 2)
        x = x.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, c, t, h // 2, w // 2, 8)
        y = x @ self.matrix.to(x.dtype).t()  # (b, c, t, h', w', band)
        return y.permute(0, 5, 1, 2, 3, 4).reshape(b, 8 * c, t, h // 2, w // 2)


class InverseHaarWavelet3D(nn.Module):
    """Inverse 3-D Haar: (B, 8C, T, H, W) -> (B, C, 2T, 2H, 2W), minus the stream's first frame."""

    def __init__(self):
        super().__init__()
        self.register_buffer("matrix", haar3d_matrix(), persistent=False)
        self._started = False

    def reset_stream(self) -> None:
        self._started = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c8, t, h, w = x.shape
        c = c8 // 8
        y = x.reshape(b, 8, c, t, h, w).permute(0, 2, 3, 4, 5, 1) @ self.matrix.to(x.dtype)  # (..., offset)
        y = y.reshape(b, c, t, h, w, 2, 2, 2).permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(b, c, 2 * t, 2 * h, 2 * w)
        if not self._started and t > 0:
            self._started = True
            y = y[:, :, 1:]
        return y


class HaarWavelet2D(nn.Module):
    """Forward 2-D Haar per frame: (B, C, T, H, W) -> (B, 4C, T, H/2, W/2)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("matrix", haar2d_matrix(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        _check_even(h, w)
        x = x.reshape(b, c, t, h // 2, 2, w // 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(b, c, t, h // 2, w // 2, 4)
        y = x @ self.matrix.to(x.dtype).t()
        return y.permute(0, 5, 1, 2, 3, 4).reshape(b, 4 * c, t, h // 2, w // 2)


class InverseHaarWavelet2D(nn.Module):
    """Inverse 2-D Haar per frame: (B, 4C, T, H, W) -> (B, C, T, 2H, 2W)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("matrix", haar2d_matrix(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c4, t, h, w = x.shape
        c = c4 // 4
        y = x.reshape(b, 4, c, t, h, w).permute(0, 2, 3, 4, 5, 1) @ self.matrix.to(x.dtype)
        return y.reshape(b, c, t, h, w, 2, 2).permute(0, 1, 2, 3, 5, 4, 6).reshape(b, c, t, 2 * h, 2 * w)
