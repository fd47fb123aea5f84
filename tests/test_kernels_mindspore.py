"""The Ascend C Skiparse kernels inside MindSpore: ops.Custom(func_type="aot") on CPU through the shim, with bprop."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.ops import ascendc_shim
from mindspeed_mm.osp.ops.skiparse import skiparse_attention

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mindspore") is None, reason="mindspore is not installed"),
    pytest.mark.skipif(not ascendc_shim.shim_available(), reason="no C++ compiler (g++ >= 12) for the shim"),
]


def test_mindspore_aot_forward_and_bprop_match_reference():
    import mindspore as ms

    from mindspeed_mm.osp.ops.ascendc_mindspore import skiparse_attention_cpu_shim

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    b, h, n, d, length, k = 1, 2, 45, 64, 3, 2
    rng = np.random.default_rng(0)
    q, key, v = (rng.standard_normal((b, h, n, d)).astype(np.float16) for _ in range(3))
    tk, tv = (rng.standard_normal((b, h, length, d)).astype(np.float16) for _ in range(2))
    key_mask, text_mask = rng.random((b, n)) < 0.2, rng.random((b, length)) < 0.2
    mask = ms.Tensor(np.concatenate([key_mask, text_mask], 1).astype(np.uint8))
    grad_out = rng.standard_normal((b, h, n, d)).astype(np.float32)

    def run(*args):
        return skiparse_attention_cpu_shim(*args[:3], sparsity=k, group=True, scale=d ** -0.5, text_k=args[3],
                                           text_v=args[4], key_mask=mask)

    def loss(*args):
        return (run(*args).astype(ms.float32) * ms.Tensor(grad_out)).sum()

    args = [ms.Tensor(x) for x in (q, key, v, tk, tv)]
    out = run(*args).asnumpy().astype(np.float32)
    grads = ms.grad(loss, grad_position=(0, 1, 2, 3, 4))(*args)

    leaves = [torch.tensor(x).requires_grad_() for x in (q, key, v, tk, tv)]
    ref = skiparse_attention(*leaves[:3], text_k=leaves[3], text_v=leaves[4], key_mask=torch.tensor(key_mask),
                             text_mask=torch.tensor(text_mask), sparsity=k, group=True, backend="reference")
    ref.float().backward(torch.tensor(grad_out))
    assert np.abs(out - ref.detach().float().numpy()).max() < 2e-3
    for got, leaf in zip(grads, leaves):
        want = leaf.grad.float().numpy()
        assert np.abs(got.asnumpy().astype(np.float32) - want).max() / np.abs(want).max() < 5e-3
