"""WF-VAE configuration: dataclass, official constructor dicts, presets."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
PRESET_PREFIX = "wfvae_"

# Official constructor keys that do not change the network (runtime options of other code bases).
IGNORED_OFFICIAL_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "use_tiling", "t_chunk_enc", "t_chunk_dec",
                         "vae_scale_factor", "use_quant_layer", "from_pretrained", "model_id", "dtype",
                         "temporal_size", "dropout"}
NORM_ALIASES = {"layernorm": "layernorm", "aelayernorm": "layernorm"}


@dataclass
class WFVAEConfig:
    """Architecture of a WF-VAE. Widths: C (`base_channels`), 2C, 4C; energy-flow widths Ee, Ed; latent L.

    `temporal_compression` is 4 (v1.3: 2-D level-1 wavelet) or 8 (v1.5: 3-D level-1 wavelet); space is always /8.
    `scale`/`shift` normalise latents for the DiT: `z_dit = (z - shift) * scale` (length 1 or `latent_dim`).
    """

    base_channels: int = 128
    latent_dim: int = 8
    temporal_compression: int = 4
    encoder_energy_flow_hidden_size: int = 64
    decoder_energy_flow_hidden_size: int = 128
    encoder_num_resblocks: int = 2
    decoder_num_resblocks: int = 2
    connect_res_layer_num: int = 2
    use_attention: bool = True
    t_interpolation: str = "trilinear"
    scale: list = field(default_factory=lambda: [0.18215] * 8)
    shift: list = field(default_factory=lambda: [0.0] * 8)

    def __post_init__(self):
        if self.temporal_compression not in (4, 8):
            raise ValueError(f"temporal_compression must be 4 or 8, got {self.temporal_compression}")
        if self.t_interpolation not in ("trilinear", "nearest"):
            raise ValueError(f"t_interpolation must be 'trilinear' or 'nearest', got {self.t_interpolation!r}")
        for name in ("scale", "shift"):
            value = getattr(self, name)
            setattr(self, name, [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WFVAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown WF-VAE config keys {unknown}; accepted: {sorted(known)}")
        return cls(**d)

    # ---- official constructor dicts -------------------------------------------------------------------------
    @classmethod
    def from_official(cls, config: dict, inferred: Optional[dict] = None) -> "WFVAEConfig":
        """Parse the official `WFVAEModel(**config)` dict (released config.json); unknown runtime keys are ignored.

        `inferred` holds values read from checkpoint shapes; they fill fields the config omits, and a config value
        that contradicts them raises (naming the field).
        """
        config = {k: v for k, v in config.items() if k not in IGNORED_OFFICIAL_KEYS}
        out: dict = {}
        norm = config.pop("norm_type", "layernorm")
        if NORM_ALIASES.get(norm) != "layernorm":
            raise ValueError(f"norm_type {norm!r} is not supported: released WF-VAE checkpoints use 'layernorm' "
                             f"(channel LayerNorm; MindSpeed-MM spells it 'aelayernorm')")
        attn = config.pop("attention_type", "AttnBlock3DFix")
        if attn != "AttnBlock3DFix":
            raise ValueError(f"attention_type {attn!r} is not supported (only 'AttnBlock3DFix')")
        wavelets = {k: config.pop(k) for k in list(config) if k.startswith(("l1_", "l2_"))}
        l1_block = wavelets.get("l1_dowmsample_block", wavelets.get("l1_downsample_block"))
        if l1_block is not None:
            if l1_block not in ("Downsample", "Spatial2xTime2x3DDownsample"):
                raise ValueError(f"l1_dowmsample_block {l1_block!r} is not supported "
                                 "(expected 'Downsample' (4x8x8) or 'Spatial2xTime2x3DDownsample' (8x8x8))")
            out["temporal_compression"] = 4 if l1_block == "Downsample" else 8
        for key in ("base_channels", "latent_dim", "encoder_energy_flow_hidden_size", "decoder_energy_flow_hidden_size",
                    "encoder_num_resblocks", "decoder_num_resblocks", "connect_res_layer_num", "use_attention",
                    "t_interpolation", "scale", "shift"):
            if key in config:
                out[key] = config.pop(key)
        if config:
            raise ValueError(f"unknown keys in the official WF-VAE config: {sorted(config)}")
        for key, value in (inferred or {}).items():
            if key in out and out[key] != value:
                raise ValueError(f"config says {key}={out[key]!r} but the checkpoint's shapes say {value!r}")
            out.setdefault(key, value)
        if "latent_dim" in out and "scale" not in out:
            out["scale"] = [0.18215] * out["latent_dim"]
        if "latent_dim" in out and "shift" not in out:
            out["shift"] = [0.0] * out["latent_dim"]
        return cls(**out)

    def to_official(self) -> dict:
        """The official constructor dict (as in a released config.json)."""
        three_d = self.temporal_compression == 8
        return {
            "_class_name": "WFVAEModel",
            "base_channels": self.base_channels,
            "connect_res_layer_num": self.connect_res_layer_num,
            "decoder_energy_flow_hidden_size": self.decoder_energy_flow_hidden_size,
            "decoder_num_resblocks": self.decoder_num_resblocks,
            "dropout": 0.0,
            "encoder_energy_flow_hidden_size": self.encoder_energy_flow_hidden_size,
            "encoder_num_resblocks": self.encoder_num_resblocks,
            "l1_dowmsample_block": "Spatial2xTime2x3DDownsample" if three_d else "Downsample",
            "l1_downsample_wavelet": "HaarWaveletTransform3D" if three_d else "HaarWaveletTransform2D",
            "l1_upsample_block": "Spatial2xTime2x3DUpsample" if three_d else "Upsample",
            "l1_upsample_wavelet": "InverseHaarWaveletTransform3D" if three_d else "InverseHaarWaveletTransform2D",
            "l2_dowmsample_block": "Spatial2xTime2x3DDownsample",
            "l2_downsample_wavelet": "HaarWaveletTransform3D",
            "l2_upsample_block": "Spatial2xTime2x3DUpsample",
            "l2_upsample_wavelet": "InverseHaarWaveletTransform3D",
            "latent_dim": self.latent_dim,
            "norm_type": "layernorm",
            "t_interpolation": self.t_interpolation,
            "use_attention": self.use_attention,
            "attention_type": "AttnBlock3DFix",
            "scale": list(self.scale),
            "shift": list(self.shift),
        }


def preset_names() -> list[str]:
    return sorted(p.stem[len(PRESET_PREFIX):] for p in PRESETS_DIR.glob(f"{PRESET_PREFIX}*.json"))


def load_preset(name: str) -> WFVAEConfig:
    """Preset by name (`v13`, `v15`, `l16`, `tiny_v13`, ...; the `wfvae_` prefix is optional)."""
    stem = name if name.startswith(PRESET_PREFIX) else PRESET_PREFIX + name
    path = PRESETS_DIR / f"{stem}.json"
    if not path.is_file():
        raise ValueError(f"unknown WF-VAE preset {name!r}; available: {preset_names()}")
    return WFVAEConfig.from_dict(json.loads(path.read_text()))
