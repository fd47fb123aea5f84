"""CPU emulation of the torch_npu fused ops this project calls, written from their documented semantics.

Covers `npu_fusion_attention` (layouts BSH/SBH/BSND/BNSD/TND, sparse_mode 0-4 with pre/next tokens and the
compressed 2048x2048 mask, GQA, pse, scale; keep_prob must be 1), `npu_rms_norm` and `npu_rotary_mul`.
The emulator enforces the documented input rules (mask dtypes and shapes, layouts, head counts) so that calling
code which is wrong for the NPU fails here too. Numerics follow the NPU where documented: scores and softmax in
fp32, the probabilities cast to the input dtype (fp16/bf16) before P @ V, fp32 accumulation.
Unverified on hardware: fully masked rows are assumed to give output 0, softmax_max -inf, softmax_sum 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

MAX_TOKENS = 2147483647
COMPRESSED_MASK_SIZE = 2048
FA_LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")
_FA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def compressed_causal_mask(device=None) -> torch.Tensor:
    """The 2048x2048 `triu(1)` bool mask that sparse_mode 2/3/4 take as `atten_mask`."""
    n = COMPRESSED_MASK_SIZE
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def _heads_dim(x: torch.Tensor, layout: str, heads: Optional[int]) -> torch.Tensor:
    """Any batched layout -> (B, N, S, D). `heads` is needed for BSH/SBH."""
    if x.ndim != (3 if layout in ("BSH", "SBH") else 4):
        raise ValueError(f"input_layout {layout} expects a {3 if layout in ('BSH', 'SBH') else 4}-D tensor, "
                         f"got shape {tuple(x.shape)}")
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "SBH":
        x = x.transpose(0, 1)
    b, s, h = x.shape
    if h % heads:
        raise ValueError(f"hidden size {h} is not a multiple of the number of heads {heads}")
    return x.reshape(b, s, heads, h // heads).transpose(1, 2)


def _to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(B, N, S, D) -> layout (contiguous, like a fresh NPU output)."""
    if layout == "BNSD":
        return x.contiguous()
    if layout == "BSND":
        return x.transpose(1, 2).contiguous()
    b, n, s, d = x.shape
    x = x.transpose(1, 2).reshape(b, s, n * d)
    return (x.transpose(0, 1) if layout == "SBH" else x).contiguous()


def _mask_4d(atten_mask: torch.Tensor, b: int, n: int, sq: int, sk: int) -> torch.Tensor:
    """Check a full mask (BNSS, B1SS, 11SS or SS) and view it as 4-D."""
    if atten_mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"atten_mask must be bool or uint8 (1 = masked), got {atten_mask.dtype}")
    shape = tuple(atten_mask.shape)
    allowed = [(b, n, sq, sk), (b, 1, sq, sk), (1, 1, sq, sk), (sq, sk)]
    if shape not in allowed:
        raise ValueError(f"atten_mask shape {shape} is not one of BNSS/B1SS/11SS/SS = {allowed}; "
                         "expand a key-padding mask over the query axis first")
    m = atten_mask.bool()
    return m.view(1, 1, sq, sk) if m.ndim == 2 else m


def _check_compressed(atten_mask: Optional[torch.Tensor], sparse_mode: int) -> None:
    if atten_mask is None:
        raise ValueError(f"sparse_mode {sparse_mode} needs the compressed 2048x2048 triu(1) atten_mask")
    if tuple(atten_mask.shape) != (COMPRESSED_MASK_SIZE,) * 2:
        raise ValueError(f"sparse_mode {sparse_mode} takes the compressed 2048x2048 mask, got shape "
                         f"{tuple(atten_mask.shape)}")
    if not torch.equal(atten_mask.bool().cpu(), compressed_causal_mask()):
        raise ValueError(f"sparse_mode {sparse_mode}: atten_mask must be torch.ones(2048, 2048).triu(1)")


def _band_mask(sq: int, sk: int, sparse_mode: int, pre: int, nxt: int, device) -> Optional[torch.Tensor]:
    """(sq, sk) bool, True = masked, from the sparse mode and pre/next tokens (None = nothing masked)."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    if sparse_mode == 0:
        if pre >= max(sq, sk) and nxt >= max(sq, sk):
            return None
        return (j - i > nxt) | (i - j > pre)
    if sparse_mode == 1:
        return None
    if sparse_mode == 2:
        return j > i
    if sparse_mode == 3:
        return j > i + (sk - sq)
    if sparse_mode == 4:
        rel = j - i - (sk - sq)
        return (rel > nxt) | (rel < -pre)
    raise NotImplementedError(f"sparse_mode {sparse_mode} is not emulated (modes 0-4 are)")


def _combined_mask(full, sq, sk, sparse_mode, pre, nxt, device):
    """The effective mask: mode 0 = given mask AND-kept with the pre/next band (no mask at all when none is
    given), mode 1 = given mask, modes 2-4 = generated from the mode."""
    if sparse_mode == 1:
        return full
    if sparse_mode == 0:
        if full is None:
            return None
        band = _band_mask(sq, sk, 0, pre, nxt, device)
        return full if band is None else full | band
    return _band_mask(sq, sk, sparse_mode, pre, nxt, device)


def _attend(q, k, v, mask, pse, scale):
    """q (B,N1,Sq,D), k/v (B,N2,Sk,D*) -> out (B,N1,Sq,Dv) in q.dtype, softmax max/sum (B,N1,Sq) fp32."""
    n1, n2 = q.shape[1], k.shape[1]
    if n1 % n2:
        raise ValueError(f"query heads {n1} must be a multiple of key/value heads {n2}")
    if n1 != n2:
        k = k.repeat_interleave(n1 // n2, dim=1)
        v = v.repeat_interleave(n1 // n2, dim=1)
    s = torch.matmul(q.float(), k.float().transpose(-1, -2))
    if pse is not None:
        s = s + pse.float()
    s = s * scale
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    empty = torch.isneginf(row_max)
    e = torch.exp(s - torch.where(empty, torch.zeros_like(row_max), row_max))
    row_sum = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(empty, torch.ones_like(row_sum), row_sum)
    if q.dtype != torch.float32:
        p = p.to(q.dtype)  # the NPU feeds the cube unit P in the input dtype
    out = torch.matmul(p.float(), v.float()).to(q.dtype)
    return out, row_max.squeeze(-1), row_sum.squeeze(-1)


def _lengths(cumulative: Optional[Sequence[int]], name: str) -> list[int]:
    if cumulative is None:
        raise ValueError(f"input_layout TND needs {name} (cumulative sequence lengths, e.g. [2, 4, 6])")
    ends = [int(c) for c in cumulative]
    starts = [0] + ends[:-1]
    lens = [e - s for s, e in zip(starts, ends)]
    if any(n < 0 for n in lens):
        raise ValueError(f"{name} must be non-decreasing cumulative lengths, got {ends}")
    return lens


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
                         scale=1.0, keep_prob=1.0, pre_tockens=MAX_TOKENS, next_tockens=MAX_TOKENS,
                         inner_precise=0, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                         gen_mask_parallel=True, sync=False, softmax_layout=""):
    """Returns (attention_out, softmax_max, softmax_sum, softmax_in, seed, offset, numels) like torch_npu."""
    if input_layout not in FA_LAYOUTS:
        raise ValueError(f"input_layout {input_layout!r} is not one of {FA_LAYOUTS}")
    if keep_prob != 1.0:
        raise NotImplementedError("the emulator has no dropout (its mask comes from the NPU's Philox generator); "
                                  "use keep_prob=1.0")
    if padding_mask is not None:
        raise NotImplementedError("padding_mask is reserved by torch_npu; pass atten_mask instead")
    if prefix is not None or sparse_mode not in (0, 1, 2, 3, 4):
        raise NotImplementedError(f"sparse_mode {sparse_mode} / prefix are not emulated (modes 0-4 are)")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dtype not in _FA_DTYPES:
            raise TypeError(f"{name} dtype {t.dtype} not supported (fp16, bf16, fp32)")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError("query, key and value must have one dtype")
    if sparse_mode in (2, 3, 4):
        _check_compressed(atten_mask, sparse_mode)
    elif sparse_mode == 1 and atten_mask is None:
        raise ValueError("sparse_mode 1 (allMask) needs a full atten_mask")

    if input_layout == "TND":
        return _tnd(query, key, value, head_num, pse, atten_mask, scale, pre_tockens, next_tockens,
                    actual_seq_qlen, actual_seq_kvlen, sparse_mode, softmax_layout)

    q = _heads_dim(query, input_layout, head_num)
    if q.shape[1] != head_num:
        raise ValueError(f"head_num={head_num} but query has {q.shape[1]} heads")
    d = q.shape[-1]
    kv_heads = key.shape[-1] // d if input_layout in ("BSH", "SBH") else None
    k = _heads_dim(key, input_layout, kv_heads)
    v = _heads_dim(value, input_layout, kv_heads)
    if k.shape[-1] != d:
        raise ValueError(f"query and key head_dim differ: {d} vs {k.shape[-1]}")
    b, n, sq, _ = q.shape
    sk = k.shape[2]
    full = _mask_4d(atten_mask, b, n, sq, sk) if atten_mask is not None and sparse_mode in (0, 1) else None
    mask = _combined_mask(full, sq, sk, sparse_mode, pre_tockens, next_tockens, q.device)
    out, mx, sm = _attend(q, k, v, mask, pse, scale)
    stats = lambda t: t.unsqueeze(-1).expand(*t.shape, 8).contiguous()  # noqa: E731
    empty = query.new_empty(0)
    return _to_layout(out, input_layout), stats(mx), stats(sm), empty, 0, 0, 0


def _tnd(query, key, value, head_num, pse, atten_mask, scale, pre, nxt, seq_q, seq_kv, sparse_mode, softmax_layout):
    if query.ndim != 3 or query.shape[1] != head_num:
        raise ValueError(f"TND query must be (T, head_num={head_num}, D), got {tuple(query.shape)}")
    if pse is not None:
        raise NotImplementedError("pse with TND is not emulated")
    lq, lk = _lengths(seq_q, "actual_seq_qlen"), _lengths(seq_kv, "actual_seq_kvlen")
    if len(lq) != len(lk):
        raise ValueError(f"actual_seq_qlen and actual_seq_kvlen must have one entry per batch ({len(lq)} vs {len(lk)})")
    if sum(lq) > query.shape[0] or sum(lk) > key.shape[0]:
        raise ValueError("actual_seq_qlen/kvlen run past the T axis of query/key")
    out = query.new_zeros(query.shape[0], head_num, value.shape[-1])
    mx = torch.full((query.shape[0], head_num), float("-inf"))
    sm = torch.zeros(query.shape[0], head_num)
    q0 = k0 = 0
    for nq, nk in zip(lq, lk):
        if nq:
            q = query[q0:q0 + nq].transpose(0, 1)[None]
            k = key[k0:k0 + nk].transpose(0, 1)[None]
            v = value[k0:k0 + nk].transpose(0, 1)[None]
            full = None
            if sparse_mode in (0, 1) and atten_mask is not None:
                if tuple(atten_mask.shape) != (nq, nk):
                    raise ValueError(f"TND takes an SS atten_mask; got {tuple(atten_mask.shape)} for a "
                                     f"({nq}, {nk}) batch")
                full = atten_mask.bool()
            mask = _combined_mask(full, nq, nk, sparse_mode, pre, nxt, query.device)
            o, m, s = _attend(q, k, v, mask, None, scale)
            out[q0:q0 + nq] = o[0].transpose(0, 1)
            mx[q0:q0 + nq] = m[0].transpose(0, 1)
            sm[q0:q0 + nq] = s[0].transpose(0, 1)
        q0, k0 = q0 + nq, k0 + nk
    stats = lambda t: t.unsqueeze(-1).expand(*t.shape, 8).contiguous()  # noqa: E731
    return out, stats(mx), stats(sm), query.new_empty(0), 0, 0, 0


def npu_rms_norm(self: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6):
    """(y, rstd): y = x * rstd * gamma in x.dtype; rstd fp32 of shape x.shape[:-gamma.ndim] + (1,) * gamma.ndim.
    gamma has x's dtype, or is fp32 with fp16/bf16 x (any other pair is rejected, as the NPU op does)."""
    if self.shape[self.ndim - gamma.ndim:] != gamma.shape:
        raise ValueError(f"gamma shape {tuple(gamma.shape)} must match the trailing dims of x {tuple(self.shape)}")
    if gamma.dtype != self.dtype and not (gamma.dtype == torch.float32 and self.dtype in (torch.float16,
                                                                                          torch.bfloat16)):
        raise TypeError(f"npu_rms_norm: gamma {gamma.dtype} with x {self.dtype}; gamma must have x's dtype, or be "
                        "float32 with float16/bfloat16 x")
    dims = tuple(range(-gamma.ndim, 0))
    xf = self.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    y = (xf * rstd * gamma.float()).to(self.dtype)
    return y, rstd


def npu_rotary_mul(input: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, rotary_mode: str = "half"):
    """r1 * x + r2 * x_new with x_new = cat(-x2, x1) ("half") or interleave(-x[..., 1::2], x[..., ::2])."""
    if input.ndim != 4 or r1.ndim != 4 or r2.ndim != 4:
        raise ValueError("npu_rotary_mul takes 4-D input, r1 and r2 (BNSD/BSND/SBND)")
    if input.shape[-1] % 2:
        raise ValueError(f"npu_rotary_mul needs an even last dim, got {input.shape[-1]}")
    if not (input.dtype == r1.dtype == r2.dtype):
        raise TypeError(f"input, r1, r2 must share a dtype, got {input.dtype}, {r1.dtype}, {r2.dtype}")
    if rotary_mode == "half":
        x1, x2 = input.chunk(2, dim=-1)
        x_new = torch.cat((-x2, x1), dim=-1)
    elif rotary_mode == "interleave":
        x_new = torch.stack((-input[..., 1::2], input[..., ::2]), dim=-1).flatten(-2)
    else:
        raise ValueError(f"rotary_mode must be 'half' or 'interleave', got {rotary_mode!r}")
    return r1 * input + r2 * x_new
