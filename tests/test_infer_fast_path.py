"""The v1.5 sampling fast path (dit/suv_fast.py) against the reference `SUVDiT.forward`, on tiny random models."""
from __future__ import annotations

import pytest
import torch

from mindspeed_mm.osp.dit import SUVConfig, SUVDiT
from mindspeed_mm.osp.dit.suv_fast import FastSUV
from mindspeed_mm.osp.pipelines import build_preset
from mindspeed_mm.osp.pipelines.presets import TINY_SUV

ATOL = 2e-5  # float32 rounding of a different summation order (outputs are O(1))


def _model(zero_init_skips=True, **overrides) -> SUVDiT:
    torch.manual_seed(0)
    config = dict(TINY_SUV, num_layers=[1, 2, 1, 1, 1], sparse_n=[1, 2, 4, 2, 1],
                  skip_connection_zero_init=zero_init_skips, **overrides)
    model = SUVDiT(SUVConfig.from_official(config)).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the zero/identity inits, so every path matters
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(model, grid, text_len, text_mask, batch=2):
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    t, h, w = grid
    x = torch.randn(batch, cfg.in_channels, t, 2 * h, 2 * w, generator=g)
    timestep = torch.tensor([900.0, 250.0][:batch])
    text = torch.randn(batch, 1, text_len, cfg.caption_channels, generator=g)
    pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=g)
    return x, timestep, text, text_mask, pooled


def _masks(kind, text_len):
    m = torch.ones(2, 1, text_len)
    if kind == "tail":          # the tokenizer's padding: masked in every prompt past the longer one
        m[0, :, 5:] = 0
        m[1, :, 9:] = 0
    elif kind == "holes":       # not a prefix; one position masked in both prompts
        m[:, :, 3] = 0
        m[0, :, 7:] = 0
    elif kind == "empty":       # every text key of one prompt masked
        m[0] = 0
        m[1, :, 4:] = 0
    return None if kind == "none" else m


@pytest.mark.parametrize("grid", [(2, 4, 4), (3, 5, 6)])                 # 32 tokens; 90 (padding for k = 2, 4)
@pytest.mark.parametrize("mask", ["none", "tail", "holes", "empty"])
@pytest.mark.parametrize("share", [False, True])
def test_fast_path_equals_the_reference_forward(grid, mask, share):
    model = _model()
    x, t, text, text_mask, pooled = _inputs(model, grid, 12, _masks(mask, 12))
    with torch.no_grad():
        ref = model(x, t, text, text_mask, pooled)
        fast = FastSUV(model)
        fast.text_sharing = share  # the shared-text Skiparse attention, or the reference's joint attention
        step = fast.bind(text, text_mask, pooled)
        out = step(x, t)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
        # the same bound sample at another step, and at another latent size (the grid-dependent tables rebuilt)
        torch.testing.assert_close(step(x.flip(2), t.flip(0)), model(x.flip(2), t.flip(0), text, text_mask, pooled),
                                   rtol=0, atol=ATOL)
        x2 = x[:, :, :, :4, :6]
        torch.testing.assert_close(step(x2, t), model(x2, t, text, text_mask, pooled), rtol=0, atol=ATOL)


@pytest.mark.parametrize("sparsity", ["dense", 4, [1, 4, 2, 2, 1]])
def test_fast_path_follows_the_sparsity_plan_and_skip_layers(sparsity):
    model = _model(zero_init_skips=False)  # skips with a LayerNorm over [x | skip]
    model.set_sparsity([1, 2, 2, 4, 1])
    x, t, text, text_mask, pooled = _inputs(model, (2, 4, 6), 10, _masks("tail", 10))
    with torch.no_grad():
        torch.testing.assert_close(FastSUV(model).bind(text, text_mask, pooled)(x, t),
                                   model(x, t, text, text_mask, pooled), rtol=0, atol=ATOL)
        torch.testing.assert_close(FastSUV(model).bind(text, text_mask, pooled, sparsity=sparsity)(x, t),
                                   model(x, t, text, text_mask, pooled, sparsity=sparsity), rtol=0, atol=ATOL)


def test_small_weights_are_fused_and_big_ones_are_not():
    model = _model()
    x, t, text, text_mask, pooled = _inputs(model, (2, 4, 4), 8, None)
    fused, unfused = FastSUV(model), FastSUV(model, fuse_limit_bytes=0)
    assert fused.qkv[0].weight is not None and unfused.qkv[0].weight is None
    with torch.no_grad():
        torch.testing.assert_close(unfused.bind(text, None, pooled)(x, t), fused.bind(text, None, pooled)(x, t),
                                   rtol=0, atol=ATOL)


def test_unsupported_models_are_named():
    model = _model()
    assert FastSUV.unsupported(model) is None
    assert "inference" in FastSUV.unsupported(_model().train())
    assert "float32" in FastSUV.unsupported(_model().to(torch.bfloat16))
    hooked = _model()
    hooked.transformer_blocks[0].register_forward_hook(lambda *a: None)
    assert "hooks" in FastSUV.unsupported(hooked)
    with pytest.raises(ValueError, match="FastSUV"):
        FastSUV(_model().train())


@pytest.mark.parametrize("cfg_mode", ["batch", "sequential"])
def test_pipeline_fast_path_gives_the_reference_latents(cfg_mode):
    pipe = build_preset("tiny-osp15-random")
    pipe.sequential_cfg = cfg_mode == "sequential"
    kw = dict(seeds=[4], steps=3, output_latents=True, num_frames=9, height=32, width=48)
    assert pipe.fast_path_problem() is None
    fast = pipe(["a cat on a red car"], **kw)
    pipe.fast_denoiser = False
    assert "switched off" in pipe.fast_path_problem()
    ref = pipe(["a cat on a red car"], **kw)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)
    assert not torch.equal(fast, pipe(["a cat on a red car"], **dict(kw, seeds=[5])))


def test_default_model_fast_path_gives_the_reference_latents():
    from mindspeed_mm.osp.pipelines import default_model, load_pipeline

    if default_model() is None:
        pytest.skip("no embedded default model in this install")
    pipe = load_pipeline(default_model())
    kw = dict(seeds=[0], steps=4, output_latents=True)
    assert pipe.fast_path_problem() is None
    fast = pipe(["a red circle moving to the right"], **kw)
    pipe.fast_denoiser = False
    ref = pipe(["a red circle moving to the right"], **kw)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-4)


def test_pipeline_falls_back_where_the_fast_path_is_not_valid():
    assert "v1.3" in build_preset("tiny-osp13-random").fast_path_problem()
    pipe = build_preset("tiny-osp15-random")
    pipe.enable_block_offload()
    assert "offload" in pipe.fast_path_problem()
    pipe = build_preset("tiny-osp15-random")
    pipe.forward_fn = lambda model, **kw: model(**kw)
    assert "parallel" in pipe.fast_path_problem()
    pipe = build_preset("tiny-osp15-random").to(dtype=torch.bfloat16)
    assert "float32" in pipe.fast_path_problem()
