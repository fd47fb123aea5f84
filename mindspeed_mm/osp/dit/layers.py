"""Layers shared by the denoisers: the attention core, feed-forward, float32 LayerNorm, qk RMSNorm."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mindspeed_mm.osp.ops.attention import attention
from mindspeed_mm.osp.ops.fused import rms_norm


class CoreAttention(nn.Module):
    """softmax(q k^T / sqrt(head_dim)) v on sequence-first tensors.

    q: (Sq, B, heads, head_dim), k/v: (Sk, B, heads, head_dim), key_mask: bool (B, Sk), True = masked.
    Returns (Sq, B, heads*head_dim). This is the hook a sequence-parallel (Ulysses) wrapper replaces:
    the model calls `self.core_attention(q, k, v, key_mask)` and nothing else touches the attention math.
    """

    def __init__(self, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        sq, b, heads, d = q.shape
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return attention(q.reshape(sq, b, heads * d), k.reshape(k.shape[0], b, heads * d),
                         v.reshape(v.shape[0], b, heads * d), layout="SBH", heads=heads, mask=mask,
                         scale=d ** -0.5, backend=self.backend)


class GELUProjection(nn.Module):
    """Linear followed by tanh-approximated GELU (diffusers `GELU(approximate="tanh")`, key `proj`)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """net.0.proj (D -> mult*D) -> GELU(tanh) -> net.2 (mult*D -> D); keys as diffusers FeedForward."""

    def __init__(self, dim: int, mult: int = 4, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, mult * dim, bias), nn.Dropout(dropout),
                                  nn.Linear(mult * dim, dim, bias=bias)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, output cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMSNorm over head_dim with a learned weight (the qk-norm of the v1.5 attention)."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(S, B, heads*head_dim) -> (S, B, heads, head_dim); heads follow from the tensor (TP-sharded or not)."""
    return x.unflatten(-1, (x.shape[-1] // head_dim, head_dim))
