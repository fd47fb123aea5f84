"""The Ascend C Skiparse kernels on an NPU through torch_npu (torch.library ops `osp_ascendc::*`).

Needs the custom op package built and installed by `kernels/ascend_c/build_cann.sh` and the binding from
`kernels/ascend_c/torch_npu` (OSP_ASCENDC_TORCH_LIB = path of the built .so). Neither could be built or run where
this code was written (no CANN, no NPU): see docs/kernels.md for what was verified.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch


@functools.lru_cache(maxsize=None)
def op_registered() -> bool:
    """True when torch.ops.osp_ascendc.skiparse_attention exists (loading OSP_ASCENDC_TORCH_LIB if set)."""
    lib = os.environ.get("OSP_ASCENDC_TORCH_LIB")
    if lib:
        torch.ops.load_library(lib)
    return hasattr(torch.ops, "osp_ascendc") and hasattr(torch.ops.osp_ascendc, "skiparse_attention")


class _NpuSkiparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, text_k, text_v, key_mask, sparsity, group, scale):
        out, smax, ssum = torch.ops.osp_ascendc.skiparse_attention(q, k, v, text_k, text_v, key_mask, sparsity,
                                                                   group, scale)
        ctx.save_for_backward(q, k, v, text_k, text_v, key_mask, out, smax, ssum)
        ctx.args = (sparsity, group, scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, text_k, text_v, key_mask, out, smax, ssum = ctx.saved_tensors
        dq, dk, dv, dtk, dtv = torch.ops.osp_ascendc.skiparse_attention_grad(
            q, k, v, text_k, text_v, key_mask, out, dout.contiguous(), smax, ssum, *ctx.args)
        return dq, dk, dv, (dtk if text_k is not None else None), (dtv if text_v is not None else None), \
            None, None, None, None


def skiparse_attention_npu(q, k, v, *, sparsity: int, group: bool, scale: float, text_k=None, text_v=None,
                           key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not op_registered():
        raise RuntimeError("torch.ops.osp_ascendc.skiparse_attention is not registered: build the op package "
                           "(kernels/ascend_c/build_cann.sh) and the torch_npu binding, then set "
                           "OSP_ASCENDC_TORCH_LIB")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"the Ascend C Skiparse kernel takes float16/bfloat16 inputs, got {q.dtype}")
    tensors = [t.contiguous() if t is not None else None for t in (q, k, v, text_k, text_v)]
    mask = key_mask.to(torch.uint8).contiguous() if key_mask is not None else None
    return _NpuSkiparse.apply(*tensors, mask, int(sparsity), bool(group), float(scale))
