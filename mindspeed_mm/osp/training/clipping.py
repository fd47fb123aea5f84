"""Adaptive gradient clipping (Open-Sora Plan v1.5), with the condition the right way round and its state saved.

The threshold follows the recent gradient norms: an EMA of the norm (decay 0.99) and an EMA of its squared
deviation. For a step's global norm `gn`:

- the first step starts the statistics: `ema = min(3 gn, max_init)`, `var = 0`;
- `gn <= ema + 3 sqrt(var)` (the threshold): no clipping, and the statistics take the step in
  (`ema <- d ema + (1 - d) gn`, then `var <- d var + (1 - d) (ema - gn)^2` with the updated ema, as the official
  code does);
- up to the extreme bound `max(ema + 5 sqrt(var), extreme_floor)`: the gradients are scaled to the threshold and
  the statistics are left as they were;
- above it: `on_extreme` decides: "skip" the step (default; counted, the run stops after too many in a row),
  "clip" it to the threshold like the case above, or "stop" the run (what the official loop does).

Two official bugs are not reproduced: MindSpeed-MM's patch scales by `1 / (clip_coef + 1e-6)` only when the
coefficient is close to 1, so it never clips; and the statistics were not checkpointed, so every resume restarted
them. Non-finite norms never reach `decide` (the step is skipped before), so a NaN cannot poison the EMA.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

ON_EXTREME = ("skip", "clip", "stop")


@dataclass
class ClipDecision:
    """What to do with this step's gradients: scale them by `scale` (1.0 = untouched) or skip the step."""
    action: str               # "keep", "clip", "skip" or "stop"
    scale: float = 1.0
    threshold: float = math.inf


@dataclass
class AdaptiveGradClip:
    decay: float = 0.99
    max_init: float = 1.0          # the first step's ema is min(3 gn, max_init)
    extreme_floor: float = 5.0     # the extreme bound is never below this
    on_extreme: str = "skip"
    ema: float = 0.0
    var: float = 0.0
    started: bool = False
    counts: dict = field(default_factory=lambda: {"kept": 0, "clipped": 0, "extreme": 0})

    def __post_init__(self):
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"adaptive clipping decay must be in (0, 1), got {self.decay}")
        if self.on_extreme not in ON_EXTREME:
            raise ValueError(f"on_extreme {self.on_extreme!r} is not one of {ON_EXTREME}")

    def threshold(self) -> float:
        return self.ema + 3.0 * math.sqrt(self.var)

    def extreme_bound(self) -> float:
        return max(self.ema + 5.0 * math.sqrt(self.var), self.extreme_floor)

    def decide(self, grad_norm: float) -> ClipDecision:
        """The decision for a finite global gradient norm; updates the statistics when the step is kept."""
        if not math.isfinite(grad_norm):
            raise ValueError(f"adaptive clipping got a non-finite gradient norm {grad_norm}; skip the step first")
        if not self.started:
            self.ema, self.var, self.started = min(3.0 * grad_norm, self.max_init), 0.0, True
        threshold = self.threshold()
        if grad_norm <= threshold:
            self.ema = self.decay * self.ema + (1 - self.decay) * grad_norm
            self.var = self.decay * self.var + (1 - self.decay) * (self.ema - grad_norm) ** 2
            self.counts["kept"] += 1
            return ClipDecision("keep", 1.0, threshold)
        if grad_norm <= self.extreme_bound() or self.on_extreme == "clip":
            self.counts["clipped"] += 1
            return ClipDecision("clip", threshold / grad_norm, threshold)
        self.counts["extreme"] += 1
        return ClipDecision(self.on_extreme, 0.0, threshold)

    def state_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in ("ema", "var", "started", "counts")}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.var = float(state["ema"]), float(state["var"])
        self.started, self.counts = bool(state["started"]), dict(state["counts"])
