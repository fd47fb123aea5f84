"""Self-checks of the CPU emulators of torch_npu / MindSpore / flash-attn fused ops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.ops.emulation import mindspore_fa_emulator as msfa
from mindspeed_mm.osp.ops.emulation import torch_npu_emulator as npu

TRIU = npu.compressed_causal_mask()


def _qkv(b=2, n=4, sq=6, sk=6, d=16, n_kv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, n, sq, d, generator=g).to(dtype)
    k = torch.randn(b, n_kv or n, sk, d, generator=g).to(dtype)
    v = torch.randn(b, n_kv or n, sk, d, generator=g).to(dtype)
    return q, k, v


def _ref(q, k, v, mask, scale):
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(mask, float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return p @ v.double()


def test_mode0_explicit_triu_equals_mode2():
    q, k, v = _qkv()
    explicit = torch.ones(6, 6, dtype=torch.bool).triu(1)
    a = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=explicit, scale=0.25, sparse_mode=0)
    b = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=TRIU, scale=0.25, sparse_mode=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert (a[0].double() - _ref(q, k, v, explicit, 0.25)).abs().max() < 1e-5


def test_bsh_mode3_equals_bnsd_mode2_and_mode3_is_bottom_right():
    q, k, v = _qkv()
    bsh = [t.transpose(1, 2).reshape(2, 6, 64) for t in (q, k, v)]
    a = npu.npu_fusion_attention(*bsh, 4, "BSH", atten_mask=TRIU, scale=0.25, sparse_mode=3)[0]
    b = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=TRIU, scale=0.25, sparse_mode=2)[0]
    # the same math on another memory layout: equal up to float rounding (the matmul blocking differs by CPU)
    torch.testing.assert_close(a, b.transpose(1, 2).reshape(2, 6, 64), rtol=0, atol=1e-6)
    q, k, v = _qkv(sq=3, sk=7)
    i, j = torch.arange(3)[:, None], torch.arange(7)[None]
    out = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=TRIU, scale=0.3, sparse_mode=3)[0]
    assert (out.double() - _ref(q, k, v, j > i + 4, 0.3)).abs().max() < 1e-5
    out2 = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=TRIU, scale=0.3, sparse_mode=2)[0]
    assert (out2.double() - _ref(q, k, v, j > i, 0.3)).abs().max() < 1e-5


def test_mode4_band_and_mode0_pre_next():
    q, k, v = _qkv(sq=5, sk=8)
    i, j = torch.arange(5)[:, None], torch.arange(8)[None]
    rel = j - i - 3
    out = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=TRIU, scale=0.3, sparse_mode=4,
                                   pre_tockens=2, next_tockens=1)[0]
    assert (out.double() - _ref(q, k, v, (rel > 1) | (rel < -2), 0.3)).abs().max() < 1e-5
    given = torch.zeros(5, 8, dtype=torch.bool)
    given[:, 0] = True
    out0 = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=given, scale=0.3, sparse_mode=0,
                                    pre_tockens=1, next_tockens=2)[0]
    band = (j - i > 2) | (i - j > 1)   # mode 0: top-left origin
    assert (out0.double() - _ref(q, k, v, given | band, 0.3)).abs().max() < 1e-5
    # no mask given in mode 0: pre/next are ignored
    free = npu.npu_fusion_attention(q, k, v, 4, "BNSD", scale=0.3, pre_tockens=0, next_tockens=0)[0]
    assert (free.double() - _ref(q, k, v, None, 0.3)).abs().max() < 1e-5


def test_gqa_layouts_and_softmax_stats():
    q, k, v = _qkv(n=4, n_kv=2, sq=5, sk=9)
    out, smax, ssum, sin, seed, offset, numels = npu.npu_fusion_attention(q, k, v, 4, "BNSD", scale=0.2)
    want = _ref(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), None, 0.2)
    assert (out.double() - want).abs().max() < 1e-5
    assert smax.shape == ssum.shape == (2, 4, 5, 8) and smax.dtype == ssum.dtype == torch.float32
    assert sin.numel() == 0 and (seed, offset, numels) == (0, 0, 0)
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.2
    assert torch.allclose(smax[..., 0], s.amax(-1), atol=1e-6)
    assert torch.allclose(ssum[..., 3], torch.exp(s - s.amax(-1, keepdim=True)).sum(-1), atol=1e-5)
    for layout, conv in (("BSND", lambda t: t.transpose(1, 2)),
                         ("SBH", lambda t: t.permute(2, 0, 1, 3).flatten(2))):
        o = npu.npu_fusion_attention(*(conv(t).contiguous() for t in (q, k, v)), 4, layout, scale=0.2)[0]
        # the same math on another memory layout: equal up to float rounding (matmul blocking differs by CPU)
        torch.testing.assert_close(o, conv(out), rtol=0, atol=1e-6)


def test_tnd_matches_per_sample():
    q, k, v = _qkv(b=1, n=2, sq=9, sk=9)
    tq, tk, tv = (t[0].transpose(0, 1).contiguous() for t in (q, k, v))   # (T, N, D)
    out, smax, *_ = npu.npu_fusion_attention(tq, tk, tv, 2, "TND", atten_mask=TRIU, scale=0.3, sparse_mode=3,
                                             actual_seq_qlen=[4, 9], actual_seq_kvlen=[4, 9])
    assert smax.shape == (9, 2, 8)
    for lo, hi in ((0, 4), (4, 9)):
        part = npu.npu_fusion_attention(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], 2, "BNSD",
                                        atten_mask=TRIU, scale=0.3, sparse_mode=3)[0]
        assert torch.allclose(out[lo:hi], part[0].transpose(0, 1), atol=1e-6)


def test_fp16_probabilities_are_cast_before_pv():
    q, k, v = _qkv(dtype=torch.float16, sq=16, sk=16)
    out = npu.npu_fusion_attention(q, k, v, 4, "BNSD", scale=0.25)[0]
    assert out.dtype == torch.float16
    err = (out.double() - _ref(q, k, v, None, 0.25)).abs().max()
    assert 0 < err < 2e-3


def test_fully_masked_rows():
    q, k, v = _qkv(sq=3, sk=4)
    mask = torch.zeros(2, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = True
    out, smax, ssum, *_ = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=mask, scale=0.5)
    assert torch.count_nonzero(out[0, :, 1]) == 0 and torch.isneginf(smax[0, :, 1]).all()
    assert torch.count_nonzero(ssum[0, :, 1]) == 0 and torch.isfinite(out).all()


def test_documented_input_rules_are_enforced():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="BNSS/B1SS/11SS/SS"):
        npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=torch.zeros(2, 1, 1, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or uint8"):
        npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=torch.zeros(6, 6))
    with pytest.raises(ValueError, match="compressed 2048x2048"):
        npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=torch.ones(6, 6, dtype=torch.bool).triu(1),
                                 sparse_mode=2)
    with pytest.raises(NotImplementedError, match="dropout"):
        npu.npu_fusion_attention(q, k, v, 4, "BNSD", keep_prob=0.9)
    with pytest.raises(ValueError, match="head_num"):
        npu.npu_fusion_attention(q, k, v, 2, "BNSD")
    u8 = torch.ones(6, 6, dtype=torch.uint8).triu(1)
    a = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=u8)[0]
    b = npu.npu_fusion_attention(q, k, v, 4, "BNSD", atten_mask=TRIU, sparse_mode=2)[0]
    assert torch.equal(a, b)


def test_rms_norm_rstd_shape_and_values():
    x = torch.randn(24, 1, 16, dtype=torch.float16)
    y, rstd = npu.npu_rms_norm(x, torch.rand(16), epsilon=1e-6)
    assert y.dtype == torch.float16 and rstd.dtype == torch.float32 and rstd.shape == (24, 1, 1)
    _, rstd2 = npu.npu_rms_norm(torch.randn(3, 4, 5, 6), torch.rand(5, 6))
    assert rstd2.shape == (3, 4, 1, 1)
    xf = x.float()
    assert torch.allclose(rstd, 1 / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6))
    npu.npu_rms_norm(x.bfloat16(), torch.rand(16))                       # fp32 gamma with half x: allowed
    for x_dtype, gamma_dtype in ((torch.float16, torch.bfloat16), (torch.float32, torch.float16)):
        with pytest.raises(TypeError, match="gamma must have x's dtype"):
            npu.npu_rms_norm(x.to(x_dtype), torch.rand(16, dtype=gamma_dtype))


def test_rotary_mul_half_and_interleave():
    x = torch.randn(1, 2, 3, 8)
    theta = torch.randn(1, 1, 3, 4)
    c, s = torch.cos(theta), torch.sin(theta)
    half = npu.npu_rotary_mul(x, torch.cat((c, c), -1), torch.cat((s, s), -1), "half")
    assert torch.allclose(half[..., :4], x[..., :4] * c - x[..., 4:] * s, atol=1e-6)
    inter = npu.npu_rotary_mul(x, c.repeat_interleave(2, -1), s.repeat_interleave(2, -1), "interleave")
    z = torch.view_as_complex(x.reshape(1, 2, 3, 4, 2)) * torch.polar(torch.ones_like(theta), theta)
    assert torch.allclose(inter, torch.view_as_real(z).flatten(-2), atol=1e-6)
    with pytest.raises(ValueError, match="4-D"):
        npu.npu_rotary_mul(x[0], c[0], s[0])


def test_mindspore_primitive_output_order_and_rules():
    q, k, v = _qkv(dtype=torch.float16)
    bsh = [t.transpose(1, 2).reshape(2, 6, 64) for t in (q, k, v)]
    op = msfa.FlashAttentionScore(head_num=4, scale_value=0.25, input_layout="BSH", sparse_mode=2)
    smax, ssum, sout, out = op(*bsh, attn_mask=TRIU)
    want = npu.npu_fusion_attention(*bsh, 4, "BSH", atten_mask=TRIU, scale=0.25, sparse_mode=2)
    assert torch.equal(out, want[0]) and torch.equal(smax, want[1]) and torch.equal(ssum, want[2])
    assert smax.shape == (2, 4, 6, 8) and sout.numel() == 0
    fn = msfa.flash_attention_score(*(t.numpy() for t in bsh), 4, attn_mask=TRIU.numpy(), scalar_value=0.25,
                                    sparse_mode=2)
    assert isinstance(fn, np.ndarray) and np.array_equal(fn, out.numpy())
    with pytest.raises(TypeError, match="float16/bfloat16"):
        op(*(t.float() for t in bsh), attn_mask=TRIU)
    with pytest.raises(ValueError, match="multiple of 16"):
        msfa.FlashAttentionScore(head_num=8, input_layout="BSH")(*bsh)


def test_mindspore_tensor_round_trip():
    ms = pytest.importorskip("mindspore", reason="mindspore not installed")
    q, k, v = _qkv(dtype=torch.float16)
    op = msfa.FlashAttentionScore(head_num=4, scale_value=0.25, input_layout="BNSD")
    out = op(*(ms.Tensor(t.numpy()) for t in (q, k, v)))[3]
    assert isinstance(out, ms.Tensor)
    assert np.array_equal(out.asnumpy(), npu.npu_fusion_attention(q, k, v, 4, "BNSD", scale=0.25)[0].numpy())
