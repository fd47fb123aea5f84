"""One attention interface over several backends.

`attention(q, k, v, layout=..., mask=..., scale=..., backend=...)` is what model code calls; the backend is
chosen per call, by `set_default_backend`, or by the `OSP_ATTENTION_BACKEND` environment variable.

Conventions (the same for every backend):
- layouts: "BNSD" (batch, heads, seq, head_dim), "BSND", "BSH" and "SBH" (hidden = heads*head_dim; these two
  need `heads=`), as in torch_npu.npu_fusion_attention.
- mask: boolean, **True = masked out** (the Ascend convention), broadcastable to (B, N, Sq, Sk). A query row
  whose keys are all masked returns zeros.
- scale: multiplies q @ k^T; default 1/sqrt(head_dim).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

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
