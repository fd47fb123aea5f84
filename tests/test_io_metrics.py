"""PSNR / SSIM: known values, properties, and an independent numpy SSIM written from the paper's definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mindspeed_mm.osp import metrics


def _video(seed: int, shape=(1, 3, 3, 24, 20)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_known_values():
    a = torch.zeros(1, 3, 2, 16, 16)
    b = torch.full_like(a, 0.1)  # MSE 0.01 -> 20 dB
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    c = a.clone()
    c[:, :, 1] = 0.5  # frame 0 identical (inf), frame 1 MSE 0.25 -> 6.0206 dB
    per_frame = metrics.psnr_per_frame(c, a)
    assert math.isinf(per_frame[0, 0]) and float(per_frame[0, 1]) == pytest.approx(10 * math.log10(4))
    # per-frame average, not PSNR of the pooled MSE: frames with MSE 0.01 and 0.0001 -> mean(20, 40) = 30 dB
    d = a.clone()
    d[:, :, 0], d[:, :, 1] = 0.1, 0.01
    assert metrics.psnr(d, a) == pytest.approx(30.0)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.format_psnr(math.inf).startswith("inf")


def test_psnr_batch_and_unbatched():
    x, y = _video(0, (2, 3, 4, 16, 16)), _video(1, (2, 3, 4, 16, 16))
    pf = metrics.psnr_per_frame(x, y)
    assert pf.shape == (2, 4)
    assert torch.allclose(metrics.psnr_per_frame(x[1], y[1])[0], pf[1])
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(x, y[:, :, :3])


def _ssim_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two 2-D images in [0, 1]: explicit 11x11 windows, weighted moments, mean over valid positions."""
    r = np.arange(11) - 5
    g = np.exp(-(r ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_numpy_reference():
    x = _video(2, (1, 3, 2, 18, 16))
    y = (x + 0.15 * _video(3, (1, 3, 2, 18, 16))).clamp(0, 1)
    got = metrics.ssim_per_frame(x, y)
    xn, yn = x.double().numpy(), y.double().numpy()
    for t in range(2):
        ref = np.mean([_ssim_numpy(xn[0, c, t], yn[0, c, t]) for c in range(3)])
        assert float(got[0, t]) == pytest.approx(ref, abs=1e-10)
    luma = np.array([0.299, 0.587, 0.114]).reshape(3, 1, 1)
    gray = metrics.ssim_per_frame(x, y, channels="gray")
    ref = _ssim_numpy((xn[0, :, 0] * luma).sum(0), (yn[0, :, 0] * luma).sum(0))
    assert float(gray[0, 0]) == pytest.approx(ref, abs=1e-10)


def test_ssim_constant_images_hand_computed():
    # constant frames a and b: variances are 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.375, 0.625, 0.01 ** 2  # exact in float32
    x, y = torch.full((3, 1, 16, 16), a), torch.full((3, 1, 16, 16), b)
    assert metrics.ssim(x, y) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_properties():
    x = _video(4)
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    z = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(6))).clamp(0, 1)
    s_y, s_z = metrics.ssim(x, y), metrics.ssim(x, z)
    assert 0 < s_z < s_y < 1
    assert metrics.ssim(y, x) == pytest.approx(s_y, abs=1e-12)
    assert metrics.ssim(1 - x, x) < 0  # anti-correlated structure
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(3, 2, 10, 12), torch.rand(3, 2, 10, 12))
    with pytest.raises(ValueError, match="'rgb' or 'gray'"):
        metrics.ssim(x, x, channels="yuv")


def test_ssim_chunking_is_invisible():
    x, y = _video(7, (2, 3, 5, 16, 16)), _video(8, (2, 3, 5, 16, 16))
    assert torch.allclose(metrics.ssim_per_frame(x, y, frames_per_step=3), metrics.ssim_per_frame(x, y), atol=1e-14)
