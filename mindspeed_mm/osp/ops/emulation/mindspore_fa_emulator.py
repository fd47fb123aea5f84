"""CPU emulation of MindSpore's Ascend-only flash attention (`FlashAttentionScore` primitive and the functional
`ops.flash_attention_score`), from the MindSpore 2.10 docstrings. MindSpore's CPU build has no kernel for it.

The math is shared with the torch_npu emulator (the two front ends call the same CANN operator); what differs is
the argument order, the `scalar_value` name of the functional form, fp16/bf16-only inputs and the output order
(softmax_max, softmax_sum, softmax_out, attention_out). Inputs may be torch tensors, numpy arrays or MindSpore
tensors; outputs come back as the same kind as `query`.
"""
from __future__ import annotations

import numpy as np
import torch

from mindspeed_mm.osp.ops.emulation import torch_npu_emulator as npu

MS_FA_LAYOUTS = ("BSH", "BNSD", "SBH", "BSND", "TND")


def _to_torch(x):
    if x is None or isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if hasattr(x, "asnumpy"):  # mindspore.Tensor; numpy has no bf16, go through fp32
        if "BFloat16" in str(x.dtype):
            import mindspore as ms
            return torch.from_numpy(x.astype(ms.float32).asnumpy()).to(torch.bfloat16)
        return torch.from_numpy(x.asnumpy())
    raise TypeError(f"expected a torch/numpy/MindSpore tensor, got {type(x).__name__}")


def _like(t: torch.Tensor, query):
    """Return t as the same kind of tensor as `query`."""
    if isinstance(query, torch.Tensor):
        return t
    if isinstance(query, np.ndarray):
        return t.numpy()
    import mindspore as ms
    if t.dtype == torch.bfloat16:
        return ms.Tensor(t.float().numpy()).astype(ms.bfloat16)
    return ms.Tensor(t.numpy())


class FlashAttentionScore:
    """Emulates `mindspore.ops.operations.nn_ops.FlashAttentionScore`; call returns
    (softmax_max, softmax_sum, softmax_out, attention_out) — take [3] for the attention output."""

    def __init__(self, head_num, keep_prob=1.0, scale_value=1.0, pre_tokens=npu.MAX_TOKENS,
                 next_tokens=npu.MAX_TOKENS, inner_precise=0, input_layout="BSH", sparse_mode=0):
        if input_layout not in MS_FA_LAYOUTS:
            raise ValueError(f"input_layout {input_layout!r} is not one of {MS_FA_LAYOUTS}")
        self.head_num, self.keep_prob, self.scale_value = head_num, keep_prob, scale_value
        self.pre_tokens, self.next_tokens, self.inner_precise = pre_tokens, next_tokens, inner_precise
        self.input_layout, self.sparse_mode = input_layout, sparse_mode

    def __call__(self, query, key, value, real_shift=None, drop_mask=None, padding_mask=None, attn_mask=None,
                 prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None):
        if drop_mask is not None or self.keep_prob != 1.0:
            raise NotImplementedError("dropout is not emulated; use keep_prob=1.0 and drop_mask=None")
        q, k, v = (_to_torch(t) for t in (query, key, value))
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.dtype not in (torch.float16, torch.bfloat16):
                raise TypeError(f"FlashAttentionScore takes float16/bfloat16 {name}, got {t.dtype}; cast first")
        d = q.shape[-1] // self.head_num if self.input_layout in ("BSH", "SBH") else q.shape[-1]
        if d % 16 or d > 512:
            raise ValueError(f"head_dim {d} must be a multiple of 16 and <= 512 (MindSpore FlashAttentionScore); "
                             "pad head_dim (e.g. to 64/80/96/128) before the call")
        out, smax, ssum, *_ = npu.npu_fusion_attention(
            q, k, v, self.head_num, self.input_layout, pse=_to_torch(real_shift), padding_mask=padding_mask,
            atten_mask=_to_torch(attn_mask), scale=self.scale_value, pre_tockens=self.pre_tokens,
            next_tockens=self.next_tokens, inner_precise=self.inner_precise, prefix=prefix,
            actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen, sparse_mode=self.sparse_mode)
        softmax_out = out.new_empty(0)
        return tuple(_like(t, query) for t in (smax, ssum, softmax_out, out))


def flash_attention_score(query, key, value, head_num, real_shift=None, drop_mask=None, padding_mask=None,
                          attn_mask=None, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, keep_prob=1.0,
                          scalar_value=1.0, pre_tokens=npu.MAX_TOKENS, next_tokens=npu.MAX_TOKENS, inner_precise=0,
                          input_layout="BSH", sparse_mode=0):
    """Emulates `mindspore.ops.flash_attention_score`: returns attention_out only (note `scalar_value` = scale)."""
    op = FlashAttentionScore(head_num, keep_prob, scalar_value, pre_tokens, next_tokens, inner_precise,
                             input_layout, sparse_mode)
    return op(query, key, value, real_shift, drop_mask, padding_mask, attn_mask, prefix,
              actual_seq_qlen, actual_seq_kvlen)[3]
