"""EMA of the weights, kept in the distributed optimizer's shards.

Each rank holds the fp32 EMA of exactly the main-weight slices its distributed optimizer owns (1 / (DP x CP) of
its TP/PP part), so the EMA costs what one Adam moment costs and is never gathered during training. The update
follows the optimizer step, on the fp32 main weights (as MindSpeed's fused EMA-AdamW for v1.5):

    ema <- d ema + (1 - d) w,   d = min(decay, (1 + k) / (10 + k)) for update k = 1, 2, ...   (warmup "v1.5")
                                d = min(decay, k / (9 + k))        (warmup "v1.3": diffusers' EMAModel)
                                d = decay                          (warmup "none")

The update count is saved with the checkpoint (the official v1.5 code restarts the warm-up on every resume).
`local_tensors()` assembles the model-shaped EMA of this rank's TP/PP part (one all-reduce over the data-parallel
group per tensor, for checkpoints and export only); `parallel.full_state_dict(pmodel, local=...)` turns that into
the official layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

WARMUPS = ("v1.5", "v1.3", "none")


@dataclass
class _Slice:
    name: str
    param: torch.nn.Parameter   # the model's (TP/PP-local) parameter
    main: torch.Tensor          # the distributed optimizer's fp32 main-weight shard of it
    start: int                  # the shard's range in the flattened parameter
    end: int


def _distributed_optimizers(optimizer) -> list:
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    if not all(hasattr(opt, "model_param_group_index_map") for opt in inner):
        raise ValueError("the sharded EMA needs megatron's distributed optimizer "
                         "(parallel.make_optimizer(..., distributed=True), the default)")
    return inner


class ShardedEMA:
    def __init__(self, pmodel, optimizer, decay: float = 0.9999, warmup: str = "v1.5"):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup not in WARMUPS:
            raise ValueError(f"EMA warmup {warmup!r} is not one of {WARMUPS}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.params = dict(pmodel.model.named_parameters())
        optimizers = _distributed_optimizers(optimizer)
        self.group = optimizers[0].data_parallel_group
        self.slices = []
        for name, param in self.params.items():
            for opt in optimizers:
                if param in opt.model_param_group_index_map:
                    g, o = opt.model_param_group_index_map[param]
                    r = opt._get_model_param_range_map(param)["param"]
                    self.slices.append(_Slice(name, param, opt.optimizer.param_groups[g]["params"][o],
                                              r.start, r.end))
        self.shadow = [s.main.detach().float().clone() for s in self.slices]

    def decay_at(self, k: int) -> float:
        """The decay of update number k (1-based)."""
        if self.warmup == "v1.5":
            return min(self.decay, (1 + k) / (10 + k))
        if self.warmup == "v1.3":
            return min(self.decay, k / (9 + k))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Take the optimizer's current main weights in; call after each applied optimizer step."""
        self.num_updates += 1
        d = self.decay_at(self.num_updates)
        if self.shadow:
            torch._foreach_lerp_(self.shadow, [s.main.detach().float() for s in self.slices], 1.0 - d)

    @torch.no_grad()
    def local_tensors(self) -> dict:
        """name -> this rank's TP/PP part of the EMA weights (shaped like the parameter, fp32); collective over the
        data-parallel group, every rank calls it."""
        owned = {s.name: (s, t) for s, t in zip(self.slices, self.shadow)}
        out = {}
        for name, param in self.params.items():
            flat = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
            if name in owned:
                s, t = owned[name]
                flat[s.start:s.end] = t
            torch.distributed.all_reduce(flat, group=self.group)
            out[name] = flat.view(param.shape)
        return out

    @torch.no_grad()
    def load_local_tensors(self, tensors: dict) -> None:
        """The inverse of `local_tensors`: keep this rank's slices of model-shaped EMA tensors."""
        missing = sorted(set(self.params) - set(tensors))
        if missing:
            raise KeyError(f"EMA tensors are missing for {len(missing)} parameter(s), e.g. {missing[:3]}")
        for s, t in zip(self.slices, self.shadow):
            t.copy_(tensors[s.name].reshape(-1)[s.start:s.end])

    def state_dict(self) -> dict:
        """The scalars; the tensors travel through `local_tensors` in the distributed checkpoint."""
        return {"num_updates": self.num_updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        if (state["decay"], state["warmup"]) != (self.decay, self.warmup):
            raise ValueError(f"the checkpoint's EMA used decay {state['decay']} / warmup {state['warmup']!r}, this run "
                             f"{self.decay} / {self.warmup!r}; set ema.decay and ema.warmup to the checkpoint's")
        self.num_updates = int(state["num_updates"])
