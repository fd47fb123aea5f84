"""The folder layout of `osp train` runs, readable without megatron-core:

    RUN/checkpoints/latest               the step of the newest complete checkpoint (written last)
    RUN/checkpoints/iter_XXXXXXX/        one checkpoint (the engine's: metadata.json + common.pt + shards;
                                         WF-VAE runs: one state file)

Telling a path apart (a run, its checkpoints root, one iteration folder or something else) needs no model and no
parallel engine, so loaders of released weights can ask cheaply whether a path is a training run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

RUN_CHECKPOINTS = "checkpoints"
LATEST = "latest"
PathLike = Union[str, os.PathLike]


def iteration_dir(directory: str, iteration: int) -> str:
    return os.path.join(directory, f"iter_{iteration:07d}")


def resolve(directory: str) -> str:
    """An iteration folder, or a checkpoint root whose `latest` marker names one."""
    marker = os.path.join(directory, LATEST)
    if os.path.isfile(marker):
        with open(marker) as f:
            return iteration_dir(directory, int(f.read().strip()))
    if os.path.isfile(os.path.join(directory, "metadata.json")):
        return directory
    raise FileNotFoundError(f"{directory} is neither a checkpoint folder (iter_XXXXXXX) nor a root with a "
                            f"'{LATEST}' marker; pass the folder given to parallel.save_checkpoint")


def engine_checkpoint_folder(path: PathLike) -> Optional[Path]:
    """The engine checkpoint (iteration folder) that a run folder, its checkpoints root or an iteration folder
    names, or None when `path` is none of these (a weights file, a pipeline folder, ...)."""
    path = Path(path)
    if (path / RUN_CHECKPOINTS / LATEST).is_file():
        path = path / RUN_CHECKPOINTS
    if not ((path / LATEST).is_file() or (path / "metadata.json").is_file() and (path / "common.pt").is_file()):
        return None
    folder = Path(resolve(str(path)))
    return folder if (folder / "common.pt").is_file() else None
