"""Winograd F(4x4, 3x3) convolution: the CPU fast path for float32 inference of 3x3-spatial convolutions.

A conv with a 3x3 spatial kernel, stride 1 and zero padding 1 (2-D per frame, or 3-D with any number of
temporal taps) becomes, per 6x6 input tile, 36 channel GEMMs instead of 9 taps over 4x4 outputs: 4x fewer
multiplies (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). The tile transforms
are element-wise passes over a channels-last copy of the input (so every pass runs along contiguous channels);
the GEMMs (tiles x Ci) @ (Ci x Co) run in torch's BLAS with both operands contiguous, and the output is written
channels-last. Float32 results differ from the direct convolution by float rounding only (about 1e-5
relative); the direct convolution stays the reference.

Temporal taps are sums of GEMMs over shifted frame windows of the transformed input, so a causal 3-D conv
needs no im2col. Frames are processed in blocks that keep the workspace under `WORKSPACE_BYTES`.
"""
from __future__ import annotations

import math

import torch

TILE = 4            # output tile edge m in F(m x m, 3 x 3)
ALPHA = TILE + 2    # input tile edge
WORKSPACE_BYTES = 32 * 2**20
# The transforms cost about as much as ~384 channel-taps of GEMM: below kt * min(Ci, Co) = 384 the direct
# convolution is faster on CPU (measured on AVX-512, 2 threads: 3x3x3 at 128 channels 1.1-1.6x faster,
# 3x3x3 at 64 channels and 2-D 3x3 at 128-256 channels 0.7-1.1x; docs/performance.md).
MIN_TAP_CHANNELS = 384
# Per call the weight is transformed anew (caching it would hold 4x the conv weights: 2 GB for the v1.3 WF-VAE);
# with the weight in `fast_layout` that and the per-frame setup pay off from about 512 output positions (frames x
# height x width) per call (measured, 2 threads: 3x3x3 at 448-768 channels on 3x16x16 1.25-2.3x faster than the
# direct conv, on 2x16x16 1.0-1.5x, on 1x16x16 0.8x). So the latent-resolution convs of a 17x128x128 clip take it
# (v1.3: 5x16x16, v1.5: 3x16x16), not those of a 1x16x16 chunk.
MIN_OUTPUT_POSITIONS = 512

# Interpolation points 0, +-1, +-2 (the standard F(4, 3) matrices).
INPUT_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
           (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
KERNEL_T = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
            (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
OUTPUT_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def supported(conv: torch.nn.modules.conv._ConvNd, x: torch.Tensor, frames: int | None = None) -> bool:
    """True where `winograd_conv` computes what `conv` does on a time-padded input `x` of `frames` frames
    (default x's) under no grad on CPU in float32, and is expected to be faster than the direct convolution
    (MIN_TAP_CHANNELS, MIN_OUTPUT_POSITIONS)."""
    frames = x.shape[2] if frames is None else frames
    k = conv.kernel_size
    taps = k[0] if len(k) == 3 else 1
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and taps * min(conv.in_channels, conv.out_channels) >= MIN_TAP_CHANNELS
            and (frames - taps + 1) * x.shape[3] * x.shape[4] >= MIN_OUTPUT_POSITIONS
            and tuple(k[-2:]) == (3, 3) and all(s == 1 for s in conv.stride)
            and tuple(conv.padding[-2:]) == (1, 1) and all(p == 0 for p in conv.padding[:-2])
            and all(d == 1 for d in conv.dilation) and conv.groups == 1 and conv.padding_mode == "zeros")


def _kernel_order(dims: int) -> tuple[int, ...]:
    return (2, 1, 0, 3, 4) if dims == 5 else (1, 0, 2, 3)


def in_fast_layout(weight: torch.Tensor) -> bool:
    """True when `weight` is stored as `fast_layout` stores it."""
    return weight.permute(*_kernel_order(weight.dim())).is_contiguous()


def fast_layout(weight: torch.Tensor) -> torch.Tensor:
    """The same (Co, Ci, [kt,] 3, 3) weight stored with its 3x3 kernels in (kt, Ci, Co) order, the order
    `transform_weight` reads, so its reorder of the kernels (a transposing copy on every call, about 5 % of a
    warm v1.3 encode + decode at 17x128x128) becomes a view. The direct convolution copies such a weight back on
    every call."""
    order = _kernel_order(weight.dim())
    return weight.permute(*order).contiguous().permute(*order)


def transform_weight(weight: torch.Tensor, tap: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """(Co, Ci, [kt,] 3, 3) conv weight -> (36, kt, Ci, Co): G g G^T of every 3x3 kernel, as one GEMM (whose
    input is a view of a weight in `fast_layout`, a copy otherwise).
    `tap`: only that temporal tap (kt = 1 in the result). `out`: a buffer of that many elements to write into."""
    w = weight.detach()
    if w.dim() == 4:
        w = w.unsqueeze(2)
    if tap is not None:
        w = w[:, :, tap:tap + 1]
    co, ci, kt = w.shape[:3]
    g = torch.tensor(KERNEL_T, dtype=w.dtype, device=w.device)
    kernels = w.permute(2, 1, 0, 3, 4).reshape(kt * ci * co, 9)
    u = w.new_empty(ALPHA * ALPHA, kt * co * ci) if out is None else out.view(ALPHA * ALPHA, kt * co * ci)
    torch.mm(torch.kron(g, g), kernels.t(), out=u)
    return u.view(ALPHA * ALPHA, kt, ci, co)


class _Scratch:
    """Work buffers kept between calls (one per name, device and dtype): allocating the multi-MB buffers afresh
    on every call costs page faults comparable to the transforms themselves. `reserve` sizes them for one call:
    it grows a buffer that is too small and frees one more than twice too large (so a large layer's buffers are
    not carried through the rest of the network). `release_workspace()` frees them all. One process runs one
    fast-path conv at a time: the buffers are not shared safely between threads."""

    def __init__(self):
        self.buffers: dict = {}

    def reserve(self, like: torch.Tensor, **sizes: int) -> None:
        for name, numel in sizes.items():
            key = (name, like.device, like.dtype)
            buf = self.buffers.get(key)
            if buf is None or buf.numel() < numel or buf.numel() > 2 * numel:
                self.buffers[key] = None   # free the old buffer before allocating the new one
                self.buffers[key] = like.new_empty(numel)

    def get(self, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get((name, like.device, like.dtype))
        if buf is None or buf.numel() < numel:
            raise RuntimeError(f"winograd scratch {name!r} not reserved for {numel} elements")
        return buf[:numel].view(shape)


_SCRATCH = _Scratch()


def release_workspace() -> None:
    """Free the fast path's kept work buffers."""
    _SCRATCH.buffers.clear()


def _combine(matrix, sources, outputs) -> None:
    """outputs[i] = sum_j matrix[i][j] * sources[j], written in place (strided views allowed)."""
    for row, out in zip(matrix, outputs):
        terms = [(c, s) for c, s in zip(row, sources) if c]
        (c0, s0), rest = terms[0], terms[1:]
        if c0 == 1 and rest:
            (c1, s1), rest = rest[0], rest[1:]
            torch.add(s0, s1, alpha=c1, out=out)
        else:
            torch.mul(s0, c0, out=out)
        for c, s in rest:
            out.add_(s, alpha=c)


def _tiles(x: torch.Tensor, dim: int, count: int):
    """The ALPHA strided views of `x` along `dim` whose k-th element starts tile k (tile stride TILE)."""
    return [x.narrow(dim, j, TILE * (count - 1) + 1)[(slice(None),) * dim + (slice(None, None, TILE),)]
            for j in range(ALPHA)]


def _copy_frames(segments, item: int, t0: int, t1: int, rows: slice, dst: torch.Tensor) -> None:
    """Frames [t0, t1) of the time-concatenation of `segments` (batch item `item`, image rows `rows`) into dst."""
    offset = 0
    for seg in segments:
        n = seg.shape[2]
        a, b = max(t0, offset), min(t1, offset + n)
        if a < b:
            dst[:, a - t0:b - t0].copy_(seg[item, :, a - offset:b - offset, rows])
        offset += n


def _input_transform(segments, item: int, t0: int, t1: int, row0: int, rows: int, pw: int,
                     out: torch.Tensor) -> None:
    """Frames [t0, t1) and tile rows [row0, row0 + rows) of the input -> out (36, n, rows, pw, C): the slab those
    tiles read (zero padding 1, and up to whole tiles) copied channels-last into scratch, then B^T d B per 6x6
    tile, each pass along contiguous channels (on the channels-first slab the column pass read every 4th float)."""
    _, c, _, h, w = segments[-1].shape
    n = t1 - t0
    lo, hi = TILE * row0 - 1, TILE * (row0 + rows) + 1
    top, bottom = max(-lo, 0), max(hi - h, 0)
    padded = _SCRATCH.get("pad", (n, hi - lo, pw * TILE + 2, c), segments[-1])
    padded[:, :, :1].zero_()
    padded[:, :, 1 + w:].zero_()
    padded[:, :top].zero_()
    padded[:, hi - lo - bottom:].zero_()
    _copy_frames(segments, item, t0, t1, slice(max(lo, 0), min(hi, h)),
                 padded[:, top:hi - lo - bottom, 1:1 + w].permute(3, 0, 1, 2))
    half = _SCRATCH.get("half", (ALPHA, n, rows, padded.shape[2], c), padded)
    _combine(INPUT_T, _tiles(padded, 1, rows), half)
    out = out.view(ALPHA, ALPHA, *out.shape[1:])
    for r in range(ALPHA):
        _combine(INPUT_T, _tiles(half[r], 2, pw), out[r])


def _output_transform(m: torch.Tensor, out: torch.Tensor, rows: int, pw: int) -> None:
    """m (36, n * rows * pw, Co) -> out (Co, n, h, W), stored channels-last, with h <= 4 * rows: A^T m A of every
    tile as one (16 x 36) @ (36 x tiles * Co) GEMM, whose rows of Co outputs are then copied into place (cropped
    at the bottom and right edges)."""
    co, n, h, w = out.shape
    y = _SCRATCH.get("y", (TILE * TILE, n * rows * pw * co), m)
    torch.mm(_output_matrix(m), m.reshape(ALPHA * ALPHA, -1), out=y)
    y = y.view(TILE, TILE, n, rows, pw, co).permute(5, 2, 3, 0, 4, 1)   # (co, n, rows, TILE, pw, TILE)
    if rows * TILE == h and pw * TILE == w:
        out.unflatten(3, (pw, TILE)).unflatten(2, (rows, TILE)).copy_(y)
    else:
        out.copy_(y.reshape(co, n, rows * TILE, pw * TILE)[:, :, :h, :w])


def _output_matrix(like: torch.Tensor) -> torch.Tensor:
    a = torch.tensor(OUTPUT_T, dtype=like.dtype, device=like.device)
    return torch.kron(a, a)


def _blocks(c: int, co: int, kt: int, t_out: int, ph: int, pw: int, itemsize: int) -> tuple[int, int]:
    """(frames, tile rows) per block. One block when its buffers and one transformed weight tap take less
    memory than WORKSPACE_BYTES plus the whole transformed weight that several blocks need (wide layers on
    small frames); otherwise all frames and as many tile rows as fit WORKSPACE_BYTES, or one tile row and
    fewer frames when even that does not fit."""
    per_row = 60 * pw * itemsize  # transformed (36) + half-transformed input or output (24) per column and channel
    all_frames_row = per_row * (c * (t_out + kt - 1) + co * t_out)
    tap_bytes = ALPHA * ALPHA * co * c * itemsize
    if all_frames_row * ph + tap_bytes <= WORKSPACE_BYTES + kt * tap_bytes:
        return t_out, ph
    rows = WORKSPACE_BYTES // all_frames_row
    if rows >= 1:
        return t_out, min(rows, ph)
    frames = (WORKSPACE_BYTES // per_row - c * (kt - 1)) // (c + co)
    return max(1, min(frames, t_out)), 1


def winograd_conv(x, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Valid-in-time, same-in-space conv of x (B, C, T, H, W) with a (Co, C, [kt,] 3, 3) weight.

    `x` may be a list of tensors whose concatenation along time is the input (a causal conv's repeated first
    frame or carried-over frames, never concatenated in memory). Output (B, Co, T - kt + 1, H, W), stored
    channels-last (the layout the transforms produce and the next LayerNorm reads without a copy); equals
    conv3d(x, w, b, padding=(0, 1, 1)) up to float rounding. The work is split into blocks of frames x tile rows
    (`_blocks`); a single block transforms the weight one tap at a time (4x one tap, not 4x the whole kernel),
    several blocks share the whole transformed weight.
    """
    segments = [x] if isinstance(x, torch.Tensor) else list(x)
    b, c, _, h, w = segments[-1].shape
    t = sum(seg.shape[2] for seg in segments)
    co, kt = weight.shape[0], (weight.shape[2] if weight.dim() == 5 else 1)
    t_out = t - kt + 1
    ph, pw = -(-h // TILE), -(-w // TILE)
    frames, rows = _blocks(c, co, kt, t_out, ph, pw, segments[-1].element_size())
    blocks = [(t0, r0) for t0 in range(0, t_out, frames) for r0 in range(0, ph, rows)]
    # One transformed tap at a time where a single block needs each tap once; several blocks transform the weight
    # once (re-transforming it per block cost more time than its memory is worth: docs/performance.md).
    per_tap = b * len(blocks) == 1
    like = segments[-1]
    # Tap by tap, the output channels go in groups whose transformed weight slice is at most a quarter of the
    # workspace (a 640-channel tap is 59 MB whole, 15 MB in four groups).
    group = co if not per_tap else max(1, min(co, WORKSPACE_BYTES // 4 // (ALPHA * ALPHA * c * like.element_size())))
    u_size = ALPHA * ALPHA * group * c
    n_in, tiles = frames + kt - 1, rows * pw
    _SCRATCH.reserve(like, u=u_size * (1 if per_tap else kt), v=ALPHA * ALPHA * c * n_in * tiles,
                     m=ALPHA * ALPHA * group * frames * tiles, y=TILE * TILE * group * frames * tiles,
                     pad=c * n_in * (TILE * rows + 2) * (TILE * pw + 2),
                     half=ALPHA * c * n_in * rows * (TILE * pw + 2))
    whole = None if per_tap else transform_weight(weight, out=_SCRATCH.get("u", (kt * u_size,), like))
    out = like.new_empty(b, t_out, h, w, co).permute(0, 4, 1, 2, 3)   # channels-last, as the transforms work
    for i in range(b):
        for t0, r0 in blocks:
            n, nr = min(frames, t_out - t0), min(rows, ph - r0)
            v = _SCRATCH.get("v", (ALPHA * ALPHA, n + kt - 1, nr, pw, c), like)
            _input_transform(segments, i, t0, t0 + n + kt - 1, r0, nr, pw, v)
            for o0 in range(0, co, group):
                o1 = min(co, o0 + group)
                m = _SCRATCH.get("m", (ALPHA * ALPHA, n * nr * pw, o1 - o0), like)
                for k in range(kt):
                    u = (transform_weight(weight[o0:o1], tap=k,
                                          out=_SCRATCH.get("u", (ALPHA * ALPHA * (o1 - o0) * c,), like))[:, 0]
                         if per_tap else whole[:, k])
                    window = v[:, k:k + n].reshape(ALPHA * ALPHA, n * nr * pw, c)
                    if k == 0:
                        torch.bmm(window, u, out=m)
                    else:
                        m.baddbmm_(window, u)
                _output_transform(m, out[i, o0:o1, t0:t0 + n, TILE * r0:min(TILE * (r0 + nr), h)], nr, pw)
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1, 1))
    return out
