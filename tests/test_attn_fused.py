"""fused.py: reference math, and the NPU branch run on CPU through the torch_npu emulator."""
from __future__ import annotations

import pytest
import torch

from mindspeed_mm.osp.ops import fused


def test_rms_norm_reference_matches_definition():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    w = torch.randn(16, dtype=torch.float64)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    got = fused.rms_norm(x, w, use_npu=False)
    assert torch.allclose(got, want, atol=1e-12)


def test_rms_norm_keeps_dtype_and_computes_in_fp32():
    torch.manual_seed(0)
    x = torch.randn(3, 64).to(torch.bfloat16)
    w = torch.rand(64)
    got = fused.rms_norm(x, w, use_npu=False)
    assert got.dtype == torch.bfloat16
    want = fused.rms_norm(x.float(), w, use_npu=False)
    assert (got.float() - want).abs().max() < 2e-2


def test_rms_norm_rejects_wrong_weight():
    with pytest.raises(ValueError, match="trailing dims"):
        fused.rms_norm(torch.randn(2, 8), torch.ones(4))


def test_rotary_half_reference_is_a_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)
    theta = torch.randn(1, 1, 7, 4)
    cos, sin = torch.cos(theta).repeat(1, 1, 1, 2), torch.sin(theta).repeat(1, 1, 1, 2)
    y = fused.rotary_half(x, cos, sin, use_npu=False)
    # pairs (i, i + D/2) are rotated by theta_i: norms are kept, and the angle matches
    x1, x2 = x.chunk(2, -1)
    y1, y2 = y.chunk(2, -1)
    assert torch.allclose(y1, x1 * torch.cos(theta) - x2 * torch.sin(theta), atol=1e-6)
    assert torch.allclose(y2, x2 * torch.cos(theta) + x1 * torch.sin(theta), atol=1e-6)
