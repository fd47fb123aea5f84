"""Analytic FLOPs per training sample for the two denoisers, and the MFU estimate of the training log.

What is counted
---------------
Matrix products only, at 2*m*n*k FLOPs for an (m x k) @ (k x n) product (one multiply + one add per term):
every Linear and the patch-embedding Conv2d (a matmul over patches), plus the two attention matmuls
(scores q k^T and probabilities @ v). Bias adds, norms, modulation, gates, RoPE, softmax, GELU/SiLU, the
Skiparse rearrangement and the mean over text copies are elementwise and are NOT counted. This is the
convention of `torch.utils.flop_counter.FlopCounterMode` and of the usual MFU definition.

Symbols (one sample, batch 1)
-----------------------------
latent (C, T, H, W), patch p, video tokens N = T * (H/p) * (W/p), text tokens L, hidden D = heads * head_dim,
caption channels C_t, output channels C_out. A block with Skiparse ratio k (k = 1: dense) pads the video
tokens to N' = ceil(N / k^2) * k^2 (`ops.skiparse.padded_length`) and splits them into k groups of N'/k
tokens; attention runs inside each group. Padded keys are masked, but their matmul work is still done and is
counted. Both models implement 1-D Skiparse only: with `sparse1d=False` every block is dense (k = 1).

Attention matmuls for Sq queries and Sk keys: attn(Sq, Sk) = 2 * 2 * Sq * Sk * D.

v1.5 SUV MMDiT (`dit.suv`), per block with ratio k (per-stage `sparse_n`; last block "context-pre-only"):
    modulation        2 * 2 * D_t * 6D                    (norm1, norm2: Linear(D_t -> 6D) on one vector)
    video q,k,v,o     4 * 2 * N * D^2
    text q,k,v(,o)    3 (4) * 2 * L * D^2                 (no text output projection in the last block)
    joint attention   k * attn(N'/k + L, N'/k + L)        (each group: its video tokens + all L text tokens,
                      = 4 * D * (N'^2/k + 2 N' L + k L^2)  text repeated once per group)
    feed-forward      2 * 2 * N * D * 4D  (+ the same on L text tokens, except in the last block)
  plus, once: patch embedding 2 * N * C * p^2 * D; caption projection 2 * L * C_t * D; timestep and pooled
  text embedders; one skip Linear(2D -> D) on video and one on text before each decoder stage; the output
  modulation Linear(D_t -> 2D) and proj_out 2 * N * D * p^2 * C_out.
  Note the k L^2 term: with text repeated per group, a larger k lowers attention cost only while N'/k > L
  (always so at training resolutions, where N is tens of thousands and L a few hundred).

v1.3 Skiparse DiT (`dit.osp13`), per block with ratio k (k = sparse_n in blocks 1 < i < 30, else 1):
    self-attention    4 * 2 * N * D^2 (q,k,v,o)  +  k * attn(N'/k, N'/k) = 4 * D * N'^2 / k
    cross-attention   2 * 2 * N * D^2 (q,o) + 2 * 2 * L * D_x * D (k,v from the projected text)
                      + attn(N, L) = 4 * N * L * D
    feed-forward      2 * 2 * N * D * 4D
  plus, once: patch embedding (I2V: two more patch embeddings and two Linear(D -> D)); caption projection
  2 * L * (C_t * D + D^2); adaLN-single 2 * (256 D + D^2 + D * 6D); proj_out 2 * N * D * p^2 * C_out.

Training
--------
training_flops = 3 * forward_flops (the backward pass costs two forwards: gradients w.r.t. activations and
w.r.t. weights); with full activation recompute the forward runs twice: 4 * forward_flops.

MFU = achieved FLOP/s / peak FLOP/s = training FLOPs per step / step seconds / (peak per device * devices).
`PEAK_FLOPS` holds dense (no 2:4 sparsity) bf16/fp16 tensor-core peaks from the vendor datasheets; a device
that is not recognised gets no peak and MFU is not reported.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from mindspeed_mm.osp.dit.osp13 import OSP13Config
from mindspeed_mm.osp.dit.suv import SUVConfig
from mindspeed_mm.osp.ops.skiparse import padded_length

__all__ = [
    "PEAK_FLOPS", "forward_flops", "forward_flops_breakdown", "training_flops", "mfu", "peak_flops_for_device",
]

ModelConfig = Union[SUVConfig, OSP13Config]

# Dense bf16/fp16 tensor-core peak FLOP/s per device, from the vendor datasheets (NVIDIA H100/H200/A100,
# Huawei Ascend 910B). The 2:4-sparsity figures the datasheets also quote are twice these and not used.
PEAK_FLOPS: dict[str, float] = {
    "H100 SXM": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "Ascend 910B": 313e12,
}


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    """A Linear (or a patchify conv) applied to `tokens` rows."""
    return 2 * tokens * d_in * d_out


def _attention(groups: int, q_len: int, k_len: int, dim: int) -> int:
    """q k^T and probs @ v for `groups` independent attentions (dim = heads * head_dim)."""
    return groups * 2 * 2 * q_len * k_len * dim


def _skiparse_attention(n: int, k: int, dim: int, text: int = 0) -> int:
    """Self-attention of n video tokens split into k groups (padded), each with `text` tokens appended."""
    per_group = padded_length(n, k) // k + text
    return _attention(k, per_group, per_group, dim)


def _tokens(latent_shape: Sequence[int], patch: int, channels: int) -> int:
    if len(latent_shape) != 4:
        raise ValueError(f"latent_shape must be (C, T, H, W) of one sample, got {tuple(latent_shape)}")
    c, t, h, w = latent_shape
    if c != channels:
        raise ValueError(f"latent has {c} channels, the model takes {channels}")
    if h % patch or w % patch:
        raise ValueError(f"latent height/width ({h}, {w}) must be divisible by the patch size {patch}")
    return t * (h // patch) * (w // patch)


def _suv(cfg: SUVConfig, latent_shape: Sequence[int], text_len: int) -> dict[str, int]:
    d, dt, p = cfg.hidden_size, cfg.timestep_embed_dim, cfg.patch_size_thw[1]
    n, l = _tokens(latent_shape, p, cfg.in_channels), text_len
    ratios = [k if cfg.sparse1d else 1 for k, layers in zip(cfg.sparse_n, cfg.num_layers) for _ in range(layers)]
    linear = (_linear(n, cfg.in_channels * p * p, d)                                  # patch embedding
              + _linear(1, dt, dt) * 2                                                # timestep embedder
              + _linear(1, cfg.pooled_projection_dim, dt) + _linear(1, dt, dt)        # pooled text embedder
              + _linear(l, cfg.caption_channels, d)                                   # caption projection
              + _linear(1, dt, 2 * d) + _linear(n, d, p * p * cfg.out_channels))      # output head
    if cfg.skip_connection:
        linear += (len(cfg.num_layers) // 2) * (_linear(n, 2 * d, d) + _linear(l, 2 * d, d))
    attention = 0
    for i, k in enumerate(ratios):
        last = i == len(ratios) - 1                     # context_pre_only: the text stream stops here
        linear += 2 * _linear(1, dt, 6 * d)             # norm1 / norm2 modulation
        linear += 4 * _linear(n, d, d) + (3 if last else 4) * _linear(l, d, d)
        linear += 2 * _linear(n, d, 4 * d) + (0 if last else 2 * _linear(l, d, 4 * d))
        attention += _skiparse_attention(n, k, d, text=l)
    return {"linear": linear, "attention": attention}


def _osp13(cfg: OSP13Config, latent_shape: Sequence[int], text_len: int) -> dict[str, int]:
    d, p = cfg.hidden_size, cfg.patch_size
    in_channels = 2 * cfg.in_channels + cfg.vae_scale_factor_t if cfg.inpaint else cfg.in_channels
    n, l = _tokens(latent_shape, p, in_channels), text_len
    k_sparse = cfg.sparse_n if cfg.sparse1d else 1
    ratios = [k_sparse if 1 < i < 30 else 1 for i in range(cfg.num_layers)]
    linear = (_linear(n, cfg.in_channels * p * p, d)                                  # patch embedding
              + _linear(1, 256, d) + _linear(1, d, d) + _linear(1, d, 6 * d)          # adaLN-single
              + _linear(l, cfg.caption_channels, d) + _linear(l, d, d)                # caption projection
              + _linear(n, d, p * p * cfg.out_channels))                              # proj_out
    if cfg.inpaint:  # masked-video and mask streams: patch embedding + Linear(D -> D) each
        linear += _linear(n, cfg.in_channels * p * p, d) + _linear(n, cfg.vae_scale_factor_t * p * p, d)
        linear += 2 * _linear(n, d, d)
    attention = 0
    for k in ratios:
        linear += 4 * _linear(n, d, d)                                                # self-attn q, k, v, o
        linear += 2 * _linear(n, d, d) + 2 * _linear(l, cfg.cross_attention_dim, d)  # cross-attn q, o; k, v
        linear += 2 * _linear(n, d, 4 * d)                                            # feed-forward
        attention += _skiparse_attention(n, k, d) + _attention(1, n, l, d)
    return {"linear": linear, "attention": attention}


def forward_flops_breakdown(model_config: ModelConfig, latent_shape: Sequence[int],
                            text_length: int) -> dict[str, int]:
    """Forward FLOPs of one sample split into {"linear": Linear + conv matmuls, "attention": q k^T and p v}."""
    if text_length < 0:
        raise ValueError(f"text_length must be >= 0, got {text_length}")
    if isinstance(model_config, SUVConfig):
        return _suv(model_config, latent_shape, int(text_length))
    if isinstance(model_config, OSP13Config):
        return _osp13(model_config, latent_shape, int(text_length))
    raise TypeError(f"expected an SUVConfig or OSP13Config, got {type(model_config).__name__}")


def forward_flops(model_config: ModelConfig, latent_shape: Sequence[int], text_length: int) -> int:
    """Matmul FLOPs of one forward pass on one sample: latent (C, T, H, W) before patchify, `text_length`
    text tokens, the config's trained Skiparse plan. See the module docstring for the formula."""
    return sum(forward_flops_breakdown(model_config, latent_shape, text_length).values())


def training_flops(model_config: ModelConfig, latent_shape: Sequence[int], text_length: int,
                   recompute: bool = False) -> int:
    """Forward + backward FLOPs of one sample: 3x forward, 4x with full activation recompute."""
    return (4 if recompute else 3) * forward_flops(model_config, latent_shape, text_length)


def mfu(flops_per_step: float, seconds: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: flops_per_step / seconds / peak_flops (pass the peak of all devices used)."""
    if seconds <= 0 or peak_flops <= 0:
        raise ValueError(f"seconds ({seconds}) and peak_flops ({peak_flops}) must be > 0")
    return flops_per_step / seconds / peak_flops


def peak_flops_for_device(device: Union[str, torch.device, None]) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one device, or None when it is not known (CPU, NPU, other GPUs).

    `device`: a torch device / "cuda[:i]" (its name is read with torch.cuda.get_device_name) or a device name
    such as "NVIDIA H100 80GB HBM3". None never becomes a guess: H100 PCIe / NVL have lower peaks than SXM
    and are not mapped; Ascend 910B variants differ and are not mapped (use PEAK_FLOPS explicitly)."""
    if device is None:
        return None
    if isinstance(device, torch.device) or str(device).split(":")[0] in ("cuda", "cpu", "npu", "meta", "mps"):
        dev = torch.device(device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(dev)
    else:
        name = str(device)
    upper = name.upper()
    if "H200" in upper:
        return PEAK_FLOPS["H200"]
    if "H100" in upper:
        return None if ("PCIE" in upper or "NVL" in upper) else PEAK_FLOPS["H100 SXM"]
    if "A100" in upper:
        return PEAK_FLOPS["A100"]
    return None
