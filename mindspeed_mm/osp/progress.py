"""Progress for the long, otherwise silent commands (`osp convert`, `osp make-pipeline`, `osp download`): one line
per stage on stdout, and tqdm bars over files that switch themselves off when the terminal is not a TTY (logs, CI,
pipes), as `osp vae reconstruct` does."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

Log = Callable[[str], None]


def quiet(_message: str) -> None:
    """The default `log` of library functions: say nothing."""


def stage_printer(command: str) -> Log:
    """`log(message)` printing `osp COMMAND: message` on stdout (flushed: the next stage may take minutes)."""
    def log(message: str) -> None:
        print(f"osp {command}: {message}", flush=True)
    return log


def bar(iterable: Optional[Iterable] = None, **kwargs):
    """A tqdm bar on stderr that is off when stderr is not a TTY (`disable=None`) and leaves no line behind."""
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=None, **kwargs)


def tree_size(path) -> int:
    """Bytes in a file, or in all files under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units; bytes below 1 KiB)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def wrote(path, what: str = "") -> str:
    """The closing line of a command: `wrote PATH (SIZE[, what])`."""
    detail = human_size(tree_size(path)) + (f", {what}" if what else "")
    return f"wrote {path} ({detail})"
