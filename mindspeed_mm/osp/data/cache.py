"""Feature cache: WF-VAE latents and text embeddings of a dataset, encoded once and read at training time.

A cache folder holds:
- `manifest.json`: what the cache was built from: format version, annotation sources, item count, bucket config
  and a fingerprint of the bucket assignment, shard size and count, the VAE (config, dtype, weight fingerprint),
  the storage dtype, the text encoders, and the caption whose embedding replaces a dropped caption.
- `items.safetensors`: `items`, int64, the kept items (bucket >= 0) in index order; the item at position p of
  that list lives in shard p // shard_size.
- `shard-{s:05d}.safetensors`: per stored item `{item}.latent_mean` and `{item}.latent_logvar` (C, t, h, w) and,
  when text was encoded, per caption j `{item}.text.{j}` (L, D: hidden states padded to max_length),
  `{item}.text_mask.{j}` (L: 1 = token, 0 = padding) and `{item}.pooled.{j}` (P, with a pooled encoder). Its
  metadata (JSON strings): `manifest` (digest of the manifest), `shard`, `items`, `paths`, `buckets` (TxHxW of
  each stored item) and `failed` ([item, path, reason] of items whose media could not be read).
- `null_text.safetensors`: `text`, `text_mask` (and `pooled`) of the dropout caption (SampleConfig.dropout_text,
  "" by default), substituted at train time for caption dropout.

The cache freezes the random crop of sample preparation: every video is read as the dataset reads it at epoch 0
(frame window from (seed, 0, item)), so training on the cache sees that crop in every epoch. What stays random per
epoch: the latent sample (mean + std * noise), the caption picked and caption dropout.

Distributed extraction needs no process group: shard s is written by rank s % world. Every rank checks the
folder's manifest and, when it is missing or replaced, writes the identical manifest (and items list and null text)
atomically before its shards, so no rank waits for another. Each shard is written atomically; a rerun skips shards
whose metadata carries the manifest's digest, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from mindspeed_mm.osp.data.buckets import BucketAssignment
from mindspeed_mm.osp.data.dataset import DataError, OSPDataset
from mindspeed_mm.osp.data.video_io import VideoReadError
from mindspeed_mm.osp.files import replace_file

PathLike = Union[str, os.PathLike]
FORMAT, VERSION = "mindspeed_mm.osp.latent_cache", 1
MANIFEST, ITEMS, NULL_TEXT = "manifest.json", "items.safetensors", "null_text.safetensors"
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.safetensors$")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class CacheError(RuntimeError):
    """A cache that does not fit the request; the message names the mismatch and the fix."""


class _ItemFailed(Exception):
    """One item's media (or per-video latent file) could not be read; the reason is recorded, not raised."""


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def bucket_fingerprint(assignment: BucketAssignment) -> str:
    """sha256 of the bucket shapes and of every item's bucket id."""
    h = hashlib.sha256(json.dumps([[int(v) for v in s] for s in assignment.shapes]).encode())
    h.update(np.ascontiguousarray(assignment.bucket_of, dtype=np.int64).tobytes())
    return h.hexdigest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of each tensor's name, shape, dtype and first 64 values: tells checkpoints apart without reading
    them whole."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


def per_video_name(video_path: str) -> str:
    """The file name the MindSpore extractor (vae_ms/extract.py `output_name`) gives a video's latents:
    `<stem>-<first 8 hex of sha1(absolute path)>.safetensors`."""
    stem = os.path.splitext(os.path.basename(video_path))[0]
    digest = hashlib.sha1(os.path.abspath(video_path).encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}.safetensors"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _own(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A contiguous CPU copy (safetensors refuses tensors that share storage)."""
    return t.detach().to(device="cpu", dtype=dtype or t.dtype, copy=True).contiguous()


def _digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _normalized(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _differences(old, new, name: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{name}.{k}" if name else k)]
    if old == new:
        return []

    def short(v) -> str:
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."
    return [f"{name}: {short(old)} in the cache, {short(new)} now"]


def _write_json(path: Path, value: dict) -> None:
    replace_file(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1, sort_keys=True) + "\n",
                                                        encoding="utf-8"))


def _save(path: Path, tensors: dict, metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    replace_file(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_manifest(root: PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {root} is not a feature cache; build one with "
                                "`osp data extract`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} is not valid JSON ({e}); rebuild the cache with `osp data extract --overwrite`")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, expected "
                         f"{FORMAT!r} version {VERSION}; rebuild the cache with `osp data extract --overwrite`")
    return manifest


# ---------------------------------------------------------------------------------------------------- writing
@dataclass
class ExtractResult:
    out_dir: Path
    rank: int
    world: int
    written: list[int] = field(default_factory=list)    # shards written by this call
    skipped: list[int] = field(default_factory=list)    # shards finished by an earlier run, left as they were
    items: int = 0                                      # items stored in the written shards
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (item, path, reason), this rank's shards

    def summary(self) -> str:
        text = (f"rank {self.rank}/{self.world}: wrote {len(self.written)} shard(s) ({self.items} items), skipped "
                f"{len(self.skipped)} finished earlier, into {self.out_dir}")
        if self.failed:
            first = "; ".join(f"{p} ({r})" for _, p, r in self.failed[:3])
            text += f"; {len(self.failed)} item(s) could not be read and are not cached: {first}"
        return text


def _manifest(dataset: OSPDataset, shard_size: int, num_kept: int, vae: dict, dtype: torch.dtype,
              text: Optional[dict], sample_seed: Optional[int]) -> dict:
    return _normalized({
        "format": FORMAT, "version": VERSION,
        "sources": [os.path.abspath(s) for s in dataset.anno.sources],
        "num_items": len(dataset.anno), "num_kept": num_kept,
        "buckets": dataclasses.asdict(dataset.buckets),
        "bucket_fingerprint": bucket_fingerprint(dataset.assignment),
        "sample_seed": sample_seed,
        "shard_size": shard_size, "num_shards": math.ceil(num_kept / shard_size),
        "vae": vae, "dtype": _dtype_name(dtype), "text": text,
        "null_text": None if text is None else {"caption": dataset.config.dropout_text, "file": NULL_TEXT},
    })


def _describe_text(text) -> Optional[dict]:
    if text is None:
        return None

    def model(encoder, tokenizer, max_length: int) -> dict:
        config = getattr(encoder, "config", None)
        return {"class": type(encoder).__name__, "model_type": getattr(config, "model_type", None),
                "dtype": _dtype_name(next(encoder.parameters()).dtype), "weights": weights_fingerprint(encoder),
                "tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer), "max_length": max_length}
    pooled = None
    if text.pooled_encoder is not None:
        pooled = model(text.pooled_encoder, text.pooled_tokenizer, text.pooled_max_length)
    return {"encoder": model(text.encoder, text.tokenizer, text.max_length), "pooled": pooled}


def _prepare_folder(out: Path, manifest: dict, items: np.ndarray, null_text: Optional[dict], overwrite: bool,
                    rank: int) -> None:
    """Refuse a folder built differently (unless `overwrite`), then write manifest, items and null text."""
    out.mkdir(parents=True, exist_ok=True)
    old = None
    if (out / MANIFEST).exists():
        try:
            old = read_manifest(out)
        except CacheError:
            if not overwrite:
                raise
        if old is not None and not overwrite and (diffs := _differences(old, manifest)):
            raise CacheError(f"{out} holds a cache built differently ({'; '.join(diffs)}); pass --overwrite "
                             "(overwrite=True) to rebuild it there, or choose another output folder")
    elif not overwrite:
        foreign = [p.name for p in out.iterdir() if not p.name.startswith(".")
                   and p.name not in (ITEMS, NULL_TEXT) and not SHARD_PATTERN.match(p.name)]
        if foreign:
            raise CacheError(f"{out} is not empty and not a feature cache (holds {', '.join(sorted(foreign)[:3])}); "
                             "choose an empty or new output folder, or pass --overwrite (overwrite=True)")
    if old != manifest or not (out / ITEMS).exists() or (null_text is not None and not (out / NULL_TEXT).exists()):
        _save(out / ITEMS, {"items": torch.from_numpy(items.astype(np.int64))})
        if null_text is not None:
            _save(out / NULL_TEXT, null_text)
        _write_json(out / MANIFEST, manifest)
    if rank == 0 and overwrite:   # leftovers of an earlier build that the new manifest does not name
        for p in out.iterdir():
            m = SHARD_PATTERN.match(p.name)
            if m and int(m.group(1)) >= manifest["num_shards"]:
                p.unlink()
        if null_text is None and (out / NULL_TEXT).exists():
            (out / NULL_TEXT).unlink()


def _shard_metadata(path: Path) -> Optional[dict]:
    """The metadata of a shard file, or None when it is missing or unreadable."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # noqa: BLE001 - a torn or foreign file is rewritten, whatever the parser says
        return None


def _text_tensors(text, captions: list[str], dtype: torch.dtype) -> list[dict]:
    """Per caption: `text` (L, D), `text_mask` (L,) and, with a pooled encoder, `pooled` (P,)."""
    emb = text.encode(captions)
    out = []
    for j in range(len(captions)):
        one = {"text": _own(emb.hidden_states[j], dtype), "text_mask": _own(emb.attention_mask[j])}
        if emb.pooled is not None:
            one["pooled"] = _own(emb.pooled[j], dtype)
        out.append(one)
    return out


def _build(dataset: OSPDataset, out_dir: PathLike, *, encode: Callable[[int, tuple], tuple], vae: dict, text,
           shard_size: int, rank: int, world: int, dtype: torch.dtype, sample_seed: Optional[int],
           overwrite: bool, progress: bool) -> ExtractResult:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a world of {world} processes")
    assignment = dataset.assignment
    items = np.flatnonzero(assignment.bucket_of >= 0)
    if len(items) == 0:
        raise ValueError("the bucket assignment keeps no item, so there is nothing to cache; see "
                         "`osp data buckets` for the drop reasons")
    out = Path(out_dir)
    manifest = _manifest(dataset, shard_size, len(items), vae, dtype, _describe_text(text), sample_seed)
    null_text = None if text is None else _text_tensors(text, [dataset.config.dropout_text], dtype)[0]
    _prepare_folder(out, manifest, items, null_text, overwrite, rank)
    digest = _digest(manifest)
    result = ExtractResult(out, rank, world)
    mine = range(rank, manifest["num_shards"], world)
    for done, s in enumerate(mine, 1):
        path = out / shard_name(s)
        meta = _shard_metadata(path)
        if meta is not None and meta.get("manifest") == digest and meta.get("shard") == str(s):
            result.skipped.append(s)
            result.failed += [tuple(f) for f in json.loads(meta["failed"])]
            continue
        start = time.perf_counter()
        tensors, stored, failed = {}, [], []
        for i in items[s * shard_size:(s + 1) * shard_size].tolist():
            shape = assignment.shapes[assignment.bucket_of[i]]
            try:
                mean, logvar = encode(i, shape)
            except _ItemFailed as e:
                failed.append((i, dataset.anno.paths[i], str(e)))
                continue
            tensors[f"{i}.latent_mean"], tensors[f"{i}.latent_logvar"] = _own(mean, dtype), _own(logvar, dtype)
            if text is not None:
                for j, one in enumerate(_text_tensors(text, dataset.anno.captions_of(i), dtype)):
                    tensors.update({f"{i}.{name}.{j}": t for name, t in one.items()})
            stored.append(i)
        metadata = {"format": FORMAT, "manifest": digest, "shard": str(s), "items": json.dumps(stored),
                    "paths": json.dumps([dataset.anno.paths[i] for i in stored]),
                    "buckets": json.dumps([assignment.key(assignment.shapes[assignment.bucket_of[i]])
                                           for i in stored]),
                    "failed": json.dumps(failed)}
        _save(path, tensors, metadata)
        result.written.append(s)
        result.items += len(stored)
        result.failed += failed
        if progress:
            print(f"[extract {rank}/{world}] {shard_name(s)}: {len(stored)} items, {len(failed)} unreadable, "
                  f"{time.perf_counter() - start:.1f} s ({done}/{len(mine)} of this rank's shards)",
                  file=sys.stderr, flush=True)
    return result


def extract_cache(dataset: OSPDataset, out_dir: PathLike, *, vae, text=None, shard_size: int = 64, rank: int = 0,
                  world: int = 1, chunk_frames: Optional[int] = None, dtype: torch.dtype = torch.float32,
                  progress: bool = True, overwrite: bool = False) -> ExtractResult:
    """Encode this rank's shards of `dataset` into a cache folder (see the module docstring for the layout).

    Every kept item is read with `dataset.load_video` at its bucket's shape as at epoch 0 (the cache freezes that
    crop; the dataset's epoch is restored afterwards) and encoded by the WF-VAE `vae` (`chunk_frames`: video frames
    per chunk); the posterior mean and logvar are stored in `dtype`. With a `TextConditioner` `text`, every caption
    of the item is encoded too. Unreadable media are recorded in the shard's `failed` metadata, never raised.
    Raises CacheError when `out_dir` holds a cache built differently, unless `overwrite` (which rebuilds it;
    shards whose metadata names the current manifest are reused either way).
    """
    r, s = vae.temporal_compression, vae.spatial_compression
    assignment = dataset.assignment
    used = [assignment.shapes[b] for b in np.unique(assignment.bucket_of[assignment.bucket_of >= 0])]
    bad = [assignment.key(shape) for shape in used if (shape[0] - 1) % r or shape[1] % s or shape[2] % s]
    if bad:
        raise ValueError(f"bucket(s) {', '.join(bad)} do not fit the WF-VAE (frames 1 + {r}*n, height and width "
                         f"multiples of {s}); set ae_stride_t={r} and a hw_stride that is a multiple of {s} in the "
                         "bucket config")
    device = next(vae.parameters()).device

    def encode(i: int, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            video = dataset.load_video(i, shape)
        except (OSError, VideoReadError, ValueError) as e:
            raise _ItemFailed(str(e)) from e
        posterior = vae.encode(video[None].to(device), chunk_frames=chunk_frames)
        return posterior.mean[0], posterior.logvar[0]

    description = {"config": dataclasses.asdict(vae.config), "dtype": _dtype_name(vae.dtype),
                   "weights": weights_fingerprint(vae)}
    epoch = dataset.epoch
    dataset.set_epoch(0)
    try:
        return _build(dataset, out_dir, encode=encode, vae=description, text=text, shard_size=shard_size, rank=rank,
                      world=world, dtype=dtype, sample_seed=dataset.config.seed, overwrite=overwrite,
                      progress=progress)
    finally:
        dataset.set_epoch(epoch)


def pack_per_video_latents(src_dir: PathLike, dataset: OSPDataset, out_dir: PathLike, shard_size: int = 64, *,
                           overwrite: bool = False, progress: bool = True) -> ExtractResult:
    """Pack the MindSpore extractor's per-video files (`<name>.safetensors` with `latent_mean`/`latent_logvar`,
    named by `per_video_name`) into a cache without text, so training can read them.

    That extractor reads the first frames of a video and resizes by the short side, not as the dataset does: a
    file whose latent shape is not its bucket's (C, 1 + (T-1)/ae_stride_t, H/ae_stride_hw, W/ae_stride_hw) is
    recorded as failed with the expected shape, as is a missing or unreadable file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    src = Path(src_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"per-video latent folder {src} does not exist (the --out of "
                                "`python -m mindspeed_mm.osp.vae_ms.extract`)")
    rt, rs = dataset.buckets.ae_stride_t, dataset.buckets.ae_stride_hw

    def encode(i: int, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        path = src / per_video_name(dataset.anno.paths[i])
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise _ItemFailed(f"no readable per-video latents {path} ({e})") from e
        if "latent_mean" not in tensors or "latent_logvar" not in tensors:
            raise _ItemFailed(f"{path} lacks latent_mean / latent_logvar")
        mean, logvar = tensors["latent_mean"], tensors["latent_logvar"]
        t, h, w = shape
        expected = ((t - 1) // rt + 1, h // rs, w // rs)
        if mean.dim() != 4 or tuple(mean.shape[1:]) != expected or logvar.shape != mean.shape:
            raise _ItemFailed(f"{path.name}: latents {tuple(mean.shape)} but bucket {dataset.assignment.key(shape)} "
                              f"needs (C, {', '.join(map(str, expected))}); re-extract the video at {t} frames, "
                              f"{h}x{w}")
        return mean, logvar

    return _build(dataset, out_dir, encode=encode, vae={"packed_from": str(src.resolve())}, text=None,
                  shard_size=shard_size, rank=0, world=1, dtype=torch.float32, sample_seed=None,
                  overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class _Shard:
    handle: object
    keys: set
    failed: dict    # item -> (path, reason)


class LatentCache:
    """Reads a cache folder. Shards are opened on first use (at most `max_open` per process at a time), so a
    LatentCache is cheap to build and safe to hand to DataLoader workers."""

    def __init__(self, root: PathLike, max_open: int = 32):
        from safetensors.torch import load_file

        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.digest = _digest(self.manifest)
        self.items = load_file(str(self.root / ITEMS))["items"].numpy()
        self.max_open = max_open
        self._open: OrderedDict[int, _Shard] = OrderedDict()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}   # open files stay with their process

    def _shard_index(self, item: int) -> Optional[int]:
        p = int(np.searchsorted(self.items, item))
        if p < len(self.items) and self.items[p] == item:
            return p // self.manifest["shard_size"]
        return None

    def _shard(self, s: int) -> Optional[_Shard]:
        """Shard s, or None while it is missing or from another build (not cached: an extraction may finish it)."""
        from safetensors import safe_open

        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        path = self.root / shard_name(s)
        if not path.is_file():
            return None
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for torn files
            raise CacheError(f"{path} is unreadable ({e}); delete it and rerun `osp data extract`") from e
        meta = handle.metadata() or {}
        if meta.get("manifest") != self.digest:
            return None
        shard = _Shard(handle, set(handle.keys()), {int(i): (p, r) for i, p, r in json.loads(meta["failed"])})
        self._open[s] = shard
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return shard

    def __contains__(self, item: int) -> bool:
        s = self._shard_index(int(item))
        shard = None if s is None else self._shard(s)
        return shard is not None and f"{int(item)}.latent_mean" in shard.keys

    def failure(self, item: int) -> Optional[tuple[str, str]]:
        """(path, reason) when the item's media could not be read at extraction, else None."""
        s = self._shard_index(int(item))
        shard = None if s is None else self._shard(s)
        return None if shard is None else shard.failed.get(int(item))

    def load(self, item: int) -> dict:
        """dict(latent_mean, latent_logvar, texts=[(hidden (L, D), mask (L,), pooled (P,) or None)] per caption)."""
        item = int(item)
        s = self._shard_index(item)
        if s is None:
            raise CacheError(f"item {item} is not in the cache {self.root}: the bucket assignment it was built with "
                             "dropped it")
        shard = self._shard(s)
        if shard is None:
            raise CacheError(f"item {item} is not extracted yet: {self.root / shard_name(s)} is missing or from "
                             f"another build; run (or finish) `osp data extract` into {self.root}")
        if item in shard.failed:
            path, reason = shard.failed[item]
            raise CacheError(f"item {item} ({path}) could not be read when the cache was built ({reason}); fix the "
                             f"file, delete {shard_name(s)} and rerun `osp data extract`")
        get = shard.handle.get_tensor
        texts, j = [], 0
        while f"{item}.text.{j}" in shard.keys:
            pooled = f"{item}.pooled.{j}"
            texts.append((get(f"{item}.text.{j}"), get(f"{item}.text_mask.{j}"),
                          get(pooled) if pooled in shard.keys else None))
            j += 1
        return {"latent_mean": get(f"{item}.latent_mean"), "latent_logvar": get(f"{item}.latent_logvar"),
                "texts": texts}

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(hidden, mask, pooled or None) of the dropout caption."""
        from safetensors.torch import load_file

        if self.manifest["null_text"] is None:
            raise CacheError(f"the cache {self.root} holds no text embeddings; rebuild it with `osp data extract "
                             "--text-encoder DIR --tokenizer DIR`, or encode captions during training")
        t = load_file(str(self.root / NULL_TEXT))
        return t["text"], t["text_mask"], t.get("pooled")


class CachedDataset(torch.utils.data.Dataset):
    """`(index, bucket)` -> dict(latent (C, t, h, w) float32, caption, index, bucket, failed, and with cached text:
    text (L, D), text_mask (L,), pooled (P,) when present), the keys OSPDataset takes.

    `latent` is mean + exp(logvar / 2) * noise, the noise drawn from (seed, epoch, item), or the mean when
    `sample_latents=False`. One caption per epoch, and caption dropout (`dataset.config.caption_dropout`)
    substitutes the cached null text, with the same draws as OSPDataset. An item whose media failed at extraction
    is replaced by another item of its bucket and reported in `failed`, as OSPDataset does.
    """

    def __init__(self, cache: LatentCache, dataset: OSPDataset, *, sample_latents: bool = True):
        m = cache.manifest
        if m["bucket_fingerprint"] != bucket_fingerprint(dataset.assignment) or m["num_items"] != len(dataset):
            diffs = _differences(m["buckets"], _normalized(dataclasses.asdict(dataset.buckets)), "buckets")
            if m["num_items"] != len(dataset):
                diffs.append(f"items: {m['num_items']} in the cache, {len(dataset)} now")
            raise CacheError(f"the cache {cache.root} was built with other buckets "
                             f"({'; '.join(diffs) or 'same config: the global batch or the annotations differ'}); "
                             "rebuild it with `osp data extract` using training's data, bucket config and global "
                             "batch, or point training at the matching cache")
        cfg = dataset.config
        if m["null_text"] is not None and cfg.caption_dropout > 0 and m["null_text"]["caption"] != cfg.dropout_text:
            raise CacheError(f"the cache's null text is the embedding of {m['null_text']['caption']!r} but "
                             f"dropout_text is {cfg.dropout_text!r}; set dropout_text to match or rebuild the cache")
        self.cache, self.dataset, self.sample_latents = cache, dataset, sample_latents
        self.null = cache.null_text() if m["null_text"] is not None else None
        self.epoch = 0
        bucket_of = dataset.assignment.bucket_of
        self._members = np.argsort(bucket_of, kind="stable")
        self._starts = np.searchsorted(bucket_of[self._members], np.arange(len(dataset.assignment.shapes) + 1))

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, index: int, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.dataset.config.seed, self.epoch, int(index), salt])

    def _replacement(self, bucket: int, index: int, attempt: int) -> int:
        members = self._members[self._starts[bucket]:self._starts[bucket + 1]]
        return int(members[self._rng(index, 100 + attempt).integers(len(members))])

    def __getitem__(self, key) -> dict:
        index, bucket = (int(k) for k in key)
        assignment = self.dataset.assignment
        if not 0 <= bucket < len(assignment.shapes) or assignment.bucket_of[index] != bucket:
            raise IndexError(f"item {index} is not in bucket {bucket}; ask for the (index, bucket) pairs the "
                             "sampler yields")
        failed, current = [], index
        for attempt in range(self.dataset.config.max_retries + 1):
            bad = self.cache.failure(current)
            if bad is None:
                break
            failed.append(bad)
            current = self._replacement(bucket, index, attempt)
        else:
            raise DataError(f"{len(failed)} items of bucket {assignment.key(assignment.shapes[bucket])} in a row "
                            f"were unreadable at extraction; first: {failed[0][0]} ({failed[0][1]})")
        entry = self.cache.load(current)
        mean = entry["latent_mean"].float()
        latent = mean
        if self.sample_latents:
            seed = int(self._rng(current, 2).integers(2 ** 63))
            noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
            latent = mean + torch.exp(0.5 * entry["latent_logvar"].float()) * noise
        captions = self.dataset.anno.captions_of(current)
        rng = self._rng(current, 1)
        j = int(rng.integers(len(captions)))
        drop = self.dataset.config.caption_dropout > 0 and rng.random() < self.dataset.config.caption_dropout
        sample = {"latent": latent, "caption": self.dataset.config.dropout_text if drop else captions[j],
                  "index": current, "bucket": bucket, "failed": failed}
        if self.null is not None:
            hidden, mask, pooled = self.null if drop else entry["texts"][j]
            sample.update(text=hidden, text_mask=mask)
            if pooled is not None:
                sample["pooled"] = pooled
        return sample


def collate_cached(samples: list[dict]) -> dict:
    """Stack one micro-batch of CachedDataset samples (one bucket, so one latent shape)."""
    shapes = {tuple(s["latent"].shape) for s in samples}
    if len(shapes) != 1:
        raise RuntimeError(f"a micro-batch mixes latent shapes {sorted(shapes)}; batches must come from one bucket")
    batch = {"caption": [s["caption"] for s in samples], "index": torch.tensor([s["index"] for s in samples]),
             "bucket": torch.tensor([s["bucket"] for s in samples]),
             "failed": [f for s in samples for f in s["failed"]]}
    for key in ("latent", "text", "text_mask", "pooled"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch
