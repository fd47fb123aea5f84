"""Synthetic media without downloads: a moving-pattern clip (demos, tests) and a captioned video dataset in the
OSP format (coloured squares moving over a gradient, captions naming the colour and the motion, "a red car
running", in the tiny tokenizer's vocabulary) for smoke runs of `osp train` and the tiny configs:

    osp data synth runs/tiny_data --videos 16 --frames 33 --height 32 --width 48
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def moving_pattern(num_frames: int = 17, height: int = 64, width: int = 64) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` RGB: drifting colour waves plus a soft disc moving across the frame."""
    t = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, -1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, -1)
    phase = 2 * math.pi * t / max(num_frames, 1)
    r = 0.5 + 0.35 * torch.sin(2 * math.pi * (x + y) + phase)
    g = 0.5 + 0.35 * torch.cos(2 * math.pi * (2 * x - y) - phase)
    b = 0.5 + 0.35 * torch.sin(2 * math.pi * (3 * y - x) + 2 * phase)
    cx = 0.2 + 0.6 * t / max(num_frames - 1, 1)
    cy = 0.5 + 0.25 * torch.sin(phase)
    disc = torch.sigmoid((0.15 - torch.sqrt((x - cx) ** 2 + (y - cy) ** 2)) * 60)
    rgb = torch.stack([r, g, b], dim=-1) * (1 - disc.unsqueeze(-1)) + disc.unsqueeze(-1) * 0.95
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)


COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60)}
THINGS = ("cat", "dog", "car", "man")
MOTIONS = {"running": (0, 2), "walking": (1, 0), "flying": (1, 1)}   # (dy, dx) pixels per frame


def synthetic_clip(colour: str, motion: str, frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3)."""
    rng = np.random.default_rng(seed)
    ramp = (np.linspace(0, 1, height)[:, None] + np.linspace(0, 1, width)[None, :]) / 2
    lo, hi = rng.integers(0, 120, 3), rng.integers(120, 256, 3)
    background = (lo + (hi - lo) * ramp[..., None]).astype(np.uint8)
    side = max(4, min(height, width) // 4)
    y0, x0 = (int(v) for v in rng.integers(0, [height - side + 1, width - side + 1]))
    dy, dx = MOTIONS[motion]
    clip = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        y, x = (y0 + dy * t) % (height - side + 1), (x0 + dx * t) % (width - side + 1)
        clip[t, y:y + side, x:x + side] = COLOURS[colour]
    return clip


def make_synthetic_dataset(out, videos: int = 16, frames: int = 33, height: int = 32, width: int = 48,
                           fps: float = 24.0, seed: int = 0) -> Path:
    """Write `out/videos/*.mp4`, `out/anno.json` and `out/data.txt`; returns the data.txt path. Refuses a
    non-empty `out`."""
    from mindspeed_mm.osp.data.video_io import write_video

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another folder or remove it")
    if height % 2 or width % 2 or min(videos, frames, height, width) < 1:
        raise ValueError("videos, frames >= 1 and even height/width >= 2 are required")
    (out / "videos").mkdir(parents=True)
    combos = [(c, t, m) for c in COLOURS for t in THINGS for m in MOTIONS]
    order = np.random.default_rng(seed).permutation(len(combos))
    entries = []
    for i in range(videos):
        colour, thing, motion = combos[order[i % len(combos)]]
        name = f"videos/{i:05d}.mp4"
        clip = synthetic_clip(colour, motion, frames, height, width, seed * 100003 + i)
        write_video(out / name, torch.from_numpy(clip), fps)
        entries.append({"path": name, "cap": [f"a {colour} {thing} {motion}"], "num_frames": frames, "fps": fps,
                        "resolution": {"height": height, "width": width}})
    (out / "anno.json").write_text(json.dumps(entries, indent=1) + "\n")
    (out / "data.txt").write_text(f"{out.resolve()},{(out / 'anno.json').resolve()}\n")
    return out / "data.txt"
