"""`osp plan`: exact per-rank parameter counts from the real 8B preset (meta device) and the memory estimate."""
from __future__ import annotations

import pytest

pytest.importorskip("megatron.core", reason="megatron-core is not installed")

from mindspeed_mm.osp import cli  # noqa: E402
from mindspeed_mm.osp.dit.suv import SUVDiT  # noqa: E402
from mindspeed_mm.osp.parallel import memory  # noqa: E402
from mindspeed_mm.osp.parallel.plans import plan_for  # noqa: E402


def test_rank_parameter_counts_for_the_8b_suv():
    model = SUVDiT.from_preset("osp15_suv_8b", device="meta")
    plan = plan_for(model)
    total, tp1 = memory.rank_params(model, plan, tp=1, pp=1)
    assert total == tp1 == 8_504_661_120  # spec dit.md 3.1
    _, tp4 = memory.rank_params(model, plan, tp=4, pp=1)
    assert total / 4 < tp4 < total / 3.5    # split layers dominate; embeddings, norms, skips stay whole
    _, pp2 = memory.rank_params(model, plan, tp=1, pp=2)
    assert total / 2 <= pp2 < total * 0.6
    assert memory.latent_tokens(121, 576, 1024) == 16 * 36 * 64


def test_osp_plan_command(capsys):
    assert cli.main(["plan", "--preset", "osp15_suv_8b", "--tp", "4", "--dp", "128", "--frames", "121",
                     "--height", "576", "--width", "1024", "--micro-batch", "1", "--recompute", "full"]) == 0
    out = capsys.readouterr().out
    assert "8,504,661,120 parameters" in out and "Ascend 910B (64 GB): fits" in out
    with pytest.raises(SystemExit) as stop:
        cli.main(["plan", "--tp", "16"])
    assert stop.value.code == 2 and "24 attention heads" in capsys.readouterr().err
