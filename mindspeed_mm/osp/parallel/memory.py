"""`osp plan`: a per-rank memory estimate for a parallel layout (parameters, gradients, optimizer, activations).

Counting is exact for parameters (the preset is built on the meta device and split with the same plan as
`parallelize`); activations are an estimate (Korthikanti et al. 2022, "Reducing activation recomputation"):
without recompute a block keeps about 34 * s * b * h bytes (bf16, flash attention, SP divides by TP); with full
recompute only each block's bf16 input (2 * s * b * h) plus one block's working set. s counts video + text tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
DEVICES = {"Ascend 910B (64 GB)": 64, "H100 (80 GB)": 80}
RESERVED_GIB = 4.0  # framework, communication buffers, fragmentation


@dataclass
class Estimate:
    params_total: int
    params_rank: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib + RESERVED_GIB


def rank_params(model, plan, tp: int, pp: int) -> tuple[int, int]:
    """(all parameters, parameters on the most loaded rank) for TP x PP."""
    blocks = list(plan.blocks(model))
    per_stage = len(blocks) // pp
    stage_of = {}
    for i, name in enumerate(blocks):
        stage_of[name] = i // per_stage
    for name, i in plan.attached.items():
        stage_of[name] = i // per_stage
    for name in plan.pre:
        stage_of[name] = 0
    for name in plan.post:
        stage_of[name] = pp - 1
    load = [0] * pp
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        module = name.rpartition(".")[0]
        kind = plan.kind_of(module)
        n = p.numel() // tp if kind is not None and not (kind == "row" and name.endswith(".bias")) else p.numel()
        owner = next((stage_of[k] for k in stage_of if name == k or name.startswith(k + ".")), 0)
        load[owner] += n
    return total, max(load)


def estimate(model, plan, *, tp, pp, cp, dp, tokens, text_tokens, hidden, micro_batch, recompute,
             num_microbatches_in_flight=None) -> Estimate:
    total, local = rank_params(model, plan, tp, pp)
    weights = 2 * local                      # bf16 model weights
    grads = 4 * local                        # fp32 gradient buffer (accumulate/all-reduce in fp32)
    optimizer = 12 * local / dp              # fp32 main weights + Adam m, v; sharded by the distributed optimizer
    s = (tokens + text_tokens) / cp
    layers = len(list(plan.blocks(model))) // pp
    in_flight = num_microbatches_in_flight or pp  # 1F1B keeps up to PP micro-batches on the first stage
    block_working = 34 * s * micro_batch * hidden / tp
    if recompute == "full":
        activations = in_flight * layers * 2 * s * micro_batch * hidden / tp + block_working
    else:
        activations = in_flight * layers * block_working
    return Estimate(total, local, weights / GIB, grads / GIB, optimizer / GIB, activations / GIB)


def latent_tokens(frames: int, height: int, width: int, vae=(8, 8, 8), patch=(1, 2, 2)) -> int:
    t = (frames - 1) // vae[0] + 1
    return (t // patch[0]) * (height // vae[1] // patch[1]) * (width // vae[2] // patch[2])
