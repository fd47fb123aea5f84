"""Tiny, deterministic media files for the data tests: mp4 clips, images, broken files and annotation files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from mindspeed_mm.osp.data.video_io import write_video

PATTERNS = ("moving", "static")


def _frames(num_frames: int, height: int, width: int, seed: int, pattern: str) -> np.ndarray:
    """uint8 `(T, H, W, 3)`: a two-colour diagonal gradient with a coloured square (moving or still)."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}: choose one of {', '.join(PATTERNS)}")
    rng = np.random.default_rng(seed)
    c0, c1, square_colour = rng.integers(0, 256, size=(3, 3))
    ramp = (np.linspace(0, 1, height)[:, None] + np.linspace(0, 1, width)[None, :]) / 2
    background = (c0 + (c1 - c0) * ramp[..., None]).round().astype(np.uint8)
    side = max(4, min(height, width) // 4)
    y0, x0 = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    frames = np.repeat(background[None], num_frames, axis=0)
    for t in range(num_frames):
        step = 2 * t if pattern == "moving" else 0
        y, x = (y0 + step) % (height - side + 1), (x0 + 3 * step) % (width - side + 1)
        frames[t, y:y + side, x:x + side] = square_colour
    return frames


def make_video(path: os.PathLike | str, num_frames: int = 17, height: int = 64, width: int = 96, fps: float = 24.0,
               seed: int = 0, pattern: str = "moving") -> Path:
    """Write an mp4 (H and W must be even) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = torch.from_numpy(_frames(num_frames, height, width, seed, pattern))
    return write_video(path, frames, fps)


def make_image(path: os.PathLike | str, height: int = 64, width: int = 96, seed: int = 0) -> Path:
    """Write an image; the format follows the suffix (.jpg, .png, ...)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_frames(1, height, width, seed, "static")[0]).save(path)
    return path


def truncate_file(path: os.PathLike | str, keep_fraction: float = 0.5) -> Path:
    """Cut a file in place to `keep_fraction` of its size (e.g. a truncated mp4)."""
    path = Path(path)
    os.truncate(path, int(path.stat().st_size * keep_fraction))
    return path


def make_garbage(path: os.PathLike | str, nbytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a media name: a corrupt file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(nbytes))
    return path


def write_annotation(path: os.PathLike | str, items: Sequence[dict]) -> Path:
    """An Open-Sora Plan annotation: a JSON list of items."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(items), ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: os.PathLike | str, items: Iterable[dict]) -> Path:
    """One JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path


def write_data_txt(path: os.PathLike | str, entries: Iterable[tuple[os.PathLike | str, os.PathLike | str]]) -> Path:
    """An Open-Sora Plan data file: one `root,annotation` line per dataset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{root},{annotation}\n" for root, annotation in entries), encoding="utf-8")
    return path
