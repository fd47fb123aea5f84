"""Reading official WF-VAE checkpoints: unwrap training dicts, normalise names, infer shape-derived config."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Optional

import torch

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
_HAAR_3D = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")
_HAAR_2D = ("aa", "ad", "da", "dd")
# Fixed Haar filters (frozen conv weights / buffers in the official code): built by our model, never read.
_HAAR_KEY = re.compile(
    r"^(encoder\.wavelet_transform_(in|l1|l2)\.(" + "|".join(_HAAR_3D) + r")_conv\.conv\.weight"
    r"|encoder\.wavelet_transform_l1\.(" + "|".join(_HAAR_2D) + r")"
    r"|decoder\.inverse_wavelet_transform_(out|l1|l2)\.(" + "|".join(_HAAR_3D + _HAAR_2D) + r"))$")


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


def unwrap_state_dict(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """The model weights of an official checkpoint, in any released form.

    Order as the official loader: a non-empty `ema_state_dict`, else `state_dict` (or `state_dict["gen_model"]`),
    else the mapping itself. `module.` prefixes are stripped.
    """
    sd = ckpt
    if isinstance(ckpt.get("ema_state_dict"), Mapping) and len(ckpt["ema_state_dict"]):
        sd = ckpt["ema_state_dict"]
    elif isinstance(ckpt.get("state_dict"), Mapping):
        sd = ckpt["state_dict"]
        if isinstance(sd.get("gen_model"), Mapping):
            sd = sd["gen_model"]
    elif isinstance(ckpt.get("gen_model"), Mapping):
        sd = ckpt["gen_model"]
    out = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: "
                             "this does not look like a WF-VAE state dict")
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def normalize_official_keys(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Drop Haar filters, fix MindSpeed-MM's `wavelet_tranform_in` spelling, split off top-level `scale`/`shift`.

    Returns (model weights, extras) where extras holds `scale`/`shift` buffers if present.
    """
    weights, extras = {}, {}
    for key, value in sd.items():
        key = key.replace("encoder.wavelet_tranform_in.", "encoder.wavelet_transform_in.")
        if key in ("scale", "shift"):
            extras[key] = value
        elif not _HAAR_KEY.match(key):
            weights[key] = value
    return weights, extras


def infer_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """Shape-derived config fields (spec section 3), for the keys that are present."""
    def shape(key):
        return tuple(sd[key].shape) if key in sd else None

    out: dict = {}
    if shape("encoder.down1.0.weight"):
        out["base_channels"] = shape("encoder.down1.0.weight")[0]
    if shape("decoder.conv_in.conv.weight"):
        out["latent_dim"] = shape("decoder.conv_in.conv.weight")[1]
    if shape("encoder.connect_l2.weight"):
        out["encoder_energy_flow_hidden_size"] = shape("encoder.connect_l2.weight")[0]
    if shape("encoder.connect_l1.weight"):
        out["temporal_compression"] = 8 if shape("encoder.connect_l1.weight")[1] == 24 else 4
    enc_rb = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down1\.(\d+)\.norm1\.norm\.weight$", k))}
    if enc_rb:
        out["encoder_num_resblocks"] = len(enc_rb)
    dec_rb = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up2\.(\d+)\.norm1\.norm\.weight$", k))}
    if dec_rb:
        out["decoder_num_resblocks"] = len(dec_rb) - 1  # the last up2 block follows the upsample
    crl = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.connect_l1\.(\d+)\.norm1\.norm\.weight$", k))}
    if "decoder.connect_l1.0.weight" in sd or crl:
        out["connect_res_layer_num"] = len(crl)
    if crl and shape("decoder.connect_l1.0.norm1.norm.weight"):
        out["decoder_energy_flow_hidden_size"] = shape("decoder.connect_l1.0.norm1.norm.weight")[0]
    elif shape("decoder.connect_l1.0.weight"):
        out["decoder_energy_flow_hidden_size"] = shape("decoder.connect_l1.0.weight")[1]
    if any(k.startswith("encoder.mid.") for k in sd):
        out["use_attention"] = "encoder.mid.1.q.conv.weight" in sd
    return out


def find_checkpoint_in_dir(path: Path) -> Optional[Path]:
    """The single checkpoint file of an official model directory (config.json + checkpoint)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files:
        return None
    raise ValueError(f"{path} holds several checkpoint files {[p.name for p in files]}; pass the file to use")
