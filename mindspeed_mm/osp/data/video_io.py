"""Read and write videos, and turn frames into model input.

Readers: decord, then PyAV, then OpenCV -- whichever is installed, in that order; `backend=` picks one.
Frames come back as uint8 `(T, H, W, 3)` RGB tensors; `frames_to_model_input` turns them into the VAE's
`(1, 3, T, H, W)` float layout in [-1, 1] and `model_output_to_frames` goes back.
Writing uses PyAV (H.264 `libx264`, or MPEG-4 Part 2 when libx264 is missing), yuv420p, atomically.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from mindspeed_mm.osp.files import replace_file

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)

BACKENDS = ("decord", "av", "cv2")  # preference order
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")


class VideoReadError(RuntimeError):
    """A video file exists but could not be decoded (or holds fewer frames than asked for)."""


class VideoTooShortError(VideoReadError):
    """The stream decodes but ends before a frame that was asked for (truncated, or a wrong `num_frames`)."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    backend: str


def available_backends() -> list[str]:
    """Installed readers, in preference order."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def _pick_backend(backend: Optional[str]) -> str:
    installed = available_backends()
    if backend is None:
        if not installed:
            raise RuntimeError("no video reader installed: pip install decord (or av, or opencv-python-headless)")
        return installed[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend not in installed:
        hint = {"decord": "decord", "av": "av", "cv2": "opencv-python-headless"}[backend]
        raise RuntimeError(f"video backend {backend!r} is not installed (pip install {hint}); "
                           f"installed: {', '.join(installed) or 'none'}")
    return backend


def _check_file(path: PathLike) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video file not found: {p}")
    if not p.is_file():
        raise IsADirectoryError(f"expected a video file, got a directory: {p}")
    return str(p)


def frame_indices(total: int, *, start: int = 0, num_frames: Optional[int] = None, stride: int = 1,
                  path: str = "<video>") -> list[int]:
    """Frames `start, start+stride, ...`: `num_frames` of them, or as many as the video holds when None."""
    if start < 0 or stride < 1:
        raise ValueError(f"need start >= 0 and stride >= 1, got start={start}, stride={stride}")
    if num_frames is None:
        if start >= total:
            raise VideoReadError(f"{path}: start frame {start} is past the end ({total} frames)")
        return list(range(start, total, stride))
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    last = start + stride * (num_frames - 1)
    if last >= total:
        raise VideoReadError(
            f"{path}: has {total} frames, but {num_frames} frames from frame {start} with stride {stride} need "
            f"{last + 1}; ask for fewer frames (at most {max(0, (total - 1 - start) // stride + 1)} here), "
            "a smaller stride, or an earlier start")
    return list(range(start, last + 1, stride))


# ---------------------------------------------------------------------------------------------------- readers
def _probe_decord(path: str) -> VideoInfo:
    import decord
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    h, w = vr[0].shape[:2] if len(vr) else (0, 0)
    return VideoInfo(path, len(vr), float(vr.get_avg_fps()), int(h), int(w), "decord")


def _read_decord(path: str, start: int, num_frames: Optional[int], stride: int) -> tuple[np.ndarray, float]:
    import decord
    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    idx = frame_indices(len(vr), start=start, num_frames=num_frames, stride=stride, path=path)
    return vr.get_batch(idx).asnumpy(), float(vr.get_avg_fps())


def _av_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _probe_av(path: str) -> VideoInfo:
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        n = stream.frames or sum(1 for _ in container.decode(stream))  # containers without a frame count
        return VideoInfo(path, int(n), _av_fps(stream), stream.codec_context.height, stream.codec_context.width, "av")


def _read_av(path: str, start: int, num_frames: Optional[int], stride: int) -> tuple[np.ndarray, float]:
    import av
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoReadError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = None if num_frames is None else start + stride * (num_frames - 1)
        frames, total = [], 0
        for i, frame in enumerate(container.decode(stream)):
            total = i + 1
            if i >= start and (i - start) % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if last is not None and i >= last:
                break
        frame_indices(total, start=start, num_frames=num_frames, stride=stride, path=path)  # raises if short
        return np.stack(frames), _av_fps(stream)


def _probe_cv2(path: str) -> VideoInfo:
    import cv2
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: OpenCV (cv2) could not open the file; it may be corrupt, truncated or "
                                 "not a video")
        return VideoInfo(path, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS)),
                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "cv2")
    finally:
        cap.release()


def _read_cv2(path: str, start: int, num_frames: Optional[int], stride: int) -> tuple[np.ndarray, float]:
    import cv2
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: OpenCV (cv2) could not open the file; it may be corrupt, truncated or "
                                 "not a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        last = None if num_frames is None else start + stride * (num_frames - 1)
        frames, i = [], 0
        while last is None or i <= last:
            wanted = i >= start and (i - start) % stride == 0
            ok = cap.grab()
            if not ok:
                break
            if wanted:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise VideoReadError(f"{path}: OpenCV could not decode frame {i}")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
        frame_indices(i, start=start, num_frames=num_frames, stride=stride, path=path)  # raises if short
        return np.stack(frames), fps
    finally:
        cap.release()


_READERS = {"decord": (_probe_decord, _read_decord), "av": (_probe_av, _read_av), "cv2": (_probe_cv2, _read_cv2)}


def _call_reader(fn, path: str, backend: str, *args):
    try:
        return fn(path, *args)
    except VideoReadError:
        raise
    except Exception as e:  # reader-specific errors (decord.DECORDError, av.error.*, cv2.error)
        raise VideoReadError(f"{path}: cannot decode with {backend}: {e}. The file may be corrupt, truncated, "
                             "or not a video; check it with `ffprobe` or try another backend=") from e


def probe(path: PathLike, *, backend: Optional[str] = None) -> VideoInfo:
    """Frame count, fps and size. Frame counts from container headers can be estimates (OpenCV)."""
    path, backend = _check_file(path), _pick_backend(backend)
    info = _call_reader(_READERS[backend][0], path, backend)
    if info.num_frames < 1:
        raise VideoReadError(f"{path}: {backend} found no frames; the file may be corrupt or empty")
    return info


def read_video(path: PathLike, *, start: int = 0, num_frames: Optional[int] = None, stride: int = 1,
               backend: Optional[str] = None) -> tuple[torch.Tensor, float]:
    """Decode frames `start, start+stride, ...` (`num_frames` of them; all when None).

    Returns `(frames, fps)`, frames a uint8 `(T, H, W, 3)` RGB tensor. Raises FileNotFoundError for a missing file
    and VideoReadError (naming file and reader) for undecodable files or too few frames.
    """
    path, backend = _check_file(path), _pick_backend(backend)
    if start < 0 or stride < 1 or (num_frames is not None and num_frames < 1):
        raise ValueError(f"need start >= 0, stride >= 1, num_frames >= 1 (or None); "
                         f"got start={start}, stride={stride}, num_frames={num_frames}")
    frames, fps = _call_reader(_READERS[backend][1], path, backend, start, num_frames, stride)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise VideoReadError(f"{path}: {backend} returned no frames; the file may be corrupt or empty")
    return torch.from_numpy(np.ascontiguousarray(frames)), fps


def _pick_frames(decoded, indices: Sequence[int], path: str) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) out of `decoded`, an iterator of zero-argument callables
    that decode one frame each, in stream order. Raises when the stream ends before the last index."""
    wanted = set(indices)
    last, got, count = max(wanted), {}, 0
    for i, decode in enumerate(decoded):
        count = i + 1
        if i in wanted:
            got[i] = decode()
        if i >= last:
            break
    if len(got) < len(wanted):
        raise VideoTooShortError(f"{path}: the stream ends after {count} frames but frame {last} was asked for; the "
                             "file is truncated or shorter than its annotation says (check `num_frames`)")
    return np.stack([got[i] for i in indices])


def _frames_av(path: str, indices: Sequence[int]) -> np.ndarray:
    import av
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoReadError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = ((lambda f=f: f.to_ndarray(format="rgb24")) for f in container.decode(stream))
        return _pick_frames(decoded, indices, path)


def _frames_cv2(path: str, indices: Sequence[int]) -> np.ndarray:
    import cv2
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: OpenCV (cv2) could not open the file; it may be corrupt, truncated or "
                                 "not a video")

        def grabbed():
            while cap.grab():
                yield lambda: cv2.cvtColor(cap.retrieve()[1], cv2.COLOR_BGR2RGB)
        return _pick_frames(grabbed(), indices, path)
    finally:
        cap.release()


def _frames_decord(path: str, indices: Sequence[int]) -> np.ndarray:
    import decord
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    if max(indices) >= len(vr):
        raise VideoTooShortError(f"{path}: has {len(vr)} frames but frame {max(indices)} was asked for; the file is "
                             "truncated or shorter than its annotation says (check `num_frames`)")
    return vr.get_batch(list(indices)).asnumpy()


_FRAME_PICKERS = {"decord": _frames_decord, "av": _frames_av, "cv2": _frames_cv2}
_DECORD_FALLBACK_WARNED: list[str] = []


def read_frames(path: PathLike, indices: Sequence[int], *, backend: Optional[str] = None) -> torch.Tensor:
    """Decode the frames at `indices` (sorted or not, repeats allowed): uint8 `(len(indices), H, W, 3)` RGB.

    PyAV and OpenCV decode the stream up to the last index, so a truncated file raises VideoReadError instead of
    returning fewer frames.
    """
    path, chosen = _check_file(path), _pick_backend(backend)
    indices = [int(i) for i in indices]
    if not indices or min(indices) < 0:
        raise ValueError(f"need a non-empty list of frame indices >= 0, got {indices[:8]}")
    try:
        frames = _call_reader(_FRAME_PICKERS[chosen], path, chosen, indices)
    except VideoReadError as e:
        others = [b for b in available_backends() if b != chosen]
        if backend is not None or chosen != "decord" or not others or isinstance(e, VideoTooShortError):
            raise
        # decord cannot copy frames of some widths (its "DECORDArrayCopyFromTo: The size must exactly match");
        # another reader decodes them. Said once per process, so it is never silent.
        if not _DECORD_FALLBACK_WARNED:
            _DECORD_FALLBACK_WARNED.append(path)
            logger.warning("decord failed on %s (%s); reading it, and later files decord fails on, with %s. The "
                           "file may well be fine: decord cannot copy frames of some widths, 48 px among them "
                           "(dmlc/decord#336)", path, e, others[0])
        frames = _call_reader(_FRAME_PICKERS[others[0]], path, others[0], indices)
    return torch.from_numpy(np.ascontiguousarray(frames))


# ---------------------------------------------------------------------------------------------------- tensors
def frames_to_model_input(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 `(T, H, W, 3)` -> `(1, 3, T, H, W)` in [-1, 1] (`2 * x / 255 - 1`)."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
    x = frames.permute(3, 0, 1, 2).unsqueeze(0).to(dtype)
    return x / 127.5 - 1.0


def model_output_to_frames(video: torch.Tensor) -> torch.Tensor:
    """`(1, 3, T, H, W)` or `(3, T, H, W)` in [-1, 1] -> uint8 `(T, H, W, 3)` (clamped, rounded)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected a batch of one video, got batch {video.shape[0]}; index the batch first")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected (3, T, H, W) or (1, 3, T, H, W), got {tuple(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu()


def resize_short_side(video: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize the last two axes (H, W) so that min(H, W) == size, keeping the aspect ratio.

    Float input of any leading shape (e.g. `(B, C, T, H, W)`). Uses antialiasing when shrinking (like
    torchvision's `Resize` on tensors with `antialias=True`).
    """
    if not video.is_floating_point():
        raise ValueError("resize_short_side expects a float tensor; convert uint8 frames with frames_to_model_input")
    h, w = video.shape[-2:]
    if min(h, w) == size:
        return video
    if h <= w:
        new_h, new_w = size, max(1, int(round(w * size / h)))
    else:
        new_h, new_w = max(1, int(round(h * size / w))), size
    flat = video.reshape(-1, 1, h, w)
    out = F.interpolate(flat, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True)
    return out.reshape(*video.shape[:-2], new_h, new_w)


def center_crop(video: torch.Tensor, size: Union[int, Sequence[int]]) -> torch.Tensor:
    """Crop the last two axes (H, W) to `size` (int for a square, or (h, w)) around the centre."""
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    h, w = video.shape[-2:]
    if th > h or tw > w:
        raise ValueError(f"cannot center-crop {h}x{w} to {th}x{tw}: resize the short side to at least "
                         f"{max(th, tw)} first")
    top, left = (h - th) // 2, (w - tw) // 2
    return video[..., top:top + th, left:left + tw]


def load_video(path: PathLike, *, num_frames: Optional[int] = None, start: int = 0, stride: int = 1,
               resolution: Optional[int] = None, crop: Optional[Union[int, Sequence[int]]] = None,
               backend: Optional[str] = None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, float]:
    """Read a clip as VAE input: `(1, 3, T, H, W)` in [-1, 1], short side resized to `resolution`, optional crop.

    Returns `(video, fps)` where fps is the source rate divided by `stride`.
    """
    frames, fps = read_video(path, start=start, num_frames=num_frames, stride=stride, backend=backend)
    video = frames_to_model_input(frames, dtype=torch.float32)
    if resolution is not None:
        video = resize_short_side(video, resolution).clamp_(-1, 1)
    if crop is not None:
        video = center_crop(video, crop)
    return video.to(dtype), fps / stride


# ---------------------------------------------------------------------------------------------------- writing
def _encoder_codec(codec: Optional[str]) -> str:
    import av
    if codec is not None:
        if codec not in av.codecs_available:
            raise RuntimeError(f"video codec {codec!r} is not available in this PyAV/FFmpeg build")
        return codec
    for name in ("libx264", "mpeg4"):
        if name in av.codecs_available:
            return name
    raise RuntimeError("PyAV's FFmpeg has neither libx264 nor mpeg4 encoders; install the `av` wheel from PyPI")


def write_video(path: PathLike, frames: torch.Tensor, fps: float, *, overwrite: bool = False,
                codec: Optional[str] = None, crf: int = 17) -> Path:
    """Write uint8 `(T, H, W, 3)` RGB frames to an mp4 (yuv420p), atomically (temp file + os.replace).

    Codec: libx264 with `crf` (0 = lossless in YUV, 17 ~ visually lossless), else mpeg4 at high quality.
    Refuses to replace an existing file unless `overwrite=True`. H and W must be even (yuv420p).
    """
    import av

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) or choose another path")
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}; "
                         "convert model output with model_output_to_frames")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame size {h}x{w}: yuv420p needs even height and width; crop or resize first")
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    codec = _encoder_codec(codec)
    array = frames.cpu().numpy()

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "medium"}
            else:
                stream.bit_rate = max(1_000_000, int(h * w * fps * 4))
            for i in range(t):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(array[i], format="rgb24")))
            container.mux(stream.encode())
    replace_file(path, write)
    return path


# ---------------------------------------------------------------------------------------------------- discovery
def iter_videos(root: PathLike, exts: Sequence[str] = VIDEO_EXTS, *, recursive: bool = True) -> Iterator[Path]:
    """Video files under `root` (sorted, case-insensitive extension match; hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in exts}
    pattern = "**/*" if recursive else "*"
    for p in sorted(root.glob(pattern)):
        if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith("."):
            yield p
