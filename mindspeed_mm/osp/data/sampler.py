"""Bucket-grouped batch sampler: every step, all data-parallel ranks get samples of one bucket (one shape).

An epoch plan is built like this: each bucket's items are shuffled with `np.random.default_rng([seed, epoch])`
and cut into *global batches* of `dp_size * mb[b]` items (`mb[b]` = `micro_batch_size`, or
`max(1, batch_tokens // tokens_per_bucket[b])` in token-budget mode). A last partial global batch is topped up by
repeating the bucket's shuffled items from the start (so buckets smaller than one global batch train too), or
dropped with `drop_last=True`. Then the order of all global batches is shuffled with the same generator. Rank r
takes items `[r * mb, (r + 1) * mb)` of each global batch.

Epochs: `set_epoch(e)` jumps to the start of epoch e (calling it with the current epoch does nothing, so a
resumed position survives the usual `set_epoch` at the top of the epoch loop). An `__iter__` call that finds the
current epoch fully yielded starts the next epoch, so a plain `for epoch: for batch in loader:` loop works too.

Resume rule: the state names the epoch, the saved layout (dp size, micro-batch per bucket, drop_last), how many
global batches of the epoch plan were consumed, and `consumed_before`, the items consumed before that plan began
(None for an ordinary epoch). Under the same layout the plan is rebuilt and the consumed batches skipped, so the
following batches are exactly those of an uninterrupted run. Under another layout the saved plan is rebuilt, the
items of its consumed batches (top-up duplicates count once) join `consumed_before`, and the rest of the epoch is
planned from the remaining items only, with the generator `[seed, epoch, RESUME_TAG]`: within that epoch no
consumed item repeats (top-ups come from the remaining items) and none is lost. The state saved in such a resumed
epoch carries the grown `consumed_before`, so it resumes the same way; later epochs are ordinary (as is an epoch
resumed under another layout before any of its batches was consumed).
"""
from __future__ import annotations

import base64
import hashlib
import logging
from typing import Iterator, Sequence

import numpy as np

RESUME_TAG = 0x5E5  # third seed word of plans that continue a partly consumed epoch under a new layout


def bucket_micro_batches(num_buckets: int, micro_batch_size: int = 1, batch_tokens: int | None = None,
                         tokens_per_bucket: Sequence[int] | None = None) -> list[int]:
    """Per-rank micro-batch size of every bucket id `0..num_buckets-1`."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if batch_tokens is None:
        return [micro_batch_size] * num_buckets
    if micro_batch_size != 1:
        raise ValueError("give micro_batch_size or batch_tokens, not both")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    if tokens_per_bucket is None:
        raise ValueError("batch_tokens needs tokens_per_bucket (tokens of one sample of each bucket)")
    if len(tokens_per_bucket) < num_buckets:
        raise ValueError(f"tokens_per_bucket has {len(tokens_per_bucket)} entries, bucket ids go up to "
                         f"{num_buckets - 1}")
    tokens = [int(t) for t in tokens_per_bucket[:num_buckets]]
    if min(tokens, default=1) < 1:
        raise ValueError("tokens_per_bucket entries must be >= 1")
    return [max(1, batch_tokens // t) for t in tokens]


def steps_per_epoch(bucket_counts: dict[int, int] | Sequence[int], dp_size: int, micro_batch_size: int = 1,
                    batch_tokens: int | None = None, tokens_per_bucket: Sequence[int] | None = None,
                    drop_last: bool = False) -> int:
    """Global batches (training steps) of one ordinary epoch, as `GroupedBatchSampler` plans them."""
    counts = dict(bucket_counts) if isinstance(bucket_counts, dict) else dict(enumerate(bucket_counts))
    if dp_size < 1:
        raise ValueError(f"dp_size must be >= 1, got {dp_size}")
    mb = bucket_micro_batches(max(counts, default=-1) + 1, micro_batch_size, batch_tokens, tokens_per_bucket)
    steps = 0
    for bucket, count in counts.items():
        size = dp_size * mb[bucket]
        steps += count // size if drop_last else -(-count // size)
    return steps


class GroupedBatchSampler:
    """`batch_sampler` yielding, per step, this rank's `[(item_index, bucket_id), ...]`; see the module docstring."""

    def __init__(self, bucket_of: np.ndarray, *, micro_batch_size: int = 1, dp_size: int = 1, dp_rank: int = 0,
                 seed: int = 0, batch_tokens: int | None = None, tokens_per_bucket: Sequence[int] | None = None,
                 drop_last: bool = False, logger: logging.Logger | None = None):
        bucket_of = np.asarray(bucket_of)
        if bucket_of.ndim != 1 or not np.issubdtype(bucket_of.dtype, np.integer):
            raise ValueError(f"bucket_of must be a 1-D integer array, got {bucket_of.dtype} {bucket_of.shape}")
        if bucket_of.size and bucket_of.min() < -1:
            raise ValueError("bucket_of holds ids below -1 (use -1 for dropped items)")
        if dp_size < 1:
            raise ValueError(f"dp_size must be >= 1, got {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} out of range for dp_size {dp_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.bucket_of = bucket_of.astype(np.int64)
        self.dp_size, self.dp_rank, self.seed, self.drop_last = dp_size, dp_rank, int(seed), drop_last
        self.micro_batch_size, self.batch_tokens = micro_batch_size, batch_tokens
        self.logger = logger or logging.getLogger(__name__)
        kept = np.flatnonzero(self.bucket_of >= 0)
        if kept.size == 0:
            raise ValueError("no items left: every entry of bucket_of is -1")
        self.micro_batches = bucket_micro_batches(int(self.bucket_of.max()) + 1, micro_batch_size, batch_tokens,
                                                  tokens_per_bucket)
        by_bucket = kept[np.argsort(self.bucket_of[kept], kind="stable")]
        ids, starts = np.unique(self.bucket_of[by_bucket], return_index=True)
        self.items_by_bucket = dict(zip(ids.tolist(), np.split(by_bucket, starts[1:])))
        self.fingerprint = hashlib.sha1(self.bucket_of.astype("<i8").tobytes()).hexdigest()
        counts = {b: len(items) for b, items in self.items_by_bucket.items()}
        self.batches_per_epoch = steps_per_epoch(counts, dp_size, micro_batch_size, batch_tokens,
                                                 tokens_per_bucket, drop_last)
        if self.batches_per_epoch == 0:
            raise ValueError("no items left: drop_last drops every bucket (each is smaller than a global batch)")
        if batch_tokens is not None:
            oversize = [b for b in counts if tokens_per_bucket[b] > batch_tokens]
            if oversize:
                self.logger.warning("buckets %s: one sample exceeds batch_tokens=%d; they train one sample "
                                    "per rank", oversize, batch_tokens)
        self.epoch = 0
        self.topped_up = 0  # duplicates added to the current epoch plan
        self._consumed_before: np.ndarray | None = None  # bool mask, items consumed before the plan began
        self._plan: list[np.ndarray] | None = None
        self._position = 0  # plan batches consumed when the current iteration began
        self._yielded = 0  # batches yielded by the current iteration

    def _layout(self) -> tuple:
        return self.dp_size, list(self.micro_batches), self.drop_last

    def _build_plan(self, epoch: int, consumed_before: np.ndarray | None, dp_size: int,
                    micro_batches: Sequence[int], drop_last: bool) -> tuple[list[np.ndarray], int]:
        """Global batches of `epoch` over the items not in `consumed_before`, and the number of top-ups."""
        rng = np.random.default_rng([self.seed, epoch] if consumed_before is None
                                    else [self.seed, epoch, RESUME_TAG])
        batches, topped_up = [], 0
        for bucket, items in self.items_by_bucket.items():
            if consumed_before is not None:
                items = items[~consumed_before[items]]
            size = dp_size * micro_batches[bucket]
            order = rng.permutation(items)
            short = -len(order) % size
            if short and drop_last:
                order = order[:len(order) - len(order) % size]
            elif short:
                order, topped_up = np.resize(order, len(order) + short), topped_up + short
            batches.extend(order.reshape(-1, size))
        return [batches[i] for i in rng.permutation(len(batches))], topped_up

    def _current_plan(self) -> list[np.ndarray]:
        if self._plan is None:
            self._plan, self.topped_up = self._build_plan(self.epoch, self._consumed_before, *self._layout())
            self.logger.info("epoch %d: %d global batches, %d top-up duplicates", self.epoch, len(self._plan),
                             self.topped_up)
        return self._plan

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (no-op when it is the current epoch)."""
        if epoch != self.epoch:
            self.epoch, self._position, self._yielded = int(epoch), 0, 0
            self._consumed_before, self._plan = None, None

    def next_epoch(self) -> int:
        """The epoch the next `__iter__` yields from (the next one once the current epoch is fully yielded)."""
        done = self._position + self._yielded >= len(self._current_plan())
        return self.epoch + 1 if done else self.epoch

    def __len__(self) -> int:
        """Batches the next `__iter__` yields: the rest of this epoch, or the next epoch once this one is done."""
        left = len(self._current_plan()) - self._position - self._yielded
        return left if left > 0 else self.batches_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        self._position += self._yielded
        self._yielded = 0
        if self._position >= len(self._current_plan()):
            self.set_epoch(self.epoch + 1)
        return self._iterate(self._current_plan()[self._position:])

    def _iterate(self, batches: list[np.ndarray]) -> Iterator[list[tuple[int, int]]]:
        for batch in batches:
            bucket = int(self.bucket_of[batch[0]])
            mb = len(batch) // self.dp_size
            self._yielded += 1
            yield [(int(i), bucket) for i in batch[self.dp_rank * mb:(self.dp_rank + 1) * mb]]

    def state_dict(self, consumed_batches: int | None = None) -> dict:
        """JSON-serialisable position; `consumed_batches` = batches the training loop took from the current
        iteration (fewer than yielded when a DataLoader prefetches), default all yielded."""
        consumed = self._yielded if consumed_batches is None else consumed_batches
        if not 0 <= consumed <= self._yielded:
            raise ValueError(f"consumed_batches={consumed_batches}, but this iteration yielded {self._yielded}")
        mask = self._consumed_before
        return {"epoch": self.epoch, "consumed_batches": self._position + consumed, "seed": self.seed,
                "dp_size": self.dp_size, "micro_batch_size": self.micro_batch_size,
                "batch_tokens": self.batch_tokens, "micro_batches": list(self.micro_batches),
                "drop_last": self.drop_last, "fingerprint": self.fingerprint,
                "consumed_before": None if mask is None else base64.b64encode(np.packbits(mask)).decode()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (its seed is adopted); see the resume rule in the module docstring."""
        if state["fingerprint"] != self.fingerprint:
            raise ValueError("sampler state was saved for a different dataset or bucket assignment "
                             f"(bucket_of fingerprint {state['fingerprint']}, this one {self.fingerprint})")
        consumed_before = state["consumed_before"]
        if consumed_before is not None:
            packed = np.frombuffer(base64.b64decode(consumed_before), dtype=np.uint8)
            consumed_before = np.unpackbits(packed, count=len(self.bucket_of)).astype(bool)
        self.seed, self.epoch, self._yielded = state["seed"], state["epoch"], 0
        saved_layout = (state["dp_size"], list(state["micro_batches"]), state["drop_last"])
        saved_plan, _ = self._build_plan(self.epoch, consumed_before, *saved_layout)
        consumed = state["consumed_batches"]
        if not 0 <= consumed <= len(saved_plan):
            raise ValueError(f"state consumed {consumed} batches, its epoch plan has {len(saved_plan)}")
        if saved_layout == self._layout():
            self._consumed_before, self._plan, self._position = consumed_before, None, consumed
            return
        done = np.zeros(len(self.bucket_of), dtype=bool) if consumed_before is None else consumed_before.copy()
        for batch in saved_plan[:consumed]:
            done[batch] = True
        self._consumed_before = done if done.any() else None
        self._plan, self._position = None, 0
