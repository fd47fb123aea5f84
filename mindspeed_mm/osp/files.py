"""Writing outputs atomically (checkpoints, converted weights, videos, sidecars): a whole file or folder appears
at once, or nothing changes."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def check_target(dst: Path, overwrite: bool) -> None:
    """Refuse an existing file or non-empty folder unless `overwrite`."""
    if dst.exists() and not overwrite and (dst.is_file() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new output path or pass --overwrite "
                              "(overwrite=True) to replace it")


def replace_dir(dst: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a temporary sibling folder, then move it into place (replacing `dst`)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        write(tmp)
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        if dst.exists():
            old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old."))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_file(dst: Path, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Run `write(tmp)` on a temporary sibling file, then move it into place (replacing `dst`). `suffix`: the
    temporary name's ending, for writers that append their own extension otherwise."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json_object(path, what: str) -> dict:
    """A JSON object from `path`; errors name the file (`what`: e.g. "bucket config") and the problem."""
    import json

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        values = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"{p}: expected a JSON object, got {type(values).__name__}")
    return values
