"""`osp data scan FOLDER --output ANNOTATION.json`: build an Open-Sora Plan annotation from a folder of media.

Each item: `{"path": relative posix path, "cap": str (list of str when several), "resolution": {"height", "width"},
"num_frames": N, "fps": F}`; images have `num_frames` 1 and no `fps`. Captions come from a sidecar `.txt` next to
the file (`clip.mp4` -> `clip.txt`, one caption per non-empty line) or from `--captions FILE.csv` (columns
`path,cap`; the CSV wins over sidecars). Unknown, unreadable and uncaptioned files are skipped and reported.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
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


# ---------------------------------------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register_scan(data_subparsers) -> argparse.ArgumentParser:
    """Add `scan` to the subparsers of `osp data`."""
    p = data_subparsers.add_parser(
        "scan", help="build an annotation (.json/.jsonl) from a folder of videos and images",
        description="Probe every video and image under FOLDER and write an Open-Sora Plan annotation: path "
                    "(relative to FOLDER), cap, resolution, num_frames, fps. Captions come from a sidecar .txt "
                    "(clip.mp4 -> clip.txt, one caption per line) or from --captions. Unknown, unreadable and "
                    "uncaptioned files are skipped and listed.")
    p.add_argument("folder", metavar="FOLDER", help="folder with the media (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="ANNOTATION",
                   help="annotation to write: .json (a JSON list) or .jsonl (one item per line)")
    p.add_argument("--captions", metavar="FILE.csv",
                   help="CSV with columns path,cap (path relative to FOLDER; several rows give several captions); "
                        "wins over sidecar .txt files")
    p.add_argument("--missing-caption", choices=MISSING_CAPTION_MODES, default="skip",
                   help="media without a caption: leave out (skip, default), stop with an error, or keep with an "
                        "empty caption")
    p.add_argument("--workers", type=_positive_int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="files probed in parallel (default: min(4, CPU count))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_scan)
    return p


def _argument_error(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the arguments, checked before any file is probed; None when all is well."""
    folder, output = Path(args.folder), Path(args.output)
    if not folder.is_dir():
        return f"FOLDER {folder} is not an existing folder"
    if args.captions is not None and not Path(args.captions).is_file():
        return f"--captions {args.captions}: no such file"
    if output.suffix.lower() not in ANNOTATION_EXTS:
        return f"--output {output}: must end in .json (a JSON list) or .jsonl (one item per line)"
    if output.is_dir():
        return f"--output {output} is a folder; give a file name ending in .json or .jsonl"
    if output.exists() and not args.overwrite:
        return f"--output {output} already exists; pass --overwrite to replace it or choose another path"
    parent = output.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"--output {output}: cannot write in {parent}"
    return None


def _summary(result: ScanResult, missing_caption: str) -> list[str]:
    videos = sum("fps" in item for item in result.items)
    lines = [f"videos:  {videos}", f"images:  {len(result.items) - videos}", f"skipped: {len(result.skipped)}"]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, reason in result.skipped:
        category, _, detail = reason.partition(": ")
        by_reason[category].append(f"{path}: {detail}" if detail else path)
    for reason, paths in sorted(by_reason.items()):
        lines.append(f"  {reason}: {len(paths)}")
        lines += [f"    {p}" for p in paths[:SHOWN_PER_REASON]]
        if len(paths) > SHOWN_PER_REASON:
            lines.append(f"    ... and {len(paths) - SHOWN_PER_REASON} more")
    if missing_caption == "empty" and result.uncaptioned:
        lines.append(f"written with an empty caption (no caption found): {len(result.uncaptioned)}")
        lines += [f"  {p}" for p in result.uncaptioned[:SHOWN_PER_REASON]]
    return lines


def run_scan(args: argparse.Namespace) -> int:
    """Exit codes: 0 written; 2 bad arguments (nothing probed); 1 nothing usable or captions missing (--missing-caption
    error)."""
    def fail(message: str, code: int) -> int:
        print(f"osp data scan: error: {message}", file=sys.stderr)
        return code

    problem = _argument_error(args)
    if problem:
        return fail(problem, 2)
    try:
        result = scan_folder(args.folder, captions_csv=args.captions, missing_caption=args.missing_caption,
                             workers=args.workers, progress=True)
    except MissingCaptionError as e:
        return fail(str(e), 1)
    except ValueError as e:  # a malformed captions CSV
        return fail(str(e), 2)
    print("\n".join(_summary(result, args.missing_caption)))
    if not result.items:
        return fail(f"no usable media under {args.folder}; nothing written", 1)
    write_annotation(args.output, result.items, overwrite=args.overwrite)
    print(f"wrote {len(result.items)} items to {args.output}")
    return 0
