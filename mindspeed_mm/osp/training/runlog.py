"""What a training run writes besides checkpoints: the JSONL metrics file, TensorBoard scalars, the rank-0 progress
bar, and the rotation of old checkpoints."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.files import replace_file

METRICS = "metrics.jsonl"
_ITERATION = re.compile(r"^iter_(\d{7,})$")


def checkpoints_in(root: Path) -> list[int]:
    """Complete checkpoint iterations under `root`, ascending (temporary folders of interrupted saves excluded)."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _ITERATION.match(p.name)) and p.is_dir())


def prune_checkpoints(root: Path, keep_last: int, protect: int) -> list[int]:
    """Delete all but the newest `keep_last` iterations (never `protect`, the one `latest` names); 0 keeps all."""
    if keep_last <= 0:
        return []
    doomed = [i for i in checkpoints_in(root)[:-keep_last] if i != protect]
    for i in doomed:
        shutil.rmtree(root / f"iter_{i:07d}", ignore_errors=True)
    return doomed


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the records of steps <= `last_step` (a resumed run rewrites the steps after its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    replace_file(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))


class RunLog:
    """Rank 0 writes; other ranks hold a RunLog that does nothing."""

    def __init__(self, output: Path, *, active: bool, total_steps: int, first_step: int, progress: bool,
                 tensorboard: bool):
        self.active = active
        self.file = open(output / METRICS, "a", encoding="utf-8") if active else None
        self.bar = None
        if active and progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)
        self.writer = None
        if active and tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=first_step + 1)

    def record(self, entry: dict, write: bool) -> None:
        """Advance the bar by one step; with `write`, append `entry` to the JSONL file and TensorBoard."""
        if not self.active:
            return
        if self.bar is not None:
            shown = {k: entry[k] for k in ("loss", "grad_norm", "lr", "samples_per_s", "tokens_per_s")
                     if entry.get(k) is not None}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
            self.bar.update(1)
        if write:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())
            if self.writer is not None:
                for key, value in entry.items():
                    if isinstance(value, (int, float)) and key != "step" and value is not None:
                        self.writer.add_scalar(f"train/{key}", value, entry["step"])

    def message(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        for handle in (self.bar, self.writer, self.file):
            if handle is not None:
                handle.close()


def peak_flops(configured_tflops: Optional[float], device) -> Optional[float]:
    """Peak FLOP/s of one device for MFU: the configured figure, else the known GPU's, else None (CPU)."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    from mindspeed_mm.osp.training.flops import peak_flops_for_device
    return peak_flops_for_device(device)
