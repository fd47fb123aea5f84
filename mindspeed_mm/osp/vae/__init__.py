"""WF-VAE (Wavelet-Flow VAE) of Open-Sora Plan v1.3 / v1.5 in PyTorch.

`WFVAE.from_official(config, state_dict)`, `WFVAE.from_pretrained(path)`, `WFVAE.from_preset(name)`;
`vae.encode(video, chunk_frames=None)` -> posterior, `vae.decode(latents, chunk_frames=None)` -> video.
"""
from mindspeed_mm.osp.vae.config import WFVAEConfig, load_preset, preset_names
from mindspeed_mm.osp.vae.distribution import DiagonalGaussian
from mindspeed_mm.osp.vae.model import WFVAE

__all__ = ["WFVAE", "WFVAEConfig", "DiagonalGaussian", "load_preset", "preset_names"]
