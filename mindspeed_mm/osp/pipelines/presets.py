"""Small random pipelines built in code (tiny DiT, tiny WF-VAE, tiny text encoders and word-level tokenizers).

For smoke tests, benchmarks of the sampling loop and CLI checks without any checkpoint; outputs are noise.
"""
from __future__ import annotations

from dataclasses import replace

import torch

TINY_OSP13 = dict(num_attention_heads=2, attention_head_dim=24, in_channels=4, out_channels=4, num_layers=4,
                  cross_attention_dim=48, caption_channels=32, patch_size=2, patch_size_t=1,
                  activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
                  sparse1d=True, sparse_n=4)

TINY_SUV = dict(num_layers=[1, 1, 1], sparse_n=[1, 2, 1], double_ff=True, sparse1d=True, num_heads=2, head_dim=16,
                in_channels=4, out_channels=4, timestep_embed_dim=32, caption_channels=32, pooled_projection_dim=20,
                skip_connection=True, skip_connection_zero_init=True, dropout=0.0, attention_bias=True,
                patch_size_thw=[1, 2, 2], activation_fn="gelu-approximate", norm_cls="fp32_layer_norm",
                norm_elementwise_affine=True, norm_eps=1e-6)

PRESETS = ("tiny-osp13-random", "tiny-osp13-i2v-random", "tiny-osp15-random")
TINY_TEXT_LENGTH = 64  # the released models use 512 T5/mT5 tokens; short here to keep the presets fast


def _tiny_osp13(inpaint: bool):
    from ..dit import OSP13Config, OSP13DiT

    config = dict(TINY_OSP13, **({"_class_name": "OpenSoraInpaint_v1_3", "vae_scale_factor_t": 4} if inpaint else {}))
    model = OSP13DiT(OSP13Config.from_official(config))
    if inpaint:  # leave the zero-initialised condition projections random so the condition reaches the output
        for lin in (model.pos_embed_masked_hidden_states[1], model.pos_embed_mask[1]):
            torch.nn.init.normal_(lin.weight, std=0.02)
    return model


def _tiny_suv():
    from ..dit import SUVConfig, SUVDiT

    model = SUVDiT(SUVConfig.from_official(TINY_SUV))
    for seq in (*model.skip_norm_linear, *model.skip_norm_linear_enc):  # move the skips off their [I|0] init
        torch.nn.init.normal_(seq[1].weight, std=0.02)
    return model


def build_preset(name: str, seed: int = 0):
    """A VideoPipeline with random weights (float32, CPU)."""
    from ..text import TextConditioner
    from ..text.tiny import tiny_clip_text_encoder, tiny_t5_encoder, tiny_tokenizer
    from ..vae import WFVAE
    from ..diffusion import FlowMatchEulerSampler, v13_sampler
    from .video import VideoPipeline

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    if name.startswith("tiny-osp13"):
        transformer = _tiny_osp13(inpaint="i2v" in name)
        vae = WFVAE.from_preset("tiny_v13")
        text = TextConditioner(tiny_t5_encoder(32, multilingual=True, seed=seed), tiny_tokenizer(TINY_TEXT_LENGTH), TINY_TEXT_LENGTH)
        pipe = VideoPipeline("v1.3", transformer, vae, text, v13_sampler())
    else:
        transformer = _tiny_suv()
        vae = WFVAE.from_preset("tiny_v15")
        text = TextConditioner(tiny_t5_encoder(32, seed=seed), tiny_tokenizer(TINY_TEXT_LENGTH), TINY_TEXT_LENGTH,
                               tiny_clip_text_encoder(20, seed=seed), tiny_tokenizer(77, bos=True), 77)
        pipe = VideoPipeline("v1.5", transformer, vae, text, FlowMatchEulerSampler(shift=7.0))
    for module in (transformer, vae):
        module.eval().requires_grad_(False)
    # small default sizes (the official guidance settings are kept)
    tf = pipe.geometry.temporal_factor
    pipe.defaults = replace(pipe.defaults, num_frames=2 * tf + 1, height=64, width=96, steps=4)
    return pipe
