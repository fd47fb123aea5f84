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
from dataclasses import dataclass, field

ON_EXTREME = ("skip", "clip", "stop")


def update_statistics(ema: float, var: float, value: float, decay: float) -> tuple[float, float]:
    """One step of the running gradient-norm statistics (the v1.5 rule's order): the EMA first, then the variance
    around the updated EMA."""
    ema = decay * ema + (1 - decay) * value
    return ema, decay * var + (1 - decay) * (ema - value) ** 2


class NormStatistics:
    """Checkpointed state of a rule that keeps running gradient-norm statistics (`ema`, `var`, `started`) and
    counters (`counts`)."""

    def state_dict(self) -> dict:
        return {"ema": self.ema, "var": self.var, "started": self.started, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.var = float(state["ema"]), float(state["var"])
        self.started, self.counts = bool(state["started"]), dict(state["counts"])


@dataclass
class ClipDecision:
    """What to do with this step's gradients: scale them by `scale` (1.0 = untouched) or skip the step."""
    action: str               # "keep", "clip", "skip" or "stop"
    scale: float = 1.0
    threshold: float = math.inf


@dataclass
class AdaptiveGradClip(NormStatistics):
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
            self.ema, self.var = update_statistics(self.ema, self.var, grad_norm, self.decay)
            self.counts["kept"] += 1
            return ClipDecision("keep", 1.0, threshold)
        if grad_norm <= self.extreme_bound() or self.on_extreme == "clip":
            self.counts["clipped"] += 1
            return ClipDecision("clip", threshold / grad_norm, threshold)
        self.counts["extreme"] += 1
        return ClipDecision(self.on_extreme, 0.0, threshold)


# ---------------------------------------------------------------------------------------------------- v1.3 rank drop
@dataclass
class RankDropDecision:
    """One step's per-rank verdict: the local gradient norms of the N data-parallel ranks (before the reduction),
    the ranks whose gradient is zeroed, the factor N/M on the M survivors (0 when none survives) and the bound."""
    norms: list
    dropped: list
    scale: float
    threshold: float

    @property
    def all_dropped(self) -> bool:
        return len(self.dropped) == len(self.norms)


@dataclass
class RankOutlierDrop(NormStatistics):
    """The Open-Sora Plan v1.3 paper's per-rank outlier drop, applied to each data-parallel rank's own gradient
    right before the data-parallel reduction.

    With `gn_i` the norm of rank i's local gradient: rank i's gradient is zeroed when `gn_i - ema > 3 sqrt(var)`
    (or `gn_i` is not finite), and the M survivors are multiplied by N/M, so the reduced gradient is the mean over
    the survivors. The statistics follow the maximum over ranks, `m = max_i gn_i` taken over the ranks kept (all of
    them when none is dropped, so a dropped spike does not inflate the EMA): `ema <- d ema + (1 - d) m`, then
    `var <- d var + (1 - d) (ema - m)^2` with the updated ema (the v1.5 rule's order), d = 0.99. The paper gives
    no start: the first step starts `ema = 3 max_i gn_i`, `var = 0` (the v1.5 rule's 3x headroom, without its
    absolute cap), so nothing is dropped on it. Every rank gathers the same N norms and takes the same decision,
    so the statistics are identical everywhere.

    The statistics change only when the step is applied (`commit`), never on a skipped step. When every rank is
    an outlier there is nothing to average: the step is skipped like a non-finite one (counted in `all_dropped`,
    logged, and counted by the skip guard, which stops the run after too many in a row).
    """
    decay: float = 0.99
    sigmas: float = 3.0
    start_factor: float = 3.0
    ema: float = 0.0
    var: float = 0.0
    started: bool = False
    counts: dict = field(default_factory=lambda: {"steps_with_drops": 0, "ranks_dropped": 0, "all_dropped": 0})

    def __post_init__(self):
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"rank outlier drop decay must be in (0, 1), got {self.decay}")
        self._pending = None

    def decide(self, norms) -> RankDropDecision:
        """The verdict for the gathered per-rank norms; the new statistics wait for `commit`."""
        norms = [float(n) for n in norms]
        finite = [n for n in norms if math.isfinite(n)]
        ema, var = (self.ema, self.var) if self.started else ((self.start_factor * max(finite), 0.0) if finite
                                                                else (math.inf, 0.0))
        bound = self.sigmas * math.sqrt(var)
        dropped = [i for i, n in enumerate(norms) if not math.isfinite(n) or n - ema > bound]
        kept = [n for i, n in enumerate(norms) if i not in dropped]
        self._pending = None
        if kept:
            self._pending = (*update_statistics(ema, var, max(kept), self.decay), len(dropped))
        return RankDropDecision(norms, dropped, len(norms) / len(kept) if kept else 0.0, ema + bound)

    def commit(self) -> None:
        """The step of the last decision was applied: take its statistics in."""
        if self._pending is None:
            return
        self.ema, self.var, dropped = self._pending
        self.started, self._pending = True, None
        if dropped:
            self.counts["steps_with_drops"] += 1
            self.counts["ranks_dropped"] += dropped

    def note_all_dropped(self) -> None:
        self.counts["all_dropped"] += 1
        self._pending = None

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._pending = None
