"""WF-VAE (Wavelet-Flow VAE) of Open-Sora Plan v1.3 / v1.5 in PyTorch.

`WFVAE.from_official(config, state_dict)`, `WFVAE.from_pretrained(path)`, `WFVAE.from_preset(name)`;
`vae.encode(video, chunk_frames=None)` -> posterior, `vae.decode(latents, chunk_frames=None)` -> video.
"""
import importlib

# Imported on first use, so importing the package (or one of its light modules) does not load torch.
_EXPORTS = {"WFVAE": "model", "WFVAEConfig": "config", "load_preset": "config", "preset_names": "config",
            "DiagonalGaussian": "distribution"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
