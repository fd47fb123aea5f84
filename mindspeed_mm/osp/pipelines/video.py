"""Text-to-video and image-to-video sampling for Open-Sora Plan v1.3 (Skiparse DiT) and v1.5 (SUV MMDiT), and
pipeline folders (`save_pipeline` / `load_pipeline`; the layout is in folder.py)."""
from __future__ import annotations

import dataclasses
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from ..diffusion import classifier_free_guidance, load_sampler
from ..files import replace_dir
from ..text import TEMPLATES, PromptTemplate, TextConditioner, TextEmbeddings, load_text_encoder, load_tokenizer
from .conditioning import compress_mask, masked_video_and_mask
from .folder import INDEX_FILE, PIPELINE_CLASS, component_folder, load_transformer, save_transformer
from .geometry import VideoGeometry
from .offload import BlockOffload


@dataclass(frozen=True)
class VersionDefaults:
    """The official sampling settings of each model version (spec dit.md section 4)."""

    num_frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    guidance_rescale: float
    fps: int


DEFAULTS = {
    "v1.3": VersionDefaults(93, 352, 640, 100, 7.5, 0.0, 18),
    "v1.5": VersionDefaults(121, 576, 1024, 50, 7.0, 0.7, 24),
}


def _call_model(model, **kwargs):
    return model(**kwargs)


def _prev_sample(result):
    return getattr(result, "prev_sample", result)


class VideoPipeline:
    """Prompts (+ optional conditioning frames for v1.3 inpainting weights) -> videos in [-1, 1], (B, 3, F, H, W).

    Components: `transformer` (OSP13DiT / SUVDiT), `vae` (WFVAE), `text` (TextConditioner), `sampler`
    (diffusers EulerAncestralDiscreteScheduler for v1.3, FlowMatchEulerSampler for v1.5).
    Memory options: `text_device` (where the text encoders run), `free_text_encoders` (drop them after the first
    encoding), `sequential_cfg` (guidance passes one at a time), `enable_block_offload()` (denoiser blocks
    streamed from host memory), `vae_chunk_frames` (latent frames per VAE chunk).
    """

    def __init__(self, version: str, transformer, vae, text: Optional[TextConditioner], sampler,
                 template: Optional[PromptTemplate] = None):
        if version not in DEFAULTS:
            raise ValueError(f"unknown model version {version!r}; expected one of {sorted(DEFAULTS)}")
        check_components(version, transformer, vae, text)
        self.version, self.transformer, self.vae, self.text, self.sampler = version, transformer, vae, text, sampler
        self.template = template if template is not None else TEMPLATES[version]
        self.defaults = DEFAULTS[version]
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.text_device: Optional[torch.device] = None
        self.free_text_encoders = False
        self.vae_chunk_frames: Optional[int] = None
        self.sequential_cfg = False  # True: conditional and unconditional passes one after another (half the activations)
        self.fast_denoiser = True  # v1.5: per-sample cached fast path (dit/suv_fast.py) where valid; False: reference
        self.refiner: Optional[Callable[[str], str]] = None
        self.offload: Optional[BlockOffload] = None
        self.forward_fn: Callable = _call_model  # replaced by the parallel runner
        self.geometry = VideoGeometry(temporal_factor=int(vae.config.temporal_compression))
        self._inpaint = bool(getattr(transformer.config, "inpaint", False))

    # ------------------------------------------------------------------ folders
    def save_pretrained(self, folder, overwrite: bool = False, max_shard_size="5GB"):
        """Write the diffusers-style pipeline folder (`save_pipeline`; layout: pipelines/folder.py)."""
        return save_pipeline(self, folder, overwrite=overwrite, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, folder, dtype: torch.dtype = torch.float32) -> "VideoPipeline":
        return load_pipeline(folder, dtype=dtype)

    # ------------------------------------------------------------------ placement
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_dim)

    @property
    def is_inpaint(self) -> bool:
        """v1.3 inpainting weights take [latent | masked-video latent | mask] (2C + temporal_factor channels)."""
        return self._inpaint

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "VideoPipeline":
        """Move the denoiser and VAE (text encoders follow `text_device`, default the same device)."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        if self.offload is None:
            self.transformer.to(device=self.device, dtype=self.dtype)
        self.vae.to(device=self.device, dtype=self.dtype)
        if self.text is not None:
            self.text.to(self.text_device or self.device)
        return self

    def enable_block_offload(self) -> None:
        """Keep the denoiser's blocks in host memory and stream them to `self.device` one at a time."""
        self.transformer.to(dtype=self.dtype)
        self.offload = BlockOffload(self.transformer, self.device)

    # ------------------------------------------------------------------ text
    def encode_prompts(self, prompts: Sequence[str], negative_prompts: Optional[Sequence[str]],
                       guidance_scale: float, use_template: bool = True):
        """(conditional, unconditional or None) embeddings on the pipeline device and dtype."""
        if self.text is None:
            raise RuntimeError("the text encoders were freed after an earlier encoding (free_text_encoders=True); "
                               "load the pipeline again or keep them (free_text_encoders=False)")
        template = self.template if use_template else TEMPLATES["none"]
        positives, negatives = template.apply(list(prompts), negative_prompts)
        cond = self.text.encode(positives).to(self.device, self.dtype)
        uncond = self.text.encode(negatives).to(self.device, self.dtype) if guidance_scale > 1 else None
        if self.free_text_encoders:
            self.text = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return cond, uncond, positives, negatives

    # ------------------------------------------------------------------ conditioning frames (v1.3 inpaint)
    def _inpaint_inputs(self, frames: Dict[int, torch.Tensor], batch: int, num_frames: int, height: int, width: int,
                        generator: torch.Generator):
        video, mask = masked_video_and_mask(frames, num_frames, height, width)
        enc_chunk = None if self.vae_chunk_frames is None else self.vae_chunk_frames * self.geometry.temporal_factor
        posterior = self.vae.encode(video.to(self.device, self.dtype), enc_chunk)
        z = self.vae.scale_latents(posterior.sample(generator)).float()
        m = compress_mask(mask, self.geometry.temporal_factor, self.geometry.spatial_factor).to(self.device)
        return z.expand(batch, *z.shape[1:]), m.expand(batch, *m.shape[1:])

    # ------------------------------------------------------------------ denoiser call
    def fast_path_problem(self) -> Optional[str]:
        """Why this pipeline's sampling runs the reference denoiser forward rather than the fast path (None: it
        runs the fast path). The fast path is `dit.suv_fast.FastSUV`: v1.5, float32, one process, no offload."""
        if not self.fast_denoiser:
            return "switched off (fast_denoiser=False, osp sample --no-fast-path)"
        if self.version != "v1.5":
            return "v1.3 has no fast path"
        if self.offload is not None:
            return "block offload"
        if self.forward_fn is not _call_model:
            return "a parallel runner replaced the denoiser call"
        from ..dit.suv_fast import FastSUV

        return FastSUV.unsupported(self.transformer)

    def _steppers(self, texts: Sequence[Optional[TextEmbeddings]]) -> Dict[int, Callable]:
        """Per text embedding (by id): the fast path bound to it, or nothing where the fast path is not valid."""
        if self.fast_path_problem() is not None:
            return {}
        from ..dit.suv_fast import FastSUV

        fast = FastSUV(self.transformer)
        return {id(t): fast.bind(t.hidden_states.unsqueeze(1), t.attention_mask.unsqueeze(1), t.pooled)
                for t in texts if t is not None}

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, text: TextEmbeddings,
                 steppers: Optional[Dict[int, Callable]] = None) -> torch.Tensor:
        b = x.shape[0]
        timestep = t.reshape(1).expand(b).to(device=self.device, dtype=torch.float32)
        step = (steppers or {}).get(id(text))
        if step is not None:
            return step(x.to(self.dtype), timestep)[:, : self.latent_channels].float()
        kwargs = dict(hidden_states=x.to(self.dtype), timestep=timestep,
                      encoder_hidden_states=text.hidden_states.unsqueeze(1),
                      encoder_attention_mask=text.attention_mask.unsqueeze(1))
        if self.version == "v1.3":
            kwargs["attention_mask"] = torch.ones(b, *x.shape[2:], device=self.device, dtype=self.dtype)
        else:
            kwargs["pooled_projections"] = text.pooled
        out = self.forward_fn(self.transformer, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        return out[:, : self.latent_channels].float()

    # ------------------------------------------------------------------ main entry
    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], *, negative_prompts: Optional[Sequence[str]] = None,
                 num_frames: Optional[int] = None, height: Optional[int] = None, width: Optional[int] = None,
                 steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                 guidance_rescale: Optional[float] = None, seeds: Optional[Sequence[int]] = None,
                 frames: Optional[Dict[int, torch.Tensor]] = None, pad: bool = False, use_template: bool = True,
                 progress: Optional[Callable[[int, int], None]] = None, output_latents: bool = False) -> torch.Tensor:
        d = self.defaults
        prompts = list(prompts)
        num_frames, height, width = num_frames or d.num_frames, height or d.height, width or d.width
        steps = steps or d.steps
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        guidance_rescale = d.guidance_rescale if guidance_rescale is None else guidance_rescale
        seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        gen_frames, gen_h, gen_w = self.geometry.resolve(num_frames, height, width, pad=pad)
        if frames and not self.is_inpaint:
            raise ValueError(f"this {self.version} denoiser is a text-to-video model; image-to-video needs the v1.3 "
                             "inpainting (i2v) weights (v1.5 has no released image-to-video weights)")
        if self.is_inpaint and not frames:
            raise ValueError("this denoiser is an image-to-video (inpainting) model: give conditioning frames (--image)")
        if self.refiner is not None and not frames:
            prompts = [self.refiner(p) for p in prompts]

        cond, uncond, _, _ = self.encode_prompts(prompts, negative_prompts, guidance_scale, use_template)
        do_cfg = uncond is not None
        text = TextEmbeddings.cat([uncond, cond]) if do_cfg and not self.sequential_cfg else cond

        b = len(prompts)
        lat_t, lat_h, lat_w = self.geometry.latent_shape(gen_frames, gen_h, gen_w)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        latents = torch.stack([torch.randn(self.latent_channels, lat_t, lat_h, lat_w, generator=g) for g in generators])
        self.sampler.set_timesteps(steps, device=self.device)
        latents = (latents * self.sampler.init_noise_sigma).to(self.device)
        extra = None
        if frames:
            z, m = self._inpaint_inputs(frames, b, gen_frames, gen_h, gen_w,
                                        torch.Generator(device=self.device).manual_seed(int(seeds[0])))
            extra = torch.cat([z, m.to(z.dtype)], dim=1)

        steppers = self._steppers([uncond, cond] if self.sequential_cfg or not do_cfg else [text])
        timesteps = self.sampler.timesteps
        for i, t in enumerate(timesteps):
            x = self.sampler.scale_model_input(latents, t)
            if extra is not None:
                x = torch.cat([x, extra.to(x.dtype)], dim=1)
            if do_cfg and self.sequential_cfg:
                pred_uncond, pred_cond = self._denoise(x, t, uncond, steppers), self._denoise(x, t, cond, steppers)
            elif do_cfg:
                pred_uncond, pred_cond = self._denoise(torch.cat([x, x]), t, text, steppers).chunk(2)
            else:
                pred = self._denoise(x, t, text, steppers)
            if do_cfg:
                pred = classifier_free_guidance(pred_uncond, pred_cond, guidance_scale, guidance_rescale)
            latents = _prev_sample(self.sampler.step(pred, t, latents, generator=generators)).float()
            if progress is not None:
                progress(i + 1, len(timesteps))
        if output_latents:
            return latents
        return self.decode(latents)[:, :, :num_frames, :height, :width]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.vae.unscale_latents(latents.to(self.device, self.dtype))
        return self.vae.decode(z, self.vae_chunk_frames).float().clamp(-1, 1)


# ------------------------------------------------------------------------------------------------ components
def check_components(version: str, transformer, vae, text) -> None:
    """Raise naming the mismatch when the parts cannot work together (channels, compression, text widths)."""
    cfg = transformer.config
    tf = {"v1.3": 4, "v1.5": 8}[version]
    if int(vae.config.temporal_compression) != tf:
        raise ValueError(f"{version} needs a WF-VAE with temporal compression {tf}, this one has "
                         f"{vae.config.temporal_compression}")
    if int(vae.config.latent_dim) != int(cfg.in_channels):
        raise ValueError(f"the VAE has {vae.config.latent_dim} latent channels but the denoiser takes "
                         f"in_channels={cfg.in_channels}")
    if text is None:
        return
    width = getattr(text.encoder.config, "d_model", None) or getattr(text.encoder.config, "hidden_size", None)
    if width != int(cfg.caption_channels):
        raise ValueError(f"the text encoder outputs {width} channels but the denoiser expects "
                         f"caption_channels={cfg.caption_channels}")
    pooled_dim: Optional[int] = getattr(cfg, "pooled_projection_dim", None)
    if pooled_dim is not None:
        if text.pooled_encoder is None:
            raise ValueError("the v1.5 denoiser needs a pooled (CLIP) text encoder")
        got = int(text.pooled_encoder.config.projection_dim)
        if got != int(pooled_dim):
            raise ValueError(f"the CLIP text encoder projects to {got} but the denoiser expects "
                             f"pooled_projection_dim={pooled_dim}")


# ------------------------------------------------------------------------------------------------ folders
def save_pipeline(pipe, folder, overwrite: bool = False, max_shard_size="5GB") -> Path:
    """Write all components to a temporary folder next to `folder`, then move it into place (the transformer's
    weights in safetensors shards of at most `max_shard_size`)."""
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
    from ..vae import WFVAE

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
    paths = {name: component_folder(folder, name) for name in components}
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
