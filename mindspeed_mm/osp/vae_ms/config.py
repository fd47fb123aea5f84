"""WF-VAE configuration and official checkpoint handling (framework-free: numpy only).

The config is the official constructor dict (`WFVAEModel(**config)`, upstream spelling `l1_dowmsample_block`
kept); `config.json` of `from_pretrained` stores exactly that dict, so the PyTorch and MindSpore models read the
same file. State dicts use the official key names (spec wfvae.md section 3).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping

import numpy as np

# Entries of official state dicts that hold the fixed Haar filters (frozen convs or buffers) or the MindSpeed-MM
# latent scale/shift buffers. The model builds the filters itself, so these are accepted and never read.
_HAAR_MODULES = ("wavelet_transform_in", "wavelet_tranform_in", "wavelet_transform_l1", "wavelet_transform_l2",
                 "inverse_wavelet_transform_out", "inverse_wavelet_transform_l1", "inverse_wavelet_transform_l2")
_IGNORED_TOP_LEVEL = ("scale", "shift")


@dataclass
class WFVAEConfig:
    """Architecture of one WF-VAE checkpoint (names as in the official constructor)."""

    base_channels: int = 128
    latent_dim: int = 8
    encoder_energy_flow_hidden_size: int = 64
    decoder_energy_flow_hidden_size: int = 128
    encoder_num_resblocks: int = 2
    decoder_num_resblocks: int = 2
    connect_res_layer_num: int = 2
    l1_dowmsample_block: str = "Downsample"
    use_attention: bool = True
    norm_type: str = "layernorm"
    t_interpolation: str = "trilinear"
    dropout: float = 0.0
    scale: List[float] = field(default_factory=lambda: [0.18215] * 8)
    shift: List[float] = field(default_factory=lambda: [0.0] * 8)
    # Everything else of the official dict (wavelet class names, runtime options), kept for round trips.
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def temporal_compression(self) -> int:
        return 8 if self.l1_3d else 4

    @property
    def l1_3d(self) -> bool:
        """True for the 8x8x8 model (3-D level-1 wavelet and blocks), False for the 4x8x8 model (2-D)."""
        return self.l1_dowmsample_block != "Downsample"

    @classmethod
    def from_official(cls, config: Mapping[str, Any]) -> "WFVAEConfig":
        config = dict(config)
        names = {f for f in cls.__dataclass_fields__ if f != "extra"}
        known = {k: config.pop(k) for k in list(config) if k in names}
        cfg = cls(**known, extra=config)
        cfg.validate()
        return cfg

    def to_official(self) -> Dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    def validate(self) -> None:
        if self.norm_type not in ("layernorm", "aelayernorm"):
            raise ValueError(f"norm_type={self.norm_type!r} is not supported: released WF-VAE checkpoints use 'layernorm' "
                             "(GroupNorm mixes frames and breaks causal-cache chunking).")
        if self.t_interpolation != "trilinear":
            raise ValueError(f"t_interpolation={self.t_interpolation!r} is not supported: released checkpoints use "
                             "'trilinear'; pass the full official config (constructor defaults differ).")
        if self.l1_dowmsample_block not in ("Downsample", "Spatial2xTime2x3DDownsample"):
            raise ValueError(f"unknown l1_dowmsample_block {self.l1_dowmsample_block!r}: expected 'Downsample' (v1.3 "
                             "4x8x8) or 'Spatial2xTime2x3DDownsample' (v1.5 8x8x8).")
        if not self.use_attention:
            raise ValueError("use_attention=False is not supported (no released checkpoint uses it).")


def unwrap_official_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """Model weights from an official training dict: `ema_state_dict` (minus `module.`), else `state_dict`
    (or its `gen_model`), else the mapping itself."""
    sd = checkpoint
    ema = checkpoint.get("ema_state_dict") if isinstance(checkpoint, Mapping) else None
    if ema:
        sd = ema
    elif "state_dict" in checkpoint:
        sd = checkpoint["state_dict"]
        if "gen_model" in sd:
            sd = sd["gen_model"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def is_fixed_filter_key(key: str) -> bool:
    """Keys of Haar filters / scale-shift buffers that official checkpoints may carry and the model never reads."""
    if key in _IGNORED_TOP_LEVEL:
        return True
    parts = key.split(".")
    return len(parts) > 2 and parts[0] in ("encoder", "decoder") and parts[1] in _HAAR_MODULES


def to_numpy(value: Any) -> np.ndarray:
    """numpy array from a numpy array or a torch tensor (bf16 goes through float32)."""
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


FORMAT_NAME = "mindspeed_mm.osp.wfvae"  # the `format` field of our config.json (shared with the PyTorch model)


def official_config_from_json(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Official constructor dict from our config.json (`{"format", "config", "official_config"}`) or from a
    released (official) config.json."""
    if config.get("format") != FORMAT_NAME:
        return dict(config)
    if "official_config" in config:
        return dict(config["official_config"])
    from mindspeed_mm.osp.vae.config import WFVAEConfig as TorchSideConfig

    return TorchSideConfig.from_dict(config["config"]).to_official()


def pretrained_json(official: Mapping[str, Any]) -> Dict[str, Any]:
    """Our config.json content for an official constructor dict (readable by both the PyTorch and MindSpore model)."""
    from mindspeed_mm.osp.vae.config import WFVAEConfig as TorchSideConfig

    return {"format": FORMAT_NAME, "config": TorchSideConfig.from_official(dict(official)).to_dict(),
            "official_config": dict(official)}


def read_pretrained(path: str):
    """(official config dict, numpy state dict) from a folder with `config.json` + `model.safetensors`."""
    from safetensors.numpy import load_file

    cfg_path, w_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found: a WF-VAE folder holds config.json (official constructor dict) and "
                                    "model.safetensors (official key names); `osp convert` writes this layout.")
    with open(cfg_path, encoding="utf-8") as f:
        config = official_config_from_json(json.load(f))
    try:
        weights = load_file(w_path)
    except (TypeError, ValueError):  # bfloat16 has no numpy dtype: read through torch and upcast
        from safetensors.torch import load_file as load_torch

        weights = {k: to_numpy(v) for k, v in load_torch(w_path).items()}
    return config, weights
