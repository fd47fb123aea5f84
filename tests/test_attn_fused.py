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


def _spy(module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_npu_path_matches_reference(dtype, weight_dtype):
    """Every (x, weight) dtype pair reaches npu_rms_norm in a pair it accepts (the emulator enforces the rule)."""
    from mindspeed_mm.osp.ops.emulation import emulate_torch_npu

    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, 32).to(dtype)
    w = torch.rand(32).to(weight_dtype)
    want = fused.rms_norm(x, w, use_npu=False)
    with emulate_torch_npu() as torch_npu:
        calls = _spy(torch_npu, "npu_rms_norm")
        got = fused.rms_norm(x, w)          # dispatch from the tensor (CPU counts as NPU under the emulator)
    assert calls == ["npu_rms_norm"]
    assert got.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotary_half_npu_path_matches_reference(dtype):
    from mindspeed_mm.osp.ops.emulation import emulate_torch_npu

    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 16).to(dtype)           # BSND
    theta = torch.randn(1, 7, 1, 8)
    cos, sin = torch.cos(theta).repeat(1, 1, 1, 2), torch.sin(theta).repeat(1, 1, 1, 2)
    want = fused.rotary_half(x, cos, sin, use_npu=False)
    with emulate_torch_npu() as torch_npu:
        calls = _spy(torch_npu, "npu_rotary_mul")
        got = fused.rotary_half(x, cos, sin)
        fused.rotary_half(x[0], cos[0], sin[0])      # 3-D input: reference math, no NPU call
    assert calls == ["npu_rotary_mul"]
    assert got.dtype == dtype and torch.allclose(got.float(), want.float(), atol=1e-3 if dtype == torch.float16 else 1e-6)


def test_emulation_is_undone():
    import sys

    from mindspeed_mm.osp import platform
    from mindspeed_mm.osp.ops.emulation import emulate_torch_npu

    with emulate_torch_npu():
        assert platform.is_npu_tensor(torch.zeros(1))
    assert not platform.is_npu_tensor(torch.zeros(1)) and "torch_npu" not in sys.modules
