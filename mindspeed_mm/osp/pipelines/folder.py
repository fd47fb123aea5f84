"""Pipeline folders in the diffusers layout: model_index.json + transformer/ vae/ text_encoder/ tokenizer/
(+ text_encoder_2/ tokenizer_2/ for v1.5) scheduler/.

transformer/: config.json (official constructor kwargs + `_class_name`) and diffusion_pytorch_model.safetensors
(or -0000X-of-0000N shards + .index.json above `max_shard_size`) under the official parameter names;
vae/: WFVAE.save_pretrained; text encoders/tokenizers: transformers folders; scheduler/: scheduler_config.json.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import torch

from ..diffusion import load_sampler
from ..files import replace_dir
from ..text import TEMPLATES, TextConditioner, load_text_encoder, load_tokenizer

INDEX_FILE = "model_index.json"
# the embedded default model (a tiny v1.5 pipeline trained on the shapes data; see its MODEL_CARD.md)
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "default_model"
TRANSFORMER_CONFIG = "config.json"
PIPELINE_CLASS = "OSPVideoPipeline"


def save_transformer(model, folder: Path, max_shard_size="5GB") -> None:
    from ..dit.loading import diffusers_config, write_diffusers_folder

    state = model.official_state_dict() if hasattr(model, "official_state_dict") else model.state_dict()
    write_diffusers_folder(diffusers_config(model), state, folder, max_shard_size)


def load_transformer(folder: Path, dtype: torch.dtype = torch.float32):
    from ..dit import from_pretrained

    if not (folder / TRANSFORMER_CONFIG).is_file():
        raise FileNotFoundError(f"{folder / TRANSFORMER_CONFIG} is missing: the pipeline's transformer/ folder needs "
                                f"{TRANSFORMER_CONFIG} and diffusion_pytorch_model*.safetensors")
    return from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_dir():
        raise FileNotFoundError(f"pipeline folder {folder} has no {name}/ component folder "
                                f"(expected the diffusers layout written by `save_pretrained`)")
    return path


def default_model() -> Optional[Path]:
    """The embedded default pipeline folder, or None where this install has none."""
    return DEFAULT_MODEL if (DEFAULT_MODEL / INDEX_FILE).is_file() else None


def save_pipeline(pipe, folder, overwrite: bool = False, max_shard_size="5GB") -> Path:
    """Write all components to a temporary folder next to `folder`, then move it into place (the transformer's
    weights in safetensors shards of at most `max_shard_size`)."""
    from .video import DEFAULTS

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists; pass overwrite=True (CLI: --overwrite) or choose another folder")
    if pipe.text is None:
        raise RuntimeError("cannot save a pipeline whose text encoders were freed")

    def write(tmp: Path) -> None:
        from ..progress import bar

        parts = [("transformer", lambda: save_transformer(pipe.transformer, tmp / "transformer", max_shard_size)),
                 ("vae", lambda: pipe.vae.save_pretrained(tmp / "vae")),
                 ("text_encoder", lambda: pipe.text.encoder.save_pretrained(tmp / "text_encoder")),
                 ("tokenizer", lambda: pipe.text.tokenizer.save_pretrained(tmp / "tokenizer"))]
        if pipe.text.pooled_encoder is not None:
            parts += [("text_encoder_2", lambda: pipe.text.pooled_encoder.save_pretrained(tmp / "text_encoder_2")),
                      ("tokenizer_2", lambda: pipe.text.pooled_tokenizer.save_pretrained(tmp / "tokenizer_2"))]
        with bar(total=len(parts), desc="writing components", unit="part") as progress:
            for name, save in parts:
                progress.set_postfix_str(name)
                save()
                progress.update(1)
        index = {
            "_class_name": PIPELINE_CLASS,
            "version": pipe.version,
            "template": next((name for name, t in TEMPLATES.items() if t is pipe.template), pipe.template.__dict__),
            "max_length": pipe.text.max_length,
            "transformer": ["mindspeed_mm.osp.dit", type(pipe.transformer).__name__],
            "vae": ["mindspeed_mm.osp.vae", type(pipe.vae).__name__],
            "text_encoder": ["transformers", type(pipe.text.encoder).__name__],
            "tokenizer": ["transformers", type(pipe.text.tokenizer).__name__],
            "scheduler": [type(pipe.sampler).__module__.rsplit(".", 1)[0], type(pipe.sampler).__name__],
        }
        if pipe.text.pooled_encoder is not None:
            index["text_encoder_2"] = ["transformers", type(pipe.text.pooled_encoder).__name__]
            index["tokenizer_2"] = ["transformers", type(pipe.text.pooled_tokenizer).__name__]
            index["max_length_2"] = pipe.text.pooled_max_length
        if pipe.defaults != DEFAULTS[pipe.version]:    # the model's own sampling settings (size, steps, ...)
            index["defaults"] = dataclasses.asdict(pipe.defaults)
        pipe.sampler.save_pretrained(tmp / "scheduler")
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")

    replace_dir(folder, write)
    return folder


def load_pipeline(folder, dtype: torch.dtype = torch.float32, text_dtype: Optional[torch.dtype] = None):
    """Read a pipeline folder; every component is loaded on the CPU (move it with `.to`)."""
    from ..text.templates import PromptTemplate
    from ..vae import WFVAE
    from .video import VideoPipeline

    folder = Path(folder)
    index_file = folder / INDEX_FILE
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} is missing: --model must be a pipeline folder written by "
                                "`save_pretrained` (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)")
    index = json.loads(index_file.read_text())
    if index.get("_class_name") != PIPELINE_CLASS:
        raise ValueError(f"{index_file}: _class_name {index.get('_class_name')!r} is not {PIPELINE_CLASS!r}")
    version = index["version"]
    text_dtype = text_dtype or dtype
    components = ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
    if "text_encoder_2" in index:
        components += ["text_encoder_2", "tokenizer_2"]
    paths = {name: _require(folder, name) for name in components}
    transformer = load_transformer(paths["transformer"], dtype)
    vae = WFVAE.from_pretrained(paths["vae"], dtype=dtype).eval().requires_grad_(False)
    pooled = pooled_tok = None
    if "text_encoder_2" in paths:
        pooled, pooled_tok = load_text_encoder(paths["text_encoder_2"], text_dtype), load_tokenizer(paths["tokenizer_2"])
    text = TextConditioner(load_text_encoder(paths["text_encoder"], text_dtype), load_tokenizer(paths["tokenizer"]),
                           index.get("max_length", 512), pooled, pooled_tok, index.get("max_length_2", 77))
    template = index.get("template", version)
    template = TEMPLATES[template] if isinstance(template, str) else PromptTemplate(**template)
    pipe = VideoPipeline(version, transformer, vae, text, load_sampler(paths["scheduler"]), template)
    if "defaults" in index:
        pipe.defaults = dataclasses.replace(pipe.defaults, **index["defaults"])
    pipe.dtype = dtype
    return pipe
