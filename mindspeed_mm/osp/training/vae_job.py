"""`osp train` for WF-VAE (a config with `"task": "vae"`): the WF-VAE paper's losses (`vae.losses`), a generator
(VAE) step then, from `loss.disc_start`, a discriminator step, EMA of the VAE weights, data parallel over the
torchrun world (DistributedDataParallel; gloo on CPU) or one process.

Output folder: `config.json` (resolved config), `metrics.jsonl` (loss terms, batch PSNR, gradient norms, learning
rates, seconds per logged step; values averaged over ranks), `checkpoints/iter_XXXXXXX/` (+ `latest`; written to a
temporary folder, then renamed), `export/vae` (the EMA VAE, or the trained one without EMA, as a
`WFVAE.from_pretrained` folder).

Determinism: step s (0-based) trains the clips at global positions s*G .. s*G+G-1 (G = global batch; rank r takes
its micro-batch slice); position p is item perm_e[p mod N] of epoch e = p // N (perm_e from (seed, e)); the
temporal window and crop of a clip come from (seed, p), its posterior noise from (seed, s, p), the
discriminator's dropout from (seed, s, rank). So a run resumed from step k repeats the steps after k exactly, and
the checkpoint needs no RNG state: it holds the VAE, EMA and discriminator weights, both AdamW states, the step and
the resolved config. SIGTERM/SIGINT: the step finishes, a checkpoint is written, the run exits 0. A non-finite
loss stops the run with an error naming the step (nothing of that step is applied; the last checkpoint stays).

The adaptive GAN weight uses the last-layer gradients averaged over ranks, so with GroupNorm (or before
`disc_start`) a DDP run equals the one-process run with the same global batch.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from mindspeed_mm.osp.checkpoints.runs import LATEST
from mindspeed_mm.osp.files import replace_dir, replace_file
from mindspeed_mm.osp.training.config import ConfigError, decay_steps_of
from mindspeed_mm.osp.training.job import (CHECKPOINTS, RESOLVED_CONFIG, StopRequest, _seeded, check_resume_config,
                                           init_distributed, resolve_resume)
from mindspeed_mm.osp.training.vae_config import VAETrainConfig, check_inputs, load_vae_config, parse_vae_json
from mindspeed_mm.osp.vae.causal_conv import reset_streams
from mindspeed_mm.osp.vae.distribution import DiagonalGaussian

STATE = "state.pt"
EXPORT = Path("export") / "vae"
# may differ between a checkpoint's run and its resumption (nothing else may)
RESUMABLE_CHANGES = ("steps", "checkpoint.", "logging.", "data.num_workers", "data.micro_batch_size",
                     "data.frame_cache_mb", "export")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN/inf; the message names the step."""


# ---------------------------------------------------------------------------------------------------- model
def build_vae(spec: str, seed: int):
    """`model.vae`: a pretrained folder or checkpoint file (fine-tuning), a config JSON or a preset name (random
    init from `seed`)."""
    from mindspeed_mm.osp.vae.config import load_preset
    from mindspeed_mm.osp.vae.model import WFVAE

    path = Path(spec)
    try:
        if path.is_dir() or (path.is_file() and path.suffix != ".json"):
            return WFVAE.from_pretrained(path)
        cfg = parse_vae_json(json.loads(path.read_text())) if path.suffix == ".json" else load_preset(spec)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.vae {spec}: {e}") from e
    torch.manual_seed(seed)
    return WFVAE(cfg)


class Autoencode(nn.Module):
    """The training pass of a WFVAE with given posterior noise (one seed per sample):
    video, noise -> (reconstruction, posterior, encoder coefficients, decoder coefficients)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor, noise: torch.Tensor):
        reset_streams(self.vae)
        try:
            moments, enc_coeffs = self.vae.encoder(video)
            posterior = DiagonalGaussian(moments)
            recon, dec_coeffs = self.vae.decoder(posterior.mean + posterior.std * noise, flush=True)
        finally:
            reset_streams(self.vae)
        return recon, posterior, enc_coeffs, dec_coeffs


class WeightEMA:
    """shadow <- decay * shadow + (1 - decay) * weight after every VAE update (fp32 copies of the parameters)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)


# ---------------------------------------------------------------------------------------------------- data
def usable_items(anno, data) -> tuple[np.ndarray, np.ndarray, str]:
    """(items that hold one training clip, their frame counts, a note on the ones left out)."""
    span = (data.num_frames - 1) * data.frame_interval + 1
    frames = np.where(anno.cut[:, 1] > anno.cut[:, 0], anno.cut[:, 1] - np.maximum(anno.cut[:, 0], 0),
                      anno.num_frames).astype(np.int64)
    images = anno.is_image & (data.num_frames != 1)
    unknown = ~anno.is_image & (frames <= 0)
    short = ~anno.is_image & (frames > 0) & (frames < span)
    keep = ~(images | unknown | short)
    note = ", ".join(f"{int(n)} {what}" for n, what in ((images.sum(), "images"),
                                                         (unknown.sum(), "without num_frames"),
                                                         (short.sum(), f"shorter than {span} frames")) if n)
    return np.flatnonzero(keep), frames, note


class FrameCache:
    """Decoded clips (uint8 (T, H, W, 3) tensors) by item, up to `budget_bytes` in all; clips that do not fit are
    not kept (first come, first kept: every epoch visits every item, so eviction would only churn)."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used, self.clips = budget_bytes, 0, {}

    def get(self, item: int) -> Optional[torch.Tensor]:
        return self.clips.get(item)

    def offer(self, item: int, clip: torch.Tensor) -> None:
        size = clip.numel() * clip.element_size()
        if self.used + size <= self.budget:
            self.clips[item] = clip
            self.used += size


class ClipDataset(torch.utils.data.Dataset):
    """Global sample position -> dict(video (3, T, H, W) in [-1, 1], position, item, failed). With
    `data.frame_cache_mb`, each loader process keeps the decoded frames of whole clips and cuts later windows from
    memory: the same frames as reading the window, without decoding the file again."""

    def __init__(self, anno, items: np.ndarray, frames: np.ndarray, data, seed: int):
        self.anno, self.items, self.frames, self.data, self.seed = anno, items, frames, data, seed
        self._epoch, self._perm = -1, None
        self.cache = FrameCache(data.frame_cache_mb << 20) if data.frame_cache_mb else None

    def __len__(self) -> int:
        return len(self.items)

    def item_at(self, position: int) -> int:
        epoch = position // len(self.items)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
        return int(self.items[self._perm[position % len(self.items)]])

    def load_clip(self, item: int, rng: np.random.Generator) -> torch.Tensor:
        from mindspeed_mm.osp.data.dataset import read_image, resize_cover_crop
        from mindspeed_mm.osp.data.video_io import VideoReadError, read_frames

        d, a = self.data, self.anno
        path = a.paths[item]
        if a.is_image[item]:
            frames = read_image(path)
        else:
            span = (d.num_frames - 1) * d.frame_interval + 1
            first = max(0, int(a.cut[item, 0]))
            window = int(rng.integers(0, self.frames[item] - span + 1)) + np.arange(d.num_frames) * d.frame_interval
            frames = self._read(item, path, first, window, read_frames)
        if a.crop[item, 0] >= 0:
            sx, ex, sy, ey = (int(v) for v in a.crop[item])
            frames = frames[:, sy:ey, sx:ex]
            if frames.shape[1] == 0 or frames.shape[2] == 0:
                raise VideoReadError(f"{path}: crop {a.crop[item].tolist()} leaves no pixels")
        video = frames.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
        h, w = video.shape[-2:]
        scale = max(d.height / h, d.width / w)
        cover_h, cover_w = max(d.height, round(h * scale)), max(d.width, round(w * scale))
        video = resize_cover_crop(video, cover_h, cover_w)
        top, left = int(rng.integers(0, cover_h - d.height + 1)), int(rng.integers(0, cover_w - d.width + 1))
        return video[..., top:top + d.height, left:left + d.width].clamp(-1.0, 1.0).contiguous()

    def _read(self, item: int, path: str, first: int, window: np.ndarray, read_frames) -> torch.Tensor:
        """Frames `first + window` of the clip, from the cache when it is on (decoding the whole clip once)."""
        if self.cache is None:
            return read_frames(path, first + window, backend=self.data.video_backend)
        clip = self.cache.get(item)
        if clip is None:
            clip = read_frames(path, first + np.arange(self.frames[item]), backend=self.data.video_backend)
            self.cache.offer(item, clip)
        return clip[torch.from_numpy(window)]

    def __getitem__(self, position: int) -> dict:
        from mindspeed_mm.osp.data.dataset import DataError
        from mindspeed_mm.osp.data.video_io import VideoReadError

        rng = np.random.default_rng([self.seed, int(position)])
        item, failed = self.item_at(position), []
        for _ in range(self.data.max_retries + 1):
            try:
                video = self.load_clip(item, rng)
                return {"video": video, "position": int(position), "item": item, "failed": failed}
            except (OSError, VideoReadError, ValueError) as e:
                failed.append((self.anno.paths[item], str(e)))
                item = int(self.items[rng.integers(len(self.items))])
        raise DataError(f"{len(failed)} clips in a row could not be read for sample {position}; first: "
                        f"{failed[0][0]} ({failed[0][1]})")


class StepBatches:
    """`batch_sampler`: for each step from `first_step` to `steps`, this rank's global positions."""

    def __init__(self, first_step: int, steps: int, global_batch: int, micro_batch: int, rank: int):
        self.first_step, self.steps = first_step, steps
        self.global_batch, self.micro_batch, self.rank = global_batch, micro_batch, rank

    def __len__(self) -> int:
        return max(0, self.steps - self.first_step)

    def __iter__(self):
        for step in range(self.first_step, self.steps):
            start = step * self.global_batch + self.rank * self.micro_batch
            yield list(range(start, start + self.micro_batch))


def collate(samples: list[dict]) -> dict:
    return {"video": torch.stack([s["video"] for s in samples]),
            "position": torch.tensor([s["position"] for s in samples]),
            "failed": [f for s in samples for f in s["failed"]]}


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(output: Path, step: int, state: dict, config: VAETrainConfig) -> Path:
    """Write `checkpoints/iter_XXXXXXX` atomically, point `latest` at it, prune to `checkpoint.keep_last`."""
    from mindspeed_mm.osp.training.runlog import prune_checkpoints

    root = output / CHECKPOINTS
    folder = root / f"iter_{step:07d}"

    def write(tmp: Path) -> None:
        torch.save(state, tmp / STATE)
        (tmp / RESOLVED_CONFIG).write_text(json.dumps(config.to_dict(), indent=1) + "\n")

    replace_dir(folder, write)
    replace_file(root / LATEST, lambda p: Path(p).write_text(f"{step}\n"))
    prune_checkpoints(root, config.checkpoint.keep_last, protect=step)
    return folder


def checkpoint_folder(path) -> Path:
    """The iteration folder that a run folder, its `checkpoints/` root or an `iter_` folder names."""
    path = Path(path)
    if (path / CHECKPOINTS / LATEST).is_file():
        path = path / CHECKPOINTS
    if (path / LATEST).is_file():
        path = path / f"iter_{int((path / LATEST).read_text().strip()):07d}"
    if not (path / STATE).is_file():
        raise ConfigError(f"{path} is not a VAE training checkpoint (no {STATE}); give a run folder, its "
                          f"{CHECKPOINTS}/ folder or an iter_XXXXXXX folder")
    return path


def load_state(path) -> dict:
    return torch.load(checkpoint_folder(path) / STATE, map_location="cpu", weights_only=True)


def export_vae(checkpoint, dest, ema: bool = True) -> Path:
    """Save the VAE of a training checkpoint (EMA weights when `ema` and the run kept an EMA) as a
    `WFVAE.from_pretrained` folder; refuses an existing model folder."""
    from mindspeed_mm.osp.vae.config import WFVAEConfig
    from mindspeed_mm.osp.vae.model import WFVAE

    state = load_state(checkpoint)
    vae = WFVAE(WFVAEConfig.from_dict(state["vae_config"]))
    vae.load_weights(state["ema"] if ema and state["ema"] is not None else state["vae"])
    return vae.save_pretrained(dest)


def _export_path(output: Path, step: int) -> Path:
    """OUT/export/vae, or OUT/export/vae_stepXXXXXXX when that is taken (an earlier export is never replaced)."""
    dest = output / EXPORT
    return dest if not dest.exists() else dest.with_name(f"{dest.name}_step{step:07d}")


# ---------------------------------------------------------------------------------------------------- run
def main(config_path, overrides, output, resume: str = "auto", resume_command: str = "") -> int:
    """`osp train` on a VAE config: exit 0 (done or stopped by a signal), 2 (bad config/inputs), 1 (run failed)."""
    from mindspeed_mm.osp.data.annotations import AnnotationError
    from mindspeed_mm.osp.data.dataset import DataError

    try:
        return train(load_vae_config(config_path, overrides), Path(output), resume, resume_command)
    except (ConfigError, AnnotationError, FileNotFoundError, FileExistsError) as e:
        print(f"osp train: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, DataError) as e:
        print(f"osp train: stopped: {e}", file=sys.stderr)
        return 1


def train(config: VAETrainConfig, output: Path, resume: str = "auto", resume_command: str = "") -> int:
    """Run (or continue) the VAE training of `config` in `output`; returns the exit code."""
    from mindspeed_mm.osp.data.annotations import load_annotations

    output = Path(output)
    world = int(os.environ.get("WORLD_SIZE", 1))
    checkpoint = resolve_resume(output, resume)
    saved = None
    if checkpoint is not None:
        saved = load_state(checkpoint)
        check_resume_config(saved["config"], config, RESUMABLE_CHANGES)
    vae = build_vae(config.model.vae, config.seed)
    check_inputs(config, world, vae.temporal_compression)
    anno = load_annotations(config.data.source)
    items, frames, note = usable_items(anno, config.data)
    if len(items) == 0:
        raise ConfigError(f"data.source {config.data.source}: no item holds a {config.data.num_frames}-frame clip "
                          f"at frame_interval {config.data.frame_interval} ({note or 'no items'})")
    device, created = init_distributed()
    try:
        return _train(config, output, vae, ClipDataset(anno, items, frames, config.data, config.seed), note, saved,
                      device, resume_command)
    finally:
        if created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _mean_over_ranks(values: dict, world: int, device) -> dict:
    if world == 1:
        return values
    keys = list(values)   # the same order on every rank (same code path)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return {k: v / world for k, v in zip(keys, t.tolist())}


_DECAY_SHAPES = {"linear": lambda p: 1.0 - p, "cosine": lambda p: 0.5 * (math.cos(math.pi * p) + 1.0),
                 "exponential": lambda p: 2.0 * 0.5 ** p - 1.0, "minus_sqrt": lambda p: 1.0 - math.sqrt(p)}


def lr_factor(step: int, warmup: int, style: str, decay_steps: Optional[int], min_ratio: float,
              wsd_steps: Optional[int] = None, wsd_style: str = "linear") -> float:
    """The learning rate of 0-based `step` as a fraction of the base rate: linear warm-up to 1 at step
    `warmup` - 1, then `style` ("constant", "linear", "cosine"; "WSD": 1 until `decay_steps` - `wsd_steps`, then
    `wsd_style`) down to `min_ratio` at `decay_steps` and after (as megatron's OptimizerParamScheduler computes it
    for the DiT)."""
    if step < warmup:
        return (step + 1) / warmup
    if style == "constant":
        return 1.0
    if style == "WSD":
        shape = _DECAY_SHAPES[wsd_style](min(1.0, max(0.0, step - decay_steps + wsd_steps) / wsd_steps))
    else:
        shape = _DECAY_SHAPES[style](min(1.0, (step - warmup) / (decay_steps - warmup)))
    return min_ratio + (1.0 - min_ratio) * shape


class _Run:
    """The parts of a running VAE training and one step of it."""

    def __init__(self, config: VAETrainConfig, vae, device, saved: Optional[dict]):
        from torch.nn.parallel import DistributedDataParallel as DDP

        from mindspeed_mm.osp.vae.losses import WFVAELoss

        self.config, self.vae, self.device = config, vae.to(device).train(), device
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        torch.manual_seed(config.seed)
        self.loss = WFVAELoss(config.loss).to(device).train()
        o = config.optimizer
        # torch's fused CPU kernel updates all parameters in one pass (by default it loops over them on the CPU)
        fused = True if device.type == "cpu" else None
        self.opt_g = torch.optim.AdamW(vae.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                       weight_decay=o.weight_decay, fused=fused)
        self.opt_d = torch.optim.AdamW(self.loss.discriminator.parameters(), lr=o.disc_lr or o.lr,
                                       betas=tuple(o.betas), eps=o.eps,
                                       weight_decay=o.weight_decay if o.disc_weight_decay is None
                                       else o.disc_weight_decay, fused=fused)
        self.ema = WeightEMA(vae, o.ema_decay) if o.ema_decay is not None else None
        self.step = 0
        if saved is not None:
            vae.load_state_dict(saved["vae"])
            self.loss.discriminator.load_state_dict(saved["disc"])
            self.opt_g.load_state_dict(saved["opt_g"])
            self.opt_d.load_state_dict(saved["opt_d"])
            if self.ema is not None:
                self.ema.load_state_dict(saved["ema"])
            self.step = int(saved["step"])
        self.autoencode, self.disc = Autoencode(vae), self.loss.discriminator
        if self.world > 1:
            ids = [device] if device.type == "cuda" else None
            self.autoencode, self.disc = DDP(self.autoencode, device_ids=ids), DDP(self.disc, device_ids=ids)
        self.last_layer = vae.decoder.conv_out.weight

    def state(self) -> dict:
        return {"step": self.step, "vae": self.vae.state_dict(), "disc": self.loss.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "config": self.config.to_dict(), "vae_config": self.vae.config.to_dict()}

    def _reduce_grad(self, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad / self.world

    def _check_finite(self, value: float, what: str, terms: dict) -> None:
        bad = torch.tensor([0.0 if math.isfinite(value) else 1.0], device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in terms.items())
            raise NonFiniteLoss(f"step {self.step + 1}: the {what} loss is not finite on some rank (here: {shown}); "
                                "nothing of this step was applied and the last checkpoint is kept; lower "
                                "optimizer.lr / optimizer.clip_grad or check the data, then resume")

    def _lr(self, base: float) -> float:
        o = self.config.optimizer
        return base * lr_factor(self.step, o.warmup_steps, o.decay_style, decay_steps_of(o, self.config.steps),
                                o.min_lr / o.lr, o.wsd_decay_steps, o.wsd_decay_style)

    def train_step(self, batch: dict) -> dict:
        """One generator step and (from disc_start) one discriminator step; returns the rank-averaged terms."""
        from mindspeed_mm.osp.metrics import psnr

        cfg, o, step = self.config, self.config.optimizer, self.step
        video = batch["video"].to(self.device)
        shape = self.vae.latent_shape(*video.shape[2:])
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(_seeded(cfg.seed, step, p, 1)))
                             for p in batch["position"].tolist()]).to(self.device)
        torch.manual_seed(_seeded(cfg.seed, step, self.rank, 2))   # the discriminator's dropout
        lr_g, lr_d = self._lr(o.lr), self._lr(o.disc_lr or o.lr)
        for opt, lr in ((self.opt_g, lr_g), (self.opt_d, lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr
        max_norm = o.clip_grad if o.clip_grad is not None else math.inf

        recon, posterior, enc, dec = self.autoencode(video, noise)
        loss, terms = self.loss.generator(video, recon, posterior, enc, dec, step, self.last_layer,
                                          self._reduce_grad if self.world > 1 else None)
        self._check_finite(terms["loss"], "generator", terms)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.vae.parameters(), max_norm).item()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.vae)
        terms["lr"] = lr_g
        if self.loss.gan_active(step):
            d_loss, d_terms = self.loss.discriminator_loss(video, recon, self.disc)
            self._check_finite(d_terms["disc_loss"], "discriminator", d_terms)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            d_terms["disc_grad_norm"] = torch.nn.utils.clip_grad_norm_(self.loss.discriminator.parameters(),
                                                                       max_norm).item()
            self.opt_d.step()
            terms.update(d_terms, disc_lr=lr_d)
        terms["psnr"] = psnr(((recon.detach() + 1) / 2).clamp(0, 1), (video + 1) / 2)
        self.step += 1
        return _mean_over_ranks(terms, self.world, self.device)


def _train(config: VAETrainConfig, output: Path, vae, dataset: ClipDataset, note: str, saved: Optional[dict],
           device, resume_command: str) -> int:
    from mindspeed_mm.osp.training.runlog import METRICS, RunLog, truncate_metrics

    run = _Run(config, vae, device, saved)
    rank, d = run.rank, config.data
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        replace_file(output / RESOLVED_CONFIG,
                     lambda p: Path(p).write_text(json.dumps(config.to_dict(), indent=1) + "\n"))
        truncate_metrics(output / METRICS, run.step)
    torch.distributed.barrier()
    if run.step >= config.steps:
        if rank == 0:
            message = (f"osp train: the run in {output} already reached step {run.step} of {config.steps}; raise "
                       "steps=N to train further")
            if config.export and not (output / EXPORT).exists():
                message += f"; VAE exported to {export_vae(output, output / EXPORT)}"
            print(message, flush=True)
        return 0

    log = RunLog(output, active=rank == 0, total_steps=config.steps, first_step=run.step,
                 progress=config.logging.progress, tensorboard=config.logging.tensorboard)
    if note:
        log.message(f"osp train: training on {len(dataset)} clips of {d.source} (left out: {note})")
    loader = torch.utils.data.DataLoader(dataset, collate_fn=collate, num_workers=d.num_workers,
                                         batch_sampler=StepBatches(run.step, config.steps, d.global_batch_size,
                                                                   d.micro_batch_size, rank))
    saved_at, stopped = run.step, None
    try:
        with StopRequest() as stop:
            tick = time.perf_counter()
            for batch in loader:
                for path, reason in batch["failed"]:
                    log.message(f"step {run.step + 1}: unreadable clip {path} ({reason}); replaced by another item")
                entry = {"step": run.step + 1, **run.train_step(batch)}
                seconds = time.perf_counter() - tick
                entry.update(epoch=(run.step - 1) * d.global_batch_size // len(dataset), step_seconds=round(seconds, 4),
                             samples_per_s=d.global_batch_size / seconds)
                log.record(entry, run.step % config.logging.every == 0)
                stop_now = stop.agreed(device)
                if stop_now or run.step % config.checkpoint.every == 0 or run.step >= config.steps:
                    if rank == 0:
                        path = save_checkpoint(output, run.step, run.state(), config)
                        log.message(f"step {run.step}: checkpoint {path}")
                    torch.distributed.barrier()
                    saved_at = run.step
                if stop_now:
                    stopped = stop.signal or signal.SIGTERM
                    break
                tick = time.perf_counter()
    finally:
        log.close()
        del loader
    if rank == 0:
        if stopped is not None:
            print(f"osp train: stopped by {signal.Signals(stopped).name} after step {run.step}; checkpoint "
                  f"{output / CHECKPOINTS} (step {saved_at}). Resume with:\n  {resume_command}", flush=True)
            return 0
        message = f"osp train: finished {run.step} steps; checkpoints in {output / CHECKPOINTS}"
        if config.export:
            dest = _export_path(output, run.step)
            export_vae(output, dest)
            message += f"; {'EMA ' if run.ema is not None else ''}VAE exported to {dest}"
        print(message, flush=True)
    return 0

