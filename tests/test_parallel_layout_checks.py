"""Layout errors are raised up front, naming the numbers (no process group needed)."""
from __future__ import annotations

import pytest

from mindspeed_mm.osp import parallel
from mindspeed_mm.osp.parallel.layout import Layout


def test_heads_must_divide_over_tp_times_cp():
    with pytest.raises(ValueError, match=r"24 attention heads .* tensor_parallel 4 x context_parallel 4 = 16"):
        Layout(tensor_parallel=4, context_parallel=4).check_model(heads=24, layers=32)


def test_blocks_must_divide_over_stages():
    with pytest.raises(ValueError, match=r"32 blocks .* pipeline_parallel 3"):
        Layout(pipeline_parallel=3).check_model(heads=24, layers=32)
    with pytest.raises(ValueError, match=r"10 blocks .* virtual_pipeline 2 = 4 stages"):
        Layout(pipeline_parallel=2, virtual_pipeline=2).check_model(heads=4, layers=10)
    Layout(tensor_parallel=2, pipeline_parallel=2, context_parallel=2).check_model(heads=24, layers=32)


def test_sequence_must_divide_under_sp_and_cp():
    with pytest.raises(ValueError, match=r"'x' has 30 tokens, not divisible by 4 .*sequence_parallel"):
        Layout(tensor_parallel=4, sequence_parallel=True).check_sequence("x", 30)
    with pytest.raises(ValueError, match=r"'e' has 7 tokens, not divisible by 2 \(context_parallel 2\)"):
        Layout(context_parallel=2).check_sequence("e", 7)
    Layout(tensor_parallel=4).check_sequence("x", 30)  # no SP: the sequence is not cut


def test_initialize_needs_torch_distributed():
    with pytest.raises(RuntimeError, match="torchrun"):
        parallel.initialize(tensor_parallel=2)
