"""Jump cuts: PySceneDetect's ContentDetector (HSV change between consecutive frames) and/or a robust z-score rule
on the LPIPS distance of consecutive frames; pieces between cuts are kept when they hold `min_frames` frames
(longer than `max_frames`: split into `max_frames` pieces, a short remainder dropped)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def content_cuts(small: np.ndarray, fps: float, threshold: float = 27.0, min_scene_len: int = 4) -> list[int]:
    """Frame indices that start a new shot (ContentDetector on RGB frames)."""
    from scenedetect import ContentDetector      # pip install scenedetect-headless (the `curate` extra)
    from scenedetect.common import FrameTimecode
    from fractions import Fraction

    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
    rate = Fraction(fps).limit_denominator(1001)
    cuts = []
    for i, frame in enumerate(small):
        cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(i, rate),
                                                              np.ascontiguousarray(frame[..., ::-1]))]
    cuts += [c.frame_num for c in detector.post_process(FrameTimecode(len(small), rate))]
    return sorted({int(c) for c in cuts if 0 < c < len(small)})


def zscore_cuts(distances: Sequence[float], z: float = 3.0, min_distance: float = 0.1) -> list[int]:
    """`distances[i]` compares frames i and i+1; a cut starts at frame i+1 when distances[i] is an outlier (robust
    z-score (d - median) / (1.4826 MAD) above `z`) and at least `min_distance`."""
    d = np.asarray(distances, dtype=np.float64)
    if d.size < 2:
        return []
    med = np.median(d)
    mad = 1.4826 * np.median(np.abs(d - med))
    scale = max(mad, 1e-3 * max(med, 1e-6), 1e-9)
    zs = (d - med) / scale
    return [int(i) + 1 for i in np.nonzero((zs > z) & (d >= min_distance))[0]]


def lpips_distances(model, small: np.ndarray, batch: int = 16) -> np.ndarray:
    """LPIPS between consecutive frames (`model`: mindspeed_mm.osp.vae.losses.LPIPS); (T-1,). The same value as
    `model(frame_i, frame_i+1)`, but each frame's VGG features are computed once instead of twice (once per pair it
    belongs to): `batch` + 1 frames at a time, neighbouring batches sharing one frame."""
    import torch

    from mindspeed_mm.osp.vae.losses import LPIPS_TAPS

    x = torch.from_numpy(small).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if len(x) < 2:
        return np.zeros(0)
    out = torch.zeros(len(x) - 1)
    with torch.no_grad():
        for s in range(0, len(x) - 1, batch):
            h = (x[s:s + batch + 1] - model.shift) / model.scale
            n = len(h) - 1
            taps = iter(model.lins)
            for index, layer in enumerate(model.features):
                h = layer(h)
                if index in LPIPS_TAPS:
                    f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                    out[s:s + n] += next(taps)((f[:-1] - f[1:]).pow(2)).mean((1, 2, 3))
                if index == LPIPS_TAPS[-1]:
                    break
    return out.numpy()


def pieces(num_frames: int, cuts: Sequence[int], min_frames: int, max_frames: Optional[int]) -> tuple[list, dict]:
    """[start, end) ranges between cuts, long ones split into max_frames pieces; (kept, {reason: count})."""
    bounds = [0] + sorted(c for c in set(cuts) if 0 < c < num_frames) + [num_frames]
    kept, dropped = [], {}
    for s, e in zip(bounds[:-1], bounds[1:]):
        while max_frames and e - s > max_frames:
            kept.append((s, s + max_frames))
            s += max_frames
        if e - s >= min_frames:
            kept.append((s, e))
        else:
            key = f"shorter than {min_frames} frames"
            dropped[key] = dropped.get(key, 0) + 1
    return kept, dropped
