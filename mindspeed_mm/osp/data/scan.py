"""`osp data scan FOLDER --output ANNOTATION.json`: build an Open-Sora Plan annotation from a folder of media.

Each item: `{"path": relative posix path, "cap": str (list of str when several), "resolution": {"height", "width"},
"num_frames": N, "fps": F}`; images have `num_frames` 1 and no `fps`. Captions come from a sidecar `.txt` next to
the file (`clip.mp4` -> `clip.txt`, one caption per non-empty line) or from `--captions FILE.csv` (columns
`path,cap`; the CSV wins over sidecars). Unknown, unreadable and uncaptioned files are skipped and reported.
"""
from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from mindspeed_mm.osp.files import check_target, replace_file

PathLike = Union[str, os.PathLike]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
ANNOTATION_EXTS = (".json", ".jsonl")
MISSING_CAPTION_MODES = ("skip", "error", "empty")
UNSUPPORTED, NO_CAPTION, UNREADABLE = "unsupported file type", "no caption", "unreadable"
SHOWN_PER_REASON = 5


class MissingCaptionError(ValueError):
    """`missing_caption="error"` and some media have no caption."""


@dataclass
class ScanResult:
    items: list[dict]
    skipped: list[tuple[str, str]]  # (relative path, reason); reason is UNSUPPORTED, NO_CAPTION or "unreadable: ..."
    uncaptioned: list[str] = field(default_factory=list)  # media without caption (skipped or given "")


def _video_exts() -> tuple[str, ...]:
    from mindspeed_mm.osp.data.video_io import VIDEO_EXTS
    return VIDEO_EXTS


def _list_files(folder: Path) -> list[str]:
    """Relative posix paths of all files under `folder`, sorted; hidden files and folders left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = Path(root).relative_to(folder)
        found += [(rel_root / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(found)


def _as_caption(texts: list[str]) -> Union[str, list[str], None]:
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        return None
    return texts[0] if len(texts) == 1 else texts


def read_captions_csv(path: PathLike) -> dict[str, Union[str, list[str]]]:
    """`path,cap` rows -> {relative posix path: caption}; several rows for one path give a list."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"path", "cap"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: the captions CSV needs a header with columns path,cap; "
                             f"missing {', '.join(sorted(missing))} (found: {', '.join(reader.fieldnames or [])})")
        texts: dict[str, list[str]] = defaultdict(list)
        for row in reader:
            if row["path"]:
                texts[Path(row["path"].strip()).as_posix()].append(row["cap"] or "")
    return {p: cap for p, t in texts.items() if (cap := _as_caption(t)) is not None}


def _sidecar_caption(media: Path) -> Union[str, list[str], None]:
    txt = media.with_suffix(".txt")
    if not txt.is_file():
        return None
    return _as_caption(txt.read_text(encoding="utf-8", errors="replace").splitlines())


def _probe(folder: Path, rel: str, is_video: bool) -> Union[dict, str]:
    """Probed fields of one file, or the reason it cannot be read."""
    path = folder / rel
    try:
        if is_video:
            from mindspeed_mm.osp.data.video_io import probe
            info = probe(path)
            if not info.fps or info.fps <= 0:
                return f"{UNREADABLE}: no frame rate in the file"
            return {"resolution": {"height": info.height, "width": info.width}, "num_frames": info.num_frames,
                    "fps": float(info.fps)}
        from PIL import Image
        with Image.open(path) as image:
            width, height = image.size
        return {"resolution": {"height": height, "width": width}, "num_frames": 1}
    except Exception as e:  # any reader error means "this file is unusable", never a crash of the whole scan
        message = str(e) or type(e).__name__
        prefix = f"{path}: "
        return f"{UNREADABLE}: {message[len(prefix):] if message.startswith(prefix) else message}"


def scan_folder(folder: PathLike, *, captions_csv: Optional[PathLike] = None, missing_caption: str = "skip",
                workers: int = 1, progress: bool = False) -> ScanResult:
    """Find, caption and probe the media under `folder`; items and skips come in sorted path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    if missing_caption not in MISSING_CAPTION_MODES:
        raise ValueError(f"missing_caption must be one of {', '.join(MISSING_CAPTION_MODES)}, got {missing_caption!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    csv_captions = read_captions_csv(captions_csv) if captions_csv is not None else {}
    csv_rel = None
    if captions_csv is not None and Path(captions_csv).resolve().is_relative_to(folder.resolve()):
        csv_rel = Path(captions_csv).resolve().relative_to(folder.resolve()).as_posix()

    video_exts = _video_exts()
    files = _list_files(folder)
    stems = {str(Path(f).with_suffix("")) for f in files if Path(f).suffix.lower() in video_exts + IMAGE_EXTS}
    skipped: dict[str, str] = {}
    uncaptioned: list[str] = []
    todo: list[tuple[str, bool, Union[str, list[str]]]] = []  # (path, is video, caption)
    for rel in files:
        suffix = Path(rel).suffix.lower()
        if rel == csv_rel or (suffix == ".txt" and str(Path(rel).with_suffix("")) in stems):
            continue  # caption files
        if suffix not in video_exts + IMAGE_EXTS:
            skipped[rel] = UNSUPPORTED
            continue
        cap = csv_captions.get(rel)
        if cap is None:
            cap = _sidecar_caption(folder / rel)
        if cap is None:
            uncaptioned.append(rel)
            if missing_caption == "skip":
                skipped[rel] = NO_CAPTION
                continue
            cap = ""
        todo.append((rel, suffix in video_exts, cap))
    if missing_caption == "error" and uncaptioned:
        shown = ", ".join(uncaptioned[:SHOWN_PER_REASON]) + (" ..." if len(uncaptioned) > SHOWN_PER_REASON else "")
        raise MissingCaptionError(f"{len(uncaptioned)} media file(s) have no caption (no sidecar .txt"
                                  f"{' and not in the captions CSV' if captions_csv else ''}): {shown}")

    from tqdm import tqdm
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probed = pool.map(lambda job: _probe(folder, job[0], job[1]), todo)
        probed = list(tqdm(probed, total=len(todo), desc="scanning", unit="file", disable=not progress))
    items = []
    for (rel, _, cap), fields in zip(todo, probed):
        if isinstance(fields, str):
            skipped[rel] = fields
        else:
            items.append({"path": rel, "cap": cap, **fields})
    return ScanResult(items, sorted(skipped.items()), uncaptioned)


def _annotation_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in ANNOTATION_EXTS:
        raise ValueError(f"{path}: the annotation must end in .json (a JSON list) or .jsonl (one object per line)")
    return suffix


def write_annotation(path: PathLike, items: Sequence[dict], overwrite: bool = False) -> Path:
    """Write items as a JSON list (.json) or one object per line (.jsonl), atomically."""
    path = Path(path)
    suffix = _annotation_format(path)
    check_target(path, overwrite)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            if suffix == ".jsonl":
                f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
            else:
                json.dump(list(items), f, ensure_ascii=False, indent=2)
                f.write("\n")
    replace_file(path, write)
    return path
