"""Pluggable clip scorers (aesthetic, technical quality), hooks given as `module:function`, and local LPIPS.

A scorer takes a `ClipView` and returns a float. Built in: the LAION aesthetic predictor (CLIP ViT-L/14 image
embeddings -> MLP) when its two weight files exist locally. DOVER is not bundled: give `--quality-scorer
module:function` wrapping a local DOVER. Nothing is ever downloaded; a stage whose scorer is unavailable is
skipped and the report says why."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass
class ClipView:
    """One candidate clip: frames [start, end) of `path`, `crop` [sx, ex, sy, ey] or None."""
    path: str
    start: int
    end: int
    fps: float
    crop: Optional[list] = None
    source: str = ""

    def sample(self, n: int) -> np.ndarray:
        """`n` evenly spaced full-size frames (cropped), uint8 (n, H, W, 3)."""
        from mindspeed_mm.osp.data.video_io import read_frames

        n = max(1, min(n, self.end - self.start))
        idx = np.linspace(self.start, self.end - 1, n).round().astype(int).tolist()
        frames = read_frames(self.path, idx, backend="av").numpy()
        if self.crop:
            sx, ex, sy, ey = self.crop
            frames = frames[:, sy:ey, sx:ex]
        return frames


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
    """LAION improved aesthetic predictor: mean over frames of MLP(normalized CLIP ViT-L/14 image embedding)."""

    LAYERS = (("layers.0", 768, 1024), ("layers.2", 1024, 128), ("layers.4", 128, 64), ("layers.6", 64, 16),
              ("layers.7", 16, 1))

    def __init__(self, head_path: str, clip_dir: str, frames: int = 5):
        import torch
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self.frames = frames
        self.processor = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir, local_files_only=True).eval()
        self.head = self.build_head(torch.load(head_path, map_location="cpu", weights_only=True))

    @classmethod
    def build_head(cls, state: dict):
        import torch.nn as nn
        mods = []
        for i, (name, fin, fout) in enumerate(cls.LAYERS):
            lin = nn.Linear(fin, fout)
            w, b = state.get(f"{name}.weight"), state.get(f"{name}.bias")
            if w is None or b is None or tuple(w.shape) != (fout, fin):
                raise ValueError(f"aesthetic head: {name} missing or mis-shaped (want {fout}x{fin}); expected the "
                                 "LAION improved-aesthetic-predictor MLP (sac+logos+ava1-l14-linearMSE.pth)")
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(b)
            mods.append(lin)
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
    if cfg.quality_scorer:
        return load_callable(cfg.quality_scorer), f"hook {cfg.quality_scorer}"
    return None, ("skipped: DOVER is not bundled; give --quality-scorer module:function (or OSP_QUALITY_SCORER) "
                  "wrapping a local DOVER technical score")


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
