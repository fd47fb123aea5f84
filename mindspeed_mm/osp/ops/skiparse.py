"""Skiparse token rearrangements (Open-Sora Plan v1.3 / v1.5), for any sparse ratio k >= 1, and `skiparse_attention`
(its `reference` / `rearrange` paths here, the fused kernels in skiparse_kernels.py).

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
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = [
    "padded_length", "pad_tokens", "skiparse", "unskiparse", "skiparse_key_mask", "repeat_batch",
    "mean_over_groups", "group_ids", "skiparse_attention",
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


# ------------------------------------------------------------------------------------------------ attention
@dataclass(frozen=True)
class SkiparseInputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    sparsity: int
    group: bool
    scale: float
    text_k: Optional[torch.Tensor]
    text_v: Optional[torch.Tensor]
    key_mask: Optional[torch.Tensor]   # (B, N) bool, True = masked video key
    text_mask: Optional[torch.Tensor]  # (B, L) bool, True = masked text key

    def combined_key_mask(self) -> Optional[torch.Tensor]:
        """(B, N + L) bool over video then text keys, or None when nothing is masked."""
        if self.key_mask is None and self.text_mask is None:
            return None
        b, _, n, _ = self.q.shape
        video = self.key_mask if self.key_mask is not None else torch.zeros(b, n, dtype=torch.bool, device=self.q.device)
        if self.text_k is None:
            return video
        length = self.text_k.shape[2]
        text = self.text_mask if self.text_mask is not None else torch.zeros(b, length, dtype=torch.bool,
                                                                            device=self.q.device)
        return torch.cat([video, text], dim=1)


def rearranged_attention(x: SkiparseInputs, attention_backend: Optional[str]) -> torch.Tensor:
    """Skiparse by explicit rearrangement + one call of `attention(...)` on k*B sub-sequences."""
    from .attention import attention

    b, h, n, d = x.q.shape
    k, group = x.sparsity, x.group

    def to_sub(t: torch.Tensor) -> torch.Tensor:  # (B, H, N, D) -> (k*B, H, N'/k, D)
        return skiparse(t.permute(2, 0, 1, 3), k, group).permute(1, 2, 0, 3)

    q, key, value = to_sub(x.q), to_sub(x.k), to_sub(x.v)
    mask = skiparse_key_mask(x.key_mask, n, b, k, group, device=x.q.device)  # (k*B, N'/k) or None
    if x.text_k is not None:
        key = torch.cat([key, x.text_k.repeat(k, 1, 1, 1)], dim=2)
        value = torch.cat([value, x.text_v.repeat(k, 1, 1, 1)], dim=2)
        if mask is not None or x.text_mask is not None:
            length = x.text_k.shape[2]
            if mask is None:
                mask = torch.zeros(k * b, q.shape[2], dtype=torch.bool, device=q.device)
            text = x.text_mask if x.text_mask is not None else torch.zeros(b, length, dtype=torch.bool,
                                                                           device=q.device)
            mask = torch.cat([mask, text.repeat(k, 1)], dim=1)
    if mask is not None:
        mask = mask[:, None, None, :]
    out = attention(q, key, value, layout="BNSD", mask=mask, scale=x.scale, backend=attention_backend)
    return unskiparse(out.permute(2, 0, 1, 3), k, group, n).permute(1, 2, 0, 3)


def _reference(x: SkiparseInputs) -> torch.Tensor:
    return rearranged_attention(x, "reference")


def resolve_backend(name: Optional[str], device: torch.device) -> tuple[Callable[[SkiparseInputs], torch.Tensor], str]:
    """(function, resolved name). None picks ascendc on NPU (when its custom ops are installed), else `rearrange`.
    The Triton kernels are opt-in (`triton_skiparse`): they have run in Triton's CPU interpreter only, never on a
    GPU, so a CUDA machine with triton installed does not get them by default."""
    from .skiparse_kernels import FUSED

    if name is None:
        name = "ascendc" if device.type == "npu" and FUSED["ascendc"].available() else "rearrange"
    if name == "rearrange" or name.startswith("rearrange:"):
        inner = name.partition(":")[2] or None
        return (lambda x: rearranged_attention(x, inner)), name
    if name == "reference":
        return _reference, name
    if name not in FUSED:
        raise ValueError(f"unknown skiparse backend {name!r}; choose one of {sorted(['reference', *FUSED])} or "
                         f"'rearrange[:<attention backend>]'")
    backend = FUSED[name]
    if not backend.available():
        raise RuntimeError(f"skiparse backend {name!r} is not usable here: {backend.description}")
    return backend.fn, name


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def skiparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sparsity: int, group: bool,
                       text_k: torch.Tensor | None = None, text_v: torch.Tensor | None = None,
                       text_mask: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                       scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Skiparse self-attention of video tokens, without rearranging them for the caller.

    q, k, v: (B, heads, N, head_dim) with the N video tokens in their **original** order; padding to a multiple
    of k^2 is handled inside (padded keys never attended, padded queries dropped). Each token attends to the
    tokens of its sub-sequence (`group_ids`); with `text_k`/`text_v` (B, heads, L, head_dim) every sub-sequence
    also attends to the same L text keys (the key side of v1.5 joint attention). Masks are boolean,
    **True = masked**: `key_mask` (B, N) over video keys, `text_mask` (B, L) over text keys. A query with no
    visible key returns zeros. Returns (B, heads, N, head_dim) in the original order.

    backend: "reference", "rearrange[:<attention backend>]", "ascendc_shim", "ascendc", "triton_skiparse";
    None picks ascendc on NPU, triton_skiparse on CUDA, else rearrange over the default attention backend.
    """
    _check_k(sparsity)
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one BNSD shape (B, heads, N, head_dim); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, n, d = q.shape
    if (text_k is None) != (text_v is None):
        raise ValueError("pass both text_k and text_v, or neither")
    if text_k is not None:
        if text_k.dim() != 4 or text_k.shape[:2] != (b, h) or text_k.shape[3] != d or text_v.shape != text_k.shape:
            raise ValueError(f"text_k/text_v must be (B, heads, L, head_dim) = ({b}, {h}, L, {d}); got "
                             f"{tuple(text_k.shape)} and {tuple(text_v.shape)}")
    elif text_mask is not None:
        raise ValueError("text_mask masks text keys: pass text_k/text_v with it")
    for name, m, length in (("key_mask", key_mask, n), ("text_mask", text_mask, None if text_k is None else
                                                         text_k.shape[2])):
        if m is None:
            continue
        if m.dtype != torch.bool:
            raise TypeError(f"{name} must be boolean (True = masked), got {m.dtype}")
        if tuple(m.shape) != (b, length):
            raise ValueError(f"{name} shape {tuple(m.shape)} must be (batch, tokens) = ({b}, {length})")
    x = SkiparseInputs(q, k, v, sparsity, bool(group), default_scale(d) if scale is None else float(scale),
                       text_k, text_v, key_mask, text_mask)
    fn, _ = resolve_backend(backend, q.device)
    return fn(x)
