"""Reading WF-VAE checkpoint files with torch (the format logic itself is framework-free: `official.py`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

import torch

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
def load_checkpoint_file(path: str | os.PathLike, weights_only: bool = True) -> Mapping:
    """Load a .safetensors file or a torch pickle (.ckpt/.pt/.pth/.bin) onto the CPU."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except Exception as err:  # pickles of training runs may hold non-tensor objects
        if weights_only:
            raise ValueError(f"could not load {path} with torch.load(weights_only=True) ({err}). If you trust this "
                             f"file, load it with weights_only=False") from err
        raise


def find_checkpoint_in_dir(path: Path) -> Optional[Path]:
    """The single checkpoint file of an official model directory (config.json + checkpoint)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files:
        return None
    raise ValueError(f"{path} holds several checkpoint files {[p.name for p in files]}; pass the file to use")
