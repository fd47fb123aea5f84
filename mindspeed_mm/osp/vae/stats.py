"""Latent statistics of a WF-VAE over a dataset, and the normaliser they give (`scale` = 1/std, `shift` = mean per
latent channel), as the released configs carry: a denoiser trains on `(z - shift) * scale`, about unit variance.

    osp vae stats VAE_DIR --data data.txt [--clips 64] [--write]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def latent_statistics(vae, anno, clips: int, max_frames: int) -> tuple[list[float], list[float], int]:
    """(per-channel mean, per-channel std, clips used) of the posterior means of up to `clips` videos spread
    evenly over `anno`, each encoded whole at its own size (its first 1 + R*n frames, at most `max_frames`)."""
    from mindspeed_mm.osp.data.video_io import frames_to_model_input, read_frames

    r, s = vae.temporal_compression, vae.spatial_compression
    videos = np.flatnonzero(~anno.is_image & (anno.num_frames >= 1))
    if len(videos) == 0:
        raise ValueError("the dataset has no videos with a known frame count")
    picked = videos[np.linspace(0, len(videos) - 1, min(clips, len(videos))).round().astype(int)]
    total = torch.zeros(vae.latent_dim, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    with torch.no_grad():
        for i in picked:
            frames = 1 + (min(int(anno.num_frames[i]), max_frames) - 1) // r * r
            video = frames_to_model_input(read_frames(anno.paths[i], range(frames)), vae.dtype)
            h, w = video.shape[-2:]
            video = video[..., : h // s * s, : w // s * s]
            z = vae.encode(video).mean.double().transpose(0, 1).reshape(vae.latent_dim, -1)
            total += z.sum(dim=1)
            squares += (z * z).sum(dim=1)
            count += z.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist(), len(picked)


def write_normaliser(vae_dir: Path, mean: list, std: list) -> None:
    """Set `scale` = 1/std and `shift` = mean in the folder's config.json (atomically)."""
    from mindspeed_mm.osp.files import replace_file
    from mindspeed_mm.osp.vae.official import CONFIG_FILE, FORMAT_NAME

    path = Path(vae_dir) / CONFIG_FILE
    data = json.loads(path.read_text())
    # our folders nest the config (and the official constructor dict); a released config.json is flat
    sections = [data[k] for k in ("config", "official_config") if isinstance(data.get(k), dict)] \
        if data.get("format") == FORMAT_NAME else [data]
    for section in sections:
        section["scale"] = [round(1.0 / v, 6) for v in std]
        section["shift"] = [round(v, 6) for v in mean]
    replace_file(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))
