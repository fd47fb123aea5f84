"""The embedded default model's recipe (examples/default_model/build.sh), shortened to a few steps of each stage:
shapes data -> WF-VAE training -> latent normaliser -> tiny text encoders -> feature cache -> SUV DiT training ->
pipeline folder -> `osp eval shapes`. The shipped recipe is the same script with its default sizes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "examples" / "default_model" / "build.sh"


def _build(runs: Path, **env) -> subprocess.CompletedProcess:
    """build.sh RUNS with a few steps of each stage (environment overrides in `env`)."""
    small = dict(OSP=f"{sys.executable} -m mindspeed_mm.osp.cli", TORCHRUN=f"{sys.executable} -m torch.distributed.run",
                 VIDEOS="48", IMAGES="0", VAE_VIDEOS="8", VAE_STEPS="2", DIT_STEPS="2", EVAL_PROMPTS="1",
                 OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    return subprocess.run(["bash", str(BUILD), str(runs)], env={**os.environ, **small, **env}, capture_output=True,
                          text=True, timeout=900)


def test_the_recipe_runs_every_stage_into_a_pipeline_that_samples(tmp_path):
    import torch

    from mindspeed_mm.osp.pipelines import load_pipeline
    from mindspeed_mm.osp.text import TEMPLATES

    runs = tmp_path / "runs"
    done = _build(runs)
    assert done.returncode == 0, done.stderr[-4000:]
    vae_config = json.loads((runs / "shapes_vae" / "export" / "vae" / "config.json").read_text())["config"]
    assert len(vae_config["scale"]) == vae_config["latent_dim"] == 8
    assert set(vae_config["scale"]) != {1.0}                     # the normaliser was measured and stored
    # the VAE trained on its own VAE_VIDEOS clips: the first clips of the DiT's data
    vae_data = runs / "shapes_vae_data"
    assert json.loads((runs / "shapes_vae" / "config.json").read_text())["data"]["source"] == str(vae_data / "data.txt")
    assert json.loads((vae_data / "anno.json").read_text()) == json.loads((runs / "shapes" / "anno.json").read_text())[:8]
    # NPROC=2, the default: the features extracted by 2 processes (each its share of the shards), the DiT trained
    # as 2 data-parallel ranks of micro batch 4 (global batch 8)
    assert "rank 0/2: wrote" in done.stdout and "rank 1/2: wrote" in done.stdout, done.stdout[-4000:]
    assert json.loads((runs / "shapes_dit" / "config.json").read_text())["data"]["micro_batch_size"] == 4
    assert (runs / "shapes_dit" / "checkpoints" / "latest").read_text().strip() == "2"
    pipe = load_pipeline(runs / "shapes_pipeline")
    assert (pipe.defaults.num_frames, pipe.defaults.height, pipe.defaults.width) == (17, 64, 64)
    assert pipe.template is TEMPLATES["none"] and pipe.text.max_length == 24
    table = (runs / "shapes_eval.txt").read_text()
    assert "model    held-out" in table and "random   seen" in table

    # VAE=DIR (how the shipped DiT was trained): no VAE stage, the DiT stages start from that VAE; the data and text
    # encoders are copied over so that only the DiT stages run again
    reused = tmp_path / "reused"
    for stage in ("shapes", "shapes_text"):
        shutil.copytree(runs / stage, reused / stage)
    vae = runs / "shapes_vae" / "export" / "vae"
    done = _build(reused, VAE=str(vae))
    assert done.returncode == 0, done.stderr[-4000:]
    assert not (reused / "shapes_vae").exists() and not (reused / "shapes_vae_data").exists()
    assert json.loads((reused / "shapes_dit" / "config.json").read_text())["model"]["vae"] == str(vae)
    first, second = (load_pipeline(r / "shapes_pipeline").vae for r in (runs, reused))
    assert first.config == second.config
    first, second = first.state_dict(), second.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_recipe_checks_a_given_vae_before_any_work(tmp_path):
    done = _build(tmp_path / "runs", VAE=str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "holds no config.json" in done.stderr and not (tmp_path / "runs").exists()


def test_the_shipped_default_model_loads_as_released_models_do_and_draws_what_is_prompted(capsys):
    """The shipped weights through the pipeline-folder loaders, scored by `osp eval shapes` with a small prompt set
    (the model card has the full evaluation: held-out colour / shape / motion 100% / 91% / 94% at 32 prompts): it
    beats its random-weights baseline, measured in the same run, on every attribute."""
    from mindspeed_mm.osp import cli
    from mindspeed_mm.osp.pipelines import folder

    model = folder.default_model()
    assert model is not None, "mindspeed_mm/osp/default_model is missing from this checkout"
    assert sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) <= 30 * 2 ** 20
    assert cli.main(["eval", "shapes", "--prompts", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    for split in ("held-out", "seen"):
        model, chance = results["model"][split]["accuracy"], results["random"][split]["accuracy"]
        for attribute in ("colour", "shape", "motion"):
            assert model[attribute] >= 75.0 and model[attribute] > chance[attribute], (split, attribute, model, chance)
