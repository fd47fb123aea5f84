"""Official WF-VAE checkpoints and our folder format, framework-free (the PyTorch model and its MindSpore twin
share this): unwrap training dicts, normalise key names, infer the shape-derived config, our `config.json`.

Values only need `.shape` (and `.flatten().tolist()` for the scale/shift buffers): torch tensors, numpy arrays or
MindSpore tensors.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Mapping, Optional

from mindspeed_mm.osp.vae.config import WFVAEConfig, load_preset

FORMAT_NAME = "mindspeed_mm.osp.wfvae"   # the `format` field of our config.json
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

_HAAR_3D = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")
_HAAR_2D = ("aa", "ad", "da", "dd")
# Fixed Haar filters (frozen conv weights / buffers in the official code): built by our model, never read.
_HAAR_KEY = re.compile(
    r"^(encoder\.wavelet_transform_(in|l1|l2)\.(" + "|".join(_HAAR_3D) + r")_conv\.conv\.weight"
    r"|encoder\.wavelet_transform_l1\.(" + "|".join(_HAAR_2D) + r")"
    r"|decoder\.inverse_wavelet_transform_(out|l1|l2)\.(" + "|".join(_HAAR_3D + _HAAR_2D) + r"))$")


def unwrap_state_dict(ckpt: Mapping) -> dict:
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
        if not hasattr(value, "shape"):  # torch / numpy / MindSpore tensors
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: "
                             "this does not look like a WF-VAE state dict")
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def normalize_official_keys(sd: Mapping) -> tuple[dict, dict]:
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


def infer_config(sd: Mapping) -> dict:
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


def parse_official(config: Optional[Mapping], state_dict: Mapping) -> tuple[WFVAEConfig, dict]:
    """(config, weights with official names and dtypes, Haar filters dropped) from an official config dict (or
    None) and a checkpoint in any released form. Keys are not checked here (`WFVAE.load_weights` does)."""
    weights, extras = normalize_official_keys(unwrap_state_dict(state_dict))
    config = dict(config or {})
    for name, buf in extras.items():
        config.setdefault(name, buf.flatten().tolist())
    cfg = WFVAEConfig.from_official(config, inferred=infer_config(weights))
    if "scale" not in config and "shift" not in config:
        cfg = _released_scale_shift(cfg)
    return cfg, weights


def _released_scale_shift(cfg: WFVAEConfig) -> WFVAEConfig:
    """Latent scale/shift of the released model with this architecture, when the checkpoint comes without them."""
    for name in ("v13", "v15", "l16"):
        preset = load_preset(name)
        if dataclasses.replace(preset, scale=cfg.scale, shift=cfg.shift) == cfg:
            return preset
    warnings.warn("WF-VAE config has no latent scale/shift and the architecture matches no released model: using "
                  "scale 0.18215, shift 0 (pass the official config.json for the right values)", stacklevel=4)
    return cfg


def is_fixed_filter_key(key: str) -> bool:
    """Entries official checkpoints may carry that the models never read: Haar filters, scale/shift buffers."""
    key = key.replace("encoder.wavelet_tranform_in.", "encoder.wavelet_transform_in.")
    return key in ("scale", "shift") or bool(_HAAR_KEY.match(key))


def folder_config(cfg: WFVAEConfig) -> dict:
    """Our config.json: the format tag, our config and the official constructor dict."""
    return {"format": FORMAT_NAME, "config": cfg.to_dict(), "official_config": cfg.to_official()}


def config_from_json(data: Mapping) -> tuple[Optional[WFVAEConfig], Optional[dict]]:
    """(our config, None) for our config.json, (None, official dict) for a released one."""
    if data.get("format") == FORMAT_NAME:
        return WFVAEConfig.from_dict(data["config"]), None
    return None, dict(data)
