"""`osp plan` estimate against the measured peak of one fp32 CPU training step on the tiny presets.

    python benchmarks/plan_vs_measured.py

Measured: tensor storages tracked during forward + backward + AdamW step (mindspeed_mm.osp.parallel.memtrack).
Estimate: memory.estimate with precision fp32, TP1 PP1 CP1 DP1, micro-batch 1, without the fixed reserve.
"""
from __future__ import annotations

import torch

from mindspeed_mm.osp.dit.osp13 import OSP13DiT
from mindspeed_mm.osp.dit.suv import SUVDiT
from mindspeed_mm.osp.parallel import memory
from mindspeed_mm.osp.parallel.memtrack import MIB, measure_step, tiny_inputs
from mindspeed_mm.osp.parallel.plans import plan_for

TEXT_TOKENS = 16
# (model class, preset, latent frames, latent size): tokens = frames * (size / 2) ** 2
CASES = [(SUVDiT, "osp15_suv_tiny", 5, 32), (SUVDiT, "osp15_suv_tiny", 9, 32),
         (OSP13DiT, "osp13_tiny", 5, 32), (OSP13DiT, "osp13_tiny", 9, 32)]


def compare(cls, preset: str, frames: int, size: int, recompute: bool) -> dict:
    torch.manual_seed(0)
    model = cls.from_preset(preset, device="cpu").float()
    plan = plan_for(model)
    measured = measure_step(model, plan, tiny_inputs(model, frames, size, TEXT_TOKENS), recompute=recompute)
    tokens = frames * (size // 2) ** 2
    est = memory.estimate(model, plan, tp=1, pp=1, cp=1, dp=1, tokens=tokens, text_tokens=TEXT_TOKENS,
                          hidden=model.config.hidden_size, micro_batch=1,
                          recompute="full" if recompute else "none", precision="fp32")
    est_mib = (est.weights_gib + est.grads_gib + est.optimizer_gib + est.activations_gib) * memory.GIB / MIB
    return {"preset": preset, "tokens": tokens, "recompute": "full" if recompute else "none",
            "estimate_mib": est_mib, "measured_mib": measured.peak_mib, "ratio": est_mib / measured.peak_mib}


def main() -> None:
    torch.set_num_threads(2)
    print(f"{'preset':<16} {'tokens':>6} {'recompute':>9} {'estimate MiB':>13} {'measured MiB':>13} {'ratio':>6}")
    for cls, preset, frames, size in CASES:
        for recompute in (False, True):
            r = compare(cls, preset, frames, size, recompute)
            print(f"{r['preset']:<16} {r['tokens']:>6} {r['recompute']:>9} {r['estimate_mib']:>13.2f} "
                  f"{r['measured_mib']:>13.2f} {r['ratio']:>6.3f}")


if __name__ == "__main__":
    main()
