"""Fused elementwise ops with a plain PyTorch reference: RMSNorm and rotate-half RoPE.

On an Ascend NPU (the tensor lives on device type "npu") they call `torch_npu.npu_rms_norm` and
`torch_npu.npu_rotary_mul`; everywhere else they run the reference math. `use_npu=` forces the choice
(tests use it together with the CPU emulator in `mindspeed_mm.osp.ops.emulation`).
"""
from __future__ import annotations

from typing import Optional

import torch

from mindspeed_mm.osp import platform


def _use_npu(x: torch.Tensor, use_npu: Optional[bool]) -> bool:
    return platform.is_npu_tensor(x) if use_npu is None else use_npu


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, in float32, cast back to x.dtype.

    The mean runs over the trailing `weight.ndim` dimensions (as npu_rms_norm does)."""
    dims = tuple(range(-weight.ndim, 0))
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
             use_npu: Optional[bool] = None) -> torch.Tensor:
    """RMSNorm over the trailing `weight.ndim` dims of x; output has x.dtype."""
    if weight.shape != x.shape[x.ndim - weight.ndim:]:
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} must equal the trailing dims of "
                         f"x {tuple(x.shape)}")
    if _use_npu(x, use_npu):
        import torch_npu
        if weight.dtype != x.dtype and weight.dtype != torch.float32:
            # npu_rms_norm takes gamma in x's dtype or fp32 (half x); fp32 holds any gamma exactly
            weight = weight.float() if x.dtype in (torch.float16, torch.bfloat16) else weight.to(x.dtype)
        return torch_npu.npu_rms_norm(x, weight, epsilon=eps)[0]
    return rms_norm_reference(x, weight, eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """cat(-x2, x1) where x1, x2 are the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_half_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def rotary_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                use_npu: Optional[bool] = None) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + rotate_half(x) * sin (cos/sin broadcast against x, last dim = head_dim).

    cos/sin are cast to x.dtype first (the NPU op wants one dtype), so the output has x.dtype.
    The NPU op takes 4-D inputs only; other ranks use the reference math on every device."""
    if x.shape[-1] % 2:
        raise ValueError(f"rotary_half: head_dim {x.shape[-1]} must be even")
    if _use_npu(x, use_npu) and x.ndim == 4 and cos.ndim == 4 and sin.ndim == 4:
        import torch_npu
        return torch_npu.npu_rotary_mul(x, cos.to(x.dtype), sin.to(x.dtype), rotary_mode="half")
    return rotary_half_reference(x, cos, sin)
