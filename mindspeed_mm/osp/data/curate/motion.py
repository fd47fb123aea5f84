"""Motion score of a clip: mean Farneback optical-flow magnitude (default) or mean consecutive LPIPS (the paper).

Flow score: frames downscaled to a long side of `analysis_size` and sampled at about `motion_fps`; the score is the
mean flow magnitude in percent of the frame's long side per sampled step (0: static). Alongside it the flow
residual: mean |frame t - frame t+1 warped back by the flow| / 255, how much change the motion does not explain.
Per-frame noise, flicker and strobing have a high residual; real motion, even fast, is mostly explained."""
from __future__ import annotations

import numpy as np


def flow_motion(small: np.ndarray, step: int = 1) -> tuple[float, float]:
    """(score, residual) of uint8 (T, h, w, 3) frames, comparing frame i with frame i + step."""
    import cv2

    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in small[::step]]
    if len(gray) < 2:
        return 0.0, 0.0
    h, w = gray[0].shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mags, residuals = [], []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(float(np.sqrt((flow ** 2).sum(-1)).mean()))
        warped = cv2.remap(b, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        residuals.append(float(np.abs(warped.astype(np.float32) - a).mean()) / 255.0)
    return 100.0 * float(np.mean(mags)) / max(h, w), float(np.mean(residuals))


def lpips_motion(model, small: np.ndarray, step: int = 1) -> float:
    """Mean LPIPS of consecutive (sampled) frames, the paper's motion score."""
    from mindspeed_mm.osp.data.curate.cuts import lpips_distances

    d = lpips_distances(model, small[::step])
    return float(d.mean()) if d.size else 0.0


def motion_verdict(score: float, residual: float | None, low: float, high: float,
                   max_residual: float | None) -> str | None:
    """Drop reason, or None to keep."""
    if score < low:
        return f"static (motion < {low:g})"
    if score > high:
        return f"too fast (motion > {high:g})"
    if residual is not None and max_residual is not None and residual > max_residual:
        return f"chaotic (flow residual > {max_residual:g})"
    return None
