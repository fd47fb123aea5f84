"""Open-Sora Plan denoisers as plain PyTorch modules: v1.3 Skiparse DiT (T2V/I2V) and v1.5 SUV MMDiT."""
from mindspeed_mm.osp.dit.loading import from_pretrained
from mindspeed_mm.osp.dit.osp13 import OSP13Config, OSP13DiT
from mindspeed_mm.osp.dit.suv import SUVConfig, SUVDiT

__all__ = ["OSP13Config", "OSP13DiT", "SUVConfig", "SUVDiT", "from_pretrained"]
