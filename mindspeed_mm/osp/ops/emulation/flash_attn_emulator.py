"""CPU stand-in for the two flash-attn (Dao-AILab) entry points our `flash_attn` backend calls, from their
documented semantics: `flash_attn_func(q, k, v, dropout_p, softmax_scale, causal)` on (B, S, N, D) and
`flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ...)` on packed
(total, N, D) tensors with int32 cumulative lengths. Only fp16/bf16, like the CUDA kernels; no dropout.
"""
from __future__ import annotations

import torch


def _check(*tensors):
    for t in tensors:
        if t.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError("FlashAttention only supports fp16 and bf16 data type")
        if t.stride(-1) != 1:
            raise RuntimeError("Input tensor must have contiguous last dimension")


def _attend(q, k, v, scale, causal):
    """q (N, Sq, D), k/v (N, Sk, D): softmax in fp32, output in q.dtype (bottom-right causal, as flash-attn 2.1+)."""
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        i = torch.arange(sq)[:, None]
        j = torch.arange(sk)[None, :]
        s = s.masked_fill(j > i + (sk - sq), float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    return torch.matmul(p, v.float()).to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    _check(q, k, v)
    if dropout_p:
        raise NotImplementedError("the flash-attn emulator has no dropout")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = _attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, causal)
    return out.transpose(1, 2)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, **_):
    _check(q, k, v)
    if dropout_p:
        raise NotImplementedError("the flash-attn emulator has no dropout")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise RuntimeError("cu_seqlens_q and cu_seqlens_k must have dtype int32")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.empty(q.shape[0], q.shape[1], v.shape[-1], dtype=q.dtype)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        qs, ks = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        if cq[b + 1] - cq[b] > max_seqlen_q or ck[b + 1] - ck[b] > max_seqlen_k:
            raise RuntimeError("a sequence is longer than max_seqlen_q/max_seqlen_k")
        out[qs] = _attend(q[qs].transpose(0, 1), k[ks].transpose(0, 1), v[ks].transpose(0, 1),
                          scale, causal).transpose(0, 1)
    return out
