"""`WFVAE`: loading (official dicts, our folder layout), whole-clip and chunked encode/decode.

Chunked inference in GRAPH_MODE compiles one graph per distinct chunk shape, not per chunk: the causal cache is
a tuple of tensors passed into and returned from small step cells, and the chunk loop is plain Python.
Encode chunks: [frame 0], then `chunk_frames` frames at a time (a multiple of R). Decode chunks: [latent 0], then
`chunk_frames` latents at a time, each fed with one extra look-ahead latent (the decoder's time interpolation needs
its right neighbour) whose R output frames are dropped; the last chunk has no look-ahead. Result == whole clip
for every chunk size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindspeed_mm.osp.vae.config import WFVAEConfig
from mindspeed_mm.osp.vae.official import folder_config, is_fixed_filter_key, normalize_official_keys, parse_official

from .checkpoint import check_keys, read_config, read_weights, to_numpy
from .model import Decoder, Encoder

ArrayLike = Union[Tensor, np.ndarray]


@dataclass
class DiagonalGaussian:
    """Posterior over latents: `mean`, `logvar` (clamped to [-30, 20] like the official class)."""

    mean: Tensor
    logvar: Tensor

    @classmethod
    def from_moments(cls, moments: Tensor) -> "DiagonalGaussian":
        mean, logvar = ops.chunk(moments, 2, 1)
        return cls(mean, ops.clamp(logvar, -30.0, 20.0))

    @property
    def std(self) -> Tensor:
        return ops.exp(0.5 * self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, seed: Optional[int] = None) -> Tensor:
        noise = np.random.default_rng(seed).standard_normal(self.mean.shape).astype(np.float32)
        return self.mean + self.std * Tensor(noise, self.mean.dtype)


@dataclass
class CompileStats:
    """Graphs built by this model (one per step kind and input shape) and the wall time of each first call,
    which in GRAPH_MODE is dominated by compilation."""

    first_call_s: Dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.first_call_s)

    @property
    def total_s(self) -> float:
        return sum(self.first_call_s.values())


class _Step(nn.Cell):
    """One compiled entry point: whole clip, first chunk, or a continuing chunk (with or without look-ahead)."""

    def __init__(self, net: nn.Cell, kind: str, lookahead: int = 0):
        super().__init__(auto_prefix=False)
        self.net = net
        self.kind = kind
        self.lookahead = lookahead

    def construct(self, x, cache):
        if self.kind == "clip":
            return self.net(x)[0]
        if self.kind == "first":
            out = self.net(x)
            return out[0], out[1]
        if self.lookahead:
            out = self.net(x, cache, self.lookahead)
        else:
            out = self.net(x, cache)
        return out[0], out[1]


class WFVAE(nn.Cell):
    """WF-VAE with official parameter names. `construct(video)` = decode(encode(video).mode()) (whole clip)."""

    def __init__(self, config: WFVAEConfig, dtype=ms.float32):
        super().__init__()
        if config.t_interpolation != "trilinear" or not config.use_attention:
            raise ValueError("the MindSpore WF-VAE implements the released architecture only (t_interpolation "
                             f"'trilinear', use_attention True); got {config.t_interpolation!r}, {config.use_attention}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.compute_dtype = dtype
        if dtype != ms.float32:
            self._cast_weights(dtype)
        # Not Cell attributes: sub-cells assigned to a Cell would be re-registered (and renamed) as children.
        object.__setattr__(self, "_steps", {})
        object.__setattr__(self, "compile_stats", CompileStats())

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_official(cls, config: Union[Mapping[str, Any], WFVAEConfig], state_dict: Mapping[str, Any],
                      dtype=ms.float32) -> "WFVAE":
        """Build from the official constructor config (or None: inferred from the shapes) and an official state dict
        or training checkpoint dict (`ema_state_dict` / `module.` / `state_dict[gen_model]`, MindSpeed-MM names);
        values numpy arrays or torch tensors. Haar filters are built, never read; any other missing/unexpected
        key raises."""
        if isinstance(config, WFVAEConfig):
            cfg, weights = config, normalize_official_keys(state_dict)[0]
        else:
            cfg, weights = parse_official(config, state_dict)
        model = cls(cfg, dtype)
        model.load_official_state_dict(weights)
        return model

    @classmethod
    def from_pretrained(cls, path: str, dtype=ms.float32) -> "WFVAE":
        """Load our layout: `path/config.json` + `path/model.safetensors` (shared with the PyTorch model), or
        `path/config.json` + `path/model.ckpt` (written by `osp convert mindspore`), loaded strictly."""
        import os

        cfg, official = read_config(path)
        ckpt = os.path.join(path, "model.ckpt")
        if os.path.isfile(ckpt) and not os.path.isfile(os.path.join(path, "model.safetensors")):
            from mindspeed_mm.osp.convert.mindspore import load_into_net

            model = cls(cfg or WFVAEConfig.from_official(official), dtype)
            load_into_net(model, ckpt, ignore=is_fixed_filter_key)
            return model
        return cls.from_official(cfg or official, read_weights(path), dtype)

    def save_pretrained(self, directory: str, overwrite: bool = False) -> str:
        """Write `config.json` + `model.safetensors` (official names, float32), each atomically; the PyTorch
        `WFVAE.from_pretrained` reads the same folder."""
        import json
        import os
        from pathlib import Path

        from safetensors.numpy import save_file

        from mindspeed_mm.osp.files import replace_file

        paths = [os.path.join(directory, n) for n in ("config.json", "model.safetensors")]
        if any(os.path.exists(p) for p in paths) and not overwrite:
            raise FileExistsError(f"{directory} already holds a model; pass overwrite=True to replace it")
        weights = self.official_state_dict()
        replace_file(paths[1], lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
        replace_file(paths[0], lambda tmp: Path(tmp).write_text(json.dumps(folder_config(self.config), indent=1)))
        return directory

    def expected_shapes(self) -> Dict[str, Tuple[int, ...]]:
        return {p.name: tuple(p.shape) for p in self.get_parameters()}

    def load_official_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Strict load of official-named weights (Haar filters allowed and ignored)."""
        sd = dict(state_dict)
        check_keys(self.expected_shapes(), sd)
        for p in self.get_parameters():
            p.set_data(Tensor(np.ascontiguousarray(to_numpy(sd[p.name]), dtype=np.float32)).astype(p.dtype))

    def official_state_dict(self) -> Dict[str, np.ndarray]:
        """Trainable parameters under the official key names, as float32 numpy arrays."""
        return {p.name: p.asnumpy().astype(np.float32) for p in self.get_parameters()}

    def _cast_weights(self, dtype) -> None:
        """Low-precision weights for Ascend: convs in `dtype`; LayerNorm weights stay float32 (norms, Haar,
        interpolation and softmax compute in float32 internally)."""
        if ms.get_context("device_target") == "CPU" and dtype == ms.bfloat16:
            raise ValueError("bfloat16 WF-VAE needs Ascend: MindSpore's CPU Conv3d has no bfloat16 kernel. "
                             "Use dtype=mindspore.float32 (or float16) on CPU.")
        for name, p in self.parameters_and_names():
            if ".norm." not in name:
                p.set_dtype(dtype)

    # ----------------------------------------------------------------------------------------------- inference
    def construct(self, x):
        moments = self.encoder(x)[0]
        mean = ops.chunk(moments, 2, 1)[0]
        return self.decoder(mean)[0]

    def _run(self, net: nn.Cell, kind: str, x: Tensor, cache=None, lookahead: int = 0):
        key = (net is self.encoder, kind, lookahead)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = _Step(net, kind, lookahead)
        if cache is not None:
            cache = ms.mutable(tuple(cache))  # graph inputs, not constants (else every chunk would recompile)
        shape_key = f"{'encode' if key[0] else 'decode'}/{kind}{'+la' if lookahead else ''}{tuple(x.shape)}"
        if shape_key in self.compile_stats.first_call_s:
            return step(x, cache)
        start = time.perf_counter()
        out = step(x, cache)
        ops.stop_gradient(out[0] if isinstance(out, tuple) else out).asnumpy()  # wait for the result
        self.compile_stats.first_call_s[shape_key] = time.perf_counter() - start
        return out

    def _as_input(self, x: ArrayLike, what: str) -> Tensor:
        if isinstance(x, np.ndarray):
            x = Tensor(np.ascontiguousarray(x, dtype=np.float32))
        if not isinstance(x, Tensor) or x.ndim != 5:
            raise ValueError(f"{what} must be a 5-D mindspore.Tensor or numpy array (B, C, T, H, W); "
                             f"got {type(x).__name__} with shape {getattr(x, 'shape', None)}")
        return x.astype(self.compute_dtype)

    def encode(self, video: ArrayLike, chunk_frames: Optional[int] = None) -> DiagonalGaussian:
        """Video (B,3,T,H,W) in [-1,1], T = 1 + R*n, H, W multiples of 8 -> posterior over (B,L,n+1,H/8,W/8).

        `chunk_frames` (a multiple of R) bounds memory: frame 0, then that many frames per step; exact."""
        x = self._as_input(video, "video")
        r = self.config.temporal_compression
        b, c, t, h, w = x.shape
        if c != 3 or h % 8 or w % 8 or (t - 1) % r:
            raise ValueError(f"video shape {tuple(x.shape)}: need 3 channels, H and W multiples of 8 and "
                             f"T = 1 + {r}*n frames (other T silently lose frames in WF-VAE); trim or pad the clip.")
        if chunk_frames is None or t == 1:
            moments = self._run(self.encoder, "clip", x)
        else:
            if chunk_frames <= 0 or chunk_frames % r:
                raise ValueError(f"encode chunk_frames={chunk_frames} must be a positive multiple of {r}")
            moments, cache = self._run(self.encoder, "first", x[:, :, :1])
            parts = [moments]
            for s in range(1, t, chunk_frames):
                m, cache = self._run(self.encoder, "next", x[:, :, s:s + chunk_frames], cache)
                parts.append(m)
            moments = ops.cat(parts, 2)
        return DiagonalGaussian.from_moments(moments.astype(ms.float32))

    def decode(self, latents: ArrayLike, chunk_frames: Optional[int] = None) -> Tensor:
        """Latents (B,L,Tl,h,w) -> video (B,3,1+R(Tl-1),8h,8w), nominally in [-1,1] (not clamped).

        `chunk_frames` = latent frames per step after latent 0 (any value >= 1); exact."""
        z = self._as_input(latents, "latents")
        if z.shape[1] != self.config.latent_dim:
            raise ValueError(f"latents have {z.shape[1]} channels; this WF-VAE has latent_dim={self.config.latent_dim}")
        t = z.shape[2]
        if chunk_frames is None or t == 1:
            return self._run(self.decoder, "clip", z).astype(ms.float32)
        if chunk_frames <= 0:
            raise ValueError(f"decode chunk_frames={chunk_frames} must be >= 1")
        r = self.config.temporal_compression
        video, cache = self._run(self.decoder, "first", z[:, :, :1])
        parts = [video]
        for s in range(1, t, chunk_frames):
            e = min(s + chunk_frames, t)
            if e < t:  # feed latent e as look-ahead, drop the R frames it produced
                y, cache = self._run(self.decoder, "next", z[:, :, s:e + 1], cache, lookahead=1)
                y = y[:, :, :y.shape[2] - r]
            else:
                y, cache = self._run(self.decoder, "next", z[:, :, s:e], cache)
            parts.append(y)
        return ops.cat(parts, 2).astype(ms.float32)
