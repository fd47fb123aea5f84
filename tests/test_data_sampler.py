"""GroupedBatchSampler: one bucket per step, coverage and top-ups, token budgets, determinism, resume."""
from __future__ import annotations

import json
import logging
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.data.sampler import GroupedBatchSampler, steps_per_epoch

BUCKET_SIZES = {0: 150, 1: 97, 2: 40, 3: 7, 4: 1}
NUM_DROPPED = 105


@pytest.fixture(scope="module")
def bucket_of() -> np.ndarray:
    ids = np.concatenate([np.full(count, b) for b, count in BUCKET_SIZES.items()] + [np.full(NUM_DROPPED, -1)])
    return np.random.default_rng(7).permutation(ids).astype(np.int64)


def make_ranks(bucket_of, dp_size, **kwargs) -> list[GroupedBatchSampler]:
    return [GroupedBatchSampler(bucket_of, dp_size=dp_size, dp_rank=r, **kwargs) for r in range(dp_size)]


def run(samplers, steps=None) -> list[list[list[tuple[int, int]]]]:
    """Iterate all ranks in lockstep: one entry per step, holding every rank's micro-batch."""
    return [list(step) for step in islice(zip(*[iter(s) for s in samplers]), steps)]


def items_of(steps) -> Counter:
    return Counter(i for step in steps for batch in step for i, _ in batch)


def expected_top_ups(dp_size, micro_batch_size) -> int:
    return sum(-count % (dp_size * micro_batch_size) for count in BUCKET_SIZES.values())


@pytest.mark.parametrize("dp_size", [1, 2, 4])
@pytest.mark.parametrize("micro_batch_size", [1, 3])
def test_one_bucket_per_step_and_full_coverage(bucket_of, dp_size, micro_batch_size):
    samplers = make_ranks(bucket_of, dp_size, micro_batch_size=micro_batch_size, seed=3)
    steps = run(samplers)
    assert len(steps) == len(samplers[0]) == steps_per_epoch(BUCKET_SIZES, dp_size, micro_batch_size)
    for step in steps:
        pairs = [pair for batch in step for pair in batch]
        assert all(len(batch) == micro_batch_size for batch in step)
        assert len({b for _, b in pairs}) == 1
        assert all(bucket_of[i] == b for i, b in pairs)
    counts = items_of(steps)
    kept = set(np.flatnonzero(bucket_of >= 0).tolist())
    assert set(counts) == kept  # every kept item, no dropped one
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates == samplers[0].topped_up == expected_top_ups(dp_size, micro_batch_size)


def test_drop_last_drops_partial_batches(bucket_of):
    steps = run(make_ranks(bucket_of, 2, micro_batch_size=4, drop_last=True))
    counts = items_of(steps)
    assert max(counts.values()) == 1
    assert len(counts) == sum(c - c % 8 for c in BUCKET_SIZES.values())
    assert len(steps) == steps_per_epoch(BUCKET_SIZES, 2, 4, drop_last=True)


def test_global_batches_of_buckets_are_interleaved(bucket_of):
    buckets = [step[0][0][1] for step in run(make_ranks(bucket_of, 2, seed=8))]
    changes = sum(a != b for a, b in zip(buckets, buckets[1:]))
    assert changes > 3 * len(BUCKET_SIZES)


def test_small_dataset_is_topped_up():
    samplers = make_ranks(np.array([0, 0, 0]), 4, micro_batch_size=2)
    steps = run(samplers)
    assert len(steps) == 1 and all(len(batch) == 2 for batch in steps[0])
    assert set(items_of(steps)) == {0, 1, 2} and samplers[0].topped_up == 5


def test_determinism(bucket_of):
    def epoch(seed, e=0):
        sampler = GroupedBatchSampler(bucket_of, micro_batch_size=2, dp_size=2, dp_rank=1, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    assert epoch(5) == epoch(5)
    assert epoch(5) != epoch(6)
    assert epoch(5, 0) != epoch(5, 1)
    assert epoch(5, 1) == epoch(5, 1)


def test_next_iter_starts_next_epoch_and_len(bucket_of):
    sampler = GroupedBatchSampler(bucket_of, micro_batch_size=2, seed=1)
    total = sampler.batches_per_epoch
    it = iter(sampler)
    next(it), next(it)
    assert len(sampler) == total - 2
    next(it)
    assert len(list(it)) == total - 3 and len(sampler) == total
    second = list(sampler)
    assert sampler.epoch == 1
    reference = GroupedBatchSampler(bucket_of, micro_batch_size=2, seed=1)
    reference.set_epoch(1)
    assert second == list(reference)


def test_token_budget(bucket_of, caplog):
    tokens = [100, 250, 1000, 40, 501]
    budget = 500
    with caplog.at_level(logging.WARNING):
        samplers = make_ranks(bucket_of, 2, batch_tokens=budget, tokens_per_bucket=tokens)
    assert "exceeds batch_tokens" in caplog.text
    assert samplers[0].micro_batches == [5, 2, 1, 12, 1]
    steps = run(samplers)
    for step in steps:
        for batch in step:
            bucket = batch[0][1]
            assert len(batch) == max(1, budget // tokens[bucket])
            assert len(batch) == 1 or len(batch) * tokens[bucket] <= budget
    assert len(steps) == steps_per_epoch(BUCKET_SIZES, 2, batch_tokens=budget, tokens_per_bucket=tokens)
    assert set(items_of(steps)) == set(np.flatnonzero(bucket_of >= 0).tolist())


def test_works_as_dataloader_batch_sampler(bucket_of):
    class PairDataset(torch.utils.data.Dataset):
        def __getitem__(self, pair):
            item, bucket = pair
            return item, bucket

    sampler = GroupedBatchSampler(bucket_of, micro_batch_size=4, seed=2)
    loader = torch.utils.data.DataLoader(PairDataset(), batch_sampler=sampler, collate_fn=lambda pairs: pairs)
    assert list(loader) == list(GroupedBatchSampler(bucket_of, micro_batch_size=4, seed=2))


def roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))


@pytest.mark.parametrize("prefetched", [0, 3])
def test_resume_same_layout_is_exact(bucket_of, prefetched):
    kwargs = dict(micro_batch_size=2, seed=11)
    full = run(make_ranks(bucket_of, 2, **kwargs))
    k = 9
    interrupted = make_ranks(bucket_of, 2, **kwargs)
    run(interrupted, k + prefetched)
    states = [s.state_dict(k) for s in interrupted]
    assert states[0] == states[1]
    resumed = make_ranks(bucket_of, 2, **kwargs)
    for sampler in resumed:
        sampler.load_state_dict(roundtrip(states[0]))
        sampler.set_epoch(0)  # the usual call at the top of the epoch loop keeps the position
    assert len(resumed[0]) == len(full) - k
    assert run(resumed) == full[k:]


def test_resume_at_epoch_start_with_other_dp_size_is_ordinary(bucket_of):
    _, samplers = consumed_then_rest(bucket_of, [(4, 0), (2, 0)])
    assert run(samplers) == run(make_ranks(bucket_of, 2, micro_batch_size=2, seed=4))


def test_resume_refuses_other_bucket_assignment(bucket_of):
    state = GroupedBatchSampler(bucket_of).state_dict()
    other = bucket_of.copy()
    other[np.flatnonzero(other == 0)[0]] = 1
    with pytest.raises(ValueError, match="different dataset or bucket assignment"):
        GroupedBatchSampler(other).load_state_dict(state)


def consumed_then_rest(bucket_of, chain, micro_batch_size=2):
    """Run epoch 0 through `chain` of (dp_size, steps) pieces, saving and resuming between them; steps=None
    finishes the epoch. Returns the items of each plan (consecutive pieces of one dp size continue one plan,
    whose top-up duplicates may straddle the resume point) and the samplers of the last piece."""
    plans, state, previous_dp = [], None, None
    for dp_size, steps in chain:
        samplers = make_ranks(bucket_of, dp_size, micro_batch_size=micro_batch_size, seed=4)
        for sampler in samplers:
            if state is not None:
                sampler.load_state_dict(roundtrip(state))
        items = set(items_of(run(samplers, steps)))
        if dp_size == previous_dp:
            plans[-1] |= items
        else:
            plans.append(items)
        state, previous_dp = samplers[0].state_dict(), dp_size
    return plans, samplers


@pytest.mark.parametrize("chain", [[(4, 10), (2, None)], [(2, 10), (4, None)], [(4, 7), (2, 5), (4, None)],
                                   [(2, 6), (4, 3), (4, None)], [(1, 0), (2, None)]])
def test_resume_other_dp_size_no_repeat_no_loss(bucket_of, chain):
    plans, samplers = consumed_then_rest(bucket_of, chain)
    kept = set(np.flatnonzero(bucket_of >= 0).tolist())
    seen: set[int] = set()
    for plan in plans:
        assert not seen & plan, "a consumed item came back in the same epoch"
        seen |= plan
    assert seen == kept
    dp_size = chain[-1][0]
    next_epoch = run(samplers)
    reference = make_ranks(bucket_of, dp_size, micro_batch_size=2, seed=4)
    for sampler in reference:
        sampler.set_epoch(1)
    assert next_epoch == run(reference)


def test_resume_inside_resumed_epoch_is_exact(bucket_of):
    """A state saved in a re-planned epoch resumes exactly under the same layout, also after a second resume."""
    _, samplers = consumed_then_rest(bucket_of, [(4, 10), (2, 3)])
    state = samplers[0].state_dict()
    full = run(samplers)
    resumed = make_ranks(bucket_of, 2, micro_batch_size=2, seed=4)
    for sampler in resumed:
        sampler.load_state_dict(roundtrip(state))
    run(resumed, 4)
    state = resumed[0].state_dict(4)
    again = make_ranks(bucket_of, 2, micro_batch_size=2, seed=4)
    for sampler in again:
        sampler.load_state_dict(roundtrip(state))
    assert run(again) == full[4:]


@pytest.mark.parametrize("kwargs, message", [
    (dict(dp_size=2, dp_rank=2), "dp_rank 2 out of range"),
    (dict(micro_batch_size=0), "micro_batch_size must be >= 1"),
    (dict(batch_tokens=100), "needs tokens_per_bucket"),
    (dict(batch_tokens=100, tokens_per_bucket=[10]), "bucket ids go up to 4"),
    (dict(batch_tokens=100, micro_batch_size=2, tokens_per_bucket=[1] * 5), "not both"),
    (dict(micro_batch_size=200, drop_last=True), "drop_last drops every bucket"),
])
def test_argument_errors(bucket_of, kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupedBatchSampler(bucket_of, **kwargs)


def test_no_items_and_bad_consumed_count(bucket_of):
    with pytest.raises(ValueError, match="no items left"):
        GroupedBatchSampler(np.full(5, -1))
    sampler = GroupedBatchSampler(bucket_of)
    with pytest.raises(ValueError, match="yielded 0"):
        sampler.state_dict(1)
