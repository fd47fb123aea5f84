"""One decode pass over a slice: small frames for cuts and motion, full-size frames at the OCR sampling rate."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SliceFrames:
    path: str
    fps: float
    height: int
    width: int
    small: np.ndarray                                  # uint8 (T, h, w, 3), long side <= analysis_size
    sampled: dict = field(default_factory=dict)        # frame index -> uint8 (H, W, 3) full-size frame

    @property
    def num_frames(self) -> int:
        return len(self.small)


def sample_step(fps: float, rate: float) -> int:
    """Every how many frames a `rate` frames/s sampling looks (at least every frame)."""
    return max(1, int(round(fps / rate)))


def decode_slice(path: str, analysis_size: int, sample_rate: float = 0.0) -> SliceFrames:
    """Decode every frame once (PyAV): downscaled copies (area filter) and, when `sample_rate` > 0, full-size frames
    at about `sample_rate` frames/s (indices step // 2, step // 2 + step, ...)."""
    import av

    from mindspeed_mm.osp.data.video_io import VideoReadError, _av_fps

    small, sampled = [], {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = _av_fps(stream) or 24.0
            h, w = stream.codec_context.height, stream.codec_context.width
            sample_every = sample_step(fps, sample_rate) if sample_rate > 0 else 0
            scale = min(1.0, analysis_size / max(h, w))
            sw, sh = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
            for i, frame in enumerate(container.decode(stream)):
                if sample_every and i % sample_every == sample_every // 2:
                    sampled[i] = frame.to_ndarray(format="rgb24")
                if scale < 1.0:
                    frame = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA")
                small.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as e:
        raise VideoReadError(f"{path}: cannot decode with av: {e}") from e
    if not small:
        raise VideoReadError(f"{path}: no frames")
    return SliceFrames(path, fps, h, w, np.stack(small), sampled)
