"""The `osp train` job: config -> checks -> process groups -> data -> model -> resume -> guarded steps.

Output folder: `config.json` (the resolved config of the run), `metrics.jsonl` (one record per logged step),
`tensorboard/` (when installed), `checkpoints/iter_XXXXXXX` (+ `latest`), `samples/step_XXXXXXX/NN.mp4` (periodic
sampling, `training/sampling.py`).

Every random draw of a step comes from (seed, step, sample index) or (seed, epoch, item): noise, sigmas and
timesteps (objectives.py), the posterior sample of raw media and of cached latents, captions and I2V masks. A
checkpoint holds weights, Adam state, LR schedule, EMA (sharded) and its update count, clip statistics, skip
counters, the per-rank outlier drop's statistics and the sampler position, so a run killed at any moment and
resumed from its last checkpoint repeats the steps after it exactly (kill -9 included). SIGTERM/SIGINT: the current step finishes, a checkpoint is written, the
run exits 0 and prints the command that resumes it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mindspeed_mm.osp.checkpoints.runs import RUN_CHECKPOINTS
from mindspeed_mm.osp.training.config import (
    ConfigError, TrainConfig, accumulation_steps, bucket_config, check_files, clip_of, decay_steps_of,
    inpaint_config, rank_drop_of, sample_config,
)
from mindspeed_mm.osp.training.models import build_encoders, model_spec, official_model_config

CHECKPOINTS = RUN_CHECKPOINTS
RESOLVED_CONFIG = "config.json"
# may differ between a checkpoint's run and its resumption (nothing else may)
RESUMABLE_CHANGES = ("steps", "checkpoint.", "logging.", "parallel.", "data.num_workers", "data.micro_batch_size",
                     "model.recompute", "model.compile", "model.vae_chunk_frames", "sampling.")


# ---------------------------------------------------------------------------------------------------- setup
def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("buckets", "inpaint"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(saved: dict, config, resumable=RESUMABLE_CHANGES) -> None:
    """A resumed run trains what its checkpoint trained: only the `resumable` keys (layout, length, logging; a
    trailing dot names a section) may change."""
    old, new = _flat(saved), _flat(config.to_dict())
    # keys added since the checkpoint's run was written: it ran with their defaults
    for key, value in _flat(type(config)().to_dict()).items():
        if key not in old and not any(k.startswith(key + ".") for k in old):
            old[key] = value
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
              and not any(k == c or (c.endswith(".") and k.startswith(c)) for c in resumable)]
    if differ:
        lines = "\n  - ".join(f"{k}: {old.get(k)!r} in the checkpoint's run, {new.get(k)!r} now" for k in differ)
        raise ConfigError(f"the config differs from the run being resumed:\n  - {lines}\nresume with the run's "
                          "config (its copy is in the output folder), or start a new run in another --output")


def resolve_resume(output: Path, resume: str) -> Optional[Path]:
    """The checkpoint folder to resume from, or None for a fresh run; refuses to start over an existing run."""
    root = output / CHECKPOINTS
    has_run = (root / "latest").is_file()
    if resume == "none":
        if has_run or (output / "metrics.jsonl").is_file():
            raise ConfigError(f"{output} already holds a training run; continue it with --resume auto, or choose "
                              "another --output (nothing is overwritten)")
        return None
    if resume == "auto":
        return root if has_run else None
    path = Path(resume)
    if not path.exists():
        raise ConfigError(f"--resume {resume}: no such checkpoint folder")
    return path


def single_process_group(backend: str, **kwargs) -> None:
    """A world of one process on a free local port (plain `osp train`, checkpoint export)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                         **kwargs)


def init_distributed() -> tuple[torch.device, bool]:
    """torch.distributed from torchrun's environment, or a one-process group for a plain `osp train`; returns
    (this rank's device, whether the group was created here). `OSP_DIST_TIMEOUT` (seconds) bounds how long a
    collective waits for a rank that died or hangs (torch's default otherwise: 10 min NCCL/HCCL, 30 min gloo).
    Under torchrun the worker is first tied to its torchrun: SIGKILLed when torchrun dies (parallel/lifetime.py)."""
    from mindspeed_mm.osp import platform
    from mindspeed_mm.osp.parallel.lifetime import die_with_launcher, dist_timeout

    die_with_launcher()
    dist = torch.distributed
    created = not dist.is_initialized()
    if created:
        timeout = dist_timeout()
        kwargs = {"timeout": timeout} if timeout else {}
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(platform.collective_backend(), **kwargs)
        else:
            single_process_group(platform.collective_backend(), **kwargs)
    device = platform.default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, created


def teardown(created: bool) -> None:
    """Release megatron's groups, and the process group when this job created it."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if created and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_layout(config: TrainConfig, model_config: dict) -> None:
    """The parallel layout fits the model (heads over TP x CP, blocks over pipeline stages), before allocation."""
    from mindspeed_mm.osp.parallel.layout import Layout

    _, cfg = model_spec(config, model_config)
    heads, blocks = ((cfg.num_heads, sum(cfg.num_layers)) if config.model.version == "v1.5"
                     else (cfg.num_attention_heads, cfg.num_layers))
    p = config.parallel
    try:
        Layout(p.tensor, p.pipeline, p.context, p.sequence_parallel, p.virtual_pipeline).check_model(heads=heads,
                                                                                                   layers=blocks)
    except ValueError as e:
        raise ConfigError(f"parallel layout: {e}") from e
    if p.sequence_parallel and p.tensor == 1:
        raise ConfigError("parallel.sequence_parallel needs parallel.tensor >= 2 (it splits the sequence over the "
                          "tensor-parallel group)")
    given, patch = config.data.buckets.get("patch_size"), spatial_patch(config, model_config)
    if given is not None and given != patch:
        raise ConfigError(f"data.buckets.patch_size {given} differs from the transformer's spatial patch {patch}; "
                          "leave it out (bucket token counts use the transformer's)")


def spatial_patch(config: TrainConfig, model_config: dict) -> int:
    """The transformer's spatial patch size: a bucket's DiT token count is latent T x H/p x W/p."""
    _, cfg = model_spec(config, model_config)
    return cfg.patch_size_thw[1] if config.model.version == "v1.5" else cfg.patch_size


def build_model(config: TrainConfig, model_config: dict):
    """The whole denoiser: random init from `config.seed` (on CPU), or on the meta device when pretrained weights
    follow (loaded after sharding, so no rank holds more than its part)."""
    cls, cfg = model_spec(config, model_config)
    if config.model.pretrained is not None:
        with torch.device("meta"):
            return cls(cfg).to(torch.bfloat16 if config.model.dtype == "bf16" else torch.float32)
    torch.manual_seed(config.seed)
    model = cls(cfg)
    return model.to(torch.bfloat16) if config.model.dtype == "bf16" else model


def load_pretrained(pmodel, config: TrainConfig) -> None:
    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.dit.loading import read_checkpoint

    version, state_dict, _ = read_checkpoint(config.model.pretrained)
    want = "v15" if config.model.version == "v1.5" else "v13"
    if version != want:
        raise ConfigError(f"model.pretrained {config.model.pretrained} holds {version} weights but model.version is "
                          f"{config.model.version}")
    parallel.load_state_dict(pmodel, state_dict)


# ---------------------------------------------------------------------------------------------------- data
@dataclass
class DataSide:
    dataset: torch.utils.data.Dataset
    sampler: object           # GroupedBatchSampler
    collate: object
    health: object            # DataHealth
    tokens: list              # video tokens of one sample per bucket
    bucket_keys: list         # "TxHxW" per bucket
    from_cache: bool
    latent_scale: Optional[tuple] = None   # (scale, shift) lists for cached latents
    flops_per_sample: object = None        # model inputs -> training FLOPs of one sample (for MFU)


def build_data(config: TrainConfig, dp_rank: int, dp_size: int, accumulation: int, layout, vae_factors,
               patch: int) -> DataSide:
    """Dataset, sampler and collate of this data-parallel rank; `patch`: the transformer's spatial patch."""
    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.data.buckets import assign_buckets
    from mindspeed_mm.osp.data.cache import CachedDataset, LatentCache, collate_cached
    from mindspeed_mm.osp.data.dataset import DataHealth, OSPDataset, collate
    from mindspeed_mm.osp.data.sampler import GroupedBatchSampler

    d = config.data
    buckets = replace(bucket_config(config), patch_size=patch)
    anno = load_annotations(d.source)
    assignment = assign_buckets(anno, buckets, d.global_batch_size)
    dataset = OSPDataset(anno, assignment, buckets, sample_config(config))
    tokens = [buckets.tokens(s) for s in assignment.shapes]
    used = sorted({int(b) for b in assignment.bucket_of if b >= 0})
    r, s = vae_factors
    for b in used:
        shape = assignment.shapes[b]
        if (shape[0] - 1) % r or shape[1] % s or shape[2] % s:
            raise ConfigError(f"bucket {assignment.key(shape)} does not fit the VAE (frames 1 + {r}*n, sizes "
                              f"multiples of {s}); set data.buckets.ae_stride_t={r} and a hw_stride multiple of {s}")
        layout.check_sequence(f"video of bucket {assignment.key(shape)}", tokens[b])
    scale = None
    if d.cache is not None:
        cache = LatentCache(d.cache)
        vae_cfg = cache.manifest["vae"]["config"]
        scale = (vae_cfg["scale"], vae_cfg["shift"])
        dataset = CachedDataset(cache, dataset, sample_latents=d.sample_latents)
    sampler = GroupedBatchSampler(assignment.bucket_of, micro_batch_size=d.micro_batch_size * accumulation,
                                  dp_size=dp_size, dp_rank=dp_rank, seed=config.seed)
    return DataSide(dataset, sampler, collate_cached if d.cache is not None else collate,
                    DataHealth(len(anno), d.max_failure_fraction), tokens,
                    [assignment.key(shape) for shape in assignment.shapes], d.cache is not None, scale)


# ---------------------------------------------------------------------------------------------------- batches
def _seeded(seed: int, step: int, index: int, salt: int) -> int:
    return int(np.random.SeedSequence([seed, step, index, salt]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _scaled(latents: torch.Tensor, scale: list, shift: list) -> torch.Tensor:
    view = (1, -1) + (1,) * (latents.dim() - 2)
    return (latents - torch.tensor(shift).view(view)) * torch.tensor(scale).view(view)


def model_batch(batch: dict, *, config: TrainConfig, data: DataSide, task, step: int, first_index: int,
                dp_rank: int, dp_size: int, device, encoders=None) -> tuple[dict, dict]:
    """One rank's step batch (all its micro-batches) -> (model inputs, loss inputs), on `device`."""
    dtype = torch.bfloat16 if config.model.dtype == "bf16" else torch.float32
    indices = batch["index"].tolist()
    condition = None
    if data.from_cache:
        latents = _scaled(batch["latent"].float(), *data.latent_scale)
        text, mask, pooled = batch["text"], batch["text_mask"], batch.get("pooled")
    else:
        vae, conditioner = encoders
        video = batch["video"].to(device, vae.dtype)
        captions = list(batch["caption"])
        with torch.no_grad():
            posterior = vae.encode(video, config.model.vae_chunk_frames)
            latents = posterior.mean.float()
            if config.data.sample_latents:
                noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(
                    _seeded(config.seed, step, i, 1))) for i in indices]).to(device)
                latents = latents + posterior.std.float() * noise
            latents = vae.scale_latents(latents)
            if config.i2v:
                condition, captions = _inpaint(video, captions, vae, config, step, indices, batch)
            embeds = conditioner.encode(captions)
        text, mask, pooled = embeds.hidden_states, embeds.attention_mask, embeds.pooled
    latents = latents.to(device)
    kwargs = dict(seed=config.seed, step=step, first_index=first_index, dp_rank=dp_rank, dp_size=dp_size)
    if condition is not None:
        kwargs["condition"] = condition
    inputs, loss_inputs = task.prepare(latents, text.to(device, dtype), mask.to(device),
                                       None if pooled is None else pooled.to(device, dtype), **kwargs)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    inputs["hidden_states"] = inputs["hidden_states"].to(dtype)
    return inputs, loss_inputs


def _inpaint(video, captions, vae, config: TrainConfig, step: int, indices: list, batch: dict):
    """v1.3 I2V condition channels and captions, drawn per sample from (seed, step, item)."""
    from mindspeed_mm.osp.training.inpaint import inpaint_caption, inpaint_condition, sample_mask_type, wfvae_encode_fn

    cfg = inpaint_config(config)
    conditions, out_captions = [], []
    for j, index in enumerate(indices):
        rng = np.random.default_rng([config.seed, step, index, 2])
        gen = torch.Generator().manual_seed(_seeded(config.seed, step, index, 3))
        is_image = video.shape[2] == 1
        mask_type = sample_mask_type(cfg, is_image, rng)
        latent, channels = inpaint_condition(video[j:j + 1], [mask_type], wfvae_encode_fn(vae, gen), cfg, rng, gen,
                                             temporal_factor=vae.temporal_compression,
                                             spatial_factor=vae.spatial_compression)
        conditions.append(torch.cat([latent.float(), channels.float()], dim=1))
        out_captions.append(inpaint_caption(captions[j], cfg, rng, is_image))
    return torch.cat(conditions), out_captions


# ---------------------------------------------------------------------------------------------------- loop
class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checks it (agreed over all ranks) after each step."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device) -> bool:
        flag = torch.tensor([1.0 if self.signal is not None else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


@dataclass
class TrainingState:
    step: int = 0
    consumed_samples: int = 0


def _save(pmodel, optimizer, output: Path, state: TrainingState, config: TrainConfig, model_config: dict, *,
          sampler_state: dict, clip, ema, guard, health, rank_drop=None) -> str:
    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.training.clipping import AdaptiveGradClip
    from mindspeed_mm.osp.training.runlog import prune_checkpoints

    extra = {"step": state.step, "consumed_samples": state.consumed_samples, "sampler": sampler_state,
             "guard": guard.state_dict(), "health": health.state_dict(), "config": config.to_dict(),
             "model_config": model_config,
             "clip": clip.state_dict() if isinstance(clip, AdaptiveGradClip) else None,
             "rank_drop": rank_drop.state_dict() if rank_drop is not None else None,
             "ema": ema.state_dict() if ema is not None else None}
    tensors = {"ema": ema.local_tensors()} if ema is not None else None
    path = parallel.save_checkpoint(pmodel, optimizer, str(output / CHECKPOINTS), state.step, extra, tensors)
    if torch.distributed.get_rank() == 0:
        prune_checkpoints(output / CHECKPOINTS, config.checkpoint.keep_last, protect=state.step)
    return path


def make_task(config: TrainConfig):
    from mindspeed_mm.osp.diffusion import FlowMatchingObjective, VPredictionObjective
    from mindspeed_mm.osp.training.objectives import FlowMatchingTask, VPredictionTask

    d = config.diffusion
    if config.model.version == "v1.5":
        return FlowMatchingTask(FlowMatchingObjective(d.logit_mean, d.logit_std, d.use_dynamic_shift))
    return VPredictionTask(VPredictionObjective(d.snr_gamma))


def restore(checkpoint: Path, pmodel, optimizer, data: DataSide, clip, ema, guard, rank_drop=None) -> TrainingState:
    """Load a checkpoint into the run's parts (under any layout); returns the step and samples it had reached."""
    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.training.clipping import AdaptiveGradClip

    resumed = parallel.load_checkpoint(pmodel, optimizer, str(checkpoint), ("ema",) if ema is not None else ())
    extra = resumed.extra
    data.sampler.load_state_dict(extra["sampler"])
    data.health.load_state_dict(extra["health"])
    guard.load_state_dict(extra["guard"])
    if isinstance(clip, AdaptiveGradClip) and extra["clip"] is not None:
        clip.load_state_dict(extra["clip"])
    if rank_drop is not None and extra.get("rank_drop") is not None:
        rank_drop.load_state_dict(extra["rank_drop"])
    if ema is not None:
        ema.load_local_tensors(resumed.tensors["ema"])
        ema.load_state_dict(extra["ema"])
    return TrainingState(int(extra["step"]), int(extra["consumed_samples"]))


def train(config: TrainConfig, output: Path, resume: str = "auto", resume_command: str = "") -> int:
    """Run (or continue) the training described by `config` in `output`. Returns the process exit code."""
    # ---- checks that need nothing allocated
    check_files(config)
    output = Path(output)
    checkpoint = resolve_resume(output, resume)
    model_config = official_model_config(config)
    check_layout(config, model_config)
    world = int(os.environ.get("WORLD_SIZE", 1))
    accumulation = accumulation_steps(config, world)
    if checkpoint is not None:
        from megatron.core import dist_checkpointing
        from mindspeed_mm.osp.parallel.checkpoint import resolve
        saved = dist_checkpointing.load_common_state_dict(resolve(str(checkpoint)))
        check_resume_config(saved["extra"]["config"], config)
    vae_factors = vae_factors_of(config)
    from mindspeed_mm.osp.training.sampling import check_sampling_geometry
    check_sampling_geometry(config, vae_factors[0])

    device, created = init_distributed()
    try:
        return _train(config, output, checkpoint, model_config, vae_factors, accumulation, world, device,
                      resume_command)
    finally:
        teardown(created)


def _train(config: TrainConfig, output: Path, checkpoint: Optional[Path], model_config: dict, vae_factors,
           accumulation: int, world: int, device, resume_command: str) -> int:
    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.training.ema import ShardedEMA
    from mindspeed_mm.osp.training.flops import training_flops
    from mindspeed_mm.osp.training.objectives import loss_fn
    from mindspeed_mm.osp.training.runlog import RunLog, peak_flops, truncate_metrics
    from mindspeed_mm.osp.training.step import NonFiniteGuard, training_step

    p = config.parallel
    layout = parallel.initialize(tensor_parallel=p.tensor, pipeline_parallel=p.pipeline, context_parallel=p.context,
                                 sequence_parallel=p.sequence_parallel, virtual_pipeline=p.virtual_pipeline,
                                 seed=config.seed)
    from megatron.core import parallel_state
    rank = torch.distributed.get_rank()
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    data = build_data(config, dp_rank, dp_size, accumulation, layout, vae_factors, spatial_patch(config, model_config))
    _check_text_fit(config, model_config, data)
    model = build_model(config, model_config)
    pmodel = parallel.parallelize(model, recompute=config.model.recompute, device=device)
    if config.model.compile:
        parallel.compile_blocks(pmodel, input_shapes=len(set(data.tokens)))
    if config.model.pretrained is not None:
        load_pretrained(pmodel, config)
    o = config.optimizer
    optimizer = parallel.make_optimizer(pmodel, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps,
                                        lr_warmup_steps=o.warmup_steps, lr_decay_steps=decay_steps_of(o, config.steps),
                                        lr_decay_style=o.decay_style, min_lr=o.min_lr,
                                        lr_wsd_decay_steps=o.wsd_decay_steps, lr_wsd_decay_style=o.wsd_decay_style,
                                        bf16=config.model.dtype == "bf16")
    ema = ShardedEMA(pmodel, optimizer, o.ema_decay, o.ema_warmup) if o.ema else None
    clip, rank_drop = clip_of(config), rank_drop_of(config)
    guard = NonFiniteGuard(o.max_skipped_in_a_row)
    encoders = build_encoders(config, device) if config.data.cache is None else None
    task = make_task(config)
    state = TrainingState()
    if checkpoint is not None:
        state = restore(checkpoint, pmodel, optimizer, data, clip, ema, guard, rank_drop)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / RESOLVED_CONFIG).write_text(json.dumps(config.to_dict(), indent=1) + "\n")
        truncate_metrics(output / "metrics.jsonl", state.step)
    torch.distributed.barrier()
    if state.step >= config.steps:
        if rank == 0:
            print(f"osp train: the run in {output} already reached step {state.step} of {config.steps}; raise "
                  "steps=N to train further")
        return 0

    from mindspeed_mm.osp.training.sampling import build_sampler
    previews = build_sampler(config, model_config, output, device, rank, encoders)
    _, model_cfg = model_spec(config, model_config)
    data.flops_per_sample = lambda inputs: training_flops(  # noqa: E731
        model_cfg, inputs["hidden_states"].shape[1:], inputs["encoder_hidden_states"].shape[1],
        recompute=config.model.recompute not in ("none", 0))
    log = RunLog(output, active=rank == 0, total_steps=config.steps, first_step=state.step,
                 progress=config.logging.progress, tensorboard=config.logging.tensorboard)
    peak = peak_flops(config.logging.peak_tflops, device)
    per_rank = config.data.micro_batch_size * accumulation
    saved_at = state.step
    stopped = None
    try:
        with StopRequest() as stop:
            while state.step < config.steps and stopped is None:
                data.dataset.set_epoch(data.sampler.next_epoch())  # before the workers copy the dataset
                loader = torch.utils.data.DataLoader(data.dataset, batch_sampler=data.sampler,
                                                     collate_fn=data.collate, num_workers=config.data.num_workers)
                iterator = iter(loader)
                consumed_in_iter = 0
                tick = time.perf_counter()   # step time includes waiting for the data, not checkpointing
                for batch in iterator:
                    consumed_in_iter += 1
                    data.health.update(batch)
                    inputs, loss_inputs = model_batch(batch, config=config, data=data, task=task, step=state.step,
                                                      first_index=dp_rank * per_rank, dp_rank=dp_rank,
                                                      dp_size=dp_size, device=device, encoders=encoders)
                    result = training_step(pmodel, optimizer, loss_fn, inputs, loss_inputs,
                                           num_microbatches=accumulation, clip=clip, ema=ema, rank_drop=rank_drop)
                    state.step += 1
                    state.consumed_samples += config.data.global_batch_size
                    seconds = time.perf_counter() - tick
                    guard.count(result)
                    if not result.applied:
                        log.message(f"step {state.step}: {result.action} (loss {result.loss}); skipped "
                                    f"{guard.in_a_row} in a row, {guard.total} in all")
                    elif result.rank_drop is not None and result.rank_drop.dropped:
                        log.message(f"step {state.step}: dropped the gradients of data-parallel rank(s) "
                                    f"{result.rank_drop.dropped} (local norms {result.rank_drop.norms}, bound "
                                    f"{result.rank_drop.threshold:.4g}); the others were scaled by "
                                    f"{result.rank_drop.scale:.4g}")
                    entry = _metrics(result, state, data, int(batch["bucket"][0]), seconds, config, inputs, peak,
                                     guard.total, world)
                    log.record(entry, state.step % config.logging.every == 0 or not result.applied)
                    guard.check(result, state.step)   # stops after too many skips in a row, before any save
                    stop_now = stop.agreed(device)
                    if stop_now or state.step % config.checkpoint.every == 0 or state.step >= config.steps:
                        path = _save(pmodel, optimizer, output, state, config, model_config,
                                     sampler_state=data.sampler.state_dict(consumed_in_iter), clip=clip, ema=ema,
                                     guard=guard, health=data.health, rank_drop=rank_drop)
                        saved_at = state.step
                        log.message(f"step {state.step}: checkpoint {path}")
                    if previews is not None:
                        previews.maybe_sample(state.step, pmodel, ema, log)
                    if stop_now:
                        stopped = stop.signal or signal.SIGTERM
                    if stopped is not None or state.step >= config.steps:
                        break
                    tick = time.perf_counter()
                del iterator, loader
    finally:
        log.close()
    if rank == 0:
        if stopped is not None:
            print(f"osp train: stopped by {signal.Signals(stopped).name} after step {state.step}; checkpoint "
                  f"{output / CHECKPOINTS} (step {saved_at}). Resume with:\n  {resume_command}", flush=True)
        else:
            print(f"osp train: finished {state.step} steps; checkpoints in {output / CHECKPOINTS}", flush=True)
    return 0


def vae_factors_of(config: TrainConfig) -> tuple[int, int]:
    """(temporal, spatial) compression of the VAE the latents come from, read from its config only."""
    from mindspeed_mm.osp.vae.config import WFVAEConfig, load_preset
    from mindspeed_mm.osp.vae.official import FORMAT_NAME

    if config.data.cache is not None:
        manifest = json.loads((Path(config.data.cache) / "manifest.json").read_text())
        cfg = WFVAEConfig.from_dict(manifest["vae"]["config"])
    elif Path(config.model.vae).is_dir():
        raw = json.loads((Path(config.model.vae) / "config.json").read_text())
        cfg = WFVAEConfig.from_dict(raw["config"]) if raw.get("format") == FORMAT_NAME else WFVAEConfig.from_official(raw)
    else:
        cfg = load_preset(config.model.vae)
    return cfg.temporal_compression, 8


def _check_text_fit(config: TrainConfig, model_config: dict, data: DataSide) -> None:
    if not data.from_cache:
        return
    manifest = data.dataset.cache.manifest
    if manifest["text"] is None:
        raise ConfigError(f"the cache {config.data.cache} holds no text embeddings; rebuild it with `osp data extract "
                          "--text-encoder DIR --tokenizer DIR` (and the pooled encoder for v1.5)")
    hidden = data.dataset.null[0].shape[-1]
    want = model_config.get("caption_channels")
    if want is not None and hidden != want:
        raise ConfigError(f"the cache's text embeddings have {hidden} channels but the transformer's "
                          f"caption_channels is {want}; use the text encoder the model was built for")
    if config.model.version == "v1.5" and data.dataset.null[2] is None:
        raise ConfigError(f"the cache {config.data.cache} has no pooled (CLIP) text embeddings, which v1.5 needs; "
                          "rebuild it with --pooled-text-encoder and --pooled-tokenizer")


def _metrics(result, state: TrainingState, data: DataSide, bucket: int, seconds: float, config: TrainConfig,
             inputs: dict, peak: Optional[float], skipped_total: int, world: int) -> dict:
    samples = config.data.global_batch_size
    entry = {"step": state.step, "loss": result.loss, "grad_norm": result.grad_norm, "lr": result.lr,
             "action": result.action, "epoch": data.sampler.epoch, "consumed_samples": state.consumed_samples,
             "bucket": data.bucket_keys[bucket], "skipped_total": skipped_total, "step_seconds": round(seconds, 4),
             "samples_per_s": samples / seconds, "tokens_per_s": samples * data.tokens[bucket] / seconds}
    if result.clipped_norm is not None:
        entry["clipped_norm"] = result.clipped_norm
    if result.rank_drop is not None:
        entry["rank_grad_norms"] = result.rank_drop.norms
        entry["dropped_ranks"] = result.rank_drop.dropped
    if peak:
        entry["mfu"] = samples * data.flops_per_sample(inputs) / seconds / (peak * world)
    return entry
