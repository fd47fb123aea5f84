"""A tiny v1.5-style (8x8x8) WF-VAE config with random weights, loaded through the public loader."""
from __future__ import annotations

import numpy as np

TINY_V15 = {"base_channels": 8, "latent_dim": 4, "encoder_energy_flow_hidden_size": 8,
            "decoder_energy_flow_hidden_size": 8, "encoder_num_resblocks": 1, "decoder_num_resblocks": 1,
            "connect_res_layer_num": 1, "l1_dowmsample_block": "Spatial2xTime2x3DDownsample",
            "l1_upsample_block": "Spatial2xTime2x3DUpsample", "norm_type": "layernorm",
            "t_interpolation": "trilinear", "use_attention": True, "scale": [1.0] * 4, "shift": [0.0] * 4}


def tiny_vae(seed=0, **kwargs):
    """(WFVAE, its official-name weights as float32 numpy)."""
    from mindspeed_mm.osp.vae_ms import WFVAE, WFVAEConfig

    shapes = WFVAE(WFVAEConfig.from_official(TINY_V15)).expected_shapes()
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in sorted(shapes.items()):  # fan-in scaled, so activations stay of order 1
        scale = 1.0 / np.sqrt(np.prod(shape[1:])) if len(shape) > 1 else 0.1
        w = rng.standard_normal(shape) * scale
        weights[name] = (w + (1.0 if name.endswith("norm.weight") else 0.0)).astype(np.float32)
    return WFVAE.from_official(TINY_V15, weights, **kwargs), weights
