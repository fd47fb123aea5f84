"""The WF-VAE training config (`osp train` with `"task": "vae"` at the top level): sections model, data, loss,
optimizer, checkpoint, logging, plus `steps`, `seed` and `export`.

    config = load_vae_config("examples/train/wfvae_tiny.json", overrides=["optimizer.lr=1e-4", "steps=50"])

Parsing and overrides use the DiT config's machinery (`training.config`): unknown keys are errors naming the
closest known one, values are type-checked; `check` and `check_inputs` check values and files before any work.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.training.config import ConfigError, _build, apply_overrides, schedule_problems
from mindspeed_mm.osp.vae.losses import LossConfig

TASK = "vae"
DECAY_STYLES = ("constant", "linear", "cosine", "WSD")


@dataclass
class VAEModelSection:
    vae: str = "wfvae_tiny_v15"       # preset name, WF-VAE config JSON, or a pretrained folder/checkpoint to fine-tune


@dataclass
class VAEDataSection:
    source: str = ""                  # data.txt / annotation JSON of OSP-format videos (and images when num_frames=1)
    num_frames: int = 17              # 1 + R*n for a VAE with temporal compression R
    height: int = 256                 # multiples of 8: clips are resized to cover, then randomly cropped
    width: int = 256
    frame_interval: int = 1           # take every k-th frame of the file (the official `sample_rate`)
    global_batch_size: int = 1        # clips per step over all ranks = micro_batch_size x world size
    micro_batch_size: int = 1         # clips per rank and step
    num_workers: int = 2
    video_backend: Optional[str] = None   # decord, av or cv2; None: the first installed
    max_retries: int = 8              # unreadable clip: replaced by another item, at most this many times
    frame_cache_mb: int = 0           # per loader process: keep decoded clips (uint8) up to this size; 0: off


@dataclass
class VAEOptimizerSection:
    lr: float = 1e-5                  # AdamW of the VAE
    disc_lr: Optional[float] = None   # AdamW of the discriminator; None: lr
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-4
    disc_weight_decay: Optional[float] = None   # None: weight_decay
    warmup_steps: int = 0             # linear warm-up of both learning rates
    decay_style: str = "constant"     # then one of DECAY_STYLES (megatron's rules, as the DiT's) ...
    decay_steps: Optional[int] = None     # ... reaching min_lr at this step (null: the run's steps)
    min_lr: float = 0.0               # the discriminator's schedule is the VAE's scaled by disc_lr / lr
    wsd_decay_steps: Optional[int] = None   # "WSD": lr held until decay_steps - this, then decayed to min_lr ...
    wsd_decay_style: str = "linear"          # ... in this shape (one of config.WSD_DECAY_STYLES)
    clip_grad: Optional[float] = 1e5  # max gradient norm of each network; None: no clipping
    ema_decay: Optional[float] = 0.999    # EMA of the VAE weights (exported); None: no EMA


@dataclass
class VAECheckpointSection:
    every: int = 1000                 # save every N steps (and at the end, and on SIGTERM/SIGINT)
    keep_last: int = 3                # 0 keeps all


@dataclass
class VAELoggingSection:
    every: int = 1                    # metrics.jsonl record every N steps
    progress: bool = True             # tqdm bar on rank 0
    tensorboard: bool = False         # TensorBoard scalars (when installed)


@dataclass
class VAETrainConfig:
    task: str = TASK
    model: VAEModelSection = field(default_factory=VAEModelSection)
    data: VAEDataSection = field(default_factory=VAEDataSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: VAEOptimizerSection = field(default_factory=VAEOptimizerSection)
    checkpoint: VAECheckpointSection = field(default_factory=VAECheckpointSection)
    logging: VAELoggingSection = field(default_factory=VAELoggingSection)
    steps: int = 1000
    seed: int = 0
    export: bool = True               # write OUT/export/vae (EMA weights when EMA is on) at the end

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def is_vae_config(path) -> bool:
    """Whether the JSON file at `path` is a VAE training config (top-level `"task": "vae"`)."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and values.get("task") == TASK


def load_vae_config(path, overrides=()) -> VAETrainConfig:
    from mindspeed_mm.osp.files import read_json_object

    try:
        values = read_json_object(path, "config")
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from e
    return from_dict(apply_overrides(values, overrides, VAETrainConfig))


def from_dict(values: dict) -> VAETrainConfig:
    config = _build(VAETrainConfig, values, "")
    check(config)
    return config


def check(config: VAETrainConfig) -> None:
    """Value checks that need no file (files and the VAE's frame rule: `check_inputs`)."""
    d, o = config.data, config.optimizer
    problems = []
    if config.task != TASK:
        problems.append(f"task must be {TASK!r} for a VAE training config, got {config.task!r}")
    if not d.source:
        problems.append("data.source is required (data.txt or an annotation JSON of videos)")
    for name in ("num_frames", "height", "width", "frame_interval", "global_batch_size", "micro_batch_size"):
        if getattr(d, name) < 1:
            problems.append(f"data.{name} must be >= 1, got {getattr(d, name)}")
    for name in ("height", "width"):
        if getattr(d, name) % 8:
            problems.append(f"data.{name} must be a multiple of 8 (the VAE's spatial compression), got "
                            f"{getattr(d, name)}")
    if d.global_batch_size % max(d.micro_batch_size, 1):
        problems.append(f"data.global_batch_size {d.global_batch_size} is not a multiple of data.micro_batch_size "
                        f"{d.micro_batch_size}")
    if (d.num_workers < 0 or d.max_retries < 0 or d.frame_cache_mb < 0 or config.seed < 0
            or config.checkpoint.keep_last < 0):
        problems.append("data.num_workers, data.max_retries, data.frame_cache_mb, seed and checkpoint.keep_last "
                        "must be >= 0")
    for name, value in (("steps", config.steps), ("checkpoint.every", config.checkpoint.every),
                        ("logging.every", config.logging.every)):
        if value < 1:
            problems.append(f"{name} must be >= 1, got {value}")
    if not o.lr > 0 or (o.disc_lr is not None and not o.disc_lr > 0) or not o.eps > 0:
        problems.append("need optimizer.lr > 0, optimizer.disc_lr > 0 (or null) and optimizer.eps > 0")
    if o.weight_decay < 0 or (o.disc_weight_decay is not None and o.disc_weight_decay < 0) or o.warmup_steps < 0:
        problems.append("optimizer.weight_decay, disc_weight_decay and warmup_steps must be >= 0")
    problems += schedule_problems(o, DECAY_STYLES, config.steps)
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        problems.append(f"optimizer.betas must be two values in [0, 1), got {o.betas}")
    if o.clip_grad is not None and not o.clip_grad > 0:
        problems.append(f"optimizer.clip_grad must be > 0 or null, got {o.clip_grad}")
    if o.ema_decay is not None and not 0 <= o.ema_decay < 1:
        problems.append(f"optimizer.ema_decay must be in [0, 1) or null, got {o.ema_decay}")
    problems += config.loss.problems()
    if problems:
        raise ConfigError("bad VAE training config:\n  - " + "\n  - ".join(problems))


def check_inputs(config: VAETrainConfig, world_size: int, temporal_compression: int) -> None:
    """The data source and LPIPS weights exist, the clip size fits the VAE, the batch fits the world size."""
    d, r = config.data, temporal_compression
    problems = []
    if not Path(d.source).exists():
        problems.append(f"data.source {d.source} does not exist")
    problems += config.loss.missing_files()
    if (d.num_frames - 1) % r:
        below = 1 + r * ((d.num_frames - 1) // r)
        problems.append(f"data.num_frames must be 1 + {r}*n for this VAE ({r}x temporal compression), got "
                        f"{d.num_frames}; nearest: {sorted({below, below + r})}")
    if d.global_batch_size != d.micro_batch_size * world_size:
        fix = (f"set data.micro_batch_size={d.global_batch_size // world_size}" if d.global_batch_size % world_size == 0
               else "choose a global batch that is a multiple of the world size")
        problems.append(f"data.global_batch_size {d.global_batch_size} must equal data.micro_batch_size "
                        f"{d.micro_batch_size} x {world_size} process(es); {fix}")
    if problems:
        raise ConfigError("bad VAE training config:\n  - " + "\n  - ".join(problems))


def parse_vae_json(raw: dict):
    """A WFVAEConfig from our folder config (`format`), the official constructor dict, or a plain config dict."""
    from mindspeed_mm.osp.vae.config import WFVAEConfig
    from mindspeed_mm.osp.vae.official import FORMAT_NAME

    if raw.get("format") == FORMAT_NAME:
        return WFVAEConfig.from_dict(raw["config"])
    if "_class_name" in raw or any(k.startswith(("l1_", "l2_")) for k in raw):
        return WFVAEConfig.from_official(raw)
    return WFVAEConfig.from_dict(raw)
