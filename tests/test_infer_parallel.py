"""`osp sample --tp 2` / `--cp 2` under torchrun (gloo, 2 CPU processes) equals the 1-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mindspeed_mm.osp.cli import main

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--prompt", "a cat in the rain", "--steps", "2", "--height", "32", "--width", "48", "--seed", "5",
        "--save-latents"]


def _latents(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path.with_suffix(".latents.safetensors")))["latents"]


def _torchrun(args, tmp_path):
    env = dict(os.environ, OSP_DEVICE="cpu", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mindspeed_mm.osp.cli", "sample", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("preset,frames,flag", [("tiny-osp15-random", "9", "--tp"), ("tiny-osp13-random", "9", "--cp"),
                                                ("default", "17", "--tp"), ("default", "17", "--cp")])
def test_two_processes_match_one(tmp_path, preset, frames, flag):
    """"default": the embedded default model (no --model/--preset), at its own size."""
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    model = [] if preset == "default" else ["--preset", preset]
    args = ["--prompt", "a red circle moving to the right", "--steps", "2", "--seed", "5", "--save-latents"] \
        if preset == "default" else ARGS
    assert main(["sample", *model, "--num-frames", frames, *args, "--output", str(one)]) == 0
    _torchrun([*model, "--num-frames", frames, *args, flag, "2", "--output", str(two)], tmp_path)
    a, b = _latents(one), _latents(two)
    assert a.shape == b.shape
    diff = float((a - b).abs().max())
    print(f"{preset} {flag} 2: max |latent diff| vs 1 process = {diff:.3g} (max |latent| {float(a.abs().max()):.3g})")
    assert diff <= 1e-4 * max(1.0, float(a.abs().max())), diff
    assert two.exists() and two.with_suffix(".json").exists()


def test_data_parallel_ranks_share_the_prompts(tmp_path, monkeypatch):
    """Data-parallel groups (no tp/cp): prompt i goes to rank i % 2 with seed + i, so every file equals the one a
    single process writes. Both ranks run here in turn (the distributed start-up itself is init_process_group)."""
    from mindspeed_mm.osp.pipelines import parallel_run

    prompts = ["--prompt", "a cat", "--prompt", "a dog", "--prompt", "a car"]
    common = ["--preset", "tiny-osp15-random", "--num-frames", "9", *prompts, *ARGS[2:]]
    assert main(["sample", *common, "--output", str(tmp_path / "one.mp4")]) == 0
    expected_after = {0: ["two_000.mp4", "two_002.mp4"], 1: ["two_000.mp4", "two_001.mp4", "two_002.mp4"]}
    for rank in range(2):
        ranks = parallel_run.SampleRanks(data_parallel_rank=rank, data_parallel_size=2)
        monkeypatch.setattr(parallel_run, "setup_parallel", lambda tp, cp, ranks=ranks: ranks)
        assert main(["sample", *common, "--output", str(tmp_path / "two.mp4")]) == 0
        assert sorted(p.name for p in tmp_path.glob("two_*.mp4")) == expected_after[rank]
    for i in range(3):
        a, b = _latents(tmp_path / f"one_{i:03d}.mp4"), _latents(tmp_path / f"two_{i:03d}.mp4")
        assert torch.equal(a, b), i
        assert json.loads((tmp_path / f"two_{i:03d}.json").read_text())["data_parallel"] == 2


def test_parallel_flags_need_torchrun(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="torchrun"):
        main(["sample", "--preset", "tiny-osp15-random", "--tp", "2", "--prompt", "x", "--output",
              str(tmp_path / "x.mp4")])
