"""Triton Skiparse kernels against the rearrange reference. Without a GPU they run in the Triton interpreter
(TRITON_INTERPRET=1, CPU, tiny shapes); the shared test venv has no triton, so this module then skips."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton); the Triton Skiparse kernels are not tested",
                allow_module_level=True)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are decorated

from mindspeed_mm.osp.ops.skiparse import skiparse_attention  # noqa: E402
from mindspeed_mm.osp.ops.triton_skiparse import triton_skiparse_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("sparsity,group,n,d,text", [(2, False, 45, 64, 5), (2, True, 38, 80, 0), (4, True, 40, 64, 3)])
def test_triton_forward_backward_match_reference(sparsity, group, n, d, text):
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(1, 2, n, d, generator=g).half() for _ in range(3)]
    txt = [torch.randn(1, 2, text, d, generator=g).half() for _ in range(2)] if text else [None, None]
    key_mask = torch.rand(1, n, generator=g) < 0.25
    text_mask = torch.rand(1, text, generator=g) < 0.25 if text else None
    grad_out = torch.randn(1, 2, n, d, generator=g)

    ref_in = [t.clone().requires_grad_() if t is not None else None for t in base + txt]
    ref = skiparse_attention(*ref_in[:3], text_k=ref_in[3], text_v=ref_in[4], key_mask=key_mask,
                             text_mask=text_mask, sparsity=sparsity, group=group, backend="reference")
    ref.float().backward(grad_out)

    tri_in = [t.to(DEVICE).clone().requires_grad_() if t is not None else None for t in base + txt]
    mask = key_mask if text_mask is None else torch.cat([key_mask, text_mask], 1)
    out = triton_skiparse_attention(*tri_in[:3], sparsity=sparsity, group=group, scale=d ** -0.5, text_k=tri_in[3],
                                    text_v=tri_in[4], key_mask=mask.to(DEVICE), block_m=16, block_n=16)
    out.float().backward(grad_out.to(DEVICE))

    assert (out.cpu().float() - ref.float()).abs().max().item() < 2e-3
    for got, want in zip(tri_in, ref_in):
        if want is not None:
            err = (got.grad.cpu().float() - want.grad.float()).abs().max() / want.grad.float().abs().max()
            assert err.item() < 5e-3


def test_triton_fully_masked_rows_give_zeros():
    q, k, v = (torch.randn(2, 1, 20, 64).half().to(DEVICE).requires_grad_() for _ in range(3))
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1] = True  # batch 1 sees no key
    out = triton_skiparse_attention(q, k, v, sparsity=2, group=False, scale=0.125, key_mask=mask.to(DEVICE),
                                    block_m=16, block_n=16)
    out.float().sum().backward()
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()
    assert torch.all(q.grad[1] == 0) and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    ref = skiparse_attention(q.detach().cpu(), k.detach().cpu(), v.detach().cpu(), sparsity=2, group=False,
                             key_mask=mask, scale=0.125, backend="reference")
    assert (out.detach().cpu().float() - ref.float()).abs().max().item() < 2e-3
