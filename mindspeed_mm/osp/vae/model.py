"""WF-VAE model: validated encode/decode, exact chunked (streaming) inference, official and own checkpoints."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mindspeed_mm.osp.files import replace_file
from mindspeed_mm.osp.vae.blocks import ChannelLayerNorm
from mindspeed_mm.osp.vae.causal_conv import reset_streams, set_fast_conv
from mindspeed_mm.osp.vae.checkpoint import find_checkpoint_in_dir, load_checkpoint_file
from mindspeed_mm.osp.vae.config import WFVAEConfig, load_preset
from mindspeed_mm.osp.vae.decoder import Decoder
from mindspeed_mm.osp.vae.distribution import DiagonalGaussian
from mindspeed_mm.osp.vae.encoder import Encoder
from mindspeed_mm.osp.vae.official import (CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE, folder_config, normalize_official_keys,
                                           parse_official, unwrap_state_dict)
from mindspeed_mm.osp.vae.tiling import tiled_apply

SPATIAL_COMPRESSION = 8
VALUE_TOLERANCE = 1e-2  # pixels may exceed [-1, 1] by this much (resampling overshoot)


def _nearest_valid(t: int, r: int) -> list[int]:
    below = 1 + r * ((t - 1) // r)
    return sorted({below, below + r} if t > 1 else {1})


class WFVAE(nn.Module):
    """Wavelet-Flow VAE of Open-Sora Plan v1.3 (4x8x8) and v1.5 (8x8x8).

    Parameter names equal the official ones, so `state_dict()` is the official trainable state dict.
    Pixels are (B, 3, T, H, W) in [-1, 1] with T = 1 + R*n and H, W multiples of 8; latents are
    (B, L, 1 + n, H/8, W/8).
    """

    def __init__(self, config: WFVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return SPATIAL_COMPRESSION

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def use_fast_conv(self, enabled: bool = True) -> "WFVAE":
        """Float32 CPU inference runs its 3x3 convs as Winograd F(4x4, 3x3) (ops/winograd.py; about 1e-5
        relative difference, see docs/performance.md). Off by default: the direct convolution is the reference.
        CUDA, Ascend, other dtypes and training always use the direct convolution. Returns self."""
        set_fast_conv(self, enabled)
        for m in self.modules():
            if isinstance(m, ChannelLayerNorm):
                m.keep_channels_last = bool(enabled)
        return self

    # ---- shapes -------------------------------------------------------------------------------------------
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(L, T', H', W') of the latents of a valid clip."""
        r, s = self.temporal_compression, SPATIAL_COMPRESSION
        return self.latent_dim, (frames - 1) // r + 1, height // s, width // s

    def check_video(self, video: torch.Tensor, check_range: bool = True) -> None:
        """Raise ValueError naming what is wrong with a pixel tensor and what is accepted."""
        r = self.temporal_compression
        if video.dim() != 5:
            raise ValueError(f"video must be 5-D (B, 3, T, H, W), got shape {tuple(video.shape)}")
        _, c, t, h, w = video.shape
        if c != 3:
            raise ValueError(f"video must have 3 (RGB) channels on dim 1 (B, C, T, H, W), got {c} "
                             f"(shape {tuple(video.shape)}); for (B, T, C, H, W) input use video.transpose(1, 2)")
        if t < 1 or (t - 1) % r:
            raise ValueError(f"frame count must be 1 + {r}*n (1, {1 + r}, {1 + 2 * r}, ...), got {t}; nearest valid: "
                             f"{_nearest_valid(t, r)} (or pass pad=True)")
        if h % SPATIAL_COMPRESSION or w % SPATIAL_COMPRESSION or h == 0 or w == 0:
            raise ValueError(f"height and width must be positive multiples of 8, got {h}x{w} (or pass pad=True)")
        if video.is_floating_point() and video.numel() and check_range:
            lo, hi = video.min().item(), video.max().item()
            if lo < -1 - VALUE_TOLERANCE or hi > 1 + VALUE_TOLERANCE:
                raise ValueError(f"pixel values must be in [-1, 1] (x = 2*x01 - 1), got [{lo:.3f}, {hi:.3f}]")
        elif not video.is_floating_point():
            raise ValueError(f"video must be a floating tensor in [-1, 1], got dtype {video.dtype}")

    def pad_video(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pad T (repeat last frame) to 1 + R*n and H, W (edge) to multiples of 8; returns (padded, (T, H, W))."""
        r, s = self.temporal_compression, SPATIAL_COMPRESSION
        _, _, t, h, w = video.shape
        pt, ph, pw = (-(t - 1)) % r, (-h) % s, (-w) % s
        if pt:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, pt, -1, -1)], dim=2)
        if ph or pw:
            video = F.pad(video, (0, pw, 0, ph, 0, 0), mode="replicate")
        return video, (t, h, w)

    # ---- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: torch.Tensor, chunk_frames: Optional[int] = None, pad: bool = False,
               tile_size: Optional[int] = None, tile_overlap: int = 64, check_range: bool = True) -> DiagonalGaussian:
        """Posterior over latents. `chunk_frames`: video frames per chunk (any size >= 1; output is identical to
        whole-clip encoding, memory is bounded by the chunk). `pad=True` pads invalid sizes (see `pad_video`).
        `tile_size`/`tile_overlap` (pixels, multiples of 8): optional spatial tiling (approximate, see docs).
        `check_range=False` accepts values outside [-1, 1] (noise-augmented training conditions)."""
        original = None
        if pad and video.dim() == 5:
            video, original = self.pad_video(video)
        self.check_video(video, check_range)
        video = video.to(self.dtype)

        def run(x: torch.Tensor) -> torch.Tensor:
            return self._stream(self.encoder, x, chunk_frames, decode=False)

        if tile_size is None:
            moments = run(video)
        else:
            self._check_tiling(tile_size, tile_overlap)
            moments = tiled_apply(run, video, tile_size, tile_overlap, 1, SPATIAL_COMPRESSION)
        return DiagonalGaussian(moments, original_size=original or tuple(video.shape[2:]))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk_frames: Optional[int] = None,
               output_size: Optional[Sequence[int]] = None, tile_size: Optional[int] = None,
               tile_overlap: int = 64) -> torch.Tensor:
        """Video (B, 3, 1 + R*(T'-1), 8H', 8W') in about [-1, 1]. `chunk_frames`: latent frames per chunk (any
        size >= 1, identical output). `output_size=(T, H, W)` crops the result (undoes `pad=True`).
        `tile_size`/`tile_overlap` (output pixels, multiples of 8): optional spatial tiling (approximate)."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_dim or latents.shape[2] == 0:
            raise ValueError(f"latents must be (B, {self.latent_dim}, T', H', W') with T' >= 1, "
                             f"got shape {tuple(latents.shape)}")

        def run(z: torch.Tensor) -> torch.Tensor:
            return self._stream(self.decoder, z, chunk_frames, decode=True)

        latents = latents.to(self.dtype)
        if tile_size is None:
            video = run(latents)
        else:
            self._check_tiling(tile_size, tile_overlap)
            s = SPATIAL_COMPRESSION
            video = tiled_apply(run, latents, tile_size // s, tile_overlap // s, s, 1)
        if output_size is not None:
            t, h, w = output_size
            video = video[:, :, :t, :h, :w]
        return video

    def reconstruct(self, video: torch.Tensor, chunk_frames: Optional[int] = None, pad: bool = False,
                    sample: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """encode + decode with the posterior mode (or a sample); `pad=True` crops back to the input size.
        `chunk_frames` is in video frames; the decoder uses the matching number of latent frames."""
        posterior = self.encode(video, chunk_frames=chunk_frames, pad=pad)
        z = posterior.sample(generator) if sample else posterior.mode()
        dec_chunk = None if chunk_frames is None else max(1, chunk_frames // self.temporal_compression)
        return self.decode(z, chunk_frames=dec_chunk, output_size=posterior.original_size)

    @staticmethod
    def _check_tiling(tile_size: int, tile_overlap: int) -> None:
        s = SPATIAL_COMPRESSION
        if tile_size <= 0 or tile_size % s or tile_overlap < 0 or tile_overlap % s or tile_overlap >= tile_size:
            raise ValueError(f"tile_size and tile_overlap must be multiples of {s} with 0 <= tile_overlap < tile_size, "
                             f"got {tile_size} and {tile_overlap}")

    def _stream(self, module: nn.Module, x: torch.Tensor, chunk: Optional[int], decode: bool) -> torch.Tensor:
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk_frames must be a positive integer or None, got {chunk!r}")
        total = x.shape[2]
        chunk = total if chunk is None else chunk
        r = self.temporal_compression
        frames = 1 + r * (total - 1) if decode else (total - 1) // r + 1
        result, done = None, 0   # chunk outputs are copied into one preallocated result (no final concatenation)
        reset_streams(module)
        try:
            for start in range(0, total, chunk):
                piece = x[:, :, start:start + chunk]
                out = module(piece, flush=start + chunk >= total)[0] if decode else module(piece)[0]
                if chunk >= total:
                    return out
                if result is None:
                    result = out.new_empty(*out.shape[:2], frames, *out.shape[3:])
                result[:, :, done:done + out.shape[2]] = out
                done += out.shape[2]
        finally:
            reset_streams(module)
        assert done == frames, (done, frames)
        return result

    def forward(self, video: torch.Tensor, sample_posterior: bool = True,
                generator: Optional[torch.Generator] = None):
        """Training pass on a whole clip: (reconstruction, posterior, (enc_l1, enc_l2), (dec_l1, dec_l2))."""
        self.check_video(video)
        reset_streams(self)
        try:
            moments, enc_coeffs = self.encoder(video)
            posterior = DiagonalGaussian(moments)
            z = posterior.sample(generator) if sample_posterior else posterior.mode()
            recon, dec_coeffs = self.decoder(z, flush=True)
        finally:
            reset_streams(self)
        return recon, posterior, enc_coeffs, dec_coeffs

    # ---- latent normalisation for the DiT -------------------------------------------------------------------
    def _scale_shift(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.config.scale, self.config.shift
        for name, values in (("scale", scale), ("shift", shift)):
            if len(values) not in (1, z.shape[1]):
                raise ValueError(f"config.{name} has {len(values)} values but the latents have {z.shape[1]} channels; "
                                 f"set {len(values)} -> 1 or {z.shape[1]} values (see vae_var_test.py in WF-VAE)")
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return (torch.tensor(scale, dtype=z.dtype, device=z.device).view(shape),
                torch.tensor(shift, dtype=z.dtype, device=z.device).view(shape))

    def scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> DiT latents: (z - shift) * scale, per channel."""
        scale, shift = self._scale_shift(z)
        return (z - shift) * scale

    def unscale_latents(self, z: torch.Tensor) -> torch.Tensor:
        """DiT latents -> VAE latents: z / scale + shift."""
        scale, shift = self._scale_shift(z)
        return z / scale + shift

    # ---- construction and checkpoints ---------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> "WFVAE":
        """Randomly initialised model of a preset (`v13`, `v15`, `l16`, `tiny_v13`, `tiny_v15`)."""
        return cls(load_preset(name))

    @classmethod
    def from_official(cls, config: Optional[Mapping], state_dict: Mapping,
                      dtype: torch.dtype = torch.float32) -> "WFVAE":
        """Model from an official constructor dict (released config.json; may be None) and an official checkpoint
        in any released form (training dict with `ema_state_dict`/`state_dict`/`gen_model`, `module.` prefixes,
        MindSpeed-MM names, any float dtype). Keys are checked strictly."""
        cfg, weights = parse_official(config, state_dict)
        model = cls(cfg)
        model.load_weights(weights)
        return model.to(dtype)

    def load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Strict load of official-named weights; errors name missing, unexpected and mis-shaped keys."""
        own = self.state_dict()
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        problems = []

        def listing(keys: list) -> str:
            return f"({len(keys)}): {keys[:8]}{' ...' if len(keys) > 8 else ''}"
        if missing:
            problems.append(f"missing keys {listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {listing(unexpected)}")
        bad = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
               for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape]
        if bad:
            problems.append(f"shape mismatches ({len(bad)}): {bad[:8]}")
        if problems:
            raise ValueError("WF-VAE checkpoint does not match the config: " + "; ".join(problems))
        with torch.no_grad():
            for key, param in own.items():
                param.copy_(weights[key].to(param.dtype))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        weights_only: bool = True) -> "WFVAE":
        """Load our format (directory with config.json + model.safetensors) or an official checkpoint
        (a .ckpt/.pt/.safetensors file, or a directory with config.json and one checkpoint file)."""
        path = Path(path)
        if path.is_dir():
            cfg_path = path / CONFIG_FILE
            config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
            if config and config.get("format") == FORMAT_NAME:
                from safetensors.torch import load_file
                model = cls(WFVAEConfig.from_dict(config["config"]))
                model.load_weights(load_file(str(path / WEIGHTS_FILE)))
                return model.to(dtype)
            ckpt = find_checkpoint_in_dir(path)
            if ckpt is None:
                raise ValueError(f"{path} has neither {WEIGHTS_FILE} (our format) nor an official checkpoint file")
            return cls.from_official(config, load_checkpoint_file(ckpt, weights_only), dtype)
        if path.is_file():
            sibling = path.parent / CONFIG_FILE
            config = json.loads(sibling.read_text()) if sibling.is_file() else None
            if config and config.get("format") == FORMAT_NAME:
                config = config["config"]
                model = cls(WFVAEConfig.from_dict(config))
                weights = unwrap_state_dict(load_checkpoint_file(path, weights_only))
                model.load_weights(normalize_official_keys(weights)[0])
                return model.to(dtype)
            return cls.from_official(config, load_checkpoint_file(path, weights_only), dtype)
        raise FileNotFoundError(f"no WF-VAE checkpoint at {path}")

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write config.json + model.safetensors (official parameter names), each atomically."""
        from safetensors.torch import save_file
        directory = Path(directory)
        if directory.exists() and any((directory / f).exists() for f in (CONFIG_FILE, WEIGHTS_FILE)) and not overwrite:
            raise FileExistsError(f"{directory} already holds a model; pass overwrite=True to replace it")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        replace_file(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        meta = folder_config(self.config)
        replace_file(directory / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=1) + "\n"))
        return directory
