"""Skiparse rearrangements: round trips, padding and the index rules against a direct gather reference."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from mindspeed_mm.osp.ops.skiparse import (
    group_ids, mean_over_groups, padded_length, repeat_batch, skiparse, skiparse_key_mask, unskiparse,
)


def gather_reference(x: torch.Tensor, k: int, group: bool) -> torch.Tensor:
    """Build the rearranged tensor token by token from the written index rule (no reshapes)."""
    n, b = x.shape[:2]
    n_pad = padded_length(n, k)
    out = x.new_zeros((n_pad // k, k * b) + tuple(x.shape[2:]))
    fill = [0] * k
    for pos in range(n_pad):
        r = (pos // k) % k if group else pos % k
        if pos < n:
            for bb in range(b):
                out[fill[r], r * b + bb] = x[pos, bb]
        fill[r] += 1
    return out


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("group", [False, True])
def test_rearrangement_matches_gather_and_round_trips(k, group):
    torch.manual_seed(k)
    for n in (k * k, 3 * k * k + 1, 37):
        x = torch.randn(n, 2, 3)
        y = skiparse(x, k, group)
        assert y.shape == (padded_length(n, k) // k, 2 * k, 3)
        torch.testing.assert_close(y, gather_reference(x, k, group), rtol=0, atol=0)
        torch.testing.assert_close(unskiparse(y, k, group, n), x, rtol=0, atol=0)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_group_ids_describe_the_sub_batches(k):
    n, b = 50, 2
    x = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, b, 1).contiguous() + 1  # token id + 1
    for group in (False, True):
        y = skiparse(x, k, group)
        ids = group_ids(n, k, group)
        for r in range(k):
            for bb in range(b):
                got = y[:, r * b + bb, 0]
                got = got[got > 0] - 1  # drop zero padding
                want = torch.nonzero(ids == r).flatten().float()
                torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_key_mask_follows_tokens_and_masks_padding(k):
    n, b = 23, 3
    mask = torch.rand(b, n) > 0.6
    for group in (False, True):
        got = skiparse_key_mask(mask, n, b, k, group)
        want = gather_reference(mask.transpose(0, 1).float()[..., None], k, group)[..., 0].transpose(0, 1)
        n_pad = padded_length(n, k)
        # padded positions: gather_reference leaves 0, the mask must say True (masked)
        pad_pos = skiparse(torch.arange(n_pad)[:, None].expand(n_pad, b).contiguous(), k, group).transpose(0, 1)
        torch.testing.assert_close(got, (want > 0) | (pad_pos >= n))
    assert skiparse_key_mask(None, 16, 2, 4, True) is None
    assert skiparse_key_mask(None, 17, 2, 4, True).sum() == 2 * (32 - 17)


def test_repeat_and_mean_use_the_same_batch_order():
    x = torch.randn(5, 3, 4)
    rep = repeat_batch(x, 4)
    assert torch.equal(rep[:, 2 * 3 + 1], x[:, 1])
    torch.testing.assert_close(mean_over_groups(rep, 4), x)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        skiparse(torch.zeros(4, 1, 1), 0, False)
    with pytest.raises(ValueError, match="cannot hold"):
        unskiparse(torch.zeros(4, 2, 1), 2, False, 20)
