"""Pluggable clip scorers (aesthetic, technical quality), hooks given as `module:function`, and local LPIPS.

A scorer takes a `ClipView` and returns a float. Built in: the LAION aesthetic predictor (CLIP ViT-L/14 image
embeddings -> MLP) when its two weight files exist locally, and DOVER's technical score through a local DOVER
installation (`dover.py`; DOVER itself is not bundled). Nothing is ever downloaded; a stage whose scorer is
unavailable is skipped and the report says why."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass
class ClipView:
    """One candidate clip: frames [start, end) of the slice file `path` (an mp4 under the output's clips/), `crop`
    [sx, ex, sy, ey] in pixels of that file or None, `source` the raw input (relative to the input folder)."""
    path: str
    start: int
    end: int
    fps: float
    crop: Optional[list] = None
    source: str = ""

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    def frames(self, indices) -> np.ndarray:
        """The clip's frames at `indices` (0 = the clip's first frame; repeats allowed), cropped: uint8 (n, H, W, 3)
        RGB."""
        from mindspeed_mm.osp.data.video_io import read_frames

        idx = [int(i) for i in indices]
        if not idx or min(idx) < 0 or max(idx) >= self.num_frames:
            raise ValueError(f"frame indices must be in [0, {self.num_frames}), got {idx[:8]}")
        frames = read_frames(self.path, [self.start + i for i in idx], backend="av").numpy()
        if self.crop:
            sx, ex, sy, ey = self.crop
            frames = frames[:, sy:ey, sx:ex]
        return frames

    def sample(self, n: int) -> np.ndarray:
        """`n` evenly spaced full-size frames (cropped), first and last included: uint8 (n, H, W, 3) RGB."""
        n = max(1, min(n, self.num_frames))
        return self.frames(np.linspace(0, self.num_frames - 1, n).round().astype(int).tolist())


def load_callable(spec: str) -> Callable:
    """`package.module:function` -> the function (ValueError naming what is missing)."""
    if ":" not in spec:
        raise ValueError(f"expected module:function, got {spec!r}")
    module, name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load {spec!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn


class LaionAesthetic:
    """LAION improved aesthetic predictor: mean over frames of MLP(normalized CLIP image embedding).

    `head_path`: the predictor's MLP state dict (sac+logos+ava1-l14-linearMSE.pth: Linear layers `layers.0`,
    `layers.2`, `layers.4`, `layers.6`, `layers.7`, 768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between, no
    activations); the layer sizes are read from the file. `clip_dir`: a transformers CLIP folder, either a whole CLIP
    (openai/clip-vit-large-patch14: config.json of model_type "clip", its text tower is not loaded) or a vision tower
    with projection (CLIPVisionModelWithProjection.save_pretrained), with its preprocessor_config.json. The head's
    input size must equal the CLIP's projection size (768 for ViT-L/14)."""

    LAYERS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")
    OFFICIAL = "768 -> 1024 -> 128 -> 64 -> 16 -> 1"

    def __init__(self, head_path: str, clip_dir: str, frames: int = 5):
        import torch
        from transformers import CLIPImageProcessor

        self.frames = frames
        self.head = self.build_head(torch.load(head_path, map_location="cpu", weights_only=True))
        self.processor = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)
        self.clip = self.load_clip(clip_dir)
        dim, want = self.clip.config.projection_dim, self.head[0].in_features
        if dim != want:
            raise ValueError(f"the aesthetic head {head_path} takes {want}-dim CLIP embeddings but the CLIP in "
                             f"{clip_dir} gives {dim}-dim ones (the LAION predictor sac+logos+ava1-l14-linearMSE.pth "
                             "goes with CLIP ViT-L/14, 768)")

    @staticmethod
    def load_clip(clip_dir: str):
        """The vision tower and projection of the CLIP in `clip_dir`, eval mode; ValueError when weights are missing."""
        from transformers import AutoConfig, CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        config = AutoConfig.from_pretrained(clip_dir, local_files_only=True)
        if config.model_type == "clip":
            # a whole CLIP: its vision tower, and the projection size of the top level (a sub-config saved by a
            # recent transformers carries its own default, 512, instead)
            vision = config.vision_config
            vision.projection_dim = config.projection_dim
        elif config.model_type == "clip_vision_model":
            vision = config
        else:
            raise ValueError(f"{clip_dir}: expected a CLIP model folder (model_type clip or clip_vision_model), "
                             f"got model_type {config.model_type!r}")
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()      # the text tower's weights are "unexpected" here: not worth a warning
        try:
            model, info = CLIPVisionModelWithProjection.from_pretrained(clip_dir, config=vision, local_files_only=True,
                                                                        output_loading_info=True)
        finally:
            hf_logging.set_verbosity(level)
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ValueError(f"{clip_dir}: the CLIP weights lack {len(missing)} vision tensor(s), e.g. {missing[:4]}; "
                             "they would be random")
        return model.eval()

    @classmethod
    def build_head(cls, state: dict):
        import torch.nn as nn
        mods, width = [], None
        for name in cls.LAYERS:
            w, b = state.get(f"{name}.weight"), state.get(f"{name}.bias")
            if (w is None or b is None or w.dim() != 2 or tuple(b.shape) != (w.shape[0],)
                    or (width is not None and w.shape[1] != width)):
                got = "missing" if w is None or b is None else f"{tuple(w.shape)} / {tuple(b.shape)}"
                raise ValueError(f"aesthetic head: {name}.weight/bias {got}, not a linear layer following the one "
                                 "before; expected the LAION improved-aesthetic-predictor MLP "
                                 f"(sac+logos+ava1-l14-linearMSE.pth, {', '.join(cls.LAYERS)}: {cls.OFFICIAL})")
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(b)
            mods.append(lin)
            width = w.shape[0]
        if width != 1:
            raise ValueError(f"aesthetic head: the last layer gives {width} outputs, expected 1 ({cls.OFFICIAL})")
        return nn.Sequential(*mods).eval()

    def __call__(self, clip: ClipView) -> float:
        import torch
        frames = clip.sample(self.frames)
        with torch.no_grad():
            pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"]
            emb = self.clip(pixel_values=pixels).image_embeds
            emb = emb / emb.norm(dim=-1, keepdim=True)
            return float(self.head(emb).mean())


def aesthetic_scorer(cfg) -> tuple[Optional[Callable], str]:
    """(scorer, note): scorer None with the reason when it cannot run here."""
    if cfg.aesthetic_scorer:
        return load_callable(cfg.aesthetic_scorer), f"hook {cfg.aesthetic_scorer}"
    missing = [f"{flag} ({path or 'unset'})" for flag, path in
               (("--aesthetic-head", cfg.aesthetic_head), ("--aesthetic-clip", cfg.aesthetic_clip))
               if not path or not os.path.exists(path)]
    if missing:
        return None, ("skipped: no local LAION aesthetic predictor weights: " + ", ".join(missing) +
                      "; nothing is downloaded (or give --aesthetic-scorer module:function)")
    return LaionAesthetic(cfg.aesthetic_head, cfg.aesthetic_clip, cfg.aesthetic_frames), "LAION aesthetic predictor"


def quality_scorer(cfg) -> tuple[Optional[Callable], str]:
    """(scorer, note): a hook, DOVER's technical score from a local clone, or None with the reason."""
    if cfg.quality_scorer:
        return load_callable(cfg.quality_scorer), f"hook {cfg.quality_scorer}"
    if cfg.dover_dir:
        from mindspeed_mm.osp.data.curate.dover import DoverTechnical
        return DoverTechnical(cfg.dover_dir), f"DOVER technical score ({cfg.dover_dir})"
    return None, ("skipped: no local DOVER: give --dover-dir (a clone of github.com/VQAssessment/DOVER with its "
                  "weights, installed with pip install -e; or OSP_DOVER_DIR), or --quality-scorer module:function")


def lpips_model(cfg):
    """mindspeed_mm.osp.vae.losses.LPIPS from local files; ValueError naming them when they are missing."""
    missing = [f"{flag} ({path or 'unset'})" for flag, path in (("--lpips-vgg", cfg.lpips_vgg),
                                                                  ("--lpips-lin", cfg.lpips_lin))
               if not path or not os.path.isfile(path)]
    if missing:
        raise ValueError("the LPIPS rules (--cut-detector lpips / --motion-metric lpips) need local LPIPS weights, "
                         "missing: " + ", ".join(missing) + ". Give torchvision's vgg16-397923af.pth and the lpips "
                         "package's weights/v0.1/vgg.pth (or OSP_LPIPS_VGG / OSP_LPIPS_LIN), or use --cut-detector "
                         "content --motion-metric flow; there is no silent fallback")
    from mindspeed_mm.osp.vae.losses import LPIPS
    return LPIPS.from_files(cfg.lpips_vgg, cfg.lpips_lin)
