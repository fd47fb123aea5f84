"""What a training config builds besides the data and the engine: the denoiser's class and config (checked against
the run's version and task) and the frozen WF-VAE and text encoders. Used by the job, by sampling during training
and by export, so that neither of those imports the job loop."""
from __future__ import annotations

from pathlib import Path

import torch

from mindspeed_mm.osp.training.config import TINY, ConfigError, TrainConfig


def official_model_config(config: TrainConfig) -> dict:
    from mindspeed_mm.osp.checkpoints.presets import read_config
    return read_config(config.model.transformer)


def model_spec(config: TrainConfig, model_config: dict):
    """(model class, its config) of the denoiser, checked against the run's version and task."""
    from mindspeed_mm.osp.dit import OSP13Config, OSP13DiT, SUVConfig, SUVDiT

    if config.model.version == "v1.5":
        return SUVDiT, SUVConfig.from_official(model_config)
    cfg = OSP13Config.from_official(model_config)
    if cfg.inpaint != config.i2v:
        fix = ("set diffusion.inpaint ({} for the official masks)" if cfg.inpaint
               else "use an I2V transformer config (class OpenSoraInpaint_v1_3) or remove diffusion.inpaint")
        raise ConfigError(f"model.transformer {config.model.transformer} is a v1.3 "
                          f"{'I2V (inpaint)' if cfg.inpaint else 'T2V'} model but diffusion.inpaint is "
                          f"{'unset' if cfg.inpaint else 'set'}; {fix}")
    return OSP13DiT, cfg


def build_encoders(config: TrainConfig, device):
    """Frozen WF-VAE and text conditioner for raw-media training."""
    from mindspeed_mm.osp.text.encoders import TextConditioner, load_text_encoder, load_tokenizer
    from mindspeed_mm.osp.text.tiny import tiny_clip_text_encoder, tiny_t5_encoder, tiny_tokenizer
    from mindspeed_mm.osp.vae.model import WFVAE

    m = config.model
    dtype = torch.bfloat16 if m.dtype == "bf16" else torch.float32
    torch.manual_seed(config.seed)
    vae = WFVAE.from_pretrained(m.vae, dtype=dtype) if Path(m.vae).is_dir() else WFVAE.from_preset(m.vae).to(dtype)
    model_config = official_model_config(config)

    def encoder(path, tiny):
        return tiny() if path == TINY else load_text_encoder(path, dtype)

    def tokenizer(path, length, bos=False):
        return tiny_tokenizer(length, bos=bos) if path == TINY else load_tokenizer(path)

    text_dim = model_config.get("caption_channels")
    pooled = {}
    if m.text_encoder_2 is not None:
        pooled = {"pooled_encoder": encoder(m.text_encoder_2,
                                            lambda: tiny_clip_text_encoder(model_config["pooled_projection_dim"])),
                  "pooled_tokenizer": tokenizer(m.tokenizer_2, 77, bos=True)}
    text = TextConditioner(encoder(m.text_encoder, lambda: tiny_t5_encoder(text_dim, multilingual=m.version == "v1.3")),
                           tokenizer(m.tokenizer, m.max_text_length), m.max_text_length, **pooled)
    for module in (vae, text.encoder, text.pooled_encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    return vae, text
