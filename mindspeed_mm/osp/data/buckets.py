"""Min-Max Token buckets: every kept item gets one shape key "TxHxW" (frames x height x width after resampling,
cropping and resizing), or a counted drop reason.

Two rules, as the official loaders compute them (so a dataset gets the same buckets):
- `rule="v1.5"` (Open-Sora Plan v1.5.0 / MindSpeed-MM): aspect limits (`max_h_div_w_ratio`, `min_h_div_w_ratio`)
  and `min_hxw` on the *original* size, then resize (area <= `max_hxw` keeping the aspect, or the five-ratio
  snap of `force_5_ratio`) and crop to multiples of `hw_stride`, then `min_hxw` again; videos slower than
  `train_fps` are dropped.
- `rule="v1.3"` (Open-Sora Plan main): resize and stride-crop first, then `min_hxw` and the fixed aspect limits
  [0.5, 2.0] on the *resulting* size; slow videos are kept (frames repeat); at least 29 frames.

Five-ratio snap (paper section 3.1): h/w is compared with the rounded keys 0.56, 0.75, 1.00, 1.33, 1.78 of
9:16, 3:4, 1:1, 4:3, 16:9; with r_h:r_w the closest, s = 16 and A = min(h*w, max_hxw),
k = floor(sqrt(A / (r_h * r_w * s^2))) and the bucket is (r_h k s) x (r_w k s). max_hxw 65536 gives
256x256, 192x256, 256x192, 144x256, 256x144 (the smallest, 36864 pixels, is the "min tokens").

Frames: interval = fps / train_fps (1 when |fps - train_fps| < 0.1; fps 24 when missing); the item's window
holds ceil(num_frames / interval) frames; sped up by `speed_factor`; randomly cropped to `num_frames`; then T is
the largest value >= `min_num_frames` with (T - 1) % ae_stride_t == 0 and latent frames (T - 1) / ae_stride_t + 1
divisible by `sp_size` (v1.3: by lcm(4, sp_size), as its `find_closest_y`). Too long: num_frames >
too_long_factor x target x fps / train_fps x speed_factor. Short windows (< target) are dropped with probability
`drop_short_ratio`. Images are 1 x H x W.

Where we differ from the official code (each a fix, documented in docs/data.md):
- `crop_aware=True` buckets an item by its `crop` box (the official loaders use the uncropped size, so a
  subtitle crop is then stretched over the wrong aspect); off by default to match them.
- `speed_factor` shortens the window at bucket time too (the official loader changes it only when reading,
  then fails its own frame-count check).
- Buckets smaller than `min_bucket_factor` x global batch (official: dropped; an empty result crashes) are by
  default merged into the nearest large bucket (`small_buckets="merge"`); `"drop"` is the official rule,
  `"keep"` trains them as they are (the sampler tops a short global batch up). A dataset whose buckets are all
  small keeps them all. Every move is reported.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mindspeed_mm.osp.data.annotations import Annotations

FIVE_RATIOS = ((0.56, (9, 16)), (0.75, (3, 4)), (1.00, (1, 1)), (1.33, (4, 3)), (1.78, (16, 9)))
FIVE_RATIO_STRIDE = 16

# Drop reasons, in the order they are checked; index 0 means "kept".
REASONS = ("kept", "no_caption", "no_resolution", "no_num_frames", "aspect_mismatch", "too_small",
           "stride_mismatch", "too_long", "fps_too_low", "too_short", "minority")
_REASON = {name: i for i, name in enumerate(REASONS)}


@dataclass
class BucketConfig:
    rule: str = "v1.5"                      # "v1.5" or "v1.3" (see the module docstring)
    num_frames: int = 121                   # target (largest) frame count
    min_num_frames: int = 29
    ae_stride_t: int = 8                    # VAE temporal compression
    ae_stride_hw: int = 8                   # VAE spatial compression
    patch_size: int = 2                     # DiT spatial patch (tokens = latent T x H/16 x W/16 by default)
    sp_size: int = 1                        # sequence/context-parallel size: latent T must divide by it
    train_fps: float = 24.0
    speed_factor: float = 1.0
    too_long_factor: float = 5.0
    drop_short_ratio: float = 1.0
    max_hxw: Optional[int] = 65536
    min_hxw: Optional[int] = None           # default max_hxw // 4
    hw_stride: int = 16
    force_5_ratio: bool = False
    force_resolution: bool = False          # every sample max_height x max_width
    max_height: int = 576
    max_width: int = 1024
    max_h_div_w_ratio: float = 2.0          # v1.5 aspect limits on the original size
    min_h_div_w_ratio: Optional[float] = None   # default 1 / max_h_div_w_ratio
    min_bucket_factor: int = 4              # a bucket needs this many global batches (official filter_major_num)
    small_buckets: str = "merge"            # "merge", "drop" (official) or "keep"
    crop_aware: bool = False                # bucket from the `crop` box's size (official: the uncropped size)
    seed: int = 42                          # drop_short_ratio draws

    def __post_init__(self):
        problems = []
        if self.rule not in ("v1.5", "v1.3"):
            problems.append(f"rule must be 'v1.5' or 'v1.3', got {self.rule!r}")
        if self.small_buckets not in ("merge", "drop", "keep"):
            problems.append(f"small_buckets must be 'merge', 'drop' or 'keep', got {self.small_buckets!r}")
        for name in ("num_frames", "min_num_frames", "ae_stride_t", "ae_stride_hw", "patch_size", "sp_size",
                     "hw_stride", "max_height", "max_width"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_fps <= 0 or self.speed_factor < 1 or self.too_long_factor <= 0:
            problems.append(f"need train_fps > 0, speed_factor >= 1, too_long_factor > 0; got {self.train_fps}, "
                            f"{self.speed_factor}, {self.too_long_factor}")
        if not 0 <= self.drop_short_ratio <= 1:
            problems.append(f"drop_short_ratio must be in [0, 1], got {self.drop_short_ratio}")
        if not self.force_resolution and not self.max_hxw:
            problems.append("set max_hxw (largest area of a bucket in pixels) or force_resolution=true")
        if self.force_resolution and self.force_5_ratio:
            problems.append("force_resolution and force_5_ratio exclude each other")
        if self.force_resolution and (self.max_height % self.hw_stride or self.max_width % self.hw_stride):
            problems.append(f"max_height x max_width ({self.max_height}x{self.max_width}) must be multiples of "
                            f"hw_stride {self.hw_stride}")
        if problems:
            raise ValueError("bad bucket config: " + "; ".join(problems))

    @classmethod
    def official(cls, rule: str, **overrides) -> "BucketConfig":
        """The official defaults of one rule (v1.3 GPU scripts, or MindSpeed-MM's v1.5 example), overridden."""
        base = dict(V13_DEFAULTS if rule == "v1.3" else {"rule": "v1.5"})
        base.update(overrides)
        return cls(**base)

    @property
    def min_area(self) -> int:
        return self.min_hxw if self.min_hxw is not None else (self.max_hxw or 0) // 4

    @property
    def latent_t_multiple(self) -> int:
        return math.lcm(4, self.sp_size) if self.rule == "v1.3" else self.sp_size

    def tokens(self, shape: Sequence[int]) -> int:
        """DiT tokens of one sample of `shape` (T, H, W)."""
        t, h, w = shape
        step = self.ae_stride_hw * self.patch_size
        return ((t - 1) // self.ae_stride_t + 1) * (h // step) * (w // step)


V13_DEFAULTS = dict(rule="v1.3", num_frames=93, ae_stride_t=4, hw_stride=32, train_fps=16.0,
                    max_hxw=352 * 640, max_height=352, max_width=640)


# ---------------------------------------------------------------------------------------------------- shapes
def five_ratio_size(height: int, width: int, max_hxw: int) -> tuple[int, int]:
    """The five-ratio bucket of an item (see the module docstring)."""
    ratio = height / width
    _, (rh, rw) = min(FIVE_RATIOS, key=lambda kv: abs(kv[0] - ratio))
    area = min(height * width, max_hxw)
    k = int(math.sqrt(area / (rh * rw * FIVE_RATIO_STRIDE ** 2)))
    return rh * k * FIVE_RATIO_STRIDE, rw * k * FIVE_RATIO_STRIDE


def area_resize(height: int, width: int, max_hxw: int) -> tuple[int, int]:
    """Scale down (aspect kept, truncated) so that h x w <= max_hxw; smaller sizes stay as they are."""
    if height * width <= max_hxw:
        return height, width
    scale = math.sqrt(max_hxw / (height * width))
    return int(height * scale), int(width * scale)


def spatial_bucket(cfg: BucketConfig, height: int, width: int) -> tuple[int, int, str]:
    """`(H, W, "kept")` or `(0, 0, reason)` for an item of this size."""
    if height <= 0 or width <= 0:
        return 0, 0, "no_resolution"
    if cfg.force_resolution:
        return _forced_bucket(cfg, height, width)
    if cfg.rule == "v1.5":
        lo = cfg.min_h_div_w_ratio if cfg.min_h_div_w_ratio is not None else 1 / cfg.max_h_div_w_ratio
        if not lo <= height / width <= cfg.max_h_div_w_ratio:
            return 0, 0, "aspect_mismatch"
        if height * width < cfg.min_area:
            return 0, 0, "too_small"
    if cfg.force_5_ratio:
        h, w = five_ratio_size(height, width, cfg.max_hxw)
    else:
        h, w = area_resize(height, width, cfg.max_hxw)
        h, w = h // cfg.hw_stride * cfg.hw_stride, w // cfg.hw_stride * cfg.hw_stride
    if h <= 0 or w <= 0:
        return 0, 0, "stride_mismatch"
    if h * w < cfg.min_area:
        return 0, 0, "too_small"
    if cfg.rule == "v1.3" and not 0.5 <= h / w <= 2.0:
        return 0, 0, "aspect_mismatch"
    return h, w, "kept"


def _forced_bucket(cfg: BucketConfig, height: int, width: int) -> tuple[int, int, str]:
    target = cfg.max_height / cfg.max_width
    ratio = height / width
    if cfg.rule == "v1.3":   # main's fixed threshold around the target aspect
        if not target / 1.85 <= ratio <= target * 1.85:
            return 0, 0, "aspect_mismatch"
    elif height * width < math.ceil(cfg.min_area * max(ratio / target, target / ratio)):
        return 0, 0, "too_small"
    return cfg.max_height, cfg.max_width, "kept"


def frame_interval(cfg: BucketConfig, fps: float) -> float:
    fps = 24.0 if not fps or math.isnan(fps) else fps
    return 1.0 if abs(fps - cfg.train_fps) < 0.1 else fps / cfg.train_fps


def window_frames(cfg: BucketConfig, num_frames: int, fps: float) -> int:
    """Frames the item yields after fps resampling and speed-up, before the random crop."""
    n = math.ceil(num_frames / frame_interval(cfg, fps))
    if cfg.speed_factor > 1 and n > cfg.num_frames:
        n = int(n / min(cfg.speed_factor, n / cfg.num_frames))
    return n


def largest_valid_frames(cfg: BucketConfig, n: int) -> int:
    """The largest T <= n usable by the VAE and the parallel layout, or 0."""
    multiple = cfg.latent_t_multiple
    minimum = 29 if cfg.rule == "v1.3" else cfg.min_num_frames
    for t in range(n, minimum - 1, -1):
        if (t - 1) % cfg.ae_stride_t == 0 and ((t - 1) // cfg.ae_stride_t + 1) % multiple == 0:
            return t
    return 0


# ---------------------------------------------------------------------------------------------------- assignment
@dataclass
class BucketAssignment:
    shapes: list[tuple[int, int, int]]      # bucket id -> (T, H, W)
    bucket_of: np.ndarray                   # int64 (n,): bucket id, -1 = dropped
    reason_of: np.ndarray                   # int8 (n,): index into REASONS (0 = kept)
    notes: list[str] = field(default_factory=list)   # merges, top-ups and other decisions, for the log

    @staticmethod
    def key(shape: Sequence[int]) -> str:
        return "x".join(str(int(s)) for s in shape)

    def counts(self) -> dict[str, int]:
        """`{"TxHxW": items}`, largest first."""
        ids, n = np.unique(self.bucket_of[self.bucket_of >= 0], return_counts=True)
        order = sorted(zip(n.tolist(), ids.tolist()), key=lambda p: (-p[0], p[1]))
        return {self.key(self.shapes[b]): c for c, b in order}

    def dropped(self) -> dict[str, int]:
        """`{reason: items}` for every reason that dropped something."""
        counts = Counter(self.reason_of[self.reason_of > 0].tolist())
        return {REASONS[r]: counts[r] for r in sorted(counts)}

    def bucket_counts(self) -> list[int]:
        return np.bincount(self.bucket_of[self.bucket_of >= 0], minlength=len(self.shapes)).tolist()


def item_shape(cfg: BucketConfig, anno: Annotations, i: int, rng: np.random.Generator) -> tuple[tuple, str]:
    """`((T, H, W), "kept")` or `(None, reason)` for item i, checks in the official order."""
    if anno.caption_offsets[i + 1] == anno.caption_offsets[i]:
        return None, "no_caption"
    height, width = int(anno.height[i]), int(anno.width[i])
    if cfg.crop_aware and anno.crop[i, 0] >= 0 and height > 0:
        sx, ex, sy, ey = (int(v) for v in anno.crop[i])
        height, width = min(ey, height) - sy, min(ex, width) - sx
    h, w, reason = spatial_bucket(cfg, height, width)
    if reason != "kept":
        return None, reason
    if anno.is_image[i]:
        return (1, h, w), "kept"
    n = int(anno.num_frames[i])
    if n <= 0 and anno.cut[i, 0] >= 0:
        n = int(anno.cut[i, 1] - anno.cut[i, 0])
    if n <= 0:
        return None, "no_num_frames"
    fps = float(anno.fps[i]) if not np.isnan(anno.fps[i]) else 24.0
    if n > cfg.too_long_factor * (cfg.num_frames * fps / cfg.train_fps * cfg.speed_factor):
        return None, "too_long"
    if cfg.rule == "v1.5" and frame_interval(cfg, fps) < 1.0:
        return None, "fps_too_low"
    window = window_frames(cfg, n, fps)
    if window < cfg.num_frames and rng.random() < cfg.drop_short_ratio:
        return None, "too_short"
    t = largest_valid_frames(cfg, min(window, cfg.num_frames))
    if t == 0:
        return None, "too_short"
    return (t, h, w), "kept"


def assign_buckets(anno: Annotations, cfg: BucketConfig, global_batch: int = 1,
                   global_batch_of: Optional[dict] = None) -> BucketAssignment:
    """Bucket every item, then apply the small-bucket policy.

    `global_batch`: samples per optimizer step (micro-batch x data-parallel x accumulation); a bucket needs
    `min_bucket_factor` of them. `global_batch_of(shape)`, when given, overrides it per shape (token budgets).
    """
    rng = np.random.default_rng(cfg.seed)
    shape_ids: dict[tuple, int] = {}
    bucket_of = np.full(len(anno), -1, dtype=np.int64)
    reason_of = np.zeros(len(anno), dtype=np.int8)
    for i in range(len(anno)):
        shape, reason = item_shape(cfg, anno, i, rng)
        if shape is None:
            reason_of[i] = _REASON[reason]
        else:
            bucket_of[i] = shape_ids.setdefault(shape, len(shape_ids))
    result = BucketAssignment(list(shape_ids), bucket_of, reason_of)
    _apply_small_bucket_policy(result, cfg, global_batch, global_batch_of)
    return result


def _apply_small_bucket_policy(result: BucketAssignment, cfg: BucketConfig, global_batch: int,
                               global_batch_of: Optional[dict]) -> None:
    counts = result.bucket_counts()
    need = [cfg.min_bucket_factor * (global_batch_of(s) if global_batch_of else global_batch) for s in result.shapes]
    small = [b for b, c in enumerate(counts) if 0 < c < need[b]]
    large = [b for b, c in enumerate(counts) if c >= need[b]]
    if not small or cfg.small_buckets == "keep":
        if small:
            result.notes.append(f"kept {len(small)} bucket(s) smaller than {cfg.min_bucket_factor} global batches "
                                "(small_buckets='keep'); their last global batch is topped up with repeats")
        return
    if not large:
        if cfg.small_buckets == "drop":
            raise ValueError(
                f"every bucket holds fewer than {cfg.min_bucket_factor} global batches of {global_batch} "
                f"samples ({dict(zip(map(result.key, result.shapes), counts))}), so the official minority "
                "filter (small_buckets='drop') would leave nothing to train on; use small_buckets='merge' or "
                "'keep', a smaller global batch, or more data")
        result.notes.append(f"all {len(small)} bucket(s) are smaller than {cfg.min_bucket_factor} global "
                            "batches: training on them as they are (short global batches are topped up)")
        return
    for b in small:
        members = result.bucket_of == b
        key = result.key(result.shapes[b])
        if cfg.small_buckets == "drop":
            result.bucket_of[members] = -1
            result.reason_of[members] = _REASON["minority"]
            result.notes.append(f"dropped bucket {key} ({counts[b]} items < {need[b]}; small_buckets='drop')")
            continue
        target = _nearest_bucket(result.shapes[b], [result.shapes[x] for x in large])
        if target is None:
            result.notes.append(f"kept small bucket {key} ({counts[b]} items): no large bucket has as few frames")
            continue
        into = large[target]
        result.bucket_of[members] = into
        result.notes.append(f"merged bucket {key} ({counts[b]} items < {need[b]}) into "
                            f"{result.key(result.shapes[into])}")


def _nearest_bucket(shape: tuple, candidates: list[tuple]) -> Optional[int]:
    """Index of the candidate closest in aspect, then area, then frames, among those with T <= shape's T."""
    t, h, w = shape
    best, best_score = None, None
    for i, (ct, ch, cw) in enumerate(candidates):
        if ct > t:
            continue
        score = (abs(math.log((h / w) / (ch / cw))), abs(math.log((h * w) / (ch * cw))), t - ct)
        if best_score is None or score < best_score:
            best, best_score = i, score
    return best


# ---------------------------------------------------------------------------------------------------- MindSpeed-MM
MINDSPEED_BUCKET_FIELDS = ("num_frames", "max_height", "max_width", "max_hxw", "min_hxw", "force_resolution",
                           "force_5_ratio", "max_h_div_w_ratio", "min_h_div_w_ratio", "hw_stride", "ae_stride_t",
                           "train_fps", "speed_factor", "too_long_factor", "drop_short_ratio", "min_num_frames")


def bucket_config_from_mindspeed(data_json: dict, **overrides) -> tuple[BucketConfig, list[str]]:
    """A v1.5 BucketConfig from MindSpeed-MM's data.json `preprocess_parameters`, and the fields not mapped here
    (`cfg`, batch sizes and seeds belong to the training config; readers and transform pipelines are ours)."""
    params = data_json.get("dataset_param", {}).get("preprocess_parameters", {})
    values = {k: params[k] for k in MINDSPEED_BUCKET_FIELDS if params.get(k) is not None}
    values.update(overrides)
    unmapped = sorted(k for k in params if k not in MINDSPEED_BUCKET_FIELDS)
    return BucketConfig(rule="v1.5", **values), unmapped


def bucket_config_from_dict(values: dict) -> BucketConfig:
    """A BucketConfig from a JSON object; unknown keys are an error naming the closest known key."""
    import difflib

    known = {f.name for f in fields(BucketConfig)}
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                 for k in unknown]
        raise ValueError(f"unknown bucket config key(s): {', '.join(hints)}; known: {', '.join(sorted(known))}")
    return BucketConfig.official(values.get("rule", "v1.5"), **{k: v for k, v in values.items() if k != "rule"})


def bucket_config_to_dict(cfg: BucketConfig) -> dict:
    return asdict(cfg)


def load_bucket_config(path: str) -> BucketConfig:
    """A BucketConfig from a JSON file: bucket keys at the top level, under `data.buckets` or `buckets` (a
    training config), or a MindSpeed-MM data.json (its preprocess_parameters)."""
    from mindspeed_mm.osp.files import read_json_object

    p = Path(path)
    values = read_json_object(p, "bucket config")
    if "dataset_param" in values:
        cfg, _ = bucket_config_from_mindspeed(values)
        return cfg
    if "data" in values and "model" in values:   # an `osp train` config: its rule defaults to model.version
        values = {"rule": values["model"].get("version", "v1.5"), **values["data"].get("buckets", {})}
    values = values.get("data", values)
    values = values.get("buckets", values)
    try:
        return bucket_config_from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: {e}") from e


def bucket_report(anno, assignment, cfg, *, dp_size: int, micro_batch: int, grad_acc: int,
                  batch_tokens=None) -> dict:
    """What `osp data buckets` prints: bucket counts, drops, tokens per sample and the steps per epoch of a layout."""
    from mindspeed_mm.osp.data.sampler import steps_per_epoch

    tokens = [cfg.tokens(s) for s in assignment.shapes]
    batches = steps_per_epoch(assignment.bucket_counts(), dp_size, micro_batch, batch_tokens, tokens)
    return {"buckets": assignment.counts(), "dropped": assignment.dropped(),
            "tokens_per_sample": {assignment.key(s): t for s, t in zip(assignment.shapes, tokens)
                                  if assignment.key(s) in assignment.counts()},
            "items": len(anno), "kept": int((assignment.bucket_of >= 0).sum()),
            "skipped_unsupported": len(anno.skipped), "global_batches_per_epoch": batches,
            "steps_per_epoch": batches // grad_acc, "notes": assignment.notes}
