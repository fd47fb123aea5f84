"""ADavg by exact counting (vs brute force and the paper's Table 2) and Skiparse attention FLOPs."""
from __future__ import annotations

import itertools

import pytest

from mindspeed_mm.osp import cli
from mindspeed_mm.osp.ops.adavg import (SCHEMES, average_attention_distance, group_ids, large_grid_limit,
                                        skiparse_attention_flops)

PAPER = {  # Open-Sora Plan v1.3 paper, Table 2, latent grid 24x32x32
    "full": {2: 1.000}, "2+1d": {2: 1.957, 4: 1.957},
    "skip+window": {2: 1.500, 4: 1.750, 6: 1.833, 8: 1.875},
    "skiparse": {2: 1.250, 4: 1.563, 6: 1.694, 8: 1.766},
}


def _brute_force(scheme, k, T, H, W):
    a, b = (x.tolist() for x in group_ids(scheme, k, T, H, W))
    n = len(a)
    total = 0
    for i, j in itertools.product(range(n), repeat=2):
        total += 0 if i == j else (1 if a[i] == a[j] or b[i] == b[j] else 2)
    return total / n ** 2


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("k,grid", [(2, (2, 3, 5)), (3, (3, 2, 4)), (4, (1, 5, 7))])
def test_counting_equals_brute_force(scheme, k, grid):
    assert average_attention_distance(scheme, k, *grid) == pytest.approx(_brute_force(scheme, k, *grid), abs=1e-12)


def test_skiparse_groups_follow_the_rearrangement():
    a, b = group_ids("skiparse", 3, 1, 4, 5)
    n = list(range(20))
    assert a.tolist() == [i % 3 for i in n]
    assert b.tolist() == [(i // 3) % 3 for i in n]


@pytest.mark.parametrize("scheme", list(PAPER))
def test_paper_table(scheme):
    """The paper prints the large-grid limit to 3 decimals; the exact count on 24x32x32 is lower by the self
    pair term 1/N (Skip+Window: k/N), so it must lie within half a unit of the last place plus 1/N."""
    n = 24 * 32 * 32
    for k, printed in PAPER[scheme].items():
        exact = average_attention_distance(scheme, k, 24, 32, 32)
        assert abs(exact - printed) <= 0.0005 + 1 / n + 1e-12, (scheme, k, exact)
        limit = large_grid_limit(scheme, k, 24, 32, 32)
        assert abs(limit - printed) <= 0.0005 + 1e-12, (scheme, k, limit)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_closed_forms_when_grid_is_a_multiple_of_k_squared(k):
    T, H, W = 4, 8, 8
    n = T * H * W
    assert average_attention_distance("full", k, T, H, W) == pytest.approx(1 - 1 / n, abs=1e-12)
    assert average_attention_distance("2+1d", k, T, H, W) == pytest.approx(2 - 1 / T - 1 / (H * W), abs=1e-12)
    assert average_attention_distance("skip+window", k, T, H, W) == pytest.approx(2 - 1 / k - k / n, abs=1e-12)
    assert average_attention_distance("skiparse", k, T, H, W) == pytest.approx(2 - 2 / k + 1 / k ** 2 - 1 / n,
                                                                              abs=1e-12)


def test_flops_video_part_is_one_over_k():
    for k in (2, 4, 8):
        f = skiparse_attention_flops(24 * 32 * 32, k, heads=24, head_dim=96)
        assert f.skiparse_video_video * k == f.dense_video_video   # 24576 is a multiple of k^2: exact
        assert f.skiparse == f.skiparse_video_video
    f = skiparse_attention_flops(100, 4, heads=2, head_dim=8, n_text=10)   # padded to 112
    per_pair = 4 * 2 * 8
    assert f.skiparse_video_video * 4 == per_pair * 112 ** 2
    assert f.skiparse == 4 * per_pair * (28 + 10) ** 2
    assert f.dense == per_pair * 110 ** 2
    with pytest.raises(ValueError):
        skiparse_attention_flops(0, 4, 1, 1)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown scheme"):
        average_attention_distance("sliding", 2, 2, 2, 2)


def test_cli_prints_table(capsys):
    assert cli.main(["adavg", "--T", "24", "--H", "32", "--W", "32", "--k", "2", "4"]) == 0
    out = capsys.readouterr().out
    assert "1.5625 [1.563]" in out and "1.9574 [1.957]" in out and "1.4999 [1.500]" in out
