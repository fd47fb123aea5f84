"""v1.3 inpaint (image-to-video) training conditioning: mask types, sampling, condition noise, caption drop."""
import math

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.pipelines.conditioning import compress_mask
from mindspeed_mm.osp.training.inpaint import (DEFAULT_IMAGE_CAPTION, DEFAULT_VIDEO_CAPTION, MASK_TYPES,
                                               InpaintConfig, add_condition_noise, inpaint_caption,
                                               inpaint_condition, mask_video, pixel_mask, sample_mask_type,
                                               temporal_mask, wfvae_encode_fn)


def rng(seed=0):
    return np.random.default_rng(seed)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def vae():
    from mindspeed_mm.osp.vae.model import WFVAE
    torch.manual_seed(0)
    return WFVAE.from_preset("tiny_v13").eval()


# ---------------------------------------------------------------------------------------------- temporal masks
@pytest.mark.parametrize("frames", [9, 17])
def test_deterministic_mask_types(frames):
    ones = [1.0] * frames
    expected = {
        "t2iv": ones,
        "i2v": [0.0] + ones[1:],
        "transition": [0.0] + ones[2:] + [0.0],
        "clear": [0.0] * frames,
    }
    for name, values in expected.items():
        mask = temporal_mask(name, frames, rng())
        assert mask.dtype == torch.float32 and mask.shape == (frames,)
        assert mask.tolist() == values, name


def test_single_frame_masks():
    assert temporal_mask("t2iv", 1, rng()).tolist() == [1.0]
    assert temporal_mask("clear", 1, rng()).tolist() == [0.0]
    assert temporal_mask("i2v", 1, rng()).tolist() == [0.0]


@pytest.mark.parametrize("frames", [9, 17])
def test_continuation_gives_a_prefix_of_uniform_length(frames):
    r = rng(1)
    counts = np.zeros(frames + 1, dtype=int)
    for _ in range(3000):
        mask = temporal_mask("continuation", frames, r)
        n = int((mask == 0).sum())
        assert mask.tolist() == [0.0] * n + [1.0] * (frames - n)
        counts[n] += 1
    # n uniform on 0..F inclusive (official random.randint(floor(F*0), ceil(F*1)))
    assert (counts > 0).all()
    expected = 3000 / (frames + 1)
    assert np.abs(counts - expected).max() < 0.45 * expected


def test_continuation_ratio_bounds():
    r = rng(2)
    seen = {int((temporal_mask("continuation", 9, r, 0.5, 0.5) == 0).sum()) for _ in range(200)}
    assert seen == {4, 5}  # floor(4.5) .. ceil(4.5)


@pytest.mark.parametrize("frames", [9, 17])
def test_random_temporal_invariants(frames):
    r = rng(3)
    counts = np.zeros(frames + 1, dtype=int)
    given_per_frame = np.zeros(frames)
    non_prefix = 0
    draws = 3000
    for _ in range(draws):
        mask = temporal_mask("random_temporal", frames, r)
        assert set(mask.tolist()) <= {0.0, 1.0}
        n = int((mask == 0).sum())
        counts[n] += 1
        given_per_frame += (mask == 0).numpy()
        non_prefix += mask.tolist() != [0.0] * n + [1.0] * (frames - n)
    assert (counts > 0).all()  # 0..F given frames all occur
    # E[n] = F/2 and the frames are chosen uniformly: each frame is given about half of the time
    assert np.abs(given_per_frame / draws - 0.5).max() < 0.05
    assert non_prefix > draws // 2  # scattered, not a prefix


def test_masks_are_deterministic_given_the_seed():
    a = [temporal_mask("random_temporal", 17, r).tolist() for r in [rng(7)] for _ in range(5)]
    b = [temporal_mask("random_temporal", 17, r).tolist() for r in [rng(7)] for _ in range(5)]
    c = [temporal_mask("random_temporal", 17, r).tolist() for r in [rng(8)] for _ in range(5)]
    assert a == b and a != c


# ---------------------------------------------------------------------------------------------- type sampling
def test_video_type_frequencies_follow_weights():
    config, r, draws = InpaintConfig(), rng(4), 20000
    seen = [sample_mask_type(config, False, r) for _ in range(draws)]
    official = {"t2iv": 1, "i2v": 8, "transition": 8, "continuation": 2, "clear": 0, "random_temporal": 1}
    for name, w in official.items():
        assert abs(seen.count(name) / draws - w / 20) < 0.012, name
    assert "clear" not in seen


def test_image_types_are_t2i_and_clear_half_each():
    config, r, draws = InpaintConfig(), rng(5), 4000
    seen = [sample_mask_type(config, True, r) for _ in range(draws)]
    assert set(seen) == {"t2iv", "clear"}
    assert abs(seen.count("clear") / draws - 0.5) < 0.03


def test_custom_weights_and_zero_weight_type():
    config = InpaintConfig(video_weights={"i2v": 3, "transition": 1, "t2iv": 0})
    r = rng(6)
    seen = [sample_mask_type(config, False, r) for _ in range(4000)]
    assert set(seen) == {"i2v", "transition"}
    assert abs(seen.count("i2v") / 4000 - 0.75) < 0.03


# ---------------------------------------------------------------------------------------------- condition noise
def _batch():
    video = torch.rand(3, 3, 5, 8, 8, generator=gen(11)) * 2 - 1
    mask = torch.stack([temporal_mask(t, 5, rng()) for t in ("i2v", "transition", "clear")])
    return video, mask.view(3, 1, 5, 1, 1).expand(-1, -1, -1, 8, 8)


def test_condition_noise_only_on_given_frames():
    video, mask = _batch()
    out = add_condition_noise(video, mask, InpaintConfig(noise_skip_prob=0.0), gen(12))
    diff = out - video
    generated = mask.expand_as(video) >= 0.5
    assert torch.equal(diff[generated], torch.zeros_like(diff[generated]))
    assert (diff[~generated] != 0).all()
    # per-sample sigma = exp(N(-3, 0.5)), in the documented draw order: B uniforms, B normals, noise
    g = gen(12)
    torch.rand(3, generator=g)
    sigma = torch.exp(torch.randn(3, generator=g) * 0.5 - 3.0)
    for i in range(3):
        given = ~generated[i]
        measured = diff[i][given].std().item()
        assert measured == pytest.approx(sigma[i].item(), rel=0.15)
    assert len({round(s, 6) for s in sigma.tolist()}) == 3
    # deterministic given the generator seed
    assert torch.equal(out, add_condition_noise(video, mask, InpaintConfig(noise_skip_prob=0.0), gen(12)))


def test_condition_noise_skip_returns_input():
    video, mask = _batch()
    out = add_condition_noise(video, mask, InpaintConfig(noise_skip_prob=1.0), gen(13))
    assert torch.equal(out, video)


def test_condition_noise_skip_rate_is_five_percent():
    b = 4000
    video = torch.zeros(b, 3, 1, 2, 2)
    mask = torch.zeros(b, 1, 1, 2, 2)  # everything given
    out = add_condition_noise(video, mask, InpaintConfig(), gen(14))
    clean = (out == video).flatten(1).all(dim=1)
    noisy = (out != video).flatten(1).all(dim=1)
    assert bool((clean | noisy).all())  # a sample is either skipped or noised everywhere it is given
    assert abs(clean.float().mean().item() - 0.05) < 0.012


# ---------------------------------------------------------------------------------------------- full condition
def test_mask_video_blanks_to_black():
    video = torch.full((1, 3, 3, 8, 8), 0.5)
    mask = torch.tensor([0.0, 1.0, 0.0]).view(1, 1, 3, 1, 1).expand(1, 1, 3, 8, 8)
    out = mask_video(video, mask)
    assert out[:, :, 1].eq(-1).all() and out[:, :, [0, 2]].eq(0.5).all()


def test_inpaint_condition_shapes_and_mask_channels(vae):
    video = torch.rand(2, 3, 9, 16, 16, generator=gen(20)) * 1.6 - 0.8
    types = ["i2v", "transition"]
    config = InpaintConfig()
    latent, channels = inpaint_condition(video, types, wfvae_encode_fn(vae, gen(21)), config, rng(22), gen(23))
    assert latent.shape == (2, vae.latent_dim, 3, 2, 2)
    assert channels.shape == (2, 4, 3, 2, 2)
    expected = compress_mask(pixel_mask(types, 9, 16, 16, rng(22), config), 4)
    assert torch.equal(channels, expected)
    # hand-checked: frame 0 (repeated 4x) is latent step 0; frame 8 is channel 3 of latent step 2
    assert channels[0, :, 0].eq(0).all() and channels[0, :, 1:].eq(1).all()
    assert channels[1, :, 0].eq(0).all() and channels[1, :, 1].eq(1).all()
    assert channels[1, :3, 2].eq(1).all() and channels[1, 3, 2].eq(0).all()


def test_inpaint_condition_encodes_the_masked_video(vae):
    video = torch.rand(2, 3, 9, 16, 16, generator=gen(30)) * 2 - 1
    seen = []
    encode = wfvae_encode_fn(vae, gen(31))

    def capture(x):
        seen.append(x.clone())
        return encode(x)

    # t2iv: every frame generated -> all black, and no condition noise reaches it
    latent, _ = inpaint_condition(video, ["t2iv", "t2iv"], capture, InpaintConfig(noise_skip_prob=0.0), rng(), gen())
    assert torch.equal(seen[0], torch.full_like(video, -1.0))
    reference = vae.scale_latents(vae.encode(seen[0]).sample(gen(31)))
    torch.testing.assert_close(latent, reference)
    # clear without noise: the clip itself; i2v with noise: frame 0 noisy, the rest black
    inpaint_condition(video, ["clear", "i2v"], capture, InpaintConfig(condition_noise=False), rng(), gen())
    assert torch.equal(seen[1][0], video[0])
    assert torch.equal(seen[1][1, :, 0], video[1, :, 0]) and seen[1][1, :, 1:].eq(-1).all()
    inpaint_condition(video, ["clear", "i2v"], capture, InpaintConfig(noise_skip_prob=0.0), rng(), gen())
    assert not torch.equal(seen[2][1, :, 0], video[1, :, 0]) and seen[2][1, :, 1:].eq(-1).all()


def test_noisy_condition_outside_unit_range_still_encodes(vae):
    video = torch.ones(1, 3, 5, 16, 16)
    config = InpaintConfig(noise_skip_prob=0.0, noise_log_sigma_mean=-1.0, noise_log_sigma_std=0.0)
    latent, channels = inpaint_condition(video, ["clear"], wfvae_encode_fn(vae), config, rng(), gen(40))
    assert latent.shape == (1, vae.latent_dim, 2, 2, 2) and channels.eq(0).all()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):  # what the plain encode would have done
        vae.encode(add_condition_noise(video, torch.zeros(1, 1, 5, 16, 16), config, gen(40)))


def test_inpaint_condition_checks(vae):
    video = torch.zeros(2, 3, 9, 16, 16)
    with pytest.raises(ValueError, match="mask types for a batch"):
        inpaint_condition(video, ["i2v"], wfvae_encode_fn(vae), InpaintConfig(), rng(), gen())
    with pytest.raises(ValueError, match="temporal_factor=2"):
        inpaint_condition(video, ["i2v", "i2v"], wfvae_encode_fn(vae), InpaintConfig(), rng(), gen(),
                          temporal_factor=2)


# ---------------------------------------------------------------------------------------------- captions
def test_caption_dropout_rates():
    config, r, draws = InpaintConfig(), rng(50), 40000
    out = [inpaint_caption("a cat", config, r) for _ in range(draws)]
    assert abs(out.count("") / draws - 0.05) < 0.006
    assert abs(out.count(DEFAULT_VIDEO_CAPTION) / draws - 0.05) < 0.006
    assert out.count("a cat") + out.count("") + out.count(DEFAULT_VIDEO_CAPTION) == draws
    assert DEFAULT_VIDEO_CAPTION == "The video showcases a scene with coherent and clear visuals."
    images = [inpaint_caption("a cat", config, r, is_image=True) for _ in range(4000)]
    assert DEFAULT_IMAGE_CAPTION in images and DEFAULT_VIDEO_CAPTION not in images


def test_caption_never_dropped_at_zero():
    r = rng(51)
    assert all(inpaint_caption("x", InpaintConfig(caption_dropout=0.0), r) == "x" for _ in range(1000))


# ---------------------------------------------------------------------------------------------- validation
def test_validation_errors():
    with pytest.raises(ValueError, match="random_temporal") as err:
        InpaintConfig(video_weights={"i2v": 1, "random_spatial": 1})
    assert "random_spatial" in str(err.value)
    with pytest.raises(ValueError, match="non-negative"):
        InpaintConfig(video_weights={"i2v": -1, "t2iv": 2})
    with pytest.raises(ValueError, match="no positive weight"):
        InpaintConfig(image_weights={"t2iv": 0, "clear": 0})
    with pytest.raises(ValueError, match="caption_dropout"):
        InpaintConfig(caption_dropout=1.5)
    with pytest.raises(ValueError, match="min_clear_ratio"):
        InpaintConfig(min_clear_ratio=0.8, max_clear_ratio=0.2)
    with pytest.raises(ValueError, match="known mask types"):
        temporal_mask("outpaint", 9, rng())
    assert MASK_TYPES == ("t2iv", "i2v", "transition", "continuation", "clear", "random_temporal")
    assert math.isclose(sum(InpaintConfig().weights(False).values()), 1.0)
