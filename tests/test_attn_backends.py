"""Every attention backend against `reference` on CPU; NPU and flash-attn backends run through CPU emulators."""
from __future__ import annotations

import contextlib

import pytest
import torch

from mindspeed_mm.osp.ops import attention as A
from mindspeed_mm.osp.ops.emulation import emulate_flash_attn, emulate_torch_npu

B, N, SQ, SK, D = 2, 3, 5, 7, 8
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def _make(layout, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, N, s, D, generator=g) for s in (SQ, SK, SK))
    return tuple(A.from_bnsd(t, layout).to(dtype).contiguous() for t in (q, k, v))


def _masks():
    g = torch.Generator().manual_seed(1)
    pad = torch.zeros(B, 1, 1, SK, dtype=torch.bool)
    pad[0, ..., 5:] = True
    pad[1, ..., 2:] = True                                   # key padding, different lengths per sample
    general = torch.rand(B, 1, SQ, SK, generator=g) > 0.6
    general[1, 0, 3] = True                                  # one fully masked query row
    per_head = torch.rand(B, N, SQ, SK, generator=g) > 0.5
    square = torch.rand(SQ, SK, generator=g) > 0.5           # (Sq, Sk), broadcast over B and N
    dead = torch.zeros(B, 1, 1, SK, dtype=torch.bool)
    dead[1] = True                                           # a sample with every key masked
    return {"none": None, "key_padding": pad, "general": general, "per_head": per_head, "square": square,
            "dead_sample": dead}


MASKS = _masks()


def _env(backend):
    if backend == "npu_fusion":
        return emulate_torch_npu()
    if backend == "flash_attn":
        return emulate_flash_attn()
    return contextlib.nullcontext()


def _check(backend, layout, mask_name, dtype, scale=None):
    q, k, v = _make(layout, dtype)
    mask = MASKS[mask_name]
    heads = N if layout in ("BSH", "SBH") else None
    want = A.attention(q, k, v, layout=layout, mask=mask, scale=scale, backend="reference", heads=heads)
    with _env(backend):
        got = A.attention(q, k, v, layout=layout, mask=mask, scale=scale, backend=backend, heads=heads)
    assert got.shape == want.shape and got.dtype == dtype
    assert (got.float() - want.float()).abs().max().item() <= TOL[dtype]
    return got


@pytest.mark.parametrize("layout", A.LAYOUTS)
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("backend", ["sdpa", "npu_fusion"])
def test_backend_matches_reference_fp32(backend, layout, mask_name):
    _check(backend, layout, mask_name, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "npu_fusion", "flash_attn"])
@pytest.mark.parametrize("mask_name", ["none", "key_padding", "dead_sample"])
def test_backend_matches_reference_half(backend, mask_name, dtype):
    _check(backend, "BSND", mask_name, dtype)


@pytest.mark.parametrize("layout", A.LAYOUTS)
def test_flash_attn_layouts_and_scale(layout):
    _check("flash_attn", layout, "key_padding", torch.float16, scale=0.05)


@pytest.mark.parametrize("backend", ["sdpa", "npu_fusion"])
def test_custom_scale(backend):
    _check(backend, "BSH", "general", torch.float32, scale=0.7)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "npu_fusion", "flash_attn"])
def test_fully_masked_rows_are_zero(backend):
    dtype = torch.float16 if backend == "flash_attn" else torch.float32
    q, k, v = _make("BNSD", dtype)
    mask = MASKS["dead_sample"]
    with _env(backend):
        out = A.attention(q, k, v, mask=mask, backend=backend)
    assert torch.count_nonzero(out[1]) == 0
    assert torch.isfinite(out).all() and torch.count_nonzero(out[0]) > 0


def test_flash_attn_rejects_general_mask():
    q, k, v = _make("BNSD", torch.float16)
    with emulate_flash_attn(), pytest.raises(ValueError, match="key-padding masks only"):
        A.attention(q, k, v, mask=MASKS["general"], backend="flash_attn")


def test_flash_attn_accepts_key_padding_repeated_over_queries():
    """The official code repeats key-padding masks over the query axis (B1SS); that is still key padding."""
    q, k, v = _make("BNSD", torch.float16)
    mask = MASKS["key_padding"].expand(B, 1, SQ, SK)
    want = A.attention(q, k, v, mask=mask, backend="reference")
    with emulate_flash_attn():
        got = A.attention(q, k, v, mask=mask, backend="flash_attn")
    assert (got.float() - want.float()).abs().max() <= TOL[torch.float16]


def test_flash_attn_rejects_fp32():
    q, k, v = _make("BNSD", torch.float32)
    with emulate_flash_attn(), pytest.raises(TypeError, match="float16/bfloat16"):
        A.attention(q, k, v, backend="flash_attn")


def test_availability_follows_the_machine_outside_emulation():
    import importlib.util

    from mindspeed_mm.osp import platform

    has_flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    assert ("npu_fusion" in A.available_backends()) == platform.npu_available()
    assert ("flash_attn" in A.available_backends()) == has_flash
    if not platform.npu_available():
        with pytest.raises(RuntimeError, match="not usable here"):
            A.get_backend("npu_fusion")
    with emulate_torch_npu(), emulate_flash_attn():
        assert {"npu_fusion", "flash_attn"} <= set(A.available_backends())


@pytest.mark.parametrize("layout,expected", [("BNSD", "BNSD"), ("BSND", "BSND"), ("BSH", "BSND"), ("SBH", "SBH")])
def test_npu_layout_avoids_copies(layout, expected):
    q, k, v = _make(layout, torch.float16)
    views = [A.to_bnsd(t, layout, heads=N) for t in (q, k, v)]
    chosen, tensors = A._npu_layout(*views)
    assert chosen == expected
    assert all(t.data_ptr() == s.data_ptr() and t.is_contiguous() for t, s in zip(tensors, (q, k, v)))


def test_npu_mask_shapes_are_the_ones_the_op_accepts():
    assert A._npu_mask(MASKS["key_padding"], B, N, SQ, SK).shape == (B, 1, SQ, SK)
    assert A._npu_mask(MASKS["square"], B, N, SQ, SK).shape == (1, 1, SQ, SK)
    assert A._npu_mask(MASKS["per_head"], B, N, SQ, SK).shape == (B, N, SQ, SK)
    assert A._npu_mask(torch.zeros(1, N, SQ, SK, dtype=torch.bool), B, N, SQ, SK).shape == (B, N, SQ, SK)
    with pytest.raises(ValueError, match="does not broadcast"):
        A._npu_mask(torch.zeros(3, 1, SQ, SK, dtype=torch.bool), B, N, SQ, SK)


def test_non_bool_mask_rejected():
    q, k, v = _make("BNSD", torch.float32)
    with pytest.raises(TypeError, match="boolean"):
        A.attention(q, k, v, mask=torch.zeros(SQ, SK), backend="reference")
