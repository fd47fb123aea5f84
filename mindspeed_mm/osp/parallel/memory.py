"""`osp plan`: a per-rank memory estimate for a parallel layout (parameters, gradients, optimizer, activations).

Counting is exact for parameters (the preset is built on the meta device and split with the same plan as
`parallelize`). Activations count what autograd saves for backward in one block, by block type, with flash
attention (no S x S matrix is kept; CPU SDPA, NPU FA and CUDA flash all save q, k, v, output and a per-row
log-sum-exp). In units of tokens x hidden per block:

- adaLN-modulated LayerNorm: 3 (its input, the normalised and the modulated tensor);
- self-attention: 3 (q, k, v after RoPE) + 1 (attention output) + 1 (output projection, kept for the gate),
  + 4 with per-head q/k RMSNorm (v1.5: q and k before and after the norm);
- cross-attention (v1.3, query side only): 3 (its input, q, output);
- feed-forward, GELU, mult 4: 1 (output, kept for the gate) + 2 * 4 (first linear's output and the GELU's).

v1.3 blocks (video tokens): 8 + 3 + 3 + 9 = 23; v1.5 blocks (video + text tokens, joint attention, text FF):
12 + 3 + 9 = 24; v1.5 long-skip merges keep 4 more each. With full recompute only each block's input stays (1)
plus one block's saved set. On top, once: the backward working set of one block (10: output and residual
gradients, FF hidden gradients), the output head (3, video tokens) and the RoPE tables (2 x head_dim wide).
s counts the tokens a block processes; SP divides by TP, CP divides s. `benchmarks/plan_vs_measured.py`
checks the figure against a measured CPU training step of the tiny presets (docs/parallel.md).
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


# Bytes per parameter for weights, gradients and optimizer states (Adam m, v), by training precision.
PRECISIONS = {
    "bf16": (2, 4, 12),   # bf16 weights, fp32 gradient buffer, fp32 main weights + m + v
    "fp32": (4, 4, 8),    # fp32 weights and gradients, m + v
}
ACTIVATION_BYTES = {"bf16": 2, "fp32": 4}


FF_MULT = 4
# One block in backward at a time: the gradients of its output and of the residual stream, and of the FF hidden
# layer (before and after the GELU) while the FF backward runs.
BACKWARD_WORKING = 2 + 2 * FF_MULT


@dataclass
class ActivationModel:
    """Token x hidden tensors kept per token (see the module docstring)."""
    block: float          # saved for backward by one block
    joint: bool           # text tokens go through the blocks too (v1.5 joint attention)
    head: float           # output head (LayerNorm input, normalised, modulated), video tokens
    skip_merge: float     # v1.5 long-skip merge: concat (2) and its LayerNorm output (2), per decoder stage
    skip_merges: int
    rope_width: int       # cos and sin tables of the three axes, per token (shared by all blocks, not split)


def activation_model(model) -> ActivationModel:
    name = type(model).__name__
    adaln, attention, cross, ff = 3, 3 + 1 + 1, 3, 1 + 2 * FF_MULT
    cfg = model.config
    if name == "OSP13DiT":
        return ActivationModel(adaln + attention + cross + adaln + ff, False, 3, 0, 0, 2 * cfg.attention_head_dim)
    if name == "SUVDiT":
        merges = model.mid_stage if cfg.skip_connection else 0
        return ActivationModel(adaln + attention + 4 + adaln + ff, True, 3, 4, merges, 2 * cfg.head_dim)
    raise TypeError(f"no activation model for {name}; add one to memory.activation_model")


def estimate(model, plan, *, tp, pp, cp, dp, tokens, text_tokens, hidden, micro_batch, recompute,
             num_microbatches_in_flight=None, precision="bf16") -> Estimate:
    """Per-rank memory; `precision` "bf16" (mixed precision with fp32 main weights) or "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {sorted(PRECISIONS)}")
    total, local = rank_params(model, plan, tp, pp)
    w_bytes, g_bytes, o_bytes = PRECISIONS[precision]
    weights, grads = w_bytes * local, g_bytes * local
    optimizer = o_bytes * local / dp          # sharded by the distributed optimizer
    act = activation_model(model)
    s = (tokens + (text_tokens if act.joint else 0)) / cp
    all_layers = len(list(plan.blocks(model)))
    layers = all_layers // pp
    in_flight = num_microbatches_in_flight or pp  # 1F1B keeps up to PP micro-batches on the first stage
    unit = ACTIVATION_BYTES[precision] * s * micro_batch * hidden / tp   # one token x hidden tensor
    video_unit = unit * tokens / cp / s
    working = BACKWARD_WORKING * unit + act.head * video_unit
    working += ACTIVATION_BYTES[precision] * tokens / cp * micro_batch * act.rope_width
    if recompute == "full":
        kept = in_flight * layers * unit + act.block * unit   # block inputs (x, and e for v1.5) + one block
    else:
        merges = act.skip_merges * layers / all_layers
        kept = in_flight * (layers * act.block + merges * act.skip_merge) * unit
    return Estimate(total, local, weights / GIB, grads / GIB, optimizer / GIB, (kept + working) / GIB)


def latent_tokens(frames: int, height: int, width: int, vae=(8, 8, 8), patch=(1, 2, 2)) -> int:
    t = (frames - 1) // vae[0] + 1
    return (t // patch[0]) * (height // vae[1] // patch[1]) * (width // vae[2] // patch[2])
