"""One attention interface over several backends.

`attention(q, k, v, layout=..., mask=..., scale=..., backend=...)` is what model code calls; the backend is
chosen per call, by `set_default_backend`, or by the `OSP_ATTENTION_BACKEND` environment variable.

Conventions (the same for every backend):
- layouts: "BNSD" (batch, heads, seq, head_dim), "BSND", "BSH" and "SBH" (hidden = heads*head_dim; these two
  need `heads=`), as in torch_npu.npu_fusion_attention.
- mask: boolean, **True = masked out** (the Ascend convention), broadcastable to (B, N, Sq, Sk). A query row
  whose keys are all masked returns zeros.
- scale: multiplies q @ k^T; default 1/sqrt(head_dim).

Backends: "reference" (fp32 math, the ground truth), "sdpa" (PyTorch), "npu_fusion"
(torch_npu.npu_fusion_attention on Ascend) and "flash_attn" (flash-attn 2 on CUDA, key-padding masks only).
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from mindspeed_mm.osp import platform
from mindspeed_mm.osp.ops.emulation import is_emulated

LAYOUTS = ("BNSD", "BSND", "BSH", "SBH")


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable  # fn(q, k, v, mask, scale) on BNSD tensors -> BNSD output
    available: Callable[[], bool]
    description: str


_REGISTRY: dict[str, Backend] = {}
_default_backend: Optional[str] = None


def register_backend(name: str, fn: Callable, available: Callable[[], bool] = lambda: True,
                     description: str = "") -> None:
    """Register `fn(q, k, v, mask, scale)` working on BNSD tensors under `name`."""
    _REGISTRY[name] = Backend(name, fn, available, description)


def backends() -> dict[str, Backend]:
    return dict(_REGISTRY)


def available_backends() -> list[str]:
    return [name for name, b in _REGISTRY.items() if b.available()]


def set_default_backend(name: Optional[str]) -> None:
    if name is not None:
        get_backend(name)
    global _default_backend
    _default_backend = name


def get_backend(name: Optional[str] = None) -> Backend:
    name = name or _default_backend or os.environ.get("OSP_ATTENTION_BACKEND") or "sdpa"
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(_REGISTRY)}")
    backend = _REGISTRY[name]
    if not backend.available():
        raise RuntimeError(f"attention backend {name!r} is not usable here ({backend.description}); "
                           f"usable: {available_backends()}")
    return backend


def to_bnsd(x: torch.Tensor, layout: str, heads: Optional[int] = None) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout in ("BSH", "SBH"):
        if heads is None:
            raise ValueError(f"layout {layout} needs heads= (number of attention heads)")
        if layout == "SBH":
            x = x.transpose(0, 1)
        b, s, h = x.shape
        if h % heads:
            raise ValueError(f"hidden size {h} is not divisible by heads={heads}")
        return x.view(b, s, heads, h // heads).transpose(1, 2)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    b, n, s, d = x.shape
    x = x.transpose(1, 2).reshape(b, s, n * d)
    return x.transpose(0, 1) if layout == "SBH" else x


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "BNSD",
              mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
              backend: Optional[str] = None, heads: Optional[int] = None) -> torch.Tensor:
    """Scaled dot-product attention in `layout`; returns the output in the same layout."""
    qb, kb, vb = (to_bnsd(t, layout, heads) for t in (q, k, v))
    if scale is None:
        scale = 1.0 / math.sqrt(qb.shape[-1])
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean (True = masked), got {mask.dtype}")
    out = get_backend(backend).fn(qb, kb, vb, mask, scale)
    return from_bnsd(out, layout)


def _reference(q, k, v, mask, scale):
    """Plain math in float32: softmax(scale * q k^T, masked) v; fully masked rows give 0."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = torch.nan_to_num(probs, nan=0.0)
    return torch.matmul(probs, v.float()).to(q.dtype)


def _sdpa(q, k, v, mask, scale):
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = ~mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    # SDPA returns NaN for rows with no visible key; the interface promises zeros.
    return out.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)


register_backend("reference", _reference, description="plain PyTorch math (float32), the ground truth")
register_backend("sdpa", _sdpa, description="torch.nn.functional.scaled_dot_product_attention")


def _masked_rows(mask: torch.Tensor) -> torch.Tensor:
    """(…, Sq, 1) True where a query row has no visible key."""
    return mask.all(dim=-1, keepdim=True)


def _mask_4d(mask: torch.Tensor) -> torch.Tensor:
    if mask.ndim > 4:
        raise ValueError(f"attention mask has {mask.ndim} dims; expected at most 4 (B, N, Sq, Sk)")
    return mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))


# --- Ascend: torch_npu.npu_fusion_attention -------------------------------------------------------------------

def _npu_layout(q, k, v):
    """Choose the npu_fusion_attention layout in which q, k, v are already contiguous (no copy); the views that
    `attention()` builds from BSND/BSH/SBH inputs come back to their original memory order this way."""
    ts = (q, k, v)
    if all(t.is_contiguous() for t in ts):
        return "BNSD", ts
    if all(t.transpose(1, 2).is_contiguous() for t in ts):
        return "BSND", tuple(t.transpose(1, 2) for t in ts)
    if all(t.permute(2, 0, 1, 3).is_contiguous() for t in ts):
        return "SBH", tuple(t.permute(2, 0, 1, 3).flatten(2) for t in ts)
    return "BNSD", tuple(t.contiguous() for t in ts)


def _npu_mask(mask: torch.Tensor, b: int, n: int, sq: int, sk: int) -> torch.Tensor:
    """A broadcastable mask -> one of the shapes the op takes: BNSS, B1SS or 11SS (expanded if needed)."""
    m = _mask_4d(mask)
    mb, mn = m.shape[:2]
    target = (b if (mb != 1 or mn != 1) else 1, mn, sq, sk)
    try:
        expanded = m.expand(target)
    except RuntimeError as e:
        raise ValueError(f"attention mask of shape {tuple(mask.shape)} does not broadcast to "
                         f"(B, N, Sq, Sk) = {(b, n, sq, sk)}") from e
    return expanded.contiguous() if expanded.shape != m.shape else m


def _npu_fusion(q, k, v, mask, scale):
    import torch_npu

    b, n, sq, _ = q.shape
    sk, dv = k.shape[2], v.shape[-1]
    layout, (qx, kx, vx) = _npu_layout(q, k, v)
    atten_mask = _npu_mask(mask, b, n, sq, sk) if mask is not None else None
    out = torch_npu.npu_fusion_attention(qx, kx, vx, n, layout, atten_mask=atten_mask, scale=scale,
                                         keep_prob=1.0, sparse_mode=0)[0]
    if layout == "BSND":
        out = out.transpose(1, 2)
    elif layout == "SBH":
        out = out.view(sq, b, n, dv).permute(1, 2, 0, 3)
    if mask is not None:  # the interface promises zeros for rows with no visible key
        out = out.masked_fill(_masked_rows(_mask_4d(mask)), 0.0)
    return out


def _npu_fusion_available() -> bool:
    return platform.npu_emulated() or platform.npu_available()


# --- CUDA: flash-attn 2 ----------------------------------------------------------------------------------------

def _key_padding_keep(mask: torch.Tensor, b: int, sk: int) -> torch.Tensor:
    """(B, Sk) bool of visible keys, if the mask only depends on (batch, key); otherwise a clear error."""
    m = _mask_4d(mask)
    if m.shape[1] != 1 or m.shape[2] != 1:
        first = m[:, :1, :1, :]
        if not bool((m == first).all()):
            raise ValueError("the flash_attn backend takes key-padding masks only (the same for every head and "
                             "query); this mask varies over heads or queries: use backend 'sdpa', 'reference' or "
                             "'npu_fusion'")
        m = first
    return ~m[:, 0, 0, :].expand(b, sk)


def _flash_attn(q, k, v, mask, scale):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"the flash_attn backend needs float16/bfloat16 inputs, got {q.dtype}; cast them or use "
                        "backend 'sdpa'")
    b, n, sq, _ = q.shape
    sk, dv = k.shape[2], v.shape[-1]
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # flash-attn works on (B, S, N, D)
    keep = None if mask is None else _key_padding_keep(mask, b, sk)
    if keep is None or bool(keep.all()):
        return flash_attn_func(qs, ks, vs, softmax_scale=scale).transpose(1, 2)
    counts = keep.sum(dim=1)
    cu_k = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    cu_q = torch.arange(0, (b + 1) * sq, sq, dtype=torch.int32, device=q.device)
    out = flash_attn_varlen_func(qs.reshape(b * sq, n, -1), ks[keep], vs[keep], cu_q, cu_k, sq,
                                 int(counts.max()), softmax_scale=scale)
    out = out.view(b, sq, n, dv).transpose(1, 2)
    return out.masked_fill((counts == 0).view(b, 1, 1, 1), 0.0)


def _flash_attn_available() -> bool:
    if is_emulated("flash_attn"):
        return True
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


register_backend("npu_fusion", _npu_fusion, _npu_fusion_available,
                 description="torch_npu.npu_fusion_attention, needs an Ascend NPU with torch_npu")
register_backend("flash_attn", _flash_attn, _flash_attn_available,
                 description="flash-attn 2 on CUDA (fp16/bf16, key-padding masks), needs `pip install flash-attn`")
