"""Tiny `osp train` runs for the tests: a synthetic dataset and the shipped tiny configs with test overrides."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "train"
QUIET = {"logging": {"progress": False, "tensorboard": False}}


def make_data(folder: Path, videos: int) -> str:
    from mindspeed_mm.osp.data.synthetic import make_synthetic_dataset
    return str(make_synthetic_dataset(folder, videos=videos, frames=33, height=32, width=48))


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) and key != "transformer" else value
    return out


def write_config(path: Path, name: str, changes: dict) -> Path:
    """examples/train/<name>.json with `changes` merged in (quiet logging), written to `path`."""
    base = json.loads((CONFIGS / f"{name}.json").read_text())
    path.write_text(json.dumps(merged(merged(base, QUIET), changes), indent=1))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
