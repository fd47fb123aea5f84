"""Fused-kernel backends of `skiparse_attention` (see `mindspeed_mm.osp.ops.skiparse.skiparse_attention`, which
also holds the `reference` and `rearrange[:<attention backend>]` paths and picks a backend).

Every backend takes a `SkiparseInputs` (BNSD q/k/v with video tokens in their original order) and returns the
output in the same order:

* `ascendc_shim` — the fused Ascend C kernels compiled for the CPU through the Ascend C API shim (tests only).
* `ascendc` — the fused Ascend C kernels as installed custom operators on an NPU (torch_npu).
* `triton_skiparse` — the fused Triton kernels (CUDA).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .skiparse import SkiparseInputs


def _ascendc_shim(x: SkiparseInputs) -> torch.Tensor:
    from .ascendc_shim import shim_skiparse_attention

    return shim_skiparse_attention(x.q, x.k, x.v, sparsity=x.sparsity, group=x.group, scale=x.scale,
                                   text_k=x.text_k, text_v=x.text_v, key_mask=x.combined_key_mask())


def _ascendc_available() -> bool:
    from ..platform import npu_available

    if not npu_available():
        return False
    from . import ascendc_npu

    return ascendc_npu.op_registered()


def _ascendc(x: SkiparseInputs) -> torch.Tensor:
    from . import ascendc_npu

    return ascendc_npu.skiparse_attention_npu(x.q, x.k, x.v, sparsity=x.sparsity, group=x.group, scale=x.scale,
                                              text_k=x.text_k, text_v=x.text_v, key_mask=x.combined_key_mask())


def _triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available()


def _triton(x: SkiparseInputs) -> torch.Tensor:
    from .triton_skiparse import triton_skiparse_attention

    return triton_skiparse_attention(x.q, x.k, x.v, sparsity=x.sparsity, group=x.group, scale=x.scale,
                                     text_k=x.text_k, text_v=x.text_v, key_mask=x.combined_key_mask())


@dataclass(frozen=True)
class SkiparseBackend:
    name: str
    fn: Callable[[SkiparseInputs], torch.Tensor]
    available: Callable[[], bool]
    description: str


def _shim_available() -> bool:
    from .ascendc_shim import shim_available

    return shim_available()


FUSED: dict[str, SkiparseBackend] = {
    b.name: b for b in (
        SkiparseBackend("ascendc_shim", _ascendc_shim, _shim_available,
                        "Ascend C kernels on the CPU through the API shim (needs g++ >= 12; tests only)"),
        SkiparseBackend("ascendc", _ascendc, _ascendc_available,
                        "Ascend C kernels as installed custom ops (torch_npu + CANN + kernels/ascend_c package)"),
        SkiparseBackend("triton_skiparse", _triton, _triton_available, "Triton kernels (needs triton and CUDA)"),
    )
}
