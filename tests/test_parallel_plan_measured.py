"""`osp plan`'s estimate against the measured peak tensor memory of one fp32 CPU training step (tiny presets)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mindspeed_mm.osp.dit.osp13 import OSP13DiT
from mindspeed_mm.osp.dit.suv import SUVDiT
from mindspeed_mm.osp.parallel.memtrack import StorageTracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from plan_vs_measured import compare  # noqa: E402
from dit_helpers import one_torch_thread  # noqa: E402,F401  (1 thread for the module, restored after)


@pytest.mark.parametrize("cls,preset,recompute", [(SUVDiT, "osp15_suv_tiny", False),
                                                  (OSP13DiT, "osp13_tiny", False),
                                                  (OSP13DiT, "osp13_tiny", True)])
def test_estimate_within_15_percent_of_measured_peak(cls, preset, recompute):
    r = compare(cls, preset, frames=3, size=32, recompute=recompute)
    assert 0.85 <= r["ratio"] <= 1.15, r


def test_tracker_counts_allocations_and_frees():
    a = torch.zeros(1024)  # persistent: 4 KiB
    tracker = StorageTracker([a])
    with tracker:
        b = torch.ones(2048)          # +8 KiB
        c = (b * 2).sum()             # +8 KiB transient product, +4 bytes sum
        del b
        d = torch.ones(256)           # +1 KiB after b's 8 KiB went away
    assert tracker.baseline == 4096
    assert tracker.peak == 4096 + 8192 + 8192 + 4
    assert tracker.current == 4096 + 4 + 1024
    del c, d
