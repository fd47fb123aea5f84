"""Build a pipeline from released parts as they are downloaded: the denoiser (v1.3 diffusers `transformer/` folder,
v1.5 MindSpeed-MM `model_ema.pt` / Megatron checkpoint), the WF-VAE (official config.json + checkpoint), and
transformers text-encoder / tokenizer folders (google/mt5-xxl; google/t5-v1_1-xl + CLIP-ViT-bigG-14)."""
from __future__ import annotations

from pathlib import Path

import torch


def assemble_pipeline(version: str, transformer, vae, text_encoder, tokenizer=None, text_encoder_2=None,
                      tokenizer_2=None, transformer_config=None, dtype: torch.dtype = torch.float32, log=None):
    """The parts, read and checked, as one VideoPipeline in `dtype`. `log(message)`: one line per stage."""
    from ..diffusion import FlowMatchEulerSampler, v13_sampler
    from ..dit import from_pretrained as dit_from_pretrained
    from ..text import TextConditioner, load_text_encoder, load_tokenizer
    from ..vae import WFVAE
    from ..progress import quiet
    from .video import VideoPipeline

    log = log or quiet
    if version not in ("v1.3", "v1.5"):
        raise ValueError(f"version must be v1.3 or v1.5, got {version!r}")
    if version == "v1.5" and (text_encoder_2 is None):
        raise ValueError("v1.5 needs the CLIP text encoder too (text_encoder_2: a CLIPTextModelWithProjection folder)")
    for name, path in (("transformer", transformer), ("vae", vae), ("text_encoder", text_encoder),
                       ("text_encoder_2", text_encoder_2)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
    log(f"reading the denoiser from {transformer}")
    dit = dit_from_pretrained(transformer, transformer_config, dtype=dtype).eval().requires_grad_(False)
    tensors = list(dit.state_dict().values())
    log(f"converted {len(tensors)} denoiser tensors ({sum(t.numel() for t in tensors) / 1e9:.2f}B parameters) to "
        f"{str(dtype).replace('torch.', '')}")
    want = "OSP13DiT" if version == "v1.3" else "SUVDiT"
    if type(dit).__name__ != want:
        raise ValueError(f"{transformer} holds a {type(dit).__name__}, not the {version} denoiser ({want})")
    log(f"reading the text encoder{'s' if text_encoder_2 else ''} from {text_encoder}"
        + (f" and {text_encoder_2}" if text_encoder_2 else ""))
    text = TextConditioner(load_text_encoder(text_encoder, dtype), load_tokenizer(tokenizer or text_encoder), 512,
                           None if text_encoder_2 is None else load_text_encoder(text_encoder_2, dtype),
                           None if text_encoder_2 is None else load_tokenizer(tokenizer_2 or text_encoder_2), 77)
    sampler = v13_sampler() if version == "v1.3" else FlowMatchEulerSampler(shift=7.0)
    log(f"reading the WF-VAE from {vae}")
    vae_model = WFVAE.from_pretrained(vae, dtype=dtype).eval().requires_grad_(False)
    pipe = VideoPipeline(version, dit, vae_model, text, sampler)
    pipe.dtype = dtype
    return pipe
