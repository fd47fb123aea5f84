"""Parallel layouts equal the single-device model (CPU, gloo), all in ONE torchrun launch of 4 processes.

tests/parallel/run_cases.py runs every case in one process group and reports max differences as JSON. The
official 4-head fixtures (v1.3 Skiparse DiT, v1.5 SUV) cover TP/SP/PP/VPP/Ulysses CP and their combinations; the
toy MMDiT (tests/parallel/toy.py) keeps the engine's own checks small.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORWARD_TOL = 1e-5     # vs the same model on one device
OFFICIAL_TOL = 1e-4    # vs the official implementation's output (fixture acceptance)

CASES = [
    "v15/tp2", "v15/tp4_sp", "v15/pp2", "v15/cp2", "v15/tp2_cp2", "v15/tp2_sp_pp2",
    "v13/tp2_sp", "v13/tp4", "v13/pp2_vpp2", "v13/cp4", "v13/tp2_sp_cp2", "v13/tp2_pp2",
    "toy/pp2_cp2", "toy/pp2_vpp2",
]
# 3 AdamW steps (distributed optimizer, clip 1.0, weight decay) vs the same steps on one device
TRAIN_CASES = ["toy/train_tp2_sp_pp2", "toy/train_tp2_sp", "toy/train_pp2_vpp2", "toy/train_pp2_cp2",
               "v15/train_tp2_sp_cp2"]
# train 2 scheduled steps (warmup + cosine) under the first layout, save a distributed checkpoint, load it under each
# other layout (into other initial weights and RNG states) and train 2 more steps: equal to 4 uninterrupted steps on
# one device; loading under the saved layout also restores every rank's RNG
RESUME_CASES = ["toy/resume_tp2_sp_pp2-tp2_sp_pp2-tp1-tp4_sp-pp2_cp2", "v15/resume_tp2_sp_cp2-tp4"]
# the same 3 training steps without and with activation recompute -> extra block forwards on each rank:
# 3 steps x 2 micro-batches x recomputed blocks per stage (2 of 2 under rcfull, the first 1 of 2 under rc1)
RECOMPUTE_CASES = {"toy/recompute_tp2_sp_pp2_rcfull": 3 * 2 * 2, "toy/recompute_pp2_cp2_rc1": 3 * 2 * 1}
# 3 AdamW steps of a bf16 model (fp32 main weights in the distributed optimizer) vs the fp32 steps on one device
BF16_CASES = ["v15/train_tp2_sp_pp2_bf16"]
# training.step.training_step with adaptive clipping (a planted spike on step 3) and the EMA sharded over DP x CP
GUARDED_CASES = ["toy/guarded_tp2_sp", "toy/guarded_pp2_cp2"]
# the v1.3 per-rank outlier drop at TP2+SP (2 data-parallel ranks): a spike on rank 1 at step 3 is dropped, a spike on
# both at step 5 skips the step; spike_: the same steps without the drop let the spike through
OUTLIER_CASES = ["toy/outlier_tp2_sp", "toy/spike_tp2_sp"]
# built on the meta device (never whole on one rank), parallelized, then the official weights loaded
META_CASES = ["v15/meta_tp2_sp_pp2", "v13/meta_tp2_pp2"]
# `osp train` (tiny v1.5 SUV config, 6 blocks, global batch 4) for 3 steps under each layout with 4 processes: the
# JSONL losses and grad norms equal the same job on one process (accumulating 4 micro-batches); dp4 = data parallel 4
JOB_CASES = ["job/tp2_sp", "job/pp2", "job/cp2", "job/dp4"]
TRAIN_TOL = 1e-5       # losses and grad norms
WEIGHT_TOL = 1e-4      # Adam divides by sqrt(v): tiny grad differences move weights by more (spec, Adam note)


# A second interpreter whose environment has another supported megatron-core (e.g. 0.12.1, the version
# MindSpeed pins) runs a smaller set of cases with 2 processes.
# tools/bootstrap_env.sh builds .venv-megatron012 (megatron-core 0.12.1 over the main venv); override with the env var.
_BOOTSTRAPPED_ALT = ROOT / ".venv-megatron012" / "bin" / "python"
OTHER_MEGATRON_PYTHON = os.environ.get("OSP_MEGATRON_ALT_PYTHON") or (str(_BOOTSTRAPPED_ALT) if _BOOTSTRAPPED_ALT.exists() else None)
ALT_CASES = ["toy/tp2_sp", "toy/pp2_vpp2", "toy/cp2", "toy/train_tp2_sp", "toy/train_pp2", "toy/train_cp2",
             "toy/resume_tp2_sp-tp2_sp-pp2"]


def _launch(python: str, nproc: int, cases, out: Path, job_config: Path | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "tests" / "parallel" / "run_cases.py"), "--out", str(out), "--cases", *cases]
    if job_config is not None:
        cmd += ["--job-config", str(job_config)]
    # generous: one launch runs every case (normally 5-8 min on 2 cores); run_cases reports hangs itself
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    # run_cases prints the failing rank's traceback (a hang: every rank's stacks) and ends the launch
    assert proc.returncode == 0, _without_warnings(proc.stderr)[-20000:]
    return json.loads(out.read_text())


def _without_warnings(stderr: str) -> str:
    """The launch's stderr less library warnings (each rank repeats them), so the tracebacks fit the report."""
    noise = ("Warning:", "warnings.warn(", "return func(*args, **kwargs)")
    return "\n".join(line for line in stderr.splitlines() if not any(n in line for n in noise))


@pytest.fixture(scope="module")
def job_config(tmp_path_factory):
    from train_helpers import make_data, write_config

    root = tmp_path_factory.mktemp("job")
    changes = {"model": {"transformer": {**_tiny_suv(), "num_layers": [2, 2, 2]}},
               "data": {"source": make_data(root / "data", videos=8), "global_batch_size": 4},
               "steps": 3, "checkpoint": {"every": 1000}}
    return write_config(root / "config.json", "osp15_suv_tiny", changes)


def _tiny_suv() -> dict:
    from train_helpers import CONFIGS
    return json.loads((CONFIGS / "osp15_suv_tiny.json").read_text())["model"]["transformer"]


@pytest.fixture(scope="module")
def results(tmp_path_factory, job_config):
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    return _launch(sys.executable, 4, CASES + META_CASES + TRAIN_CASES + RESUME_CASES + list(RECOMPUTE_CASES)
                   + BF16_CASES + GUARDED_CASES + OUTLIER_CASES + JOB_CASES,
                   tmp_path_factory.mktemp("parallel") / "results.json",
                   job_config)


@pytest.fixture(scope="module")
def job_one_device(job_config, tmp_path_factory):
    from mindspeed_mm.osp.training.config import load_config
    from mindspeed_mm.osp.training.job import train
    from train_helpers import metrics

    out = tmp_path_factory.mktemp("job_one") / "run"
    assert train(load_config(job_config), out, resume="none") == 0
    return {"output": out, "metrics": metrics(out)}


@pytest.mark.parametrize("case", JOB_CASES)
def test_osp_train_under_a_layout_matches_one_device(results, job_one_device, case):
    r = results[case]
    one = job_one_device["metrics"]
    assert r["exit_code"] == 0 and len(r["loss"]) == len(one) == 3
    assert r["action"] == [e["action"] for e in one]
    assert max(abs(a - e["loss"]) for a, e in zip(r["loss"], one)) <= TRAIN_TOL
    assert max(abs(a - e["grad_norm"]) for a, e in zip(r["grad_norm"], one)) <= TRAIN_TOL
    assert len({round(e["loss"], 6) for e in one}) == 3   # three different batches, not one repeated


def test_job_checkpoint_of_a_layout_exports_the_one_device_weights(results, job_one_device):
    """`osp convert` reads a checkpoint saved under TP2+SP (DP2) into the one-device state dict: trained and EMA
    weights equal the one-process run's."""
    from mindspeed_mm.osp.training.export import read_training_checkpoint

    exported = {}
    for ema in (False, True):
        _, one, _ = read_training_checkpoint(job_one_device["output"], ema=ema)
        _, sharded, _ = read_training_checkpoint(results["job/tp2_sp"]["output"], ema=ema)
        assert one.keys() == sharded.keys()
        assert max(float((one[k].float() - sharded[k].float()).abs().max()) for k in one) <= WEIGHT_TOL
        exported[ema] = one
    assert max(float((exported[True][k] - exported[False][k]).abs().max()) for k in exported[True]) > 1e-4


@pytest.mark.parametrize("case", CASES)
def test_layout_matches_single_device(results, case):
    result = results[case]
    assert result["reference_abs_mean"] > 1e-2  # a non-trivial output
    assert result["forward_max_diff"] <= FORWARD_TOL
    assert result["state_dict_keys_equal"] and result["state_dict_max_diff"] == 0.0
    if "official_max_diff" in result:
        assert result["official_max_diff"] <= OFFICIAL_TOL


@pytest.mark.parametrize("case", META_CASES)
def test_model_built_on_meta_device_loads_only_its_share(results, case):
    result = results[case]
    assert "no weights yet" in result["not_loaded_error"]  # forward before loading is refused
    assert result["official_max_diff"] <= OFFICIAL_TOL
    # about 1/4 of the weights with 4 ranks (replicated embeddings and norms add a little); a rank that built
    # the whole model would hold 1.0
    assert result["largest_rank_share"] < 0.4


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_training_matches_single_device(results, case):
    result = results[case]
    assert result["weights_moved"] > 1e-3  # the steps did change the weights
    assert result["loss_max_diff"] <= TRAIN_TOL
    assert result["grad_norm_max_diff"] <= TRAIN_TOL
    assert result["weight_max_diff"] <= WEIGHT_TOL


@pytest.mark.parametrize("case", GUARDED_CASES)
def test_guarded_step_matches_one_device(results, case):
    r = results[case]
    assert r["actions"] == r["reference_actions"] == ["keep", "keep", "clip", "keep"]
    assert r["clipped_norm_rel_diff"] < 1e-5       # the applied gradients have the threshold's norm
    assert r["loss_max_diff"] < TRAIN_TOL and r["grad_norm_max_rel_diff"] < TRAIN_TOL
    assert r["weight_max_diff"] < WEIGHT_TOL and r["ema_max_diff"] < WEIGHT_TOL
    # the EMA is its own average, not a copy of the weights (one CI run measured a ratio of 64)
    assert r["ema_vs_weights"] > 10 * r["ema_max_diff"]


def test_rank_outlier_drop_matches_the_rule_on_one_device(results):
    """Each DP rank's local gradient norm (TP-summed, before the reduction) equals its shard's norm on one device;
    the dropped ranks and the statistics follow the rule (tests/parallel/run_cases.py::_reference_outlier); the
    weights equal those of Adam steps on the survivors' mean gradient, i.e. rank 0's alone at the spike."""
    r = results["toy/outlier_tp2_sp"]
    assert r["dropped"] == r["reference_dropped"] == [[], [], [1], [], [0, 1], []]
    assert r["actions"] == ["keep"] * 4 + ["skip: every rank's gradient is an outlier", "keep"]
    assert r["counts"] == {"steps_with_drops": 1, "ranks_dropped": 1, "all_dropped": 1}
    assert r["spike_over_bound"] > 2                       # the spike is well above ema + 3 sqrt(var)
    assert r["norm_max_rel_diff"] < TRAIN_TOL and r["stats_max_rel_diff"] < TRAIN_TOL
    assert r["weight_max_diff"] < WEIGHT_TOL < r["weight_diff_vs_other_rule"] / 10


def test_without_the_rank_outlier_drop_the_spike_goes_through(results):
    r = results["toy/spike_tp2_sp"]
    assert r["actions"] == ["keep"] * 6 and r["reference_dropped"] == [[]] * 6
    assert r["weight_max_diff"] < WEIGHT_TOL < r["weight_diff_vs_other_rule"] / 10


@pytest.mark.parametrize("case", BF16_CASES)
def test_bf16_training_stays_near_fp32(results, case):
    """Measured (v1.5 SUV fixture, TP2+SP+PP2, losses 1.13 -> 0.72, grad norms ~1.7, lr 1e-3): vs fp32 on one
    device, losses 3.3e-3, grad norms 6.6e-3, weights 7.2e-3. That gap is bf16 itself, mostly the rounding of the
    initial weights: megatron's fp32 main weights start from the bf16 model's weights, while the fp32 reference
    starts from the unrounded ones. The same mixed-precision steps on one device from the rounded weights are
    within 1.3e-4 (losses), 5.0e-4 (grad norms) and 3.9e-3 (weights, half the bf16 spacing of 7.8e-3 in [1, 2))
    of the engine. Tolerances: about 3x the measured figures, weights 2 (vs fp32) and 1 (vs bf16) bf16 spacings.
    Weights move only 3.3e-3 in 3 steps, below the weight tolerance: the losses (which drop by 0.4) are what
    catch an engine that does not train."""
    result = results[case]
    assert result["loss_max_diff"] <= 1e-2 and result["grad_norm_max_diff"] <= 2e-2
    assert result["weight_max_diff"] <= 2 * 2 ** -7
    one = result["vs_one_device_bf16"]
    assert one["loss_max_diff"] <= 5e-4 and one["grad_norm_max_diff"] <= 2e-3
    assert one["weight_max_diff"] <= 2 ** -7
    assert "parameters are torch.float32 but bf16=True: build the model in bfloat16" in result["dtype_error"]


@pytest.mark.parametrize("case", RECOMPUTE_CASES)
def test_recompute_changes_nothing_but_the_work(results, case):
    result = results[case]
    assert result["recompute_block_runs"] - result["block_runs"] == RECOMPUTE_CASES[case]  # blocks did rerun
    assert result["weights_moved"] > 1e-3
    assert result["loss_max_diff"] <= TRAIN_TOL and result["grad_norm_max_diff"] <= TRAIN_TOL
    assert result["weight_max_diff"] <= TRAIN_TOL


def _check_resume(case: str, result: dict) -> None:
    save_layout, *loads = case.partition("resume_")[2].split("-")
    assert result["first_loss_max_diff"] <= TRAIN_TOL and result["first_lr_max_diff"] <= 1e-12
    assert result["latest"] == "2"
    assert "already exists" in result["overwrite_error"]  # a second save of iteration 2 is refused
    assert "lr_decay_steps': (9, 8)" in result["schedule_error"]  # another schedule is refused, naming the setting
    for layout in loads:
        r = result[layout]
        assert r["iteration"] == 2 and r["extra_equal"], layout
        assert r["adam_steps"] == [4.0, 4.0], layout  # per parameter, not one shared counter
        assert r["lr_max_diff"] <= 1e-12, layout  # the scheduler goes on from step 2, not from warmup
        assert r["loss_max_diff"] <= TRAIN_TOL, layout
        assert r["weight_max_diff"] <= WEIGHT_TOL, layout
        # RNG states are per rank: restored (same draws as the uninterrupted run) only under the saved layout
        assert r["rng_restored"] == (layout == save_layout), layout
        if layout == save_layout:
            assert r["draws_max_diff"] == 0.0, layout


@pytest.mark.parametrize("case", RESUME_CASES)
def test_checkpoint_reloads_under_other_layouts(results, case):
    _check_resume(case, results[case])


def test_checkpoints_are_written_without_forking(results):
    # the launch saved several distributed checkpoints (resume and job cases) on every rank; megatron's own writer
    # forks per file bucket, and a fork beside gloo's threads once deadlocked a rank in CI
    assert results["forks"] == 0


def test_world_size_error_names_the_numbers(results):
    assert "world size 4 is not divisible by tensor_parallel 3" in results["world_size_error"]


@pytest.mark.skipif(not OTHER_MEGATRON_PYTHON, reason="set OSP_MEGATRON_ALT_PYTHON to a Python whose environment "
                    "has another megatron-core (e.g. 0.12.1) to run these cases there too")
def test_other_megatron_version(tmp_path):
    results = _launch(OTHER_MEGATRON_PYTHON, 2, ALT_CASES, tmp_path / "results.json")
    for case in ALT_CASES:
        r = results[case]
        if "resume_" in case:
            _check_resume(case, r)
        elif "forward_max_diff" in r:
            assert r["forward_max_diff"] <= FORWARD_TOL and r["state_dict_max_diff"] == 0.0, case
        else:
            assert r["loss_max_diff"] <= TRAIN_TOL and r["weight_max_diff"] <= WEIGHT_TOL, case


def test_recompute_argument_errors_name_the_fix():
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    from mindspeed_mm.osp.parallel.shard import recompute_count
    assert (recompute_count("full", 4), recompute_count("none", 4), recompute_count(3, 4)) == (4, 0, 3)
    with pytest.raises(ValueError, match="each pipeline stage holds 4; use at most 4 or 'full'"):
        recompute_count(5, 4)
    with pytest.raises(ValueError, match="'full', 'none' or a number of blocks"):
        recompute_count("selective", 4)
