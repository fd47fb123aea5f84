"""Open-Sora Plan on Ascend and CUDA: WF-VAE, the v1.3 Skiparse DiT and the v1.5 SUV MMDiT.

Importing this package is cheap: submodules (`vae`, `dit`, `parallel`, ...) are imported on use.
"""
__version__ = "0.1.0"
