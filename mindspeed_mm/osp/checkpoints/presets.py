"""Official config kwargs: the presets in mindspeed_mm/osp/configs, JSON files and MindSpeed-MM model JSONs."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def read_preset(name: str) -> dict:
    """Official config kwargs of a preset in mindspeed_mm/osp/configs (name with or without .json)."""
    path = PRESET_DIR / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        available = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
        raise FileNotFoundError(f"no preset {name!r} in {PRESET_DIR}; available: {available}")
    return json.loads(path.read_text())


def read_config(config: Union[dict, str, os.PathLike]) -> dict:
    """Official kwargs from a dict, a JSON file (MindSpeed-MM model JSON: its "predictor") or a preset name."""
    if isinstance(config, dict):
        return config
    p = Path(config)
    if p.is_file():
        data = json.loads(p.read_text())
        # MindSpeed-MM model json keeps the denoiser kwargs under "predictor".
        return data.get("predictor", data)
    return read_preset(str(config))
