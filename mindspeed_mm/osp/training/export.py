"""Weights out of `osp train` checkpoints: the trained or the EMA weights in the official layout, and a pipeline
folder that `osp sample` runs.

A training checkpoint is found from the run folder (`runs/x`), its `checkpoints/` root (the `latest` iteration) or
one `iter_XXXXXXX` folder. It is read on one process (a private gloo group when none is up) through the engine's
own loader, so a checkpoint saved under any TP/PP/CP layout gives the same single-device state dict.

    osp convert dit --to official runs/x model.safetensors [--ema]
    osp convert dit --to diffusers runs/x transformer/ [--ema]
    osp convert dit --to pipeline runs/x my_pipeline/ [--ema] [--sampling S.json]   # + the run's VAE and text encoders
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from mindspeed_mm.osp.checkpoints.runs import engine_checkpoint_folder as checkpoint_folder

PathLike = Union[str, Path]


def is_training_checkpoint(path: PathLike) -> bool:
    """Whether `path` is an `osp train` run of a DiT (or its checkpoints root / iteration folder); megatron-core is
    imported only when the folder has the engine checkpoint's layout."""
    folder = checkpoint_folder(path)
    if folder is None:
        return False
    from megatron.core import dist_checkpointing
    return "model_config" in dist_checkpointing.load_common_state_dict(str(folder)).get("extra", {})


def run_config(path: PathLike):
    """(TrainConfig, official model kwargs, iteration folder) of a training checkpoint."""
    from megatron.core import dist_checkpointing
    from mindspeed_mm.osp.training.config import from_dict

    folder = checkpoint_folder(path)
    if folder is None:
        raise FileNotFoundError(f"{path} is not an `osp train` run, checkpoints folder or iter_ folder")
    extra = dist_checkpointing.load_common_state_dict(str(folder))["extra"]
    return from_dict(extra["config"]), extra["model_config"], folder


def read_training_checkpoint(path: PathLike, ema: bool = False) -> tuple[str, dict, dict]:
    """(version "v13"/"v15", state dict under the official names, official model kwargs) of the weights (or,
    with `ema`, the EMA weights) of a training checkpoint."""
    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.training.job import single_process_group
    from mindspeed_mm.osp.training.models import model_spec

    config, model_config, folder = run_config(path)
    if ema and not config.optimizer.ema:
        raise ValueError(f"{folder} was trained without EMA (optimizer.ema=false); drop --ema")
    created = not torch.distributed.is_initialized()
    if created:
        single_process_group("gloo")
    elif torch.distributed.get_world_size() != 1:
        raise RuntimeError("read_training_checkpoint runs on one process; call it outside a multi-process launch")
    try:
        parallel.initialize()
        cls, cfg = model_spec(config, model_config)
        with torch.device("meta"):
            model = cls(cfg)
        dtype = torch.bfloat16 if config.model.dtype == "bf16" else torch.float32
        pmodel = parallel.parallelize(model.to(dtype), device=torch.device("cpu"))
        groups = ("ema",) if ema else ()
        resumed = parallel.load_checkpoint(pmodel, None, str(folder), tensor_groups=groups)
        state = parallel.full_state_dict(pmodel, local=resumed.tensors["ema"] if ema else None)
    finally:
        from megatron.core import parallel_state
        parallel_state.destroy_model_parallel()
        if created:
            torch.distributed.destroy_process_group()
    state = {k: v.contiguous() for k, v in state.items()}
    if config.model.version == "v1.5":   # the SUV module's flat block names -> transformer_blocks.{stage}.{j}
        from mindspeed_mm.osp.checkpoints.keys import suv_flat_to_official
        return "v15", suv_flat_to_official(state, cfg.num_layers), model_config
    return "v13", state, model_config


SAMPLING_KEYS = ("template", "shift", "num_frames", "height", "width", "steps", "guidance_scale", "guidance_rescale",
                 "fps")


def _check_sampling(sampling: dict, version: str) -> None:
    from mindspeed_mm.osp.text import TEMPLATES

    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"sampling settings {unknown} are unknown; use {', '.join(SAMPLING_KEYS)}")
    if "template" in sampling and sampling["template"] not in TEMPLATES:
        raise ValueError(f"sampling template {sampling['template']!r}: choose one of {sorted(TEMPLATES)}")
    if "shift" in sampling and (version != "v1.5" or not sampling["shift"] > 0):
        raise ValueError("sampling shift is the v1.5 flow sampler's (a positive number)")


def export_pipeline(src: PathLike, dst: PathLike, *, ema: bool = False, overwrite: bool = False,
                    max_shard_size="5GB", sampling: Optional[dict] = None) -> Path:
    """A pipeline folder (transformer from the checkpoint; VAE and text encoders as the run's config names them).
    `sampling`: the model's own settings (template name, v1.5 sampler shift, default frames/size/steps/guidance/fps)
    stored in the folder; otherwise those of the released model."""
    import dataclasses

    from mindspeed_mm.osp.diffusion import FlowMatchEulerSampler, v13_sampler
    from mindspeed_mm.osp.files import check_target
    from mindspeed_mm.osp.pipelines.video import VideoPipeline
    from mindspeed_mm.osp.text import TEMPLATES
    from mindspeed_mm.osp.training.models import build_encoders, model_spec

    check_target(Path(dst), overwrite)
    config, model_config, _ = run_config(src)
    sampling = dict(sampling or {})
    _check_sampling(sampling, config.model.version)
    missing = [k for k in ("vae", "text_encoder", "tokenizer") if getattr(config.model, k) is None]
    if config.model.version == "v1.5" and config.model.text_encoder_2 is None:
        missing.append("text_encoder_2")
    if missing:
        raise ValueError(f"the run's config names no model.{', model.'.join(missing)} (it trained from a feature "
                         "cache); export the transformer with --to diffusers and assemble the pipeline with "
                         "`osp make-pipeline`")
    _, state, _ = read_training_checkpoint(src, ema)
    cls, _ = model_spec(config, model_config)
    transformer = cls.from_official(model_config, state)
    vae, text = build_encoders(config, torch.device("cpu"))
    version = config.model.version
    sampler = v13_sampler() if version == "v1.3" else FlowMatchEulerSampler(shift=sampling.pop("shift", 7.0))
    template = TEMPLATES[sampling.pop("template", version)]
    pipe = VideoPipeline(version, transformer.float().eval(), vae.float(), text, sampler, template)
    pipe.defaults = dataclasses.replace(pipe.defaults, **sampling)
    return pipe.save_pretrained(dst, overwrite=overwrite, max_shard_size=max_shard_size)
