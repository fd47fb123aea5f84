"""Fused Skiparse attention in Triton (forward + backward), the CUDA counterpart of kernels/ascend_c.

Same layout rules as the Ascend C kernels (`kernels/ascend_c/op_kernel/skiparse_layout.h`): a sub-sequence r is
one lane (single skip: tokens r, r+k, ...) or k lanes (group skip: tokens a*k*k + r*k + c), each lane an arithmetic
progression of rows, so tiles are gathered by pointer arithmetic on the original BNSD tensors: no rearrangement,
no padding copies (padded tokens are never part of a lane). Text keys (shared by every sub-sequence) follow the
video keys. The backward is atomic-free: one kernel owns dQ of a query tile, one owns dK/dV of a key tile.

Verified only with TRITON_INTERPRET=1 on CPU at tiny shapes (tests/test_kernels_triton.py); not run on a GPU here.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lane(n, r, c, SPARSITY: tl.constexpr, GROUP: tl.constexpr):
    """(first token, token stride, rows) of lane c of sub-sequence r."""
    if GROUP:
        base = r * SPARSITY + c
        stride = SPARSITY * SPARSITY
    else:
        base = r
        stride = SPARSITY
    count = tl.where(base < n, (n - base + stride - 1) // stride, 0)
    return base, stride, count


@triton.jit
def _program_lane(n, SPARSITY: tl.constexpr, GROUP: tl.constexpr):
    """Program axis 1 -> (sub-sequence r, batch x head bh, and that lane's base, stride, count)."""
    LANES: tl.constexpr = SPARSITY if GROUP else 1
    pid = tl.program_id(1)
    r = (pid // LANES) % SPARSITY
    base, stride, count = _lane(n, r, pid % LANES, SPARSITY, GROUP)
    return r, pid // (LANES * SPARSITY), base, stride, count


@triton.jit
def _fwd_tile(q, m_i, l_i, acc, k_ptr, v_ptr, mask_ptr, first, stride, count, mask_first, scale,
              HAS_MASK: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    for start in range(0, count, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        ok = cols < count
        rows = (first + cols * stride).to(tl.int64)
        kt = tl.load(k_ptr + rows[None, :] * D + d[:, None], mask=ok[None, :] & (d[:, None] < D), other=0.0)
        v = tl.load(v_ptr + rows[:, None] * D + d[None, :], mask=ok[:, None] & (d[None, :] < D), other=0.0)
        s = tl.dot(q, kt) * scale
        if HAS_MASK:
            hidden = tl.load(mask_ptr + mask_first + cols * stride, mask=ok, other=1)
            ok = ok & (hidden == 0)
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _fwd_kernel(Q, K, V, TK, TV, Mask, Out, Lse, n, text_len, heads, scale,
                SPARSITY: tl.constexpr, GROUP: tl.constexpr, HAS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    LANES: tl.constexpr = SPARSITY if GROUP else 1
    tile = tl.program_id(0)
    r, bh, base, stride, count = _program_lane(n, SPARSITY, GROUP)
    b = bh // heads
    if tile * BLOCK_M < count:
        rows_i = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows_i < count
        tok = (base + rows_i * stride).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        io_mask = row_ok[:, None] & (d[None, :] < D)
        q = tl.load(Q + (bh * n + tok)[:, None] * D + d[None, :], mask=io_mask, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        mask_row = Mask + b * (n + text_len)
        for c2 in range(LANES):
            base2, stride2, count2 = _lane(n, r, c2, SPARSITY, GROUP)
            m_i, l_i, acc = _fwd_tile(q, m_i, l_i, acc, K + bh * n * D, V + bh * n * D, mask_row, base2, stride2,
                                      count2, base2, scale, HAS_MASK, D, BLOCK_D, BLOCK_N)
        if HAS_TEXT:
            m_i, l_i, acc = _fwd_tile(q, m_i, l_i, acc, TK + bh * text_len * D, TV + bh * text_len * D, mask_row,
                                      0, 1, text_len, n, scale, HAS_MASK, D, BLOCK_D, BLOCK_N)
        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        tl.store(Out + (bh * n + tok)[:, None] * D + d[None, :], out.to(Out.dtype.element_ty), mask=io_mask)
        lse = tl.where(empty, float("inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))  # +inf: P = 0 in backward
        tl.store(Lse + bh * n + tok, lse, mask=row_ok)


@triton.jit
def _load_keys(k_ptr, v_ptr, mask_ptr, rows, ok, mask_idx, HAS_MASK: tl.constexpr, D: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """K and V rows (BLOCK_N x BLOCK_D) and which of them are visible (in range and not masked)."""
    d = tl.arange(0, BLOCK_D)
    kv_mask = ok[:, None] & (d[None, :] < D)
    k = tl.load(k_ptr + rows[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + rows[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
    if HAS_MASK:
        hidden = tl.load(mask_ptr + mask_idx, mask=ok, other=1)
        ok = ok & (hidden == 0)
    return k, v, ok


@triton.jit
def _bwd_probs(q, do, lse, delta, k, v, visible, scale):
    """P and dS (BLOCK_M x BLOCK_N) of a query block against loaded keys."""
    s = tl.dot(q, tl.trans(k)) * scale
    p = tl.where(visible[None, :], tl.exp(s - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _bwd_dq_kernel(Q, K, V, TK, TV, Mask, DO, Lse, Delta, DQ, n, text_len, heads, scale,
                   SPARSITY: tl.constexpr, GROUP: tl.constexpr, HAS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    LANES: tl.constexpr = SPARSITY if GROUP else 1
    tile = tl.program_id(0)
    r, bh, base, stride, count = _program_lane(n, SPARSITY, GROUP)
    b = bh // heads
    if tile * BLOCK_M < count:
        rows_i = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows_i < count
        tok = (base + rows_i * stride).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        io_mask = row_ok[:, None] & (d[None, :] < D)
        offs = (bh * n + tok)[:, None] * D + d[None, :]
        q = tl.load(Q + offs, mask=io_mask, other=0.0)
        do = tl.load(DO + offs, mask=io_mask, other=0.0)
        lse = tl.load(Lse + bh * n + tok, mask=row_ok, other=float("inf"))
        delta = tl.load(Delta + bh * n + tok, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        mask_row = Mask + b * (n + text_len)
        for c2 in range(LANES):
            base2, stride2, count2 = _lane(n, r, c2, SPARSITY, GROUP)
            for start in range(0, count2, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                ok = cols < count2
                rows = (base2 + cols * stride2).to(tl.int64)
                k, v, visible = _load_keys(K + bh * n * D, V + bh * n * D, mask_row, rows, ok, rows, HAS_MASK, D,
                                           BLOCK_D)
                p, ds = _bwd_probs(q, do, lse, delta, k, v, visible, scale)
                dq += tl.dot(ds.to(k.dtype), k)
        if HAS_TEXT:
            for start in range(0, text_len, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                ok = cols < text_len
                rows = cols.to(tl.int64)
                k, v, visible = _load_keys(TK + bh * text_len * D, TV + bh * text_len * D, mask_row, rows, ok,
                                           n + rows, HAS_MASK, D, BLOCK_D)
                p, ds = _bwd_probs(q, do, lse, delta, k, v, visible, scale)
                dq += tl.dot(ds.to(k.dtype), k)
        tl.store(DQ + offs, (dq * scale).to(DQ.dtype.element_ty), mask=io_mask)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, Mask, DO, Lse, Delta, DK, DV, n, key_len, mask_offset, text_len, heads, scale,
                     SPARSITY: tl.constexpr, GROUP: tl.constexpr, IS_TEXT: tl.constexpr, HAS_MASK: tl.constexpr,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of one key tile. Video keys: program (tile, lane of (bh, r)); text keys: program (tile, bh) and the
    gradient sums over all k sub-sequences."""
    LANES: tl.constexpr = SPARSITY if GROUP else 1
    tile = tl.program_id(0)
    pid = tl.program_id(1)
    if IS_TEXT:
        bh = pid
        r_begin = 0
        r_end = SPARSITY
        kbase = 0
        kstride = 1
        kcount = key_len
    else:
        r_begin, bh, kbase, kstride, kcount = _program_lane(n, SPARSITY, GROUP)
        r_end = r_begin + 1
    b = bh // heads
    if tile * BLOCK_N < kcount:
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < kcount
        krows = (kbase + cols * kstride).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        mask_row = Mask + b * (n + text_len)
        k, v, visible = _load_keys(K + bh * key_len * D, V + bh * key_len * D, mask_row, krows, col_ok,
                                   mask_offset + krows, HAS_MASK, D, BLOCK_D)
        for r in range(r_begin, r_end):
            for c2 in range(LANES):
                base, stride, count = _lane(n, r, c2, SPARSITY, GROUP)
                for start in range(0, count, BLOCK_M):
                    rows_i = start + tl.arange(0, BLOCK_M)
                    row_ok = rows_i < count
                    tok = (base + rows_i * stride).to(tl.int64)
                    offs = (bh * n + tok)[:, None] * D + d[None, :]
                    io_mask = row_ok[:, None] & (d[None, :] < D)
                    q = tl.load(Q + offs, mask=io_mask, other=0.0)
                    do = tl.load(DO + offs, mask=io_mask, other=0.0)
                    lse = tl.load(Lse + bh * n + tok, mask=row_ok, other=float("inf"))
                    delta = tl.load(Delta + bh * n + tok, mask=row_ok, other=0.0)
                    p, ds = _bwd_probs(q, do, lse, delta, k, v, visible, scale)
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do)
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        offs = (bh * key_len + krows)[:, None] * D + d[None, :]
        io_mask = col_ok[:, None] & (d[None, :] < D)
        tl.store(DK + offs, (dk * scale).to(DK.dtype.element_ty), mask=io_mask)
        tl.store(DV + offs, dv.to(DV.dtype.element_ty), mask=io_mask)


def _blocks(d: int, tiles: tuple[int, int]) -> tuple[int, int, int]:
    return triton.next_power_of_2(d), tiles[0] or 64, tiles[1] or 64


def _max_lane(n: int, k: int, group: bool) -> int:
    return -(-n // (k * k)) if group else -(-n // k)


class _TritonSkiparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, text_k, text_v, key_mask, sparsity, group, scale, tiles):
        b, h, n, d = q.shape
        length = 0 if text_k is None else text_k.shape[2]
        block_d, block_m, block_n = _blocks(d, tiles)
        lanes = sparsity if group else 1
        out = torch.empty_like(q)
        lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
        dummy = q.new_empty(0)
        mask = key_mask if key_mask is not None else torch.empty(0, dtype=torch.uint8, device=q.device)
        grid = (triton.cdiv(_max_lane(n, sparsity, group), block_m), b * h * sparsity * lanes)
        _fwd_kernel[grid](q, k, v, text_k if length else dummy, text_v if length else dummy, mask, out, lse, n, length,
                          h, scale, SPARSITY=sparsity, GROUP=bool(group), HAS_TEXT=length > 0,
                          HAS_MASK=key_mask is not None, D=d, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n)
        ctx.save_for_backward(q, k, v, text_k, text_v, key_mask, out, lse)
        ctx.args = (sparsity, group, scale, tiles)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, text_k, text_v, key_mask, out, lse = ctx.saved_tensors
        sparsity, group, scale, tiles = ctx.args
        b, h, n, d = q.shape
        length = 0 if text_k is None else text_k.shape[2]
        block_d, block_m, block_n = _blocks(d, tiles)
        lanes = sparsity if group else 1
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1)
        mask = key_mask if key_mask is not None else torch.empty(0, dtype=torch.uint8, device=q.device)
        dummy = q.new_empty(0)
        flags = dict(SPARSITY=sparsity, GROUP=bool(group), HAS_MASK=key_mask is not None, D=d, BLOCK_D=block_d,
                     BLOCK_M=block_m, BLOCK_N=block_n)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        lane_tiles = triton.cdiv(_max_lane(n, sparsity, group), block_m)
        _bwd_dq_kernel[(lane_tiles, b * h * sparsity * lanes)](
            q, k, v, text_k if length else dummy, text_v if length else dummy, mask, dout, lse, delta, dq, n, length,
            h, scale, HAS_TEXT=length > 0, **flags)
        _bwd_dkdv_kernel[(triton.cdiv(_max_lane(n, sparsity, group), block_n), b * h * sparsity * lanes)](
            q, k, v, mask, dout, lse, delta, dk, dv, n, n, 0, length, h, scale, IS_TEXT=False, **flags)
        dtk = dtv = None
        if length:
            dtk, dtv = torch.empty_like(text_k), torch.empty_like(text_v)
            _bwd_dkdv_kernel[(triton.cdiv(length, block_n), b * h)](
                q, text_k, text_v, mask, dout, lse, delta, dtk, dtv, n, length, n, length, h, scale, IS_TEXT=True,
                **flags)
        return dq, dk, dv, dtk, dtv, None, None, None, None, None


def check_tiles(head_dim: int, tiles: tuple[int, int], on_gpu: bool) -> None:
    """Triton kernel tiles are powers of two >= 16 (0 = 64); on a GPU `tl.dot` also needs the padded head dim >= 16."""
    bad = [t for t in tiles if t and (t < 16 or t & (t - 1))]
    if bad:
        raise ValueError(f"triton_skiparse tile sizes {bad} are not powers of two >= 16 (0 picks 64)")
    if on_gpu and head_dim <= 8:
        raise ValueError(f"triton_skiparse needs head_dim > 8 on a GPU (tl.dot works on tiles of >= 16 lanes; "
                         f"head_dim {head_dim} pads to {1 << max(head_dim - 1, 0).bit_length()}); use the "
                         "'rearrange' skiparse backend for such heads")


def triton_skiparse_attention(q, k, v, *, sparsity: int, group: bool, scale: float, text_k=None, text_v=None,
                              key_mask=None, block_m: int = 0, block_n: int = 0) -> torch.Tensor:
    """Skiparse attention with the Triton kernels (BNSD, original token order).

    key_mask: (B, N + L) over video then text keys, True/1 = masked. block_m/block_n: query/key tile sizes
    (powers of two >= 16; 0 = 64). float32 inputs go through `tl.dot` at Triton's default precision, which is TF32
    on Ampere and newer GPUs (about 1e-3 relative error, like torch with TF32 matmuls enabled).
    """
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"triton_skiparse takes float16/bfloat16/float32 inputs, got {q.dtype}")
    check_tiles(q.shape[-1], (block_m, block_n), on_gpu=q.is_cuda)
    tensors = [t.contiguous() if t is not None else None for t in (q, k, v, text_k, text_v)]
    if key_mask is not None:
        key_mask = key_mask.to(torch.uint8).contiguous()
    return _TritonSkiparse.apply(*tensors, key_mask, sparsity, bool(group), float(scale), (block_m, block_n))
