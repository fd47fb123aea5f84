"""Skiparse token rearrangements (Open-Sora Plan v1.3 / v1.5), for any sparse ratio k >= 1.

All functions work on **sequence-first** tensors `x` of shape (S, B, *rest) — the model layout (S, B, hidden)
or (S, B, heads, head_dim) — on the flat video-token axis, index n = (t*H' + h)*W' + w.

Rules (k = sparse ratio; k = 1 is dense attention and every function is the identity):

* Padding: the sequence is zero-padded from N to N' = ceil(N / k^2) * k^2 tokens; the padded keys are masked.
* **Single Skip** (`group=False`): token n goes to sub-sequence r = n mod k (tokens spaced k apart).
* **Group Skip** (`group=True`): token n goes to sub-sequence r = (n div k) mod k (runs of k adjacent tokens,
  every k-th run).
* Sub-sequences are stacked on the batch axis: the new batch index is r*B + b; each has N'/k tokens, in
  increasing n. Attention inside a sub-batch is attention restricted to tokens sharing the same group id.
* Inverse: the reverse rearrangement, then slice the padding off (`[:N]`).
* Per-sample tensors that are not sparsified (text tokens, text masks) are repeated k times along the batch
  with the same r*B + b order (`repeat_batch`), and averaged back with `mean_over_groups`.

Single:  (g k) b ... -> g (k b) ...            Group:  (a m k) b ... -> (a k) (m b) ...
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "padded_length", "pad_tokens", "skiparse", "unskiparse", "skiparse_key_mask", "repeat_batch",
    "mean_over_groups", "group_ids",
]


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"sparse ratio k must be an integer >= 1, got {k!r}")


def padded_length(n: int, k: int) -> int:
    """N' = ceil(N / k^2) * k^2 (N itself for k = 1)."""
    _check_k(k)
    return math.ceil(n / (k * k)) * k * k


def pad_tokens(x: torch.Tensor, k: int, value: float = 0.0) -> torch.Tensor:
    """Pad dim 0 of `x` with `value` up to `padded_length(x.shape[0], k)`."""
    pad = padded_length(x.shape[0], k) - x.shape[0]
    if pad == 0:
        return x
    filler = x.new_full((pad,) + tuple(x.shape[1:]), value)
    return torch.cat([x, filler], dim=0)


def skiparse(x: torch.Tensor, k: int, group: bool) -> torch.Tensor:
    """(N, B, *rest) -> (N'/k, k*B, *rest): pad to a multiple of k^2, then Single/Group-Skip rearrange."""
    _check_k(k)
    if k == 1:
        return x
    x = pad_tokens(x, k)
    n, b, rest = x.shape[0], x.shape[1], tuple(x.shape[2:])
    if not group:
        # n = g*k + r  ->  (g, r*B + b); a pure view for contiguous input.
        return x.reshape((n // k, k * b) + rest)
    # n = (a*k + m)*k + j  ->  (a*k + j, m*B + b)
    y = x.reshape((n // (k * k), k, k, b) + rest).transpose(1, 2)
    return y.reshape((n // k, k * b) + rest)


def unskiparse(x: torch.Tensor, k: int, group: bool, length: int) -> torch.Tensor:
    """Inverse of `skiparse`: (N'/k, k*B, *rest) -> (length, B, *rest), padding sliced off."""
    _check_k(k)
    if k == 1:
        return x[:length]
    s, kb, rest = x.shape[0], x.shape[1], tuple(x.shape[2:])
    if kb % k:
        raise ValueError(f"batch axis {kb} of a skiparse tensor is not divisible by k={k}")
    b = kb // k
    if s * k != padded_length(length, k):
        raise ValueError(f"skiparse tensor with {s} tokens per group and k={k} cannot hold {length} tokens "
                         f"(expected {padded_length(length, k) // k} per group)")
    if not group:
        y = x.reshape((s * k, b) + rest)
    else:
        y = x.reshape((s // k, k, k, b) + rest).transpose(1, 2).reshape((s * k, b) + rest)
    return y[:length]


def skiparse_key_mask(mask: torch.Tensor | None, length: int, batch: int, k: int, group: bool,
                      device=None) -> torch.Tensor | None:
    """Rearrange a boolean key mask (B, N), **True = masked**, like the tokens: -> (k*B, N'/k).

    Padded positions are masked. `mask=None` means "no video key is masked"; the result is then None when no
    padding is needed, else a mask of just the padding.
    """
    _check_k(k)
    pad = padded_length(length, k) - length
    if mask is None:
        if pad == 0:
            return None
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        raise TypeError(f"key mask must be boolean (True = masked), got {mask.dtype}")
    if mask.shape != (batch, length):
        raise ValueError(f"key mask shape {tuple(mask.shape)} does not match (batch, tokens) = ({batch}, {length})")
    if k == 1:
        return mask
    cols = pad_tokens(mask.transpose(0, 1), k, value=True)  # (N', B)
    return skiparse(cols, k, group).transpose(0, 1)


def repeat_batch(x: torch.Tensor, k: int) -> torch.Tensor:
    """(S, B, *rest) -> (S, k*B, *rest) with batch index r*B + b (the order `skiparse` uses)."""
    _check_k(k)
    if k == 1:
        return x
    return x.repeat((1, k) + (1,) * (x.dim() - 2))


def mean_over_groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """(S, k*B, *rest) -> (S, B, *rest): mean over the k copies made by `repeat_batch`."""
    _check_k(k)
    if k == 1:
        return x
    s, kb, rest = x.shape[0], x.shape[1], tuple(x.shape[2:])
    return x.reshape((s, k, kb // k) + rest).mean(dim=1)


def group_ids(length: int, k: int, group: bool, device=None) -> torch.Tensor:
    """Sub-sequence id of every token 0..length-1: n mod k (single) or (n div k) mod k (group)."""
    _check_k(k)
    n = torch.arange(length, device=device)
    return (n // k) % k if group else n % k

