"""VideoPipeline on the tiny random presets (real tiny DiT and WF-VAE, tiny random text encoders)."""
from __future__ import annotations

import pytest
import torch

from mindspeed_mm.osp.pipelines import BlockOffload, VideoGeometry, build_preset, load_pipeline, save_pipeline
from mindspeed_mm.osp.pipelines.conditioning import compress_mask, masked_video_and_mask

SIZE = dict(num_frames=9, height=32, width=48)


@pytest.fixture(scope="module")
def pipe13():
    return build_preset("tiny-osp13-random")


def test_geometry_names_nearest_valid_values_and_pads():
    g = VideoGeometry(temporal_factor=4)
    assert g.resolve(93, 352, 640) == (93, 352, 640)
    with pytest.raises(ValueError, match=r"num_frames 95 .*91 or 95|nearest: 93 or 97"):
        g.resolve(95, 352, 640)
    with pytest.raises(ValueError, match=r"height 350 is not a multiple of 16 \(nearest: 336 or 352\)"):
        g.resolve(93, 350, 640)
    assert g.resolve(95, 350, 641, pad=True) == (97, 352, 656)
    assert VideoGeometry(temporal_factor=8).valid_frames(120) == (113, 121)
    assert g.latent_shape(93, 352, 640) == (24, 44, 80)


def test_compress_mask_repeats_the_first_frame_like_the_causal_vae():
    video, mask = masked_video_and_mask({0: torch.zeros(3, 16, 16)}, 9, 16, 16)
    assert float(video[0, :, 0].abs().max()) == 0 and float(video[0, :, 1:].max()) == -1  # black where generated
    m = compress_mask(mask, temporal_factor=4)
    assert m.shape == (1, 4, 3, 2, 2)
    assert float(m[:, :, 0].max()) == 0.0  # latent frame 0 = the given first frame (repeated 4x)
    assert float(m[:, :, 1:].min()) == 1.0
    _, mask_last = masked_video_and_mask({-1: torch.zeros(3, 16, 16)}, 9, 16, 16)
    m_last = compress_mask(mask_last, 4)
    assert float(m_last[:, 3, 2].max()) == 0.0 and float(m_last[:, :3, 2].min()) == 1.0


def test_seeded_sampling_is_reproducible_and_batch_independent(pipe13):
    a = pipe13(["a cat"], seeds=[3], steps=2, output_latents=True, **SIZE)
    assert a.shape == (1, 4, 3, 4, 6) and torch.isfinite(a).all()
    assert torch.equal(a, pipe13(["a cat"], seeds=[3], steps=2, output_latents=True, **SIZE))
    assert not torch.equal(a, pipe13(["a cat"], seeds=[4], steps=2, output_latents=True, **SIZE))
    both = pipe13(["a dog", "a cat"], seeds=[7, 3], steps=2, output_latents=True, **SIZE)
    torch.testing.assert_close(both[1:], a, rtol=0, atol=1e-4)


def test_guidance_and_negative_prompt_change_the_result(pipe13):
    base = pipe13(["a cat"], seeds=[1], steps=1, output_latents=True, **SIZE)
    no_cfg = pipe13(["a cat"], seeds=[1], steps=1, guidance_scale=1.0, output_latents=True, **SIZE)
    neg = pipe13(["a cat"], negative_prompts=["rain"], seeds=[1], steps=1, output_latents=True, **SIZE)
    assert not torch.allclose(base, no_cfg) and not torch.allclose(base, neg)


def test_pad_crops_back_and_bad_sizes_are_rejected(pipe13):
    with pytest.raises(ValueError, match="nearest"):
        pipe13(["a cat"], steps=1, num_frames=8, height=32, width=48)
    out = pipe13(["a cat"], steps=1, num_frames=8, height=30, width=40, pad=True, guidance_scale=1.0)
    assert out.shape == (1, 3, 8, 30, 40)


def test_save_and_load_round_trip(pipe13, tmp_path):
    folder = pipe13.save_pretrained(tmp_path / "pipe")
    for name in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / name).exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pipeline(pipe13, folder)
    save_pipeline(pipe13, folder, overwrite=True)  # replaced atomically
    loaded = type(pipe13).from_pretrained(folder)
    assert loaded.defaults == pipe13.defaults and loaded.template is pipe13.template   # the model's own settings
    a = pipe13(["a cat"], seeds=[2], steps=1, **SIZE)
    b = loaded(["a cat"], seeds=[2], steps=1, **SIZE)
    assert torch.equal(a, b)
    import shutil
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="no vae/ component folder"):
        load_pipeline(folder)


def test_block_offload_gives_the_same_video(pipe13):
    ref = pipe13(["a cat"], seeds=[5], steps=2, output_latents=True, **SIZE)
    off = BlockOffload(pipe13.transformer, "cpu")
    try:
        out = pipe13(["a cat"], seeds=[5], steps=2, output_latents=True, **SIZE)
    finally:
        off.remove()
    assert torch.equal(ref, out)
    assert off.loads == 2 * len(pipe13.transformer.transformer_blocks)  # each block streamed once per step


def test_freed_text_encoders_give_a_clear_error():
    pipe = build_preset("tiny-osp13-random")
    pipe.free_text_encoders = True
    pipe(["a cat"], steps=1, guidance_scale=1.0, **SIZE)
    assert pipe.text is None
    with pytest.raises(RuntimeError, match="freed"):
        pipe(["a cat"], steps=1, **SIZE)


def test_bf16_sampling_runs_and_stays_close_to_fp32(pipe13):
    ref = pipe13(["a cat"], seeds=[1], steps=1, guidance_scale=1.0, output_latents=True, **SIZE)
    pipe = build_preset("tiny-osp13-random").to("cpu", torch.bfloat16)
    out = pipe(["a cat"], seeds=[1], steps=1, guidance_scale=1.0, output_latents=True, **SIZE)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())


def test_image_to_video_uses_the_conditioning_frames():
    pipe = build_preset("tiny-osp13-i2v-random")
    g = torch.Generator().manual_seed(0)
    img_a, img_b = torch.rand(3, 32, 48, generator=g) * 2 - 1, torch.rand(3, 32, 48, generator=g) * 2 - 1
    kw = dict(seeds=[1], steps=1, guidance_scale=1.0, output_latents=True, **SIZE)
    a = pipe(["a cat"], frames={0: img_a}, **kw)
    b = pipe(["a cat"], frames={0: img_b}, **kw)
    c = pipe(["a cat"], frames={0: img_a, -1: img_b}, **kw)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="conditioning frames"):
        pipe(["a cat"], steps=1, **SIZE)


def test_text_to_video_weights_reject_images(pipe13):
    with pytest.raises(ValueError, match="inpainting"):
        pipe13(["a cat"], steps=1, frames={0: torch.zeros(3, 32, 48)}, **SIZE)


def test_sequential_guidance_matches_batched():
    # v1.5 (flow matching): the Euler step does not amplify float32 rounding the way the first zero-SNR
    # v-prediction step of v1.3 does (sigma ~ 4096 there)
    pipe = build_preset("tiny-osp15-random")
    kw = dict(seeds=[6], steps=2, output_latents=True, num_frames=9, height=32, width=48)
    ref = pipe(["a cat"], **kw)
    pipe.sequential_cfg = True
    out = pipe(["a cat"], **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert not torch.equal(out, pipe(["a cat"], **dict(kw, guidance_scale=1.0)))


def test_memory_estimate_uses_exact_released_parameter_counts():
    from mindspeed_mm.osp.pipelines.memory import estimate

    e = estimate("v1.5", 121, 576, 1024)
    assert e.denoiser_params == 8_504_661_120  # spec dit.md 3.1
    assert e.tokens == 16 * 36 * 64 + 512 and e.hidden == 3072
    assert e.denoiser_bytes == 2 * 8_504_661_120
    assert estimate("v1.3", 93, 352, 640).denoiser_params == 2_771_981_600  # spec dit.md 2.1


def test_chunked_vae_decode_equals_whole_clip(pipe13):
    latents = pipe13(["a cat"], seeds=[2], steps=1, guidance_scale=1.0, output_latents=True, **SIZE)
    whole = pipe13.decode(latents)
    pipe13.vae_chunk_frames = 1
    try:
        chunked = pipe13.decode(latents)
    finally:
        pipe13.vae_chunk_frames = None
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_parts_that_do_not_fit_are_named(pipe13):
    from mindspeed_mm.osp.pipelines import VideoPipeline
    from mindspeed_mm.osp.vae import WFVAE

    with pytest.raises(ValueError, match="temporal compression 4"):
        VideoPipeline("v1.3", pipe13.transformer, WFVAE.from_preset("tiny_v15"), pipe13.text, pipe13.sampler)
    with pytest.raises(ValueError, match="caption_channels=32"):
        from mindspeed_mm.osp.text import TextConditioner
        from mindspeed_mm.osp.text.tiny import tiny_t5_encoder, tiny_tokenizer

        VideoPipeline("v1.3", pipe13.transformer, pipe13.vae, TextConditioner(tiny_t5_encoder(16), tiny_tokenizer(8), 8),
                      pipe13.sampler)
