"""The embedded default model's recipe (examples/default_model/build.sh), shortened to a few steps of each stage:
shapes data -> WF-VAE training -> latent normaliser -> tiny text encoders -> feature cache -> SUV DiT training ->
pipeline folder -> `osp eval shapes`. The shipped recipe is the same script with its default sizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_recipe_runs_every_stage_into_a_pipeline_that_samples(tmp_path):
    from mindspeed_mm.osp.pipelines import load_pipeline
    from mindspeed_mm.osp.text import TEMPLATES

    env = dict(os.environ, OSP=f"{sys.executable} -m mindspeed_mm.osp.cli",
               TORCHRUN=f"{sys.executable} -m torch.distributed.run", VIDEOS="48", IMAGES="0", VAE_STEPS="2",
               DIT_STEPS="2", EVAL_PROMPTS="1", OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    runs = tmp_path / "runs"
    done = subprocess.run(["bash", str(ROOT / "examples" / "default_model" / "build.sh"), str(runs)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    vae_config = json.loads((runs / "shapes_vae" / "export" / "vae" / "config.json").read_text())["config"]
    assert len(vae_config["scale"]) == vae_config["latent_dim"] == 8
    assert set(vae_config["scale"]) != {1.0}                     # the normaliser was measured and stored
    # NPROC=2, the default: the DiT trained as 2 data-parallel ranks of micro batch 4 (global batch 8)
    assert json.loads((runs / "shapes_dit" / "config.json").read_text())["data"]["micro_batch_size"] == 4
    assert (runs / "shapes_dit" / "checkpoints" / "latest").read_text().strip() == "2"
    pipe = load_pipeline(runs / "shapes_pipeline")
    assert (pipe.defaults.num_frames, pipe.defaults.height, pipe.defaults.width) == (17, 64, 64)
    assert pipe.template is TEMPLATES["none"] and pipe.text.max_length == 24
    table = (runs / "shapes_eval.txt").read_text()
    assert "model    held-out" in table and "random   seen" in table


def test_the_shipped_default_model_loads_as_released_models_do_and_draws_the_prompted_colour(capsys):
    """The shipped weights through the pipeline-folder loaders, scored by `osp eval shapes` with a small prompt set
    (the model card has the full evaluation): colour is learned (held-out 100% at 32 prompts), and the model beats
    its random-weights baseline, measured in the same run."""
    from mindspeed_mm.osp import cli
    from mindspeed_mm.osp.pipelines import folder

    model = folder.default_model()
    assert model is not None, "mindspeed_mm/osp/default_model is missing from this checkout"
    assert sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) <= 30 * 2 ** 20
    assert cli.main(["eval", "shapes", "--prompts", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    for split in ("held-out", "seen"):
        assert results["model"][split]["accuracy"]["colour"] >= 75.0, results["model"][split]
        assert results["model"][split]["accuracy"]["colour"] > results["random"][split]["accuracy"]["colour"]
