"""Spatial tiling with linear blending of overlaps, for frames too large to process at once.

Not lossless: convolutions near tile borders see zero padding instead of the neighbouring pixels; blending the
overlaps hides the seams. Measured errors are in docs/vae.md. Temporal chunking, by contrast, is exact.
"""
from __future__ import annotations

from typing import Callable

import torch


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with the given stride (last tile flush right)."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(length: int, ramp: int, left: bool, right: bool, like: torch.Tensor) -> torch.Tensor:
    w = torch.ones(length, dtype=like.dtype, device=like.device)
    if ramp > 0:
        edge = (torch.arange(min(ramp, length), dtype=like.dtype, device=like.device) + 0.5) / ramp
        if left:
            w[: edge.numel()] = torch.minimum(w[: edge.numel()], edge)
        if right:
            w[-edge.numel():] = torch.minimum(w[-edge.numel():], edge.flip(0))
    return w


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                num: int, den: int) -> torch.Tensor:
    """Apply `fn` (spatial scale num/den) to overlapping (tile x tile) windows of x and blend the results.

    `tile` and `overlap` are in input pixels and must be multiples of `den`.
    """
    h, w = x.shape[-2:]
    stride = tile - overlap
    out = weight = None
    ramp = overlap * num // den
    for y0 in tile_starts(h, tile, stride):
        for x0 in tile_starts(w, tile, stride):
            y = fn(x[..., y0:y0 + tile, x0:x0 + tile])
            if out is None:
                out = y.new_zeros(*y.shape[:-2], h * num // den, w * num // den)
                weight = y.new_zeros(h * num // den, w * num // den)
            oy, ox = y0 * num // den, x0 * num // den
            th, tw = y.shape[-2:]
            wy = _ramp(th, ramp, oy > 0, oy + th < out.shape[-2], y)
            wx = _ramp(tw, ramp, ox > 0, ox + tw < out.shape[-1], y)
            wmap = wy[:, None] * wx[None, :]
            out[..., oy:oy + th, ox:ox + tw] += y * wmap
            weight[oy:oy + th, ox:ox + tw] += wmap
    return out / weight
