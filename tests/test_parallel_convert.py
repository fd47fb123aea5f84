"""Megatron TP shard files <-> official state dict (specs/dit.md 7.1 split rules), and `osp reshard`."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from mindspeed_mm.osp import cli  # noqa: E402
from mindspeed_mm.osp.parallel import convert  # noqa: E402
from mindspeed_mm.osp.parallel.commands import plan_for_version  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "dit" / "v15_suv_h4"


@pytest.fixture(scope="module")
def official():
    return {k: v.float() for k, v in load_file(str(FIXTURE / "weights.safetensors")).items()}


def test_split_rules_follow_mindspeed_mm(official):
    plan = plan_for_version("v15")
    key = next(k for k in official if k.endswith("attn1.proj_q.weight"))
    assert convert.split_dim(plan, key) == 0
    assert convert.split_dim(plan, key.replace("proj_q.weight", "proj_out.weight")) == 1
    assert convert.split_dim(plan, key.replace("proj_q.weight", "proj_out.bias")) is None
    assert convert.split_dim(plan, key.replace("attn1.proj_q", "norm1.linear")) == 0
    assert convert.split_dim(plan, key.replace("attn1.proj_q", "ff.net.2")) == 1
    assert convert.split_dim(plan, "norm_out.linear.bias") == 0
    assert convert.split_dim(plan, "patch_embed.proj.weight") is None
    shards = convert.shard(official, plan, 2)
    assert shards[0][key].shape[0] == official[key].shape[0] // 2


def test_reshard_round_trip_and_tp_mismatch_error(official, tmp_path):
    plan = plan_for_version("v15")
    src = tmp_path / "tp2"
    convert.save_megatron(official, plan, 2, src)
    assert (src / "latest_checkpointed_iteration.txt").read_text() == "release"
    assert sorted(p.name for p in (src / "release").iterdir()) == ["mp_rank_00", "mp_rank_01"]
    with pytest.raises(ValueError, match=r"TP=2, this run uses TP=4.*osp.cli reshard --model v15 --tp 4"):
        convert.load_megatron(src, plan, expect_tp=4)
    assert cli.main(["reshard", "--model", "v15", "--tp", "4", str(src), str(tmp_path / "tp4")]) == 0
    back = convert.load_megatron(tmp_path / "tp4", plan, expect_tp=4)
    assert sorted(back) == sorted(official)
    assert all(torch.equal(back[k], official[k]) for k in official)
    with pytest.raises(FileExistsError):
        convert.save_megatron(official, plan, 2, src)
