"""Average Attention Distance (ADavg) of sparse attention schemes, and the FLOPs of Skiparse attention.

Two alternating block types each split the tokens into attention groups. The distance from token A to token B
is 0 if A is B, 1 if they share a group in either block type, and 2 otherwise (two hops always suffice for the
schemes here); ADavg is the mean over all ordered token pairs (Open-Sora Plan v1.3 paper, Table 2).
The count is exact and O(N): the ordered pairs that share a group in block type a or b number
sum(|a-group|^2) + sum(|b-group|^2) - sum(|a-group & b-group|^2).

Token index n = (t * H + h) * W + w (W fastest). Schemes, for a sparse ratio k:
  full         one group (both block types);
  2+1d         spatial blocks group by t, temporal blocks by (h, w);
  skip+window  Single Skip (group n mod k) alternating with windows of k consecutive tokens (group n div k);
  skiparse     Single Skip (n mod k) alternating with Group Skip ((n div k) mod k). The k^2 padding that the
               rearrangement adds is masked out, so only real tokens count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEMES = ("full", "2+1d", "skip+window", "skiparse")


def _pairs_sharing(ids_a: np.ndarray, ids_b: np.ndarray) -> int:
    """Ordered pairs (self included) whose tokens share a group id in `ids_a` or in `ids_b`."""
    def squares(ids):
        sizes = np.bincount(ids)
        return int((sizes * sizes).sum())
    both = ids_a * (int(ids_b.max()) + 1) + ids_b
    return squares(ids_a) + squares(ids_b) - squares(both)


def group_ids(scheme: str, k: int, T: int, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token group ids of the two alternating block types of `scheme`."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    if min(T, H, W) < 1:
        raise ValueError(f"grid T={T}, H={H}, W={W} must be positive")
    if scheme in ("skip+window", "skiparse") and k < 1:
        raise ValueError(f"sparse ratio k={k} must be >= 1")
    n = np.arange(T * H * W, dtype=np.int64)
    if scheme == "full":
        return np.zeros_like(n), np.zeros_like(n)
    if scheme == "2+1d":
        return n // (H * W), n % (H * W)
    if scheme == "skip+window":
        return n % k, n // k
    return n % k, (n // k) % k


def average_attention_distance(scheme: str, k: int, T: int, H: int, W: int) -> float:
    """Exact ADavg of `scheme` with sparse ratio `k` on a T x H x W token grid (k is unused by full and 2+1d)."""
    ids_a, ids_b = group_ids(scheme, k, T, H, W)
    n = ids_a.size
    shared = _pairs_sharing(ids_a, ids_b)
    # self pairs: 0; other sharing pairs: 1; the rest: 2
    return (2 * n * n - shared - n) / (n * n)


def large_grid_limit(scheme: str, k: int, T: int, H: int, W: int) -> float:
    """Closed form of ADavg as the grid grows with T and H*W fixed in ratio (what the paper prints)."""
    if scheme == "full":
        return 1.0
    if scheme == "2+1d":
        return 2 - 1 / T - 1 / (H * W)
    if scheme == "skip+window":
        return 2 - 1 / k
    if scheme == "skiparse":
        return 2 - 2 / k + 1 / k ** 2
    raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")


@dataclass(frozen=True)
class AttentionFlops:
    """Matmul FLOPs (2 per multiply-add) of QK^T and PV, one sample, all heads."""
    dense: int                  # one sequence of N video + L text tokens
    skiparse: int               # k sub-sequences of N'/k video + L text tokens (N' = N padded to k^2)
    dense_video_video: int      # video queries x video keys, dense
    skiparse_video_video: int   # video queries x video keys, Skiparse (padding included, as computed)

    @property
    def ratio(self) -> float:
        return self.skiparse / self.dense


def skiparse_attention_flops(n_video: int, k: int, heads: int, head_dim: int, n_text: int = 0) -> AttentionFlops:
    """Exact attention FLOPs of a Skiparse block vs a dense block (joint video+text attention when n_text > 0).

    Skiparse computes k sub-sequences of length N'/k (+ L text tokens repeated into each); the video-video part
    is exactly 1/k of a dense attention over the N' padded tokens."""
    if min(n_video, k, heads, head_dim) < 1 or n_text < 0:
        raise ValueError("n_video, k, heads, head_dim must be >= 1 and n_text >= 0")
    per_pair = 4 * heads * head_dim          # QK^T and PV: 2 FLOPs each per (query, key, channel)
    padded = math.ceil(n_video / k ** 2) * k ** 2
    sub = padded // k
    return AttentionFlops(
        dense=per_pair * (n_video + n_text) ** 2,
        skiparse=k * per_pair * (sub + n_text) ** 2,
        dense_video_video=per_pair * n_video ** 2,
        skiparse_video_video=k * per_pair * sub ** 2,
    )
