"""WF-VAE weights for the MindSpore twin as numpy arrays: strict key checks and reading our folder format.

The config class and the official checkpoint logic (unwrapping, key names, shape-derived config) are shared with
the PyTorch model: `mindspeed_mm.osp.vae.config` / `mindspeed_mm.osp.vae.official` (neither imports torch).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from mindspeed_mm.osp.vae.config import WFVAEConfig
from mindspeed_mm.osp.vae.official import CONFIG_FILE, WEIGHTS_FILE, config_from_json, is_fixed_filter_key


def to_numpy(value: Any) -> np.ndarray:
    """numpy array from a numpy array, a torch tensor (bf16 goes through float32) or a MindSpore tensor."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    if hasattr(value, "asnumpy"):  # mindspore.Tensor
        return value.asnumpy()
    raise TypeError(f"unsupported weight type {type(value).__name__}: pass numpy arrays or torch tensors")


def check_keys(expected: Mapping[str, tuple], state_dict: Mapping[str, Any]) -> None:
    """Raise naming every missing / unexpected / wrongly shaped entry (Haar filters are allowed and ignored)."""
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and not is_fixed_filter_key(k))
    wrong = sorted(f"{k}: checkpoint {tuple(np.shape(state_dict[k]))} vs model {tuple(s)}"
                   for k, s in expected.items() if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(s))
    if missing or unexpected or wrong:
        lines = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"{title}: {shown}")
        raise ValueError("WF-VAE state dict does not match the config; " + "; ".join(lines) +
                         ". Check that the config belongs to this checkpoint (see specs: config can be inferred from shapes).")


def read_config(path: str) -> Tuple[Optional[WFVAEConfig], Optional[dict]]:
    """`path/config.json`: (our config, None) for our format, (None, official dict) for a released one."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: a WF-VAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE} "
                                "(official key names); `osp convert wfvae` writes this layout.")
    with open(cfg_path, encoding="utf-8") as f:
        return config_from_json(json.load(f))


def read_weights(path: str) -> dict:
    """numpy state dict of `path/model.safetensors` (bf16 is read through torch and upcast)."""
    from safetensors.numpy import load_file

    w_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(w_path):
        raise FileNotFoundError(f"{w_path} not found: a WF-VAE folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        return load_file(w_path)
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype
        from safetensors.torch import load_file as load_torch

        return {k: to_numpy(v) for k, v in load_torch(w_path).items()}
