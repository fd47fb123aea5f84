"""Training-side conditioning of the v1.3 image-to-video (inpainting) DiT, `OpenSoraInpaint_v1_3`.

The DiT input is `[noisy latent (C) | VAE latent of the masked video (C) | compressed mask (temporal_factor)]` on
dim 1 (spec dit.md section 5). This module builds the last two parts from a clean training clip, following the
official v1.3 trainer (`train_inpaint.py` + `Inpaint_dataset` + `mask_utils.py`):

1. a mask type per sample (weighted draw; videos and images have their own weights) gives a temporal pixel mask,
   1 = frame to generate, 0 = frame given;
2. the frames to generate are blanked: the official dataset multiplies the uint8 frames by `mask < 0.5` *before*
   scaling to [-1, 1], so a blanked frame is black, -1, exactly what the inference pipeline feeds
   (`pipelines.conditioning.masked_video_and_mask`);
3. optional condition-noise augmentation on the given frames only, sigma = exp(N(-3, 0.5)) per sample;
4. the blanked (noisy) video is VAE-encoded; the pixel mask is not encoded but compressed with
   `pipelines.conditioning.compress_mask` (the official `MaskCompressor`).

Captions are dropped as the official inpaint dataset does (`inpaint_caption`). All randomness comes from the
`numpy.random.Generator` / `torch.Generator` passed in, so a run is reproducible from its seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from mindspeed_mm.osp.pipelines.conditioning import compress_mask

# Order of the official `MaskType` enum.
MASK_TYPES: Tuple[str, ...] = ("t2iv", "i2v", "transition", "continuation", "clear", "random_temporal")

DEFAULT_VIDEO_CAPTION = "The video showcases a scene with coherent and clear visuals."
DEFAULT_IMAGE_CAPTION = "The image showcases a scene with coherent and clear visuals."


def _default_video_weights() -> Dict[str, float]:
    # scripts/train_configs/mask_config.yaml, mask_type_ratio_dict_video
    return {"t2iv": 1.0, "i2v": 8.0, "transition": 8.0, "continuation": 2.0, "clear": 0.0, "random_temporal": 1.0}


def _default_image_weights() -> Dict[str, float]:
    # The official yaml writes {t2iv: 0, clear: 0}; its normaliser (`type_ratio_normalize`) turns an all-zero dict
    # into a uniform one, so images were trained 50% t2i / 50% clear. We state that effective ratio directly and
    # reject all-zero weights instead of silently making them uniform.
    return {"t2iv": 1.0, "clear": 1.0}


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _check_weights(name: str, weights: Dict[str, float]) -> None:
    unknown = sorted(set(weights) - set(MASK_TYPES))
    if unknown:
        raise ValueError(f"{name}: unknown mask type(s) {unknown}; known mask types: {list(MASK_TYPES)}")
    for key, w in weights.items():
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{name}[{key!r}] must be a finite non-negative weight, got {w}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{name} has no positive weight ({weights}); give at least one mask type a weight > 0")


def _check_mask_type(mask_type: str) -> None:
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask type {mask_type!r}; known mask types: {list(MASK_TYPES)}")


@dataclass
class InpaintConfig:
    """Settings of the v1.3 inpaint conditioning; the defaults are the official training ones.

    Weights are relative (normalised when sampling); types left out of a dict have weight 0.
    `min_clear_ratio`/`max_clear_ratio` bound how many frames `continuation` and `random_temporal` give.
    """
    video_weights: Dict[str, float] = field(default_factory=_default_video_weights)
    image_weights: Dict[str, float] = field(default_factory=_default_image_weights)
    min_clear_ratio: float = 0.0
    max_clear_ratio: float = 1.0
    condition_noise: bool = True          # official launcher passes --add_noise_to_condition
    noise_log_sigma_mean: float = -3.0
    noise_log_sigma_std: float = 0.5
    noise_skip_prob: float = 0.05         # probability that a sample keeps a clean condition
    caption_dropout: float = 0.1          # --cfg
    default_caption_ratio: float = 0.5    # --default_text_ratio: share of dropped captions that become the default
    default_video_caption: str = DEFAULT_VIDEO_CAPTION
    default_image_caption: str = DEFAULT_IMAGE_CAPTION

    def __post_init__(self):
        self.video_weights = {k: float(v) for k, v in dict(self.video_weights).items()}
        self.image_weights = {k: float(v) for k, v in dict(self.image_weights).items()}
        _check_weights("video_weights", self.video_weights)
        _check_weights("image_weights", self.image_weights)
        _check_probability("min_clear_ratio", self.min_clear_ratio)
        _check_probability("max_clear_ratio", self.max_clear_ratio)
        if self.min_clear_ratio > self.max_clear_ratio:
            raise ValueError(f"min_clear_ratio ({self.min_clear_ratio}) must not exceed max_clear_ratio "
                             f"({self.max_clear_ratio})")
        if not self.noise_log_sigma_std >= 0:
            raise ValueError(f"noise_log_sigma_std must be >= 0, got {self.noise_log_sigma_std}")
        _check_probability("noise_skip_prob", self.noise_skip_prob)
        _check_probability("caption_dropout", self.caption_dropout)
        _check_probability("default_caption_ratio", self.default_caption_ratio)

    def weights(self, is_image: bool) -> Dict[str, float]:
        """Normalised probabilities over all `MASK_TYPES` (0 for the types not listed)."""
        raw = self.image_weights if is_image else self.video_weights
        total = sum(raw.values())
        return {name: raw.get(name, 0.0) / total for name in MASK_TYPES}


def sample_mask_type(config: InpaintConfig, is_image: bool, rng: np.random.Generator) -> str:
    """Draw one mask type with the image (1-frame sample) or video weights of `config`."""
    probs = config.weights(is_image)
    index = rng.choice(len(MASK_TYPES), p=[probs[name] for name in MASK_TYPES])
    return MASK_TYPES[int(index)]


def temporal_mask(mask_type: str, num_frames: int, rng: np.random.Generator,
                  min_clear_ratio: float = 0.0, max_clear_ratio: float = 1.0) -> torch.Tensor:
    """(num_frames,) float mask, 1 = frame to generate, 0 = frame given.

    t2iv: all generated; i2v: first given; transition: first and last given; continuation: the first n given;
    clear: all given; random_temporal: n distinct random frames given. For the last two random types n is uniform
    on [floor(F * min_clear_ratio), ceil(F * max_clear_ratio)], both ends included (official rule; with the
    defaults n can be 0 or F).
    """
    _check_mask_type(mask_type)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    mask = torch.ones(num_frames)
    if mask_type == "i2v":
        mask[0] = 0
    elif mask_type == "transition":
        mask[0] = 0
        mask[-1] = 0
    elif mask_type == "clear":
        mask.zero_()
    elif mask_type in ("continuation", "random_temporal"):
        n = int(rng.integers(math.floor(num_frames * min_clear_ratio), math.ceil(num_frames * max_clear_ratio),
                             endpoint=True))
        if mask_type == "continuation":
            mask[:n] = 0
        else:
            mask[torch.from_numpy(rng.choice(num_frames, size=n, replace=False)).long()] = 0
    return mask


def pixel_mask(mask_types: Sequence[str], num_frames: int, height: int, width: int, rng: np.random.Generator,
               config: Optional[InpaintConfig] = None) -> torch.Tensor:
    """(B, 1, F, H, W) pixel mask (1 = generate), one temporal mask per entry of `mask_types`."""
    config = config or InpaintConfig()
    rows = [temporal_mask(t, num_frames, rng, config.min_clear_ratio, config.max_clear_ratio) for t in mask_types]
    return torch.stack(rows).view(len(rows), 1, num_frames, 1, 1).expand(-1, -1, -1, height, width).contiguous()


def mask_video(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Frames to generate (mask >= 0.5) become black, -1; given frames are kept.

    The official dataset computes `video_uint8 * (mask < 0.5)` and only then maps [0, 255] to [-1, 1], so its
    blanked frames are -1 too (not 0 as `video * (mask < 0.5)` on a [-1, 1] video would give).
    """
    return torch.where(mask < 0.5, video, torch.full_like(video, -1.0))


def add_condition_noise(video: torch.Tensor, pixel_mask: torch.Tensor, config: InpaintConfig,
                        generator: torch.Generator) -> torch.Tensor:
    """Add N(0, sigma^2) noise to the given pixels (mask < 0.5) only, sigma = exp(N(mean, std)) per sample.

    Each sample keeps its condition clean with probability `config.noise_skip_prob`. (The official
    `GaussianNoiseAdder` makes that draw once per batch; its launcher trains with one sample per device, where the
    two agree. Per sample keeps the 5% meaning for any batch size.) Values are not clipped to [-1, 1] (as
    officially). Draw order from `generator`: B skip uniforms, B log-sigmas, then the noise.
    """
    b = video.shape[0]
    dev = generator.device
    skip = torch.rand(b, generator=generator, device=dev) < config.noise_skip_prob
    log_sigma = torch.randn(b, generator=generator, device=dev) * config.noise_log_sigma_std \
        + config.noise_log_sigma_mean
    sigma = torch.exp(log_sigma)
    noise = torch.randn(video.shape, generator=generator, device=dev, dtype=torch.float32).to(video.device)
    noise = noise * sigma.to(video.device).view(b, *([1] * (video.dim() - 1)))
    noise = torch.where(pixel_mask.to(video.device) < 0.5, noise, torch.zeros_like(noise))
    return torch.where(skip.to(video.device).view(b, *([1] * (video.dim() - 1))), video,
                       (video.float() + noise).to(video.dtype))


def inpaint_condition(video: torch.Tensor, mask_types: Sequence[str],
                      vae_encode: Callable[[torch.Tensor], torch.Tensor], config: InpaintConfig,
                      rng: np.random.Generator, generator: torch.Generator,
                      temporal_factor: int = 4, spatial_factor: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Condition inputs of a training batch: (masked-video latent (B, C, T, h, w), mask channels (B, tf, T, h, w)).

    `video`: clean clip (B, 3, F, H, W) in [-1, 1]; `mask_types`: one name per sample (see `sample_mask_type`);
    `vae_encode`: pixel video -> DiT latents (e.g. `wfvae_encode_fn(vae)`); `temporal_factor`/`spatial_factor`:
    the VAE's compression (v1.3: 4 and 8), the mask channel count is `temporal_factor`.
    """
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, F, H, W), got shape {tuple(video.shape)}")
    b, _, f, h, w = video.shape
    if len(mask_types) != b:
        raise ValueError(f"{len(mask_types)} mask types for a batch of {b}")
    mask = pixel_mask(mask_types, f, h, w, rng, config).to(device=video.device, dtype=video.dtype)
    masked = mask_video(video, mask)
    if config.condition_noise:
        masked = add_condition_noise(masked, mask, config, generator)
    latent = vae_encode(masked)
    channels = compress_mask(mask, temporal_factor, spatial_factor).to(latent.dtype)
    if latent.shape[0] != b or latent.shape[2:] != channels.shape[2:]:
        raise ValueError(f"latents {tuple(latent.shape)} do not match the compressed mask {tuple(channels.shape)}; "
                         f"check temporal_factor={temporal_factor} and spatial_factor={spatial_factor} against the VAE")
    return latent, channels


def wfvae_encode_fn(vae, generator: Optional[torch.Generator] = None,
                    chunk_frames: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`vae_encode` for `inpaint_condition` from a WF-VAE: posterior sample, scaled for the DiT (as the official
    wrapper's `encode`). The condition noise may push given pixels a little outside [-1, 1]; the official trainer
    encodes them as they are, so the value-range check is off (shapes are still checked)."""

    @torch.no_grad()
    def encode(video: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(video, chunk_frames, check_range=False)
        return vae.scale_latents(posterior.sample(generator))

    return encode


def inpaint_caption(caption: str, config: InpaintConfig, rng: np.random.Generator, is_image: bool = False) -> str:
    """Caption dropout of the inpaint dataset: with probability `caption_dropout` the caption is replaced, by the
    default caption (video or image wording) with probability `default_caption_ratio`, else by "".
    Two uniforms are drawn every call, as officially."""
    drop, use_default = rng.random(2)
    if drop < config.caption_dropout:
        if use_default < config.default_caption_ratio:
            return config.default_image_caption if is_image else config.default_video_caption
        return ""
    return caption
