"""Pipeline folders in the diffusers layout: model_index.json + transformer/ vae/ text_encoder/ tokenizer/
(+ text_encoder_2/ tokenizer_2/ for v1.5) scheduler/. Whole folders are written and read by
`video.save_pipeline` / `video.load_pipeline`; here: the layout's names, the transformer component and the embedded
default model.

transformer/: config.json (official constructor kwargs + `_class_name`) and diffusion_pytorch_model.safetensors
(or -0000X-of-0000N shards + .index.json above `max_shard_size`) under the official parameter names;
vae/: WFVAE.save_pretrained; text encoders/tokenizers: transformers folders; scheduler/: scheduler_config.json.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

INDEX_FILE = "model_index.json"
# the embedded default model (a tiny v1.5 pipeline trained on the shapes data; see its MODEL_CARD.md)
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "default_model"
TRANSFORMER_CONFIG = "config.json"
PIPELINE_CLASS = "OSPVideoPipeline"


def save_transformer(model, folder: Path, max_shard_size="5GB") -> None:
    from ..checkpoints.diffusers import write_diffusers_folder
    from ..dit.loading import diffusers_config

    state = model.official_state_dict() if hasattr(model, "official_state_dict") else model.state_dict()
    write_diffusers_folder(diffusers_config(model), state, folder, max_shard_size)


def load_transformer(folder: Path, dtype: torch.dtype = torch.float32):
    from ..dit import from_pretrained

    if not (folder / TRANSFORMER_CONFIG).is_file():
        raise FileNotFoundError(f"{folder / TRANSFORMER_CONFIG} is missing: the pipeline's transformer/ folder needs "
                                f"{TRANSFORMER_CONFIG} and diffusion_pytorch_model*.safetensors")
    return from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)


def component_folder(folder: Path, name: str) -> Path:
    """`folder / name`, which must be a folder (a missing component is an error naming it)."""
    path = folder / name
    if not path.is_dir():
        raise FileNotFoundError(f"pipeline folder {folder} has no {name}/ component folder "
                                f"(expected the diffusers layout written by `save_pretrained`)")
    return path


def default_model() -> Optional[Path]:
    """The embedded default pipeline folder, or None where this install has none."""
    return DEFAULT_MODEL if (DEFAULT_MODEL / INDEX_FILE).is_file() else None
