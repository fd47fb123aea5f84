"""Backends of `skiparse_attention` (see `mindspeed_mm.osp.ops.skiparse.skiparse_attention`).

Every backend takes BNSD q/k/v with video tokens in their original order and returns the output in the same order:

* `reference` — rearrange (pad to k^2, Single/Group Skip), plain float32 attention, inverse: the ground truth.
* `rearrange:<name>` — the same rearrangement around any backend `<name>` of `mindspeed_mm.osp.ops.attention`
  (`rearrange` alone uses the default attention backend).
* `ascendc_shim` — the fused Ascend C kernels compiled for the CPU through the Ascend C API shim (tests only).
* `ascendc` — the fused Ascend C kernels as installed custom operators on an NPU (torch_npu).
* `triton_skiparse` — the fused Triton kernels (CUDA).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import skiparse as sk
from .attention import attention


@dataclass(frozen=True)
class SkiparseInputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    sparsity: int
    group: bool
    scale: float
    text_k: Optional[torch.Tensor]
    text_v: Optional[torch.Tensor]
    key_mask: Optional[torch.Tensor]   # (B, N) bool, True = masked video key
    text_mask: Optional[torch.Tensor]  # (B, L) bool, True = masked text key

    def combined_key_mask(self) -> Optional[torch.Tensor]:
        """(B, N + L) bool over video then text keys, or None when nothing is masked."""
        if self.key_mask is None and self.text_mask is None:
            return None
        b, _, n, _ = self.q.shape
        video = self.key_mask if self.key_mask is not None else torch.zeros(b, n, dtype=torch.bool, device=self.q.device)
        if self.text_k is None:
            return video
        length = self.text_k.shape[2]
        text = self.text_mask if self.text_mask is not None else torch.zeros(b, length, dtype=torch.bool,
                                                                            device=self.q.device)
        return torch.cat([video, text], dim=1)


def rearranged_attention(x: SkiparseInputs, attention_backend: Optional[str]) -> torch.Tensor:
    """Skiparse by explicit rearrangement + one call of `attention(...)` on k*B sub-sequences."""
    b, h, n, d = x.q.shape
    k, group = x.sparsity, x.group

    def to_sub(t: torch.Tensor) -> torch.Tensor:  # (B, H, N, D) -> (k*B, H, N'/k, D)
        return sk.skiparse(t.permute(2, 0, 1, 3), k, group).permute(1, 2, 0, 3)

    q, key, value = to_sub(x.q), to_sub(x.k), to_sub(x.v)
    mask = sk.skiparse_key_mask(x.key_mask, n, b, k, group, device=x.q.device)  # (k*B, N'/k) or None
    if x.text_k is not None:
        key = torch.cat([key, x.text_k.repeat(k, 1, 1, 1)], dim=2)
        value = torch.cat([value, x.text_v.repeat(k, 1, 1, 1)], dim=2)
        if mask is not None or x.text_mask is not None:
            length = x.text_k.shape[2]
            if mask is None:
                mask = torch.zeros(k * b, q.shape[2], dtype=torch.bool, device=q.device)
            text = x.text_mask if x.text_mask is not None else torch.zeros(b, length, dtype=torch.bool,
                                                                           device=q.device)
            mask = torch.cat([mask, text.repeat(k, 1)], dim=1)
    if mask is not None:
        mask = mask[:, None, None, :]
    out = attention(q, key, value, layout="BNSD", mask=mask, scale=x.scale, backend=attention_backend)
    return sk.unskiparse(out.permute(2, 0, 1, 3), k, group, n).permute(1, 2, 0, 3)


def _reference(x: SkiparseInputs) -> torch.Tensor:
    return rearranged_attention(x, "reference")


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


def check_tiles(head_dim: int, tiles: tuple[int, int], on_gpu: bool) -> None:
    """Triton kernel tiles are powers of two >= 16 (0 = 64); on a GPU `tl.dot` also needs the padded head dim >= 16."""
    bad = [t for t in tiles if t and (t < 16 or t & (t - 1))]
    if bad:
        raise ValueError(f"triton_skiparse tile sizes {bad} are not powers of two >= 16 (0 picks 64)")
    if on_gpu and head_dim <= 8:
        raise ValueError(f"triton_skiparse needs head_dim > 8 on a GPU (tl.dot works on tiles of >= 16 lanes; "
                         f"head_dim {head_dim} pads to {1 << max(head_dim - 1, 0).bit_length()}); use the "
                         "'rearrange' skiparse backend for such heads")


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


BACKENDS: dict[str, SkiparseBackend] = {
    b.name: b for b in (
        SkiparseBackend("reference", _reference, lambda: True, "rearrange + float32 attention (ground truth)"),
        SkiparseBackend("ascendc_shim", _ascendc_shim, _shim_available,
                        "Ascend C kernels on the CPU through the API shim (needs g++ >= 12; tests only)"),
        SkiparseBackend("ascendc", _ascendc, _ascendc_available,
                        "Ascend C kernels as installed custom ops (torch_npu + CANN + kernels/ascend_c package)"),
        SkiparseBackend("triton_skiparse", _triton, _triton_available, "Triton kernels (needs triton and CUDA)"),
    )
}


def resolve_backend(name: Optional[str], device: torch.device) -> tuple[Callable[[SkiparseInputs], torch.Tensor], str]:
    """(function, resolved name). None picks ascendc on NPU (when its custom ops are installed), else `rearrange`.
    The Triton kernels are opt-in (`triton_skiparse`): they have run in Triton's CPU interpreter only, never on a
    GPU, so a CUDA machine with triton installed does not get them by default."""
    if name is None:
        name = "ascendc" if device.type == "npu" and BACKENDS["ascendc"].available() else "rearrange"
    if name == "rearrange" or name.startswith("rearrange:"):
        inner = name.partition(":")[2] or None
        return (lambda x: rearranged_attention(x, inner)), name
    if name not in BACKENDS:
        raise ValueError(f"unknown skiparse backend {name!r}; choose one of {sorted(BACKENDS)} or "
                         f"'rearrange[:<attention backend>]'")
    backend = BACKENDS[name]
    if not backend.available():
        raise RuntimeError(f"skiparse backend {name!r} is not usable here: {backend.description}")
    return backend.fn, name


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
