"""Fused Skiparse attention: the Ascend C kernels (through the CPU shim) against the rearrange reference."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mindspeed_mm.osp.ops.skiparse import skiparse_attention
from mindspeed_mm.osp.ops import ascendc_shim

needs_shim = pytest.mark.skipif(not ascendc_shim.shim_available(), reason="no C++ compiler (g++ >= 12) for the shim")


def group_id(n: torch.Tensor, k: int, group: bool) -> torch.Tensor:
    return (n // k) % k if group else n % k


def dense_masked_attention(q, k, v, sparsity, group, text_k=None, text_v=None, key_mask=None, text_mask=None):
    """Independent index-math reference: dense attention where a video key is visible iff it has the query's
    group id (single: n mod k, group: (n div k) mod k) and is not masked; text keys are visible unless masked."""
    b, h, n, d = q.shape
    ids = group_id(torch.arange(n), sparsity, group)
    hidden = ids[:, None] != ids[None, :]                       # (N, N)
    hidden = hidden[None].expand(b, n, n)
    if key_mask is not None:
        hidden = hidden | key_mask[:, None, :]
    keys, values = k.float(), v.float()
    if text_k is not None:
        t_hidden = torch.zeros(b, n, text_k.shape[2], dtype=torch.bool) if text_mask is None else \
            text_mask[:, None, :].expand(b, n, text_k.shape[2])
        hidden = torch.cat([hidden, t_hidden], dim=2)
        keys, values = torch.cat([keys, text_k.float()], 2), torch.cat([values, text_v.float()], 2)
    scores = q.float() @ keys.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(hidden[:, None], float("-inf"))
    probs = torch.nan_to_num(torch.softmax(scores, -1), nan=0.0)
    return probs @ values


def make_inputs(b, h, n, d, text=0, mask_frac=0.0, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))
    tk = tv = tm = km = None
    if text:
        tk, tv = (torch.randn(b, h, text, d, generator=g).to(dtype) for _ in range(2))
    if mask_frac:
        km = torch.rand(b, n, generator=g) < mask_frac
        if text:
            tm = torch.rand(b, text, generator=g) < mask_frac
    return dict(q=q, k=k, v=v, text_k=tk, text_v=tv, key_mask=km, text_mask=tm)


def run(backend, inputs, sparsity, group, grad_out=None):
    leaves = {name: t.clone().requires_grad_(grad_out is not None) if t is not None and t.is_floating_point() else t
              for name, t in inputs.items()}
    out = skiparse_attention(leaves["q"], leaves["k"], leaves["v"], text_k=leaves["text_k"], text_v=leaves["text_v"],
                             key_mask=leaves["key_mask"], text_mask=leaves["text_mask"], sparsity=sparsity,
                             group=group, backend=backend)
    grads = {}
    if grad_out is not None:
        out.float().backward(grad_out)
        grads = {name: t.grad for name, t in leaves.items() if t is not None and t.is_floating_point()}
    return out, grads


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


# (sparsity, group, tokens, head_dim, text tokens, masked fraction); token counts are not multiples of k^2
CASES = [
    (1, False, 37, 64, 0, 0.0),
    (1, True, 40, 80, 3, 0.2),
    (2, False, 45, 64, 0, 0.3),
    (2, True, 50, 96, 5, 0.0),
    (4, False, 70, 128, 0, 0.2),
    (4, True, 75, 80, 4, 0.3),
    (8, False, 130, 96, 0, 0.0),
    (8, True, 150, 64, 6, 0.2),
]


@pytest.mark.parametrize("sparsity,group,n,d,text,mask_frac", CASES)
def test_reference_matches_index_rules(sparsity, group, n, d, text, mask_frac):
    x = make_inputs(2, 2, n, d, text, mask_frac, dtype=torch.float32)
    out, _ = run("reference", x, sparsity, group)
    want = dense_masked_attention(x["q"], x["k"], x["v"], sparsity, group, x["text_k"], x["text_v"], x["key_mask"],
                                  x["text_mask"])
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@needs_shim
@pytest.mark.parametrize("sparsity,group,n,d,text,mask_frac", CASES)
def test_shim_forward_backward_match_reference(sparsity, group, n, d, text, mask_frac):
    x = make_inputs(2, 2, n, d, text, mask_frac)
    grad_out = torch.randn(2, 2, n, d, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = run("reference", x, sparsity, group, grad_out)
    out, grads = run("ascendc_shim", x, sparsity, group, grad_out)
    assert (out.float() - ref.float()).abs().max().item() < 2e-3
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 5e-3, name
    assert ascendc_shim.library().skiparse_shim_violations() == 0


@needs_shim
@pytest.mark.parametrize("group", [False, True])
def test_shim_multi_tile_and_blocks(group):
    """Small tiles so lanes span several query and key tiles (with tails), spread over 3 kernel blocks."""
    sparsity, n, d = 2, 150, 64
    x = make_inputs(1, 2, n, d, text=20, mask_frac=0.2, seed=3)
    grad_out = torch.randn(1, 2, n, d, generator=torch.Generator().manual_seed(4))
    ref, ref_grads = run("reference", x, sparsity, group, grad_out)
    leaves = [x[name].clone().requires_grad_() for name in ("q", "k", "v", "text_k", "text_v")]
    mask = torch.cat([x["key_mask"], x["text_mask"]], 1)
    out = ascendc_shim.shim_skiparse_attention(*leaves[:3], sparsity=sparsity, group=group, scale=d ** -0.5,
                                               text_k=leaves[3], text_v=leaves[4], key_mask=mask, block_rows=8,
                                               block_cols=16, block_dim=3)
    out.float().backward(grad_out)
    assert (out.float() - ref.float()).abs().max().item() < 2e-3
    for leaf, name in zip(leaves, ("q", "k", "v", "text_k", "text_v")):
        assert rel_err(leaf.grad, ref_grads[name]) < 5e-3, name


@needs_shim
def test_shim_bfloat16():
    x = make_inputs(1, 2, 60, 64, text=4, mask_frac=0.2, dtype=torch.bfloat16)
    grad_out = torch.randn(1, 2, 60, 64, generator=torch.Generator().manual_seed(2))
    ref, ref_grads = run("reference", x, 4, True, grad_out)
    out, grads = run("ascendc_shim", x, 4, True, grad_out)
    assert (out.float() - ref.float()).abs().max().item() < 1.6e-2  # bf16 has 8 mantissa bits
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 3e-2, name


@needs_shim
def test_shim_fully_masked_rows_give_zeros():
    x = make_inputs(2, 1, 33, 64)
    x["key_mask"] = torch.zeros(2, 33, dtype=torch.bool)
    x["key_mask"][1] = True  # batch 1: no visible key at all
    out, grads = run("ascendc_shim", x, 2, False, torch.ones(2, 1, 33, 64))
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()
    assert torch.all(grads["q"][1] == 0) and torch.isfinite(grads["k"]).all()
    ref, _ = run("reference", x, 2, False)
    assert (out.float() - ref.float()).abs().max().item() < 2e-3


def test_bad_inputs_are_explained():
    x = make_inputs(1, 1, 16, 64, dtype=torch.float32)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        skiparse_attention(x["q"], x["k"], x["v"], sparsity=2, group=False, backend="ascendc_shim")
    with pytest.raises(TypeError, match="boolean"):
        skiparse_attention(x["q"], x["k"], x["v"], sparsity=2, group=False, key_mask=torch.zeros(1, 16))
    with pytest.raises(ValueError, match="text_k/text_v"):
        skiparse_attention(x["q"], x["k"], x["v"], sparsity=2, group=False, text_mask=torch.zeros(1, 3).bool())
    with pytest.raises(ValueError, match="unknown skiparse backend"):
        skiparse_attention(x["q"], x["k"], x["v"], sparsity=2, group=False, backend="nope")
    with pytest.raises(RuntimeError, match="not usable here"):
        skiparse_attention(x["q"], x["k"], x["v"], sparsity=2, group=False, backend="ascendc")


def test_rearrange_over_attention_backend_matches_reference():
    x = make_inputs(2, 2, 50, 64, text=3, mask_frac=0.2, dtype=torch.float32)
    ref, _ = run("reference", x, 4, True)
    out, _ = run("rearrange:sdpa", x, 4, True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    auto, _ = run(None, x, 4, True)  # CPU tensors: rearrange over the default attention backend
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=1e-5)


def _run_shim_snippet(code: str, strict: bool) -> subprocess.CompletedProcess:
    """Run `code` in a fresh process (aborts must not kill pytest) with `lib` = the shim library (no torch import)."""
    env = dict(os.environ, ASCENDC_SHIM_STRICT="1" if strict else "0")
    prelude = f"import ctypes\nimport numpy as np\nlib = ctypes.CDLL({str(ascendc_shim.build_library())!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=120)


COPY_SNIPPET = """
    src = np.arange(1, 25, dtype=np.float16)
    dst = np.zeros(24, dtype=np.float16)
    lib.shim_selftest_copy(ctypes.c_void_p(src.ctypes.data), ctypes.c_void_p(dst.ctypes.data), 24)
    lib.skiparse_shim_truncated_copies.restype = ctypes.c_long
    print("copied", int((dst == src).sum()), "truncated", lib.skiparse_shim_truncated_copies())
"""

# fwd + bwd of SkiparseAttention(Grad) on random fp16 data through the C entry points; prints the violation count
KERNEL_SNIPPET = """
    B, H, N, L, D, K, GROUP, BR, BC = 2, 2, 75, 5, 80, 4, 1, {br}, {bc}
    rng = np.random.default_rng(0)
    def arr(*shape, dtype=np.float16): return rng.standard_normal(shape).astype(dtype)
    q, k, v, o, do, dq, dk, dv = (arr(B, H, N, D) for _ in range(8))
    tk, tv, dtk, dtv = (arr(B, H, L, D) for _ in range(4))
    mask = (rng.random((B, N + L)) < 0.2).astype(np.uint8)
    mx, sm = arr(B, H, N, 8, dtype=np.float32), arr(B, H, N, 8, dtype=np.float32)
    P = lambda a: ctypes.c_void_p(a.ctypes.data)
    U, F = ctypes.c_uint32, ctypes.c_float
    dims = [U(x) for x in (B, H, N, L, D, K, GROUP)] + [F(0.1)] + [U(BR), U(BC), U(3)]
    rc = lib.skiparse_shim_forward(0, P(q), P(k), P(v), P(tk), P(tv), P(mask), P(o), P(mx), P(sm), *dims)
    rc += lib.skiparse_shim_backward(0, P(q), P(k), P(v), P(tk), P(tv), P(mask), P(o), P(do), P(mx), P(sm), P(dq),
                                     P(dk), P(dv), P(dtk), P(dtv), *dims)
    lib.skiparse_shim_violations.restype = ctypes.c_long
    print("rc", rc, "violations", lib.skiparse_shim_violations(), "finite", bool(np.isfinite(dq).all()))
"""


@needs_shim
def test_misaligned_copy_rounds_down_like_hardware():
    res = _run_shim_snippet(COPY_SNIPPET, strict=False)
    assert res.returncode == 0, res.stderr
    # 24 halves = 48 bytes: only the first 32-byte block (16 halves) moves; both GM copies are truncated
    assert "copied 16 truncated 2" in res.stdout
    assert "not a multiple of 32 bytes" in res.stderr


@needs_shim
def test_strict_mode_aborts_on_misaligned_copy():
    res = _run_shim_snippet(COPY_SNIPPET, strict=True)
    assert res.returncode != 0
    assert "strict mode violation: DataCopy of 24 elements (48 bytes) is not a multiple of 32 bytes" in res.stderr


@needs_shim
def test_strict_mode_aborts_on_queue_misuse_and_ub_overflow():
    res = _run_shim_snippet("lib.shim_selftest_queue()", strict=True)
    assert res.returncode != 0 and "FreeTensor of a tensor still in the queue" in res.stderr
    res = _run_shim_snippet(KERNEL_SNIPPET.format(br=256, bc=256), strict=False)
    assert res.returncode != 0 and "UB overflow" in res.stderr


@needs_shim
def test_kernels_pass_strict_mode():
    res = _run_shim_snippet(KERNEL_SNIPPET.format(br=16, bc=32), strict=True)
    assert res.returncode == 0, res.stderr
    assert "rc 0 violations 0 finite True" in res.stdout


def test_triton_kernels_are_opt_in_and_reject_shapes_a_gpu_cannot_compile():
    from mindspeed_mm.osp.ops.skiparse import resolve_backend

    for kind in ("cuda", "cpu"):
        assert resolve_backend(None, torch.device(kind))[1] == "rearrange"
    pytest.importorskip("triton")
    from mindspeed_mm.osp.ops.triton_skiparse import check_tiles

    with pytest.raises(ValueError, match="head_dim > 8 on a GPU"):
        check_tiles(8, (0, 0), on_gpu=True)
    check_tiles(8, (0, 0), on_gpu=False)   # the CPU interpreter takes any head dim
    check_tiles(72, (16, 64), on_gpu=True)
    with pytest.raises(ValueError, match="powers of two >= 16"):
        check_tiles(64, (8, 64), on_gpu=False)
    with pytest.raises(ValueError, match="powers of two >= 16"):
        check_tiles(64, (16, 48), on_gpu=False)
