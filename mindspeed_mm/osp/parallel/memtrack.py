"""Peak tensor memory of one CPU training step, for checking the `osp plan` estimate (no CUDA needed).

`StorageTracker` is a TorchDispatchMode: every tensor an op returns (forward, backward, optimizer) is looked
up by its storage; a new storage adds its size and a `weakref.finalize` on it subtracts the size when it is freed.
Storages alive before the step (weights, gradients, optimizer states, inputs) are counted as the baseline. This
counts tensor bytes exactly, unlike ru_maxrss (malloc arenas, the Python heap, page granularity).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 1024 ** 2


class StorageTracker(TorchDispatchMode):
    def __init__(self, persistent=()):
        super().__init__()
        self.live: dict[int, int] = {}
        for t in persistent:
            self.live.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
        self.baseline = self.current = sum(self.live.values())
        self.peak = self.current

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._freed, key)
        self.peak = max(self.peak, self.current)
        return out


def tiny_inputs(model, frames: int, size: int, text_tokens: int, seed: int = 0) -> dict:
    """Random inputs (batch 1, no padding masks) for a denoiser: latent frames x size x size, text tokens."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    inputs = {"hidden_states": torch.randn(1, cfg.in_channels, frames, size, size, generator=g),
              "timestep": torch.tensor([500.0]),
              "encoder_hidden_states": torch.randn(1, text_tokens, cfg.caption_channels, generator=g)}
    if hasattr(cfg, "pooled_projection_dim"):
        inputs["pooled_projections"] = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    return inputs


def _train_step(model, plan, inputs, optimizer, recompute: bool) -> None:
    from torch.utils.checkpoint import checkpoint
    state = plan.embed(model, inputs)
    for i in range(len(plan.blocks(model))):
        if recompute:
            state = checkpoint(plan.run_block, model, i, state, use_reentrant=False)
        else:
            state = plan.run_block(model, i, state)
    out = plan.finish(model, plan.head(model, state), inputs)
    out.float().pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)   # gradients stay allocated, like Megatron's gradient buffer


@dataclass
class Measured:
    persistent_mib: float   # weights + gradients + optimizer states + inputs, before the step
    peak_mib: float         # peak of all tensor storages during the step


def measure_step(model, plan, inputs, *, recompute: bool) -> Measured:
    """Peak tensor memory of the second fp32 training step (AdamW states exist from the first)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _train_step(model, plan, inputs, optimizer, recompute)
    persistent = [p for p in model.parameters()] + [p.grad for p in model.parameters()]
    persistent += [t for st in optimizer.state.values() for t in st.values() if isinstance(t, torch.Tensor)]
    persistent += list(model.buffers()) + [t for t in inputs.values() if isinstance(t, torch.Tensor)]
    tracker = StorageTracker(persistent)
    with tracker:
        _train_step(model, plan, inputs, optimizer, recompute)
    return Measured(tracker.baseline / MIB, tracker.peak / MIB)
