"""`osp train --config CONFIG.json [--output DIR] [--resume auto|PATH|none] [section.key=value ...]`: a denoiser job
(mindspeed_mm.osp.training.job) or, for a config with "task": "vae", a WF-VAE job (training.vae_job)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a v1.5 SUV or v1.3 DiT (T2V/I2V) on the parallel engine, or a WF-VAE",
        description="Train a denoiser from a JSON config (sections model, data, diffusion, optimizer, parallel, "
                    "checkpoint, logging; see docs/training.md and examples/train/), or train / fine-tune a WF-VAE "
                    "from a config with \"task\": \"vae\" (sections model, data, loss, optimizer, checkpoint, "
                    "logging; examples/train/wfvae_*.json). One process, or every rank of a torchrun launch. The "
                    "same command resumes the run in --output (the default --resume auto); SIGTERM/SIGINT save a "
                    "checkpoint and exit 0.")
    p.add_argument("--config", required=True, metavar="CONFIG.json", help="training config")
    p.add_argument("--output", metavar="DIR", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", default="auto", metavar="auto|PATH|none",
                   help="auto (default): continue the run in --output if it has a checkpoint, else start; "
                        "PATH: start from that checkpoint (root or iter_ folder); none: refuse an existing run")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. optimizer.lr=1e-4 steps=500 parallel.tensor=2")
    p.set_defaults(func=run)


def resume_command(args) -> str:
    words = ["osp", "train", "--config", args.config, "--output", str(args.output), "--resume", "auto",
             *args.overrides]
    return " ".join(shlex.quote(w) for w in words) + (
        "   (under torchrun or a launcher: relaunch the same command)" if _launched() else "")


def _launched() -> bool:
    import os
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def run(args: argparse.Namespace) -> int:
    from mindspeed_mm.osp.training.vae_config import is_vae_config

    if args.output is None:
        args.output = str(Path("runs") / Path(args.config).stem)
    if is_vae_config(args.config):
        from mindspeed_mm.osp.training.vae_job import main
        return main(args.config, args.overrides, Path(args.output), args.resume, resume_command(args))
    from mindspeed_mm.osp.data.annotations import AnnotationError
    from mindspeed_mm.osp.data.cache import CacheError
    from mindspeed_mm.osp.data.dataset import DataError
    from mindspeed_mm.osp.training.config import ConfigError, load_config
    from mindspeed_mm.osp.training.job import train
    from mindspeed_mm.osp.training.step import TrainingStopped

    try:
        config = load_config(args.config, args.overrides)
        return train(config, Path(args.output), args.resume, resume_command(args))
    except (ConfigError, AnnotationError, CacheError, FileNotFoundError, FileExistsError) as e:
        print(f"osp train: error: {e}", file=sys.stderr)
        return 2
    except (TrainingStopped, DataError) as e:
        print(f"osp train: stopped: {e}", file=sys.stderr)
        return 1
