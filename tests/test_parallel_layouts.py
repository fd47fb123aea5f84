"""Parallel layouts equal the single-device model (CPU, gloo): one torchrun launch per world size.

tests/parallel/run_cases.py runs every layout in one process group and reports max differences as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORWARD_TOL = 1e-5

TOY_CASES_4 = ["tp2", "tp2_sp", "tp4", "tp4_sp", "pp2", "pp2_vpp2", "cp2", "cp4", "tp2_pp2", "tp2_cp2",
               "tp2_sp_cp2", "tp2_sp_pp2", "pp2_cp2"]


def _torchrun(nproc: int, cases, tmp_path: Path, model: str = "toy") -> dict:
    out = tmp_path / f"result_{model}_{nproc}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "0",
           str(ROOT / "tests" / "parallel" / "run_cases.py"), "--model", model, "--out", str(out), "--cases", *cases]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory):
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    return _torchrun(4, TOY_CASES_4, tmp_path_factory.mktemp("toy"))


@pytest.mark.parametrize("case", TOY_CASES_4)
def test_toy_layout_matches_single_device(toy_results, case):
    result = toy_results[case]
    assert "error" not in result, result.get("trace")
    assert result["reference_abs_mean"] > 1e-2  # a non-trivial output
    assert result["forward_max_diff"] <= FORWARD_TOL
    assert result["state_dict_keys_equal"] and result["state_dict_max_diff"] == 0.0
