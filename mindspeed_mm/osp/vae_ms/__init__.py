"""WF-VAE as MindSpore Cells (GRAPH_MODE and PyNative), interchangeable with the PyTorch model: same parameter
names, same `config.json` + `model.safetensors` folder. `from mindspeed_mm.osp.vae_ms import WFVAE`."""
from mindspeed_mm.osp.vae.config import WFVAEConfig
from .wfvae import WFVAE, CompileStats, DiagonalGaussian

__all__ = ["WFVAE", "WFVAEConfig", "DiagonalGaussian", "CompileStats"]
