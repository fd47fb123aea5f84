"""`osp train` end to end on the tiny configs (CPU, gloo): bad configs are refused before anything is allocated,
the loss falls when overfitting one video (v1.5, v1.3 T2V, v1.3 I2V), and a run killed with SIGKILL or stopped
with SIGTERM, then relaunched, logs exactly the losses of an uninterrupted run. (Layouts: test_parallel_layouts.)"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mindspeed_mm.osp import cli
from train_helpers import ROOT, make_data, metrics, write_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    return {"one": make_data(root / "one", videos=1), "eight": make_data(root / "eight", videos=8)}


def osp_train(config: Path, output: Path, *args: str) -> int:
    return cli.main(["train", "--config", str(config), "--output", str(output), *args])


# ---------------------------------------------------------------------------------------------------- configs
DIT_CONFIGS = sorted(p for p in (ROOT / "examples" / "train").glob("*.json") if not p.stem.startswith("wfvae"))


@pytest.mark.parametrize("path", DIT_CONFIGS, ids=lambda p: p.stem)   # WF-VAE configs: test_vae_train.py
def test_shipped_configs_are_valid_and_fit_their_layout(path):
    from mindspeed_mm.osp.training.config import load_config
    from mindspeed_mm.osp.training.job import check_layout
    from mindspeed_mm.osp.training.models import official_model_config

    config = load_config(path)
    check_layout(config, official_model_config(config))
    assert config.i2v == ("i2v" in path.stem)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("changes, args, message", [
    ({}, ["optimizer.lrr=1"], "optimizer has no key 'lrr'; did you mean 'lr'?"),
    ({"optimzer": {}}, [], "unknown key 'optimzer'; did you mean 'optimizer'?"),
    ({"steps": "ten"}, [], "steps must be int, got 'ten'"),
    ({}, ["parallel.tensor=3"], "2 attention heads cannot be split over tensor_parallel 3"),
    ({}, ["parallel.sequence_parallel=true"], "sequence_parallel needs parallel.tensor >= 2"),
    ({}, ["model.compile=true", "parallel.tensor=2"], "model.compile is verified with data parallelism only"),
    ({}, ["model.compile=yes"], "model.compile must be bool, got 'yes'"),
    ({"data": {"buckets": {"patch_size": 1}}}, [], "data.buckets.patch_size 1 differs from the transformer's spatial "
                                                  "patch 2"),
    ({}, ["data.source=/nonexistent/data.txt"], "data.source /nonexistent/data.txt"),
    ({}, ["data.global_batch_size=3", "data.micro_batch_size=2"], "not a multiple of data.micro_batch_size"),
    ({"data": {"cache": "somewhere"}, "diffusion": {"inpaint": {}}}, [], "I2V training encodes masked videos"),
    ({"diffusion": {"inpaint": {"mask_weights": {}}}}, [], "diffusion.inpaint (I2V conditioning) is a v1.3"),
    ({"model": {"text_encoder_2": None}}, [], "raw media needs model.text_encoder_2"),
    ({"data": {"buckets": {"num_frame": 9}}}, [], "did you mean 'num_frames'"),
    ({"optimizer": {"rank_outlier_dropp": True}}, [], "did you mean 'rank_outlier_drop'"),
    ({"optimizer": {"decay_style": "cosinus"}}, [], "optimizer.decay_style must be one of"),
    ({"optimizer": {"warmup_steps": 10, "decay_steps": 10}}, [], "must be above optimizer.warmup_steps 10"),
    ({"optimizer": {"min_lr": 0.5}}, [], "optimizer.min_lr must be in [0, optimizer.lr=0.001]"),
    ({"optimizer": {"decay_style": "WSD", "decay_steps": 8, "wsd_decay_steps": 9}}, [],
     "optimizer.wsd_decay_steps (how many steps before decay_steps the WSD decay starts) must be in [1, 8]"),
    ({"optimizer": {"rank_outlier_drop": True}}, ["parallel.context=2"], "rank_outlier_drop needs parallel.context 1"),
    ({"sampling": {"every": 1}}, [], "sampling.every > 0 needs sampling.prompts"),
    ({"sampling": {"every": 1, "prompts": ["a"]}}, ["parallel.tensor=2"], "needs a single-rank model layout"),
    ({"sampling": {"every": 1, "prompts": ["a"]}, "data": {"cache": "somewhere"}, "model": {"vae": None}}, [],
     "config names no model.vae; a run on a feature cache must name the VAE"),
    ({"sampling": {"every": 1, "prompts": ["a"], "num_frames": 10}}, [], "sampling size 10x256x256: num_frames 10"),
    ({"sampling": {"every": 1, "prompts": ["a"], "promts": []}}, [], "did you mean 'prompts'"),
])
def test_bad_configs_are_refused_before_anything_is_allocated(tmp_path, data, capsys, changes, args, message):
    changes = {**changes, "data": {"source": data["one"], **changes.get("data", {})}}
    config = write_config(tmp_path / "c.json", "osp15_suv_tiny", changes)
    assert osp_train(config, tmp_path / "run", *args) == 2
    assert message in capsys.readouterr().err
    assert not torch.distributed.is_initialized() and not (tmp_path / "run").exists()


def test_v13_task_must_match_the_transformer(tmp_path, data, capsys):
    config = write_config(tmp_path / "c.json", "osp13_i2v_tiny", {"data": {"source": data["one"]}})
    assert osp_train(config, tmp_path / "run", "diffusion.inpaint=null") == 2
    assert "is a v1.3 I2V (inpaint) model but diffusion.inpaint is unset" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", ["osp15_suv_tiny", "osp13_t2v_tiny", "osp13_i2v_tiny"])
def test_loss_falls_when_overfitting_one_video(tmp_path, data, name):
    """One video, 4 copies a step (the sampler tops the batch up), fresh noise and timesteps every step. The random
    tiny WF-VAE's posterior is wide, so training takes its mean (data.sample_latents=false): one clip to memorise.
    Measured over seeds 0-2: the mean of the last 10 losses is 0.31-0.43 of the first 10's (v1.3, min-SNR weighted
    v-prediction, whose loss varies most with the timestep)."""
    config = write_config(tmp_path / "c.json", name, {
        "data": {"source": data["one"], "global_batch_size": 4, "caption_dropout": 0.0, "sample_latents": False},
        "optimizer": {"clip": "none"}, "steps": 40, "checkpoint": {"every": 1000}})
    assert osp_train(config, tmp_path / "run") == 0
    losses = [e["loss"] for e in metrics(tmp_path / "run")]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert len(losses) == 40 and last < 0.6 * first, (first, last)


def test_compiled_blocks_train_like_eager(tmp_path, data):
    """model.compile=true runs every block through torch.compile (inductor) and logs the eager run's losses and
    grad norms to float32 rounding (3 steps of the tiny SUV, one bucket shape)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    config = write_config(tmp_path / "c.json", "osp15_suv_tiny", {
        "data": {"source": data["one"], "global_batch_size": 2}, "steps": 3, "checkpoint": {"every": 1000}})
    assert osp_train(config, tmp_path / "eager") == 0
    torch._dynamo.reset()
    counters.clear()
    try:
        assert osp_train(config, tmp_path / "compiled", "model.compile=true") == 0
        compiled_frames = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert compiled_frames > 0
    eager, compiled = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert len(eager) == len(compiled) == 3
    for e, c in zip(eager, compiled):
        assert math.isclose(c["loss"], e["loss"], rel_tol=1e-4), (e, c)
        assert math.isclose(c["grad_norm"], e["grad_norm"], rel_tol=1e-3), (e, c)


def test_logged_tokens_follow_the_transformers_patch(tmp_path, data):
    """tokens_per_s counts DiT tokens: a patch-1 transformer has 4x the tokens of patch 2 on the same clips."""
    tiny = json.loads((ROOT / "examples" / "train" / "osp15_suv_tiny.json").read_text())["model"]["transformer"]
    per_sample = {}
    for patch in (1, 2):
        config = write_config(tmp_path / f"c{patch}.json", "osp15_suv_tiny", {
            "model": {"transformer": {**tiny, "patch_size_thw": [1, patch, patch]}}, "data": {"source": data["one"]},
            "steps": 1, "checkpoint": {"every": 1000}})
        assert osp_train(config, tmp_path / f"p{patch}") == 0
        (entry,) = metrics(tmp_path / f"p{patch}")
        per_sample[patch] = entry["tokens_per_s"] / entry["samples_per_s"]
    assert per_sample[1] == pytest.approx(4 * per_sample[2]) and per_sample[2] > 0


@pytest.mark.parametrize("layout, device, message", [
    ({"tensor_parallel": 2}, "cpu", "verified with data parallelism only (tensor, context and pipeline parallel 1; "
                                    "this layout is TP2 CP1 PP1)"),
    ({"pipeline_parallel": 2}, "cpu", "this layout is TP1 CP1 PP2"),
    ({}, "meta", "inductor, which targets CPU and CUDA; this model is on meta"),
])
def test_compile_blocks_refuses_what_is_not_verified(layout, device, message):
    from types import SimpleNamespace

    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.parallel.layout import Layout

    chunk = SimpleNamespace(blocks=[torch.nn.Linear(2, 2, device=device)])
    with pytest.raises(ValueError) as error:
        parallel.compile_blocks(SimpleNamespace(layout=Layout(**layout), chunks=[chunk]), input_shapes=1)
    assert message in str(error.value)


# ---------------------------------------------------------------------------------------------------- resume
STEPS = 24


@pytest.fixture(scope="module")
def resume_config(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("resume")
    return write_config(root / "c.json", "osp15_suv_tiny", {
        "data": {"source": data["eight"], "global_batch_size": 2, "num_workers": 1},
        "steps": STEPS, "checkpoint": {"every": 4, "keep_last": 2},
        "optimizer": {"decay_style": "cosine", "min_lr": 1e-5}})   # decay_steps null: the run's STEPS


def _command(config: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "mindspeed_mm.osp.cli", "train", "--config", str(config), "--output", str(output)]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _interrupt(config: Path, output: Path, sig: int, after_steps: int) -> subprocess.CompletedProcess:
    """Start the run, send `sig` once `after_steps` steps are logged; returns the finished process."""
    proc = subprocess.Popen(_command(config, output), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = output / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= after_steps):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run logged no steps in 5 minutes"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _finish(config: Path, output: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(config, output), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def uninterrupted(resume_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    _finish(resume_config, out)
    return {"output": out, "metrics": metrics(out)}


def _same_run(resumed: list[dict], whole: dict) -> None:
    whole = whole["metrics"]
    assert [e["step"] for e in resumed] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "lr", "action", "consumed_samples", "epoch"):
        assert [e[key] for e in resumed] == [e[key] for e in whole], key


def test_kill_9_then_resume_gives_the_uninterrupted_losses(resume_config, uninterrupted, tmp_path):
    killed = _interrupt(resume_config, tmp_path / "run", signal.SIGKILL, after_steps=7)
    assert killed.returncode == -signal.SIGKILL
    logged = len(metrics(tmp_path / "run"))
    assert logged < STEPS   # killed mid-run
    _finish(resume_config, tmp_path / "run")
    _same_run(metrics(tmp_path / "run"), uninterrupted)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        f"iter_{STEPS - 4:07d}", f"iter_{STEPS:07d}", "latest"]   # keep_last 2


def test_sigterm_saves_exits_0_and_resumes(resume_config, uninterrupted, tmp_path):
    stopped = _interrupt(resume_config, tmp_path / "run", signal.SIGTERM, after_steps=5)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    step = metrics(tmp_path / "run")[-1]["step"]
    assert step < STEPS
    assert f"stopped by SIGTERM after step {step}" in stopped.stdout and "--resume auto" in stopped.stdout
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == str(step)
    _finish(resume_config, tmp_path / "run")
    _same_run(metrics(tmp_path / "run"), uninterrupted)


def test_a_finished_run_is_not_redone_and_its_config_is_kept(resume_config, uninterrupted, capsys):
    run = uninterrupted["output"]
    assert osp_train(resume_config, run) == 0
    assert f"already reached step {STEPS} of {STEPS}" in capsys.readouterr().out
    assert osp_train(resume_config, run, "optimizer.lr=0.5") == 2
    assert "optimizer.lr: 0.001 in the checkpoint's run, 0.5 now" in capsys.readouterr().err
    assert osp_train(resume_config, run, "--resume", "none") == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert len(metrics(run)) == STEPS


def test_the_cosine_decay_ends_with_the_run_by_default(uninterrupted):
    """decay_steps null: the learning rate of step s (1-based) is megatron's cosine at s - 1 of STEPS."""
    cosine = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * s / STEPS)) for s in range(STEPS)]
    assert [e["lr"] for e in uninterrupted["metrics"]] == pytest.approx(cosine, rel=1e-9)


def test_export_to_official_and_to_a_pipeline_that_samples(uninterrupted, tmp_path):
    from safetensors.torch import load_file

    from mindspeed_mm.osp.pipelines.video import VideoPipeline
    from mindspeed_mm.osp.text import TEMPLATES
    from mindspeed_mm.osp.training.export import read_training_checkpoint

    run = uninterrupted["output"]
    assert cli.main(["convert", "dit", "--to", "official", str(run), str(tmp_path / "raw.safetensors")]) == 0
    assert cli.main(["convert", "dit", "--to", "pipeline", "--ema", str(run), str(tmp_path / "pipe")]) == 0
    raw = load_file(str(tmp_path / "raw.safetensors"))
    _, ema, _ = read_training_checkpoint(run, ema=True)
    pipe = VideoPipeline.from_pretrained(tmp_path / "pipe")
    in_pipeline = pipe.transformer.official_state_dict()
    assert in_pipeline.keys() == ema.keys() == raw.keys()
    assert all(torch.equal(in_pipeline[k], ema[k]) for k in ema)             # the EMA weights, bit for bit
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)                 # which are not the trained ones
    assert cli.main(["sample", "--model", str(tmp_path / "pipe"), "--prompt", "a red car running", "--output",
                     str(tmp_path / "car.mp4"), "--num-frames", "17", "--height", "32", "--width", "48",
                     "--steps", "2"]) == 0
    assert (tmp_path / "car.mp4").stat().st_size > 0
    # the model's own sampling settings travel with the pipeline; unknown ones are refused before any work
    sampling = tmp_path / "sampling.json"
    sampling.write_text('{"template": "none", "shift": 2.0, "num_frames": 9, "height": 32, "width": 48, "steps": 2}')
    assert cli.main(["convert", "dit", "--to", "pipeline", str(run), str(tmp_path / "own"), "--sampling",
                     str(sampling)]) == 0
    own = VideoPipeline.from_pretrained(tmp_path / "own")
    assert own.template is TEMPLATES["none"] and own.sampler.shift == 2.0
    assert (own.defaults.num_frames, own.defaults.height, own.defaults.width, own.defaults.steps) == (9, 32, 48, 2)
    sampling.write_text('{"stepz": 2}')
    assert cli.main(["convert", "dit", "--to", "pipeline", str(run), str(tmp_path / "bad"), "--sampling",
                     str(sampling)]) == 2
    assert not (tmp_path / "bad").exists()


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, data, capsys):
    """lr 1e30 blows the weights up in one step; every later loss is non-finite: those steps are skipped and
    logged, and after 3 in a row the run stops (exit 1) with the checkpoint of the last step intact."""
    config = write_config(tmp_path / "c.json", "osp15_suv_tiny", {
        "data": {"source": data["one"], "global_batch_size": 1},
        "optimizer": {"lr": 1e30, "clip": "none", "max_skipped_in_a_row": 3},
        "steps": 10, "checkpoint": {"every": 1}})
    assert osp_train(config, tmp_path / "run") == 1
    assert "3 steps in a row were skipped" in capsys.readouterr().err
    log = metrics(tmp_path / "run")
    assert [e["action"] for e in log] == ["keep", "skip: non-finite loss", "skip: non-finite loss",
                                          "skip: non-finite loss"]
    assert [e["skipped_total"] for e in log] == [0, 1, 2, 3]
    # saved after steps 1-3 (a skipped step changes nothing); the stop raised before step 4 was saved
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "3"


def test_periodic_sampling_writes_mp4s_and_resume_keeps_them(tmp_path, data, capsys):
    """Sampling every step (1 prompt, 9x32x64, 2 denoising steps): rank 0 writes samples/step_XXXXXXX/00.mp4 after
    steps 1 and 2 (never step 0), with the EMA weights, atomically. A resume that re-runs step 2 (its checkpoint
    gone) finds step 2's file and leaves it alone; step 3 is sampled. The losses equal those of a run without
    sampling: the sampler draws from its own seeded generators inside fork_rng. Both runs also keep the per-rank
    outlier drop's statistics (one rank: nothing to drop here), which the checkpoint restores exactly."""
    from megatron.core import dist_checkpointing

    from mindspeed_mm.osp.data.video_io import read_video

    changes = {"data": {"source": data["eight"]}, "steps": 2, "checkpoint": {"every": 1, "keep_last": 0},
               "optimizer": {"rank_outlier_drop": True},
               "sampling": {"every": 1, "prompts": ["a red square moving right"], "num_frames": 9, "height": 32,
                            "width": 64, "steps": 2}}
    config = write_config(tmp_path / "c.json", "osp15_suv_tiny", changes)
    run = tmp_path / "run"
    assert osp_train(config, run) == 0
    assert "step 2: samples (EMA weights)" in capsys.readouterr().out
    files = sorted(p.relative_to(run).as_posix() for p in (run / "samples").rglob("*") if p.is_file())
    assert files == ["samples/step_0000001/00.mp4", "samples/step_0000002/00.mp4"]
    for name in files:
        frames, fps = read_video(run / name)
        assert tuple(frames.shape) == (9, 32, 64, 3) and fps == 24
    one, two = (run / files[0]).read_bytes(), run / files[1]
    assert one != two.read_bytes()   # the weights moved between the two samplings
    before = (two.stat().st_ino, two.stat().st_mtime_ns)
    # lose the checkpoint of step 2: the resumed run repeats step 2, then trains step 3
    (run / "checkpoints" / "latest").write_text("1")
    import shutil
    shutil.rmtree(run / "checkpoints" / "iter_0000002")
    assert osp_train(config, run, "steps=3") == 0
    out = capsys.readouterr().out
    assert "step 2: samples already written" in out and "step 3: samples (EMA weights)" in out
    assert (two.stat().st_ino, two.stat().st_mtime_ns) == before
    assert (run / "samples" / "step_0000003" / "00.mp4").is_file()
    plain = write_config(tmp_path / "plain.json", "osp15_suv_tiny", {**changes, "steps": 3, "sampling": {}})
    assert osp_train(plain, tmp_path / "plain") == 0
    for key in ("loss", "grad_norm", "rank_grad_norms", "dropped_ranks"):
        assert [e[key] for e in metrics(run)] == [e[key] for e in metrics(tmp_path / "plain")], key
    assert not (tmp_path / "plain" / "samples").exists()
    extra = [dist_checkpointing.load_common_state_dict(str(r / "checkpoints" / "iter_0000003"))["extra"]
             for r in (run, tmp_path / "plain")]
    assert extra[0]["rank_drop"] == extra[1]["rank_drop"] and extra[0]["rank_drop"]["started"]
