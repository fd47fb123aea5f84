"""The `osp train` JSON config: sections model, data, diffusion, optimizer, parallel, checkpoint, logging, sampling,
plus `steps` and `seed` at the top level.

    config = load_config("examples/train/osp15_suv_tiny.json", overrides=["optimizer.lr=2e-4", "steps=50"])

Every key is checked: an unknown key is an error naming the closest known one; values are checked for type and
range here, before any model, dataset or process group exists (`check_files` checks that the paths exist).
Overrides are `section.key=value`, the value read as JSON when it parses (numbers, true/false, null, lists), else
as a string.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

VERSIONS = ("v1.5", "v1.3")
DTYPES = ("fp32", "bf16")
CLIP_MODES = ("adaptive", "fixed", "none")
DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
WSD_DECAY_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")   # megatron's lr_wsd_decay_style
TINY = "tiny"  # text_encoder / tokenizer value: the small random encoders of mindspeed_mm.osp.text.tiny


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what to write instead."""


@dataclass
class ModelConfig:
    version: str = "v1.5"             # "v1.5": SUV MMDiT, flow matching; "v1.3": Skiparse DiT, v-prediction
    transformer: Union[str, dict] = "osp15_suv_8b"  # preset name, official config JSON path, or its kwargs inline
    pretrained: Optional[str] = None  # initial weights (any layout from_pretrained reads); None: from scratch
    vae: Optional[str] = None         # WF-VAE folder or preset (tiny_v15, ...); raw-media training only
    text_encoder: Optional[str] = None   # T5/mT5 folder, or "tiny"; raw-media training only
    tokenizer: Optional[str] = None
    text_encoder_2: Optional[str] = None  # v1.5 CLIP (pooled) encoder folder, or "tiny"
    tokenizer_2: Optional[str] = None
    max_text_length: int = 512
    dtype: str = "bf16"               # "bf16": mixed precision (fp32 main weights and Adam moments); "fp32"
    recompute: Union[str, int] = "none"   # "none", "full", or the number of leading blocks per stage
    compile: bool = False             # torch.compile each block (inductor); data parallelism only
    vae_chunk_frames: Optional[int] = None  # encode raw media N frames at a time (same latents, less memory)


@dataclass
class DataConfig:
    source: str = ""                  # data.txt, annotation .json/.jsonl, or MindSpeed-MM data.json
    cache: Optional[str] = None       # feature cache from `osp data extract`; None: raw media
    buckets: dict = field(default_factory=dict)   # BucketConfig keys over the rule's official defaults
    global_batch_size: int = 1        # samples per optimizer step over all data-parallel ranks
    micro_batch_size: int = 1         # samples per forward on one rank; accumulation = global / (micro x DP)
    num_workers: int = 2
    caption_dropout: float = 0.1
    dropout_text: str = ""
    max_failure_fraction: float = 0.01
    max_retries: int = 8
    video_backend: Optional[str] = None
    sample_latents: bool = True       # train on posterior samples (mean + std * noise); false: on its mean


@dataclass
class DiffusionConfig:
    logit_mean: float = 0.0           # v1.5 flow matching: sigma = shift(sigmoid(N(logit_mean, logit_std)))
    logit_std: float = 1.0
    use_dynamic_shift: bool = True
    snr_gamma: float = 5.0            # v1.3 v-prediction: min-SNR weighting
    inpaint: Optional[dict] = None    # v1.3 I2V: InpaintConfig keys ({} for the official defaults)


@dataclass
class OptimizerConfig:
    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-15
    warmup_steps: int = 0
    decay_steps: Optional[int] = None  # where the decay reaches min_lr; null: the run's steps
    decay_style: str = "constant"     # after the warm-up: one of DECAY_STYLES
    min_lr: float = 0.0
    wsd_decay_steps: Optional[int] = None   # "WSD": lr held until decay_steps - this, then decayed to min_lr ...
    wsd_decay_style: str = "linear"          # ... in this shape (one of WSD_DECAY_STYLES)
    clip: str = "adaptive"            # "adaptive" (v1.5 rule), "fixed" (max_grad_norm) or "none"
    max_grad_norm: float = 1.0
    adaptive_decay: float = 0.99
    adaptive_max_init: float = 1.0
    adaptive_extreme_floor: float = 5.0
    on_extreme: str = "skip"          # adaptive clipping above the extreme bound: "skip", "clip" or "stop"
    rank_outlier_drop: bool = False   # v1.3: zero an outlier data-parallel rank's gradient before the reduction
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: str = "v1.5"
    max_skipped_in_a_row: int = 10


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    context: int = 1
    sequence_parallel: bool = False
    virtual_pipeline: Optional[int] = None


@dataclass
class CheckpointConfig:
    every: int = 1000                 # save every N steps (and at the end, and on SIGTERM/SIGINT)
    keep_last: int = 3                # older checkpoints are deleted once a newer one is complete; 0 keeps all


@dataclass
class LoggingConfig:
    every: int = 1                    # JSONL/TensorBoard record every N steps
    progress: bool = True             # tqdm bar on rank 0
    tensorboard: bool = True          # when the tensorboard package is installed
    peak_tflops: Optional[float] = None   # per device, for MFU; default: known GPUs, none on CPU


@dataclass
class SamplingConfig:
    """Periodic sampling to mp4 during training (rank 0; `training/sampling.py`). Off while `every` is 0."""
    every: int = 0                    # sample every N steps (never at step 0); 0: no sampling
    prompts: list = field(default_factory=list)
    seed: int = 0                     # prompt i uses seed + i
    ema: bool = True                  # the EMA weights when the run keeps an EMA, else the trained ones
    num_frames: int = 17
    height: int = 256
    width: int = 256
    steps: int = 10                   # denoising steps
    guidance_scale: Optional[float] = None      # None: the version's default (v1.5 7.0, v1.3 7.5)
    guidance_rescale: Optional[float] = None    # None: the version's default (v1.5 0.7, v1.3 0.0)
    fps: Optional[int] = None         # None: the version's default (v1.5 24, v1.3 18)
    template: Optional[str] = None    # prompt template ("v1.5", "v1.3", "none"); None: the model version's
    shift: float = 7.0                # v1.5 flow sampler's sigma shift


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    steps: int = 1000                 # optimizer steps of the whole run
    seed: int = 0                     # model init, data order, noise

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def i2v(self) -> bool:
        return self.diffusion.inpaint is not None


# ---------------------------------------------------------------------------------------------------- parsing
def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"


def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, origin or hint)


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'the config'} must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in known:
            raise ConfigError(f"unknown key {path!r}{_suggest(key, known)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, path)
            continue
        if not _type_ok(value, hint):
            want = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise ConfigError(f"{path} must be {want}, got {value!r}")
        kwargs[key] = float(value) if hint is float else value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optimizer.lr=1e-4)")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict, overrides, root=None) -> dict:
    """`section.key=value` overrides onto a raw config dict, keys checked against the dataclass `root` (default
    TrainConfig); free-form dict sections (data.buckets) take any key."""
    for text in overrides or ():
        path, value = parse_override(text)
        node, cls = values, root or TrainConfig
        for i, key in enumerate(path):
            known = {f.name for f in dataclasses.fields(cls)} if cls else set(node)
            if cls is not None and key not in known:
                where = ".".join(path[:i]) or "the top level"
                raise ConfigError(f"override {text!r}: {where} has no key {key!r}{_suggest(key, known)}")
            if i == len(path) - 1:
                node[key] = value
                break
            hint = typing.get_type_hints(cls)[key] if cls else None
            cls = hint if dataclasses.is_dataclass(hint) else None
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is not a section")
            node = child
    return values


def load_config(path, overrides=()) -> TrainConfig:
    from mindspeed_mm.osp.files import read_json_object

    try:
        values = read_json_object(path, "config")
    except (OSError, ValueError) as e:
        raise ConfigError(str(e)) from e
    return from_dict(apply_overrides(values, overrides))


def from_dict(values: dict) -> TrainConfig:
    config = _build(TrainConfig, values, "")
    check(config)
    return config


# ---------------------------------------------------------------------------------------------------- checks
def schedule_problems(o, styles: tuple, steps: int) -> list[str]:
    """Problems of an optimizer section's learning-rate schedule (warmup_steps, decay_style, decay_steps, min_lr,
    wsd_decay_steps, wsd_decay_style) for a run of `steps`."""
    problems = []
    if o.decay_style not in styles:
        problems.append(f"optimizer.decay_style must be one of {styles}, got {o.decay_style!r}")
    if o.decay_steps is not None and o.decay_steps <= o.warmup_steps:
        problems.append(f"optimizer.decay_steps (the step where the learning rate reaches min_lr) must be above "
                        f"optimizer.warmup_steps {o.warmup_steps}, got {o.decay_steps}")
    if o.decay_style == "WSD":
        end = decay_steps_of(o, steps)
        if o.wsd_decay_steps is None or not 0 < o.wsd_decay_steps <= end - o.warmup_steps:
            problems.append(f"optimizer.wsd_decay_steps (how many steps before decay_steps the WSD decay starts) must "
                            f"be in [1, {end - o.warmup_steps}] (decay_steps {end} - warmup_steps {o.warmup_steps}), "
                            f"got {o.wsd_decay_steps}")
        if o.wsd_decay_style not in WSD_DECAY_STYLES:
            problems.append(f"optimizer.wsd_decay_style must be one of {WSD_DECAY_STYLES}, got {o.wsd_decay_style!r}")
    if not 0 <= o.min_lr <= o.lr:
        problems.append(f"optimizer.min_lr must be in [0, optimizer.lr={o.lr}], got {o.min_lr}")
    return problems


def decay_steps_of(o, steps: int) -> Optional[int]:
    """The step where the decay ends: optimizer.decay_steps, or by default (null) the run's `steps`, as megatron
    defaults lr_decay_iters to train_iters (None for a constant rate; past the warm-up in a run shorter than it)."""
    if o.decay_style == "constant" or o.decay_steps is not None:
        return o.decay_steps
    return max(steps, o.warmup_steps + 1)


def _positive(problems: list, **values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            problems.append(f"{name} must be >= 1, got {value}")


def check(config: TrainConfig) -> None:
    """Value checks that need no file and no process group (the layout's fit to the world size and the model is
    checked by `job.check_layout`)."""
    m, d, o, p = config.model, config.data, config.optimizer, config.parallel
    problems = []
    if m.version not in VERSIONS:
        problems.append(f"model.version must be one of {VERSIONS}, got {m.version!r}")
    if m.dtype not in DTYPES:
        problems.append(f"model.dtype must be one of {DTYPES}, got {m.dtype!r}")
    if not (m.recompute in ("none", "full") or (isinstance(m.recompute, int) and m.recompute >= 0)):
        problems.append(f"model.recompute must be 'none', 'full' or a block count >= 0, got {m.recompute!r}")
    if m.compile and p.tensor * p.context * p.pipeline > 1:
        problems.append("model.compile is verified with data parallelism only: set parallel.tensor, parallel.context "
                        "and parallel.pipeline to 1, or model.compile=false")
    if not d.source:
        problems.append("data.source is required (data.txt, an annotation JSON, or MindSpeed-MM's data.json)")
    if d.cache is None:
        missing = [k for k in ("vae", "text_encoder", "tokenizer") if getattr(m, k) is None]
        if m.version == "v1.5" and m.text_encoder_2 is None:
            missing.append("text_encoder_2")
        if missing:
            problems.append(f"training from raw media needs model.{', model.'.join(missing)}; or set data.cache to "
                            "a feature cache from `osp data extract`")
    elif config.i2v:
        problems.append("v1.3 I2V training encodes masked videos in the loop: it reads raw media, so leave "
                        "data.cache unset")
    if config.i2v and m.version != "v1.3":
        problems.append("diffusion.inpaint (I2V conditioning) is a v1.3 feature; set model.version='v1.3'")
    _positive(problems, **{"data.global_batch_size": d.global_batch_size,
                           "data.micro_batch_size": d.micro_batch_size, "steps": config.steps,
                           "checkpoint.every": config.checkpoint.every, "logging.every": config.logging.every,
                           "model.max_text_length": m.max_text_length, "model.vae_chunk_frames": m.vae_chunk_frames,
                           "optimizer.max_skipped_in_a_row": o.max_skipped_in_a_row,
                           "parallel.tensor": p.tensor, "parallel.pipeline": p.pipeline,
                           "parallel.context": p.context})
    if d.num_workers < 0 or config.checkpoint.keep_last < 0 or config.seed < 0:
        problems.append("data.num_workers, checkpoint.keep_last and seed must be >= 0")
    if d.global_batch_size % d.micro_batch_size:
        problems.append(f"data.global_batch_size {d.global_batch_size} is not a multiple of data.micro_batch_size "
                        f"{d.micro_batch_size}")
    if o.clip not in CLIP_MODES:
        problems.append(f"optimizer.clip must be one of {CLIP_MODES}, got {o.clip!r}")
    if o.rank_outlier_drop and p.context > 1:
        problems.append("optimizer.rank_outlier_drop needs parallel.context 1 (a context-parallel rank holds only "
                        "part of its replica's gradient before the reduction, so its own norm means nothing)")
    if o.clip == "fixed" and not o.max_grad_norm > 0:
        problems.append(f"optimizer.max_grad_norm must be > 0 with clip='fixed', got {o.max_grad_norm}")
    if not o.lr > 0 or o.min_lr < 0 or o.weight_decay < 0 or not o.eps > 0:
        problems.append("need optimizer.lr > 0, optimizer.eps > 0, optimizer.min_lr >= 0 and weight_decay >= 0")
    problems += schedule_problems(o, DECAY_STYLES, config.steps)
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        problems.append(f"optimizer.betas must be two values in [0, 1), got {o.betas}")
    problems += _sampling_problems(config)
    if problems:
        raise ConfigError("bad training config:\n  - " + "\n  - ".join(problems))
    # the component configs check their own values
    try:
        bucket_config(config)
        sample_config(config)
        inpaint_config(config)
        clip_of(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad training config: {e}") from e


SAMPLING_MODULES = ("vae", "text_encoder", "tokenizer")


def sampling_modules_missing(config: TrainConfig) -> list:
    """The model.* entries periodic sampling needs but the config does not name."""
    m = config.model
    missing = [k for k in SAMPLING_MODULES if getattr(m, k) is None]
    if m.version == "v1.5":
        missing += [k for k in ("text_encoder_2", "tokenizer_2") if getattr(m, k) is None]
    return missing


def _sampling_problems(config: TrainConfig) -> list:
    from mindspeed_mm.osp.text import TEMPLATES

    s, p = config.sampling, config.parallel
    if s.every < 0:
        return [f"sampling.every must be >= 0 (0: no sampling), got {s.every}"]
    if s.every == 0:
        return []
    problems = []
    if not s.prompts or not all(isinstance(x, str) and x.strip() for x in s.prompts):
        problems.append("sampling.every > 0 needs sampling.prompts, a list of non-empty prompt strings")
    if s.steps < 1 or s.num_frames < 1 or s.height < 2 or s.width < 2 or s.seed < 0:
        problems.append("sampling.steps, num_frames must be >= 1, height, width >= 2 and seed >= 0")
    if s.height % 2 or s.width % 2:
        problems.append(f"sampling.height x width {s.height}x{s.width}: mp4 (yuv420p) needs even sizes")
    if s.guidance_scale is not None and s.guidance_scale < 0 or s.fps is not None and s.fps < 1:
        problems.append("sampling.guidance_scale must be >= 0 and sampling.fps >= 1")
    if s.template is not None and s.template not in TEMPLATES:
        problems.append(f"sampling.template {s.template!r}: choose one of {sorted(TEMPLATES)}")
    if not s.shift > 0:
        problems.append(f"sampling.shift must be > 0, got {s.shift}")
    if p.tensor * p.pipeline * p.context > 1:
        problems.append("periodic sampling (sampling.every > 0) needs a single-rank model layout (parallel.tensor, "
                        "pipeline and context all 1; data parallel is fine): it samples on rank 0 from its whole "
                        "replica. Under model parallelism set sampling.every=0 and sample checkpoints with "
                        "`osp convert dit --to pipeline RUN DIR --ema` + `osp sample`")
    if config.i2v:
        problems.append("periodic sampling is text-to-video; an I2V (diffusion.inpaint) run has no conditioning "
                        "frames to sample from: set sampling.every=0")
    missing = sampling_modules_missing(config)
    if missing:
        problems.append(f"periodic sampling decodes with the run's VAE and encodes prompts with its text encoders, "
                        f"but the config names no model.{', model.'.join(missing)}; a run on a feature cache must "
                        "name the VAE and text encoders the cache was extracted with (or set sampling.every=0)")
    return problems


def data_parallel_size(config: TrainConfig, world_size: int) -> int:
    p = config.parallel
    model_parallel = p.tensor * p.pipeline * p.context
    if world_size % model_parallel:
        raise ConfigError(f"{world_size} processes cannot hold parallel.tensor {p.tensor} x pipeline {p.pipeline} x "
                          f"context {p.context} = {model_parallel}; launch a multiple of {model_parallel} processes")
    return world_size // model_parallel


def accumulation_steps(config: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank."""
    d, dp = config.data, data_parallel_size(config, world_size)
    if d.global_batch_size % (d.micro_batch_size * dp):
        raise ConfigError(f"data.global_batch_size {d.global_batch_size} is not a multiple of micro_batch_size "
                          f"{d.micro_batch_size} x data-parallel size {dp}; choose a global batch that is")
    return d.global_batch_size // (d.micro_batch_size * dp)


# ---------------------------------------------------------------------------------------------------- components
def bucket_config(config: TrainConfig):
    """The rule's official bucket settings (rule = model.version unless given) under data.buckets."""
    from mindspeed_mm.osp.data.buckets import bucket_config_from_dict

    return bucket_config_from_dict({"rule": config.model.version, **config.data.buckets})


def sample_config(config: TrainConfig):
    from mindspeed_mm.osp.data.dataset import SampleConfig

    d = config.data
    return SampleConfig(caption_dropout=0.0 if config.i2v else d.caption_dropout, dropout_text=d.dropout_text,
                        max_failure_fraction=d.max_failure_fraction, max_retries=d.max_retries,
                        video_backend=d.video_backend, seed=config.seed)


def inpaint_config(config: TrainConfig):
    from mindspeed_mm.osp.training.inpaint import InpaintConfig

    if config.diffusion.inpaint is None:
        return None
    known = {f.name for f in dataclasses.fields(InpaintConfig)}
    for key in config.diffusion.inpaint:
        if key not in known:
            raise ConfigError(f"unknown key 'diffusion.inpaint.{key}'{_suggest(key, known)}")
    return InpaintConfig(**config.diffusion.inpaint)


def clip_of(config: TrainConfig):
    """A fresh AdaptiveGradClip, the fixed max norm, or None."""
    from mindspeed_mm.osp.training.clipping import AdaptiveGradClip

    o = config.optimizer
    if o.clip == "adaptive":
        return AdaptiveGradClip(decay=o.adaptive_decay, max_init=o.adaptive_max_init,
                                extreme_floor=o.adaptive_extreme_floor, on_extreme=o.on_extreme)
    return o.max_grad_norm if o.clip == "fixed" else None


def rank_drop_of(config: TrainConfig):
    """A fresh RankOutlierDrop when optimizer.rank_outlier_drop is set, else None."""
    from mindspeed_mm.osp.training.clipping import RankOutlierDrop

    return RankOutlierDrop() if config.optimizer.rank_outlier_drop else None


def check_files(config: TrainConfig) -> None:
    """The paths the run reads exist (before any allocation)."""
    from mindspeed_mm.osp.checkpoints.presets import PRESET_DIR

    m, d = config.model, config.data
    missing = []
    if not Path(d.source).exists():
        missing.append(f"data.source {d.source}")
    if d.cache is not None and not (Path(d.cache) / "manifest.json").is_file():
        missing.append(f"data.cache {d.cache} (no manifest.json: build it with `osp data extract`)")
    if isinstance(m.transformer, str) and not (Path(m.transformer).is_file() or
                                               (PRESET_DIR / f"{m.transformer.removesuffix('.json')}.json").is_file()):
        missing.append(f"model.transformer {m.transformer} (neither a config JSON nor a preset in {PRESET_DIR})")
    if m.pretrained is not None and not Path(m.pretrained).exists():
        missing.append(f"model.pretrained {m.pretrained}")
    if d.cache is None or config.sampling.every > 0:
        if m.vae is not None and not ((Path(m.vae) / "config.json").is_file()
                                      or (PRESET_DIR / f"wfvae_{m.vae}.json").is_file()):
            missing.append(f"model.vae {m.vae} (neither a WF-VAE folder with config.json nor a preset)")
        for key in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
            value = getattr(m, key)
            if value not in (None, TINY) and not Path(value).is_dir():
                missing.append(f"model.{key} {value}")
    if config.sampling.every > 0:
        try:
            import av  # noqa: F401  (the mp4 writer)
        except ImportError:
            missing.append("PyAV, which periodic sampling (sampling.every > 0) writes mp4 with: pip install av")
    if missing:
        raise ConfigError("missing input(s):\n  - " + "\n  - ".join(missing))
