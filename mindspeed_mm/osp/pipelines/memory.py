"""Memory figures for sampling: exact parameter counts (meta-device builds) and activation estimates.

The activation numbers are estimates from tensor sizes (documented below), not measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 1024 ** 3

# Released text encoders (transformers configs of google/mt5-xxl, google/t5-v1_1-xl, CLIP ViT-bigG-14 text tower).
MT5_XXL = dict(vocab_size=250112, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu")
T5_V11_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                 feed_forward_proj="gated-gelu")
CLIP_BIGG_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def text_encoder_params(version: str) -> dict:
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, MT5Config, MT5EncoderModel, T5Config,
                              T5EncoderModel)

    with torch.device("meta"):
        if version == "v1.3":
            return {"mT5-XXL encoder": count_params(MT5EncoderModel(MT5Config(**MT5_XXL)))}
        return {"T5-v1.1-XL encoder": count_params(T5EncoderModel(T5Config(**T5_V11_XL))),
                "CLIP-bigG text": count_params(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG_TEXT)))}


def released_models(version: str):
    """(denoiser, vae) of the released configuration on the meta device (no memory used)."""
    from ..dit import OSP13DiT, SUVDiT
    from ..vae import WFVAE

    with torch.device("meta"):
        if version == "v1.3":
            return OSP13DiT.from_preset("osp13_t2v_2b", device="meta"), WFVAE.from_preset("v13")
        return SUVDiT.from_preset("osp15_suv_8b", device="meta"), WFVAE.from_preset("v15")


@dataclass
class MemoryEstimate:
    denoiser_params: int
    largest_block_params: int
    vae_params: int
    text_params: dict
    tokens: int                # video tokens + text tokens per sample
    hidden: int
    bytes_per_value: int
    cfg_batch: int

    @property
    def denoiser_bytes(self) -> int:
        return self.denoiser_params * self.bytes_per_value

    @property
    def block_bytes(self) -> int:
        return self.largest_block_params * self.bytes_per_value

    @property
    def text_bytes(self) -> int:
        return sum(self.text_params.values()) * self.bytes_per_value

    @property
    def activation_bytes(self) -> int:
        """Working set of one block: residual + norm output + q, k, v + attention output (6 x S*D), the
        feed-forward hidden before and after GELU (2 x 4 x S*D), and ~2 x S*D for fp32 norm/gate temporaries:
        16 x S*D values per sample. Assumes a fused attention kernel (no S x S score matrix)."""
        return 16 * self.tokens * self.hidden * self.bytes_per_value * self.cfg_batch

    def skip_bytes(self, held_stages: int) -> int:
        """U-shape (v1.5): outputs of the first stages are kept for the long skips (video + text streams)."""
        return held_stages * self.tokens * self.hidden * self.bytes_per_value * self.cfg_batch


def estimate(version: str, num_frames: int, height: int, width: int, bytes_per_value: int = 2,
             cfg_batch: int = 2, text_length: int = 512) -> MemoryEstimate:
    dit, vae = released_models(version)
    tf = vae.config.temporal_compression
    p = 2
    video_tokens = ((num_frames - 1) // tf + 1) * (height // 8 // p) * (width // 8 // p)
    blocks = dit.transformer_blocks
    return MemoryEstimate(
        denoiser_params=count_params(dit), largest_block_params=max(count_params(b) for b in blocks),
        vae_params=count_params(vae), text_params=text_encoder_params(version),
        tokens=video_tokens + text_length, hidden=int(dit.config.hidden_size), bytes_per_value=bytes_per_value,
        cfg_batch=cfg_batch)
