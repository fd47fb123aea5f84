"""The analytic FLOPs formula (training/flops.py) against torch's FlopCounterMode, and the MFU helpers.

FlopCounterMode counts exactly the ops the formula counts (mm/addmm/bmm, convolution, the attention kernels)
and, like the formula, no elementwise op, so the two must agree exactly: any difference is a formula bug.
The attention runs on the "reference" backend (plain matmuls): on CPU the "sdpa" backend lands in
`_scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode has no formula for, so the count would
miss the attention.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dit_helpers import one_torch_thread  # noqa: F401
from mindspeed_mm.osp.dit import OSP13DiT, SUVDiT
from mindspeed_mm.osp.ops import attention as attention_ops
from mindspeed_mm.osp.training.flops import (
    PEAK_FLOPS, forward_flops, forward_flops_breakdown, mfu, peak_flops_for_device, training_flops,
)

TEXT_LEN = 12
# (C, T, H, W): 3*4*4 = 48 video tokens (no Skiparse padding for k = 2, 4) and 3*3*5 = 45 (padded to 48)
SHAPES = [(8, 3, 8, 8), (8, 3, 6, 10)]


@pytest.fixture(autouse=True)
def reference_attention(monkeypatch):
    monkeypatch.setattr(attention_ops, "_default_backend", "reference")


def text_mask(batch: int) -> torch.Tensor:
    mask = torch.ones(batch, 1, TEXT_LEN)
    mask[0, 0, TEXT_LEN - 4:] = 0  # a padded prompt: masked keys still cost their matmul work
    return mask


def count_suv(model: SUVDiT, shape, batch: int = 2, device: str = "cpu", **kwargs) -> int:
    cfg = model.config
    with torch.device(device):
        args = (torch.randn(batch, *shape), torch.full((batch,), 500.0),
                torch.randn(batch, TEXT_LEN, cfg.caption_channels), text_mask(batch),
                torch.randn(batch, cfg.pooled_projection_dim))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*args, **kwargs)
    return counter.get_total_flops()


def count_osp13(model: OSP13DiT, shape, batch: int = 2, device: str = "cpu", **kwargs) -> int:
    cfg = model.config
    with torch.device(device):
        args = (torch.randn(batch, *shape), torch.full((batch,), 500),
                torch.randn(batch, 1, TEXT_LEN, cfg.caption_channels), text_mask(batch))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*args, **kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("shape", SHAPES)
def test_suv_formula_matches_flop_counter(shape):
    model = SUVDiT.from_preset("osp15_suv_tiny", device="cpu")
    assert count_suv(model, shape, batch=2) == 2 * forward_flops(model.config, shape, TEXT_LEN)


@pytest.mark.parametrize("inpaint", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_osp13_formula_matches_flop_counter(shape, inpaint):
    cfg = dataclasses.replace(OSP13DiT.from_preset("osp13_tiny", device="meta").config, inpaint=inpaint)
    model = OSP13DiT(cfg)
    if inpaint:
        shape = (2 * cfg.in_channels + cfg.vae_scale_factor_t,) + shape[1:]
    assert count_osp13(model, shape, batch=2) == 2 * forward_flops(cfg, shape, TEXT_LEN)


def test_released_configs_match_flop_counter_on_meta():
    """The full-size presets on the meta device (shapes only, no memory): 2835 video tokens, padded to 2880
    for k = 8; v1.3's 32 blocks exercise the dense blocks 0, 1, 30, 31."""
    suv = SUVDiT.from_preset("osp15_suv_8b")
    shape = (32, 9, 30, 42)
    assert count_suv(suv, shape, batch=1, device="meta") == forward_flops(suv.config, shape, TEXT_LEN)
    v13 = OSP13DiT.from_preset("osp13_t2v_2b")
    shape = (8, 9, 30, 42)
    assert count_osp13(v13, shape, batch=1, device="meta") == forward_flops(v13.config, shape, TEXT_LEN)


def test_larger_skiparse_ratio_means_fewer_attention_flops():
    shape = (8, 4, 16, 16)  # 256 video tokens, so N/k > L for every k below
    suv = SUVDiT.from_preset("osp15_suv_tiny", device="cpu")
    v13 = OSP13DiT.from_preset("osp13_tiny", device="cpu")
    for model, count, plans in ((suv, count_suv, ([1, 2, 2, 2, 1], [1, 4, 4, 4, 1], [1, 8, 8, 8, 1])),
                                (v13, count_osp13, (2, 4, 8))):
        split = []
        for plan in plans:
            cfg = dataclasses.replace(model.config, sparse_n=plan)
            assert count(model, shape, batch=1, sparsity=plan) == forward_flops(cfg, shape, TEXT_LEN)
            split.append(forward_flops_breakdown(cfg, shape, TEXT_LEN))
        assert split[0]["attention"] > split[1]["attention"] > split[2]["attention"]
        assert split[0]["linear"] == split[1]["linear"] == split[2]["linear"]
    # v1.3 self-attention with k groups costs 1/k of dense: 4 * D * N^2 / k per sparse block
    n, d = 4 * 8 * 8, v13.config.hidden_size
    sparse_blocks = v13.config.num_layers - 2
    attn = {k: forward_flops_breakdown(dataclasses.replace(v13.config, sparse_n=k), shape, TEXT_LEN)["attention"]
            for k in (2, 4)}
    assert attn[2] - attn[4] == sparse_blocks * (4 * d * n * n // 2 - 4 * d * n * n // 4)


def test_suv_text_repeated_per_group_is_counted():
    """SUV appends all L text tokens to every group: k * (N/k + L)^2, so with N/k < L a larger k costs more."""
    cfg = SUVDiT.from_preset("osp15_suv_tiny").config
    shape, text = (8, 1, 8, 8), 64  # 16 video tokens
    attn = [forward_flops_breakdown(dataclasses.replace(cfg, sparse_n=[1, k, k, k, 1]), shape, text)["attention"]
            for k in (1, 2)]
    d, blocks = cfg.hidden_size, 6
    assert attn[1] - attn[0] == blocks * 4 * d * (2 * (8 + text) ** 2 - (16 + text) ** 2)


def test_training_flops_is_three_or_four_forwards():
    cfg = SUVDiT.from_preset("osp15_suv_tiny").config
    fwd = forward_flops(cfg, SHAPES[0], TEXT_LEN)
    assert training_flops(cfg, SHAPES[0], TEXT_LEN) == 3 * fwd
    assert training_flops(cfg, SHAPES[0], TEXT_LEN, recompute=True) == 4 * fwd


def test_bad_inputs_are_refused():
    cfg = SUVDiT.from_preset("osp15_suv_tiny").config
    with pytest.raises(ValueError, match="channels"):
        forward_flops(cfg, (4, 3, 8, 8), TEXT_LEN)
    with pytest.raises(ValueError, match="divisible"):
        forward_flops(cfg, (8, 3, 7, 8), TEXT_LEN)
    with pytest.raises(TypeError):
        forward_flops(object(), (8, 3, 8, 8), TEXT_LEN)


def test_mfu_and_device_peaks():
    assert mfu(6e15, 2.0, 1e16) == pytest.approx(6e15 / 2.0 / 1e16)
    with pytest.raises(ValueError):
        mfu(1e15, 0.0, 1e15)
    assert peak_flops_for_device("cpu") is None
    assert peak_flops_for_device(torch.device("cpu")) is None
    assert peak_flops_for_device(None) is None
    assert peak_flops_for_device("NVIDIA H100 80GB HBM3") == PEAK_FLOPS["H100 SXM"] == 989e12
    assert peak_flops_for_device("NVIDIA H200") == PEAK_FLOPS["H200"]
    assert peak_flops_for_device("NVIDIA A100-SXM4-80GB") == PEAK_FLOPS["A100"] == 312e12
    for unknown in ("NVIDIA H100 PCIe", "NVIDIA GeForce RTX 4090", "Ascend910B3"):
        assert peak_flops_for_device(unknown) is None
