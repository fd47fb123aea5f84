"""Open-Sora Plan annotations as users keep them, held in compact arrays.

Accepted sources (`load_annotations(source)`):
- `data.txt`: one `<root>,<annotation>` per line; item paths are joined to `root`.
- one annotation file: a `.json` list or a `.jsonl` file (one object per line); paths are joined to its folder.
- MindSpeed-MM's `data.json` (a dict with `dataset_param`): `basic_parameters.data_path` (a data.txt or an
  annotation) and `data_folder` (prefixed to relative roots) are read; its preprocessing fields map onto
  `BucketConfig` (see `buckets.bucket_config_from_mindspeed`).
`.pkl` annotations are refused: unpickling runs arbitrary code and keeps every item as a Python object.

Item keys: `path`, `cap` (string or list: one is picked per epoch), `resolution` {height, width}, `num_frames`,
`fps`, `cut` [start, end], `crop` [sx, ex, sy, ey], `aesthetic` / `aes`. Images (jpg, png, ...) and videos mix
in one dataset. Files of other types are listed in `skipped`, never a crash.

Memory: an annotation list of millions of items is parsed once and kept as numpy arrays (strings as one byte
buffer plus offsets), so DataLoader workers share pages instead of copying per-item dicts (Python dicts touch
reference counts on every read, which un-shares fork memory: the official loaders' RAM growth).
"""
from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from mindspeed_mm.osp.data.video_io import VIDEO_EXTS

PathLike = Union[str, os.PathLike]
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class AnnotationError(ValueError):
    """An annotation source that cannot be read; the message names the file and the fix."""


class StringColumn:
    """Many strings as one UTF-8 byte buffer and an offsets array (no Python object per string)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> "StringColumn":
        buf, offsets = bytearray(), array("q", [0])
        for s in strings:
            buf += s.encode("utf-8")
            offsets.append(len(buf))
        return cls(np.frombuffer(bytes(buf), dtype=np.uint8), np.asarray(offsets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes + self.offsets.nbytes


@dataclass
class Annotations:
    """All items of a dataset. Missing numbers are -1 (ints) or NaN (floats)."""

    paths: StringColumn                 # resolved file paths
    captions: StringColumn              # every caption of every item, in item order
    caption_offsets: np.ndarray         # int64 (n+1,): item i owns captions[caption_offsets[i]:caption_offsets[i+1]]
    is_image: np.ndarray                # bool (n,)
    height: np.ndarray                  # int32 (n,), from `resolution`
    width: np.ndarray                   # int32 (n,)
    num_frames: np.ndarray              # int32 (n,); 1 for images
    fps: np.ndarray                     # float32 (n,)
    cut: np.ndarray                     # int32 (n, 2) [start, end) frame range, -1 when absent
    crop: np.ndarray                    # int32 (n, 4) [sx, ex, sy, ey] pixel box, -1 when absent
    aesthetic: np.ndarray               # float32 (n,)
    source: np.ndarray                  # int16 (n,): index into `sources`
    sources: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, reason): unsupported file types

    def __len__(self) -> int:
        return len(self.paths)

    def captions_of(self, i: int) -> list[str]:
        return [self.captions[j] for j in range(self.caption_offsets[i], self.caption_offsets[i + 1])]

    def num_captions(self) -> np.ndarray:
        return np.diff(self.caption_offsets)

    def item(self, i: int) -> dict:
        """Item `i` as an annotation dict (for messages and tools; training reads the arrays)."""
        out = {"path": self.paths[i], "cap": self.captions_of(i), "is_image": bool(self.is_image[i])}
        if self.height[i] > 0:
            out["resolution"] = {"height": int(self.height[i]), "width": int(self.width[i])}
        if self.num_frames[i] > 0:
            out["num_frames"] = int(self.num_frames[i])
        if not np.isnan(self.fps[i]):
            out["fps"] = float(self.fps[i])
        if self.cut[i, 0] >= 0:
            out["cut"] = self.cut[i].tolist()
        if self.crop[i, 0] >= 0:
            out["crop"] = self.crop[i].tolist()
        if not np.isnan(self.aesthetic[i]):
            out["aesthetic"] = float(self.aesthetic[i])
        return out

    @property
    def nbytes(self) -> int:
        arrays = (self.caption_offsets, self.is_image, self.height, self.width, self.num_frames, self.fps,
                  self.cut, self.crop, self.aesthetic, self.source)
        return self.paths.nbytes + self.captions.nbytes + sum(a.nbytes for a in arrays)


def media_kind(path: str) -> Optional[str]:
    """'video', 'image', or None for a file type we do not train on."""
    ext = os.path.splitext(path)[1].lower()
    return "video" if ext in VIDEO_EXTS else "image" if ext in IMAGE_EXTS else None


# ---------------------------------------------------------------------------------------------------- sources
def annotation_files(source: PathLike) -> list[tuple[str, Path]]:
    """The `(root, annotation file)` pairs a source names (data.txt, an annotation, or MindSpeed-MM data.json)."""
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"dataset source not found: {source} (expected a data.txt, an annotation "
                                ".json/.jsonl, or MindSpeed-MM's data.json)")
    suffix = source.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        raise AnnotationError(_PKL_MESSAGE.format(path=source))
    if suffix == ".txt":
        return _read_data_txt(source)
    if suffix == ".json" and _is_mindspeed_data_json(source):
        return _mindspeed_sources(source)
    if suffix in (".json", ".jsonl"):
        return [(str(source.parent), source)]
    raise AnnotationError(f"{source}: unknown dataset source type {suffix!r}; give a data.txt "
                          "(`<root>,<annotation>` lines), an annotation .json/.jsonl, or MindSpeed-MM's data.json")


_PKL_MESSAGE = (
    "{path}: .pkl annotations are not read: unpickling can run arbitrary code, and it loads every item as a "
    "Python object in every process. Convert it once, in an environment you trust, with: python -c \"import "
    "pickle, json; json.dump(pickle.load(open('{path}', 'rb')), open('{path}'.rsplit('.', 1)[0] + '.json', 'w'))\"")


def _read_data_txt(path: Path, root_base: Optional[str] = None) -> list[tuple[str, Path]]:
    """Relative roots are taken from `root_base` (MindSpeed-MM's data_folder), else from the data.txt's folder."""
    base = root_base or str(path.parent)
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.rsplit(",", 1)]
        if len(parts) != 2 or not all(parts):
            raise AnnotationError(f"{path}:{lineno}: expected `<root>,<annotation file>`, got {line!r}")
        root, anno = parts
        anno_path = Path(anno) if os.path.isabs(anno) else path.parent / anno
        if not anno_path.is_file():
            raise FileNotFoundError(f"{path}:{lineno}: annotation file {anno_path} does not exist")
        if anno_path.suffix.lower() in (".pkl", ".pickle"):
            raise AnnotationError(_PKL_MESSAGE.format(path=anno_path))
        root_path = root if os.path.isabs(root) else os.path.join(base, root)
        pairs.append((root_path, anno_path))
    if not pairs:
        raise AnnotationError(f"{path}: no `<root>,<annotation>` lines")
    return pairs


def _is_mindspeed_data_json(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"{") and b'"dataset_param"' in head


def read_mindspeed_data_json(path: PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: not valid JSON ({e})") from e
    if "dataset_param" not in config:
        raise AnnotationError(f"{path}: no `dataset_param` section; not a MindSpeed-MM data.json")
    return config


def _mindspeed_sources(path: Path) -> list[tuple[str, Path]]:
    basic = read_mindspeed_data_json(path)["dataset_param"].get("basic_parameters", {})
    data_path = basic.get("data_path")
    if not data_path:
        raise AnnotationError(f"{path}: dataset_param.basic_parameters.data_path is missing")
    data_path = Path(data_path) if os.path.isabs(data_path) else path.parent / data_path
    folder = basic.get("data_folder") or None
    if data_path.suffix.lower() == ".txt":
        return _read_data_txt(data_path, folder)
    return [(folder or str(data_path.parent), anno) for _, anno in annotation_files(data_path)]


def _iter_items(anno: Path) -> Iterator[dict]:
    if anno.suffix.lower() == ".jsonl":
        with open(anno, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise AnnotationError(f"{anno}:{lineno}: not valid JSON ({e})") from e
        return
    with open(anno, encoding="utf-8") as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{anno}: not valid JSON ({e}); a .json annotation is one list of items "
                                  "(use .jsonl for one item per line)") from e
    if not isinstance(items, list):
        raise AnnotationError(f"{anno}: expected a JSON list of items, got {type(items).__name__}")
    yield from items


# ---------------------------------------------------------------------------------------------------- building
def _int(value, default: int = -1) -> int:
    return default if value is None else int(value)


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _captions(cap) -> list[str]:
    if cap is None:
        return []
    return [c for c in (cap if isinstance(cap, (list, tuple)) else [cap]) if isinstance(c, str)]


def load_annotations(source: PathLike) -> Annotations:
    """Read every annotation a source names into compact arrays (see the module docstring for formats)."""
    pairs = annotation_files(source)
    paths, captions, cap_counts = [], [], array("q", [0])
    ints = {k: array("i") for k in ("height", "width", "num_frames", "source")}
    floats = {k: array("f") for k in ("fps", "aesthetic")}
    kinds, cuts, crops, skipped = array("b"), array("i"), array("i"), []
    for src_index, (root, anno) in enumerate(pairs):
        for n, raw in enumerate(_iter_items(anno)):
            if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
                raise AnnotationError(f"{anno}: item {n} has no string `path`: {str(raw)[:120]}")
            path = os.path.join(root, raw["path"])
            kind = media_kind(path)
            if kind is None:
                skipped.append((path, f"unsupported file type {os.path.splitext(path)[1] or '(none)'!r}; "
                                      f"videos: {', '.join(VIDEO_EXTS)}; images: {', '.join(IMAGE_EXTS)}"))
                continue
            try:
                res = raw.get("resolution") or {}
                height, width = _int(res.get("height")), _int(res.get("width"))
                num_frames = 1 if kind == "image" else _int(raw.get("num_frames"))
                cut = raw.get("cut") or [-1, -1]
                crop = raw.get("crop") or [-1, -1, -1, -1]
                if len(cut) != 2 or len(crop) != 4:
                    raise ValueError("`cut` must be [start, end] and `crop` [sx, ex, sy, ey]")
                aes = raw.get("aesthetic", raw.get("aes"))
                fps = _float(raw.get("fps"))
                cut, crop = [_int(c) for c in cut], [_int(c) for c in crop]
            except (TypeError, ValueError, AttributeError) as e:
                raise AnnotationError(f"{anno}: item {n} ({raw['path']}): {e}") from e
            paths.append(path)
            caps = _captions(raw.get("cap"))
            captions.extend(caps)
            cap_counts.append(cap_counts[-1] + len(caps))
            kinds.append(kind == "image")
            ints["height"].append(height)
            ints["width"].append(width)
            ints["num_frames"].append(num_frames)
            ints["source"].append(src_index)
            floats["fps"].append(fps)
            floats["aesthetic"].append(_float(aes))
            cuts.extend(cut)
            crops.extend(crop)
    return Annotations(
        paths=StringColumn.from_strings(paths), captions=StringColumn.from_strings(captions),
        caption_offsets=np.asarray(cap_counts, dtype=np.int64), is_image=np.asarray(kinds, dtype=bool),
        height=np.asarray(ints["height"], dtype=np.int32), width=np.asarray(ints["width"], dtype=np.int32),
        num_frames=np.asarray(ints["num_frames"], dtype=np.int32),
        fps=np.asarray(floats["fps"], dtype=np.float32), cut=np.asarray(cuts, dtype=np.int32).reshape(-1, 2),
        crop=np.asarray(crops, dtype=np.int32).reshape(-1, 4),
        aesthetic=np.asarray(floats["aesthetic"], dtype=np.float32),
        source=np.asarray(ints["source"], dtype=np.int16), sources=[str(a) for _, a in pairs], skipped=skipped)


def summarize_skipped(skipped: Sequence[tuple[str, str]], limit: int = 5) -> str:
    """One line naming how many files were skipped and a few of them."""
    if not skipped:
        return ""
    names = ", ".join(os.path.basename(p) for p, _ in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} item(s) of unsupported type: {names}{more}"
