"""Periodic sampling during `osp train`: every `sampling.every` steps (never at step 0) rank 0 samples the configured
prompts with the current weights (the EMA when the run keeps one and `sampling.ema`, else the trained weights) and
writes `OUTPUT/samples/step_XXXXXXX/NN.mp4`.

- Layout: a single-rank model layout only (TP = PP = CP = 1; data parallel is fine), checked with the config: rank 0
  then holds a whole replica. The EMA lives in the distributed optimizer's shards, so every rank takes part in
  gathering it (one all-reduce per tensor over the data-parallel group); the other ranks then wait at a barrier.
  Keep previews short next to the collective timeout (`OSP_DIST_TIMEOUT`; NCCL's default is 10 minutes).
- Model: a separate single-device copy of the denoiser on rank 0 (host memory between samplings, moved to the
  training device for sampling, eval mode, no_grad), loaded from the gathered weights. The training model is not
  touched, so its train mode and weights stay as they were.
- VAE and text encoders: the frozen ones of a raw-media run, or for a feature-cache run the ones `model.vae`,
  `model.text_encoder`, ... name (loaded on rank 0 only, when sampling is on).
- Randomness: prompt i starts from `sampling.seed + i` (explicit generators), and everything runs inside
  `torch.random.fork_rng`, so the training run's random state, hence its losses, are the same with or without
  sampling.
- Files are written atomically (temporary file + rename) and never replaced: a resumed run that reaches a step
  whose samples exist already skips them (it samples only the missing files of that step).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

SAMPLES = "samples"


def sample_paths(output: Path, step: int, count: int) -> list[Path]:
    folder = Path(output) / SAMPLES / f"step_{step:07d}"
    return [folder / f"{i:02d}.mp4" for i in range(count)]


def check_sampling_geometry(config, temporal_factor: int) -> None:
    """The sampling size fits the VAE and patch strides (before anything is allocated)."""
    from mindspeed_mm.osp.pipelines.geometry import VideoGeometry
    from mindspeed_mm.osp.training.config import ConfigError

    s = config.sampling
    if s.every <= 0:
        return
    try:
        VideoGeometry(temporal_factor=temporal_factor).resolve(s.num_frames, s.height, s.width)
    except ValueError as e:
        raise ConfigError(f"sampling size {s.num_frames}x{s.height}x{s.width}: {e}") from e


def _rng_devices(device) -> list:
    return [device] if getattr(device, "type", "cpu") == "cuda" else []


class PeriodicSampler:
    """Built on every rank (rank 0 holds the models); `maybe_sample` is called by every rank after each step."""

    def __init__(self, config, model_config: dict, output: Path, device, rank: int, encoders=None):
        self.config, self.settings, self.output, self.device, self.rank = config, config.sampling, Path(output), \
            device, rank
        self.pipe = None
        if rank != 0:
            return
        from mindspeed_mm.osp.diffusion import FlowMatchEulerSampler, v13_sampler
        from mindspeed_mm.osp.pipelines.video import VideoPipeline
        from mindspeed_mm.osp.text import TEMPLATES
        from mindspeed_mm.osp.training.models import build_encoders, model_spec

        s, version = self.settings, config.model.version
        with torch.random.fork_rng(devices=_rng_devices(device)):
            vae, text = encoders if encoders is not None else build_encoders(config, device)
            cls, cfg = model_spec(config, model_config)
            dtype = torch.bfloat16 if config.model.dtype == "bf16" else torch.float32
            transformer = cls(cfg).to(dtype).eval().requires_grad_(False)
        sampler = v13_sampler() if version == "v1.3" else FlowMatchEulerSampler(shift=s.shift)
        template = TEMPLATES[s.template or version]
        self.pipe = VideoPipeline(version, transformer, vae, text, sampler, template)
        # the VAE and text encoders may be the training loop's own: never move or cast them (no pipe.to)
        self.pipe.device, self.pipe.dtype = torch.device(device), dtype

    def due(self, step: int) -> bool:
        return self.settings.every > 0 and step > 0 and step % self.settings.every == 0

    def maybe_sample(self, step: int, pmodel, ema, log) -> list[Path]:
        """Sample at the steps that are due and not written yet; returns the paths written (rank 0)."""
        if not self.due(step):
            return []
        from mindspeed_mm.osp import parallel

        paths = sample_paths(self.output, step, len(self.settings.prompts))
        todo = torch.tensor([float(any(not p.exists() for p in paths)) if self.rank == 0 else 0.0],
                            device=self.device)
        torch.distributed.all_reduce(todo, op=torch.distributed.ReduceOp.MAX)  # rank 0's file system decides
        if not todo.item():
            log.message(f"step {step}: samples already written in {paths[0].parent}; not sampled again")
            return []
        local = ema.local_tensors() if ema is not None and self.settings.ema else None   # collective
        written = []
        if self.rank == 0:
            state = parallel.full_state_dict(pmodel, local=local)
            written = self._sample(state, paths)
            log.message(f"step {step}: samples ({'EMA' if local is not None else 'trained'} weights) "
                        + ", ".join(str(p) for p in written))
        del local
        torch.distributed.barrier()
        return written

    @torch.no_grad()
    def _sample(self, state: dict, paths: list[Path]) -> list[Path]:
        from mindspeed_mm.osp.data.video_io import model_output_to_frames, write_video

        s, pipe = self.settings, self.pipe
        transformer = pipe.transformer
        transformer.load_state_dict(state)
        transformer.to(self.device)
        fps = s.fps or pipe.defaults.fps
        written = []
        try:
            with torch.random.fork_rng(devices=_rng_devices(self.device)):
                for i, (prompt, path) in enumerate(zip(s.prompts, paths)):
                    if path.exists():
                        continue
                    video = pipe([prompt], num_frames=s.num_frames, height=s.height, width=s.width, steps=s.steps,
                                 guidance_scale=s.guidance_scale, guidance_rescale=s.guidance_rescale,
                                 seeds=[s.seed + i])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    written.append(write_video(path, model_output_to_frames(video[0]), fps))
        finally:
            transformer.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return written


def build_sampler(config, model_config: dict, output: Path, device, rank: int, encoders=None) -> Optional[
        PeriodicSampler]:
    if config.sampling.every <= 0:
        return None
    return PeriodicSampler(config, model_config, output, device, rank, encoders)

