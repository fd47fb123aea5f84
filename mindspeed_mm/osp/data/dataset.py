"""The training dataset: annotation items decoded at their bucket's shape.

A sample is asked for as `(item index, bucket id)` (what `GroupedBatchSampler` yields), so every sample of a
global batch has the bucket's `T x H x W` by construction. Per sample, in this order:
1. frames: the item's window (`cut` start, `num_frames`) resampled to `train_fps`, sped up by `speed_factor`,
   randomly cropped to `num_frames`, then its first T frames; an image is one frame;
2. pixels: the `crop` box [sx, ex, sy, ey] (OCR subtitle crops), then a resize that covers H x W (aspect kept,
   bicubic with antialiasing) and a centre crop to exactly H x W, values in [-1, 1];
3. text: one caption of the item, picked per epoch; caption dropout replaces it with `dropout_text`
   (probability `caption_dropout`, always applied when > 0); optional tokenization.
Randomness comes from `(seed, epoch, item)` only, so a sample is the same whichever worker or rank builds it,
and a resumed run rebuilds the batches of an uninterrupted one.

Bad data: a missing, corrupt or truncated file is replaced by another item of the same bucket and reported in
the sample's `failed` list; `DataHealth` (main process) counts those and stops the run with the first bad paths
once more than `max_failure_fraction` of the items are bad.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mindspeed_mm.osp.data.annotations import Annotations
from mindspeed_mm.osp.data.buckets import BucketAssignment, BucketConfig, frame_interval
from mindspeed_mm.osp.data.video_io import VideoReadError, probe, read_frames

logger = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Training data too broken to go on; the message names the bad files."""


@dataclass
class SampleConfig:
    caption_dropout: float = 0.1        # probability that a caption is replaced by `dropout_text`
    dropout_text: str = ""
    max_failure_fraction: float = 0.01  # stop when more items than this fraction are unreadable
    max_retries: int = 8                # replacement attempts for one sample
    video_backend: Optional[str] = None  # decord, av or cv2; None: the first installed
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.caption_dropout <= 1 or not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(f"caption_dropout and max_failure_fraction must be in [0, 1], got "
                             f"{self.caption_dropout}, {self.max_failure_fraction}")


def frame_indices_for(cfg: BucketConfig, num_frames: int, fps: float, start: int, frames: int,
                      rng: np.random.Generator) -> np.ndarray:
    """File frame indices of one sample with `frames` frames (see the module docstring, step 1)."""
    interval = frame_interval(cfg, fps)
    idx = np.arange(start, start + num_frames, interval).astype(np.int64)
    idx = idx[idx < start + num_frames]
    if cfg.speed_factor > 1 and len(idx) > cfg.num_frames:
        speed = min(cfg.speed_factor, len(idx) / cfg.num_frames)
        idx = idx[np.linspace(0, len(idx) - 1, int(len(idx) / speed), dtype=np.int64)]
    if len(idx) > cfg.num_frames:
        begin = int(rng.integers(0, len(idx) - cfg.num_frames + 1))
        idx = idx[begin:begin + cfg.num_frames]
    if len(idx) < frames:
        raise VideoReadError(f"the item's window holds {len(idx)} frames at train_fps {cfg.train_fps}, fewer than "
                             f"the {frames} of its bucket; its `num_frames` / `fps` annotation is wrong")
    return idx[:frames]


def resize_cover_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Float `(..., h, w)` -> `(..., height, width)`: scale to cover (aspect kept), then centre crop."""
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        flat = video.reshape(-1, video.shape[-3], h, w)
        flat = F.interpolate(flat, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        video = flat.reshape(*video.shape[:-2], new_h, new_w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[..., top:top + height, left:left + width]


def read_image(path: str) -> torch.Tensor:
    """uint8 `(1, H, W, 3)` RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).unsqueeze(0)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError) as e:
        raise VideoReadError(f"{path}: cannot decode image: {e}") from e


def check_item(anno, i: int, backend=None, decode: bool = True) -> list[str]:
    """Problems of item i: missing file, undecodable media, fewer frames than declared, resolution mismatch."""
    path = anno.paths[i]
    if not os.path.isfile(path):
        return ["missing file"]
    problems = []
    try:
        if anno.is_image[i]:
            frames = read_image(path)
            h, w = frames.shape[1:3]
        else:
            info = probe(path, backend=backend)
            h, w = info.height, info.width
            declared = int(anno.num_frames[i])
            start = max(0, int(anno.cut[i, 0]))
            if declared > 0 and decode:
                read_frames(path, [start + declared - 1], backend=backend)
            elif declared > 0 and info.num_frames < start + declared:
                problems.append(f"{info.num_frames} frames in the file, {start + declared} declared")
    except VideoReadError as e:
        message = str(e).split(": ", 1)[-1]
        return [f"unreadable: {message}" if "frame" not in message else f"too few frames: {message}"]
    if anno.height[i] > 0 and (anno.height[i], anno.width[i]) != (h, w):
        problems.append(f"resolution {h}x{w} in the file, {anno.height[i]}x{anno.width[i]} declared")
    return problems


class OSPDataset(torch.utils.data.Dataset):
    """Samples `(index, bucket)` -> dict(video (3, T, H, W) in [-1, 1], caption, index, bucket, failed[, tokens])."""

    def __init__(self, anno: Annotations, assignment: BucketAssignment, buckets: BucketConfig,
                 config: Optional[SampleConfig] = None, tokenizer=None):
        self.anno, self.assignment, self.buckets = anno, assignment, buckets
        self.config = config or SampleConfig()
        self.tokenizer = tokenizer
        self.epoch = 0
        order = np.argsort(assignment.bucket_of, kind="stable")
        starts = np.searchsorted(assignment.bucket_of[order], np.arange(len(assignment.shapes) + 1))
        self._members, self._member_starts = order, starts   # items of bucket b: order[starts[b]:starts[b+1]]

    def __len__(self) -> int:
        return len(self.anno)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, self.epoch, int(index), salt])

    def load_video(self, index: int, shape: Sequence[int]) -> torch.Tensor:
        """Item `index` at `shape` (T, H, W): float `(3, T, H, W)` in [-1, 1]. Raises on unreadable media."""
        t, h, w = (int(s) for s in shape)
        a = self.anno
        path = a.paths[index]
        if a.is_image[index]:
            if t != 1:
                raise ValueError(f"{path}: an image cannot fill a {t}-frame bucket")
            frames = read_image(path)
        else:
            n = int(a.num_frames[index]) if a.num_frames[index] > 0 else int(a.cut[index, 1] - a.cut[index, 0])
            start = max(0, int(a.cut[index, 0]))
            fps = 24.0 if np.isnan(a.fps[index]) else float(a.fps[index])
            idx = frame_indices_for(self.buckets, n, fps, start, t, self._rng(index))
            frames = read_frames(path, idx, backend=self.config.video_backend)
        if a.crop[index, 0] >= 0:
            sx, ex, sy, ey = (int(v) for v in a.crop[index])
            frames = frames[:, sy:ey, sx:ex]
            if frames.shape[1] == 0 or frames.shape[2] == 0:
                raise VideoReadError(f"{path}: crop {a.crop[index].tolist()} leaves no pixels of "
                                     f"{tuple(frames.shape[1:3])}")
        video = frames.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)       # (3, T, h, w)
        return resize_cover_crop(video, h, w).clamp_(-1.0, 1.0).contiguous()

    def caption(self, index: int) -> str:
        caps = self.anno.captions_of(index)
        rng = self._rng(index, salt=1)
        text = caps[int(rng.integers(len(caps)))] if caps else ""
        if self.config.caption_dropout > 0 and rng.random() < self.config.caption_dropout:
            return self.config.dropout_text
        return text

    def _replacement(self, bucket: int, attempt: int, index: int) -> int:
        members = self._members[self._member_starts[bucket]:self._member_starts[bucket + 1]]
        return int(members[self._rng(index, salt=100 + attempt).integers(len(members))])

    def __getitem__(self, key) -> dict:
        index, bucket = (int(k) for k in key)
        if not 0 <= bucket < len(self.assignment.shapes) or self.assignment.bucket_of[index] < 0:
            raise IndexError(f"item {index} with bucket {bucket}: dropped items have no bucket; ask for the "
                             "(index, bucket) pairs the sampler yields")
        shape = self.assignment.shapes[bucket]
        failed, current = [], index
        for attempt in range(self.config.max_retries + 1):
            try:
                video = self.load_video(current, shape)
                break
            except (OSError, VideoReadError, ValueError) as e:
                failed.append((self.anno.paths[current], str(e)))
                logger.warning("bad sample %s (%s); replaced by another item of bucket %s",
                               self.anno.paths[current], e, self.assignment.key(shape))
                current = self._replacement(bucket, attempt, index)
        else:
            raise DataError(f"{self.config.max_retries + 1} items of bucket {self.assignment.key(shape)} in a row "
                            f"could not be read; first: {failed[0][0]} ({failed[0][1]})")
        sample = {"video": video, "caption": self.caption(current), "index": current, "bucket": bucket,
                  "failed": failed}
        if self.tokenizer is not None:
            sample.update(self.tokenizer(sample["caption"]))
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack one micro-batch (all samples share a shape by construction; a mismatch is a bug, not data)."""
    shapes = {tuple(s["video"].shape) for s in samples}
    if len(shapes) != 1:
        raise RuntimeError(f"a micro-batch mixes shapes {sorted(shapes)}; batches must come from one bucket")
    batch = {"video": torch.stack([s["video"] for s in samples]),
             "caption": [s["caption"] for s in samples],
             "index": torch.tensor([s["index"] for s in samples]),
             "bucket": torch.tensor([s["bucket"] for s in samples]),
             "failed": [f for s in samples for f in s["failed"]]}
    for key in samples[0]:
        if key not in batch:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


class DataHealth:
    """Counts unreadable items across workers (from each batch's `failed`) and stops the run past the limit."""

    def __init__(self, num_items: int, max_failure_fraction: float = 0.01):
        self.num_items, self.max_failure_fraction = num_items, max_failure_fraction
        self.bad: dict[str, str] = {}
        self.replaced = 0

    def update(self, batch: dict) -> None:
        for path, reason in batch.get("failed", []):
            self.replaced += 1
            self.bad.setdefault(path, reason)
        if len(self.bad) > self.max_failure_fraction * self.num_items:
            first = "; ".join(f"{p} ({r})" for p, r in list(self.bad.items())[:5])
            raise DataError(
                f"{len(self.bad)} of {self.num_items} items are unreadable, more than max_failure_fraction="
                f"{self.max_failure_fraction}; first: {first}. Fix or remove them (`osp data validate` lists them "
                "all), or raise max_failure_fraction")

    def state_dict(self) -> dict:
        return {"bad": dict(self.bad), "replaced": self.replaced}

    def load_state_dict(self, state: dict) -> None:
        self.bad, self.replaced = dict(state["bad"]), int(state["replaced"])


class CaptionTokenizer:
    """Caption -> fixed-length token ids and masks for one or two tokenizers (v1.3: mT5 512; v1.5: T5 512 and
    CLIP 77, the second returned as `pooled_input_ids` / `pooled_attention_mask`)."""

    def __init__(self, tokenizer, max_length: int = 512, pooled_tokenizer=None, pooled_max_length: int = 77):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.pooled_tokenizer, self.pooled_max_length = pooled_tokenizer, pooled_max_length

    @staticmethod
    def _encode(tokenizer, text: str, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = tokenizer([text], max_length=max_length, padding="max_length", truncation=True,
                        return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
        return out["input_ids"][0], out["attention_mask"][0]

    def __call__(self, text: str) -> dict:
        ids, mask = self._encode(self.tokenizer, text, self.max_length)
        out = {"input_ids": ids, "attention_mask": mask}
        if self.pooled_tokenizer is not None:
            pids, pmask = self._encode(self.pooled_tokenizer, text, self.pooled_max_length)
            out.update(pooled_input_ids=pids, pooled_attention_mask=pmask)
        return out


def tokens_per_bucket(assignment: BucketAssignment, buckets: BucketConfig) -> list[int]:
    return [buckets.tokens(s) for s in assignment.shapes]

