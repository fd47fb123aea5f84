"""Reconstruction metrics for videos: PSNR and SSIM, per frame, then averaged (the WF-VAE evaluation protocol).

Videos are `(B, C, T, H, W)` or `(C, T, H, W)` float tensors in [0, 1] (map model output with `(x + 1) / 2`).

- PSNR: `10 log10(1 / MSE)` per frame (MSE over C, H, W), averaged over frames and batch. Identical frames give
  `inf`, so the average of a clip with one identical frame is `inf` (the official script caps at 100 instead).
- SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, computed on
  the "valid" region only (no padding; like the reference MATLAB `ssim_index` and Open-Sora Plan's `cal_ssim.py`),
  per colour channel and averaged over channels (default), or on BT.601 luma with `channels="gray"`.
  Averaged over frames and batch. Frames must be at least 11x11.
Computation runs in float64 on the input's device, a few frames at a time.
"""
from __future__ import annotations

import math

import torch

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_LUMA = (0.299, 0.587, 0.114)  # BT.601


def _frames(video: torch.Tensor, name: str) -> torch.Tensor:
    """`(B, C, T, H, W)` / `(C, T, H, W)` -> `(B*T, C, H, W)` float64."""
    if video.ndim == 4:
        video = video.unsqueeze(0)
    if video.ndim != 5:
        raise ValueError(f"{name}: expected (B, C, T, H, W) or (C, T, H, W), got shape {tuple(video.shape)}")
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).double()


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    batch = a.shape[0] if a.ndim == 5 else 1
    return _frames(a, "prediction"), _frames(b, "target"), batch


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each frame, shape `(B, T)`; `inf` where a frame is identical."""
    x, y, batch = _pair(pred, target)
    mse = (x - y).pow(2).flatten(1).mean(1)
    out = 10 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf
    return out.reshape(batch, -1)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over frames (and batch) of the per-frame PSNR."""
    return float(psnr_per_frame(pred, target, data_range).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps (the 2-D window is its outer product)."""
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 2-D Gaussian filter over the last two axes, valid region only (sliding windows @ taps)."""
    x = x.unfold(-2, g.numel(), 1) @ g
    return x.unfold(-1, g.numel(), 1) @ g


def _ssim_maps_mean(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM per image and channel, `(N, C)`."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mu_x ** 2
    syy = _filter_valid(y * y, g) - mu_y ** 2
    sxy = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=(-2, -1))


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor, *, channels: str = "rgb", data_range: float = 1.0,
                   frames_per_step: int = 8) -> torch.Tensor:
    """SSIM of each frame, shape `(B, T)`. `channels`: "rgb" (mean over channels) or "gray" (BT.601 luma)."""
    if channels not in ("rgb", "gray"):
        raise ValueError(f"channels must be 'rgb' or 'gray', got {channels!r}")
    x, y, batch = _pair(pred, target)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    if channels == "gray":
        if x.shape[1] != 3:
            raise ValueError(f"channels='gray' needs RGB input, got {x.shape[1]} channels")
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x, y = (x * luma).sum(1, keepdim=True), (y * luma).sum(1, keepdim=True)
    g = gaussian_window(dtype=x.dtype).to(x.device)
    out = torch.cat([_ssim_maps_mean(x[i:i + frames_per_step], y[i:i + frames_per_step], g, data_range).mean(1)
                     for i in range(0, x.shape[0], frames_per_step)])
    return out.reshape(batch, -1)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, channels: str = "rgb", data_range: float = 1.0) -> float:
    """Mean over frames (and batch) of the per-frame SSIM."""
    return float(ssim_per_frame(pred, target, channels=channels, data_range=data_range).mean())


def format_psnr(value: float) -> str:
    return "inf (identical)" if math.isinf(value) else f"{value:.2f} dB"
