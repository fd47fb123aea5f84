"""WF-VAE building blocks as MindSpore Cells, written for GRAPH_MODE with an explicit causal cache.

Streaming protocol. Every block used inside the encoder/decoder stacks has
`construct(x, cache=None, lookahead=0) -> (y, new_cache)`:
- `cache=None`: the clip (or its first chunk) starts here: causal convs replicate the first frame (as the official
  model does); the returned cache lets the next chunk continue.
- `cache`: a tuple of `n_cache` tensors returned by the previous chunk (fixed shapes, so a compiled graph is reused).
- `lookahead`: number of trailing frames of `x` (at this block's frame rate) that belong to the next chunk and are
  only fed so that the time-interpolating upsample sees its right neighbour; caches never include them.
- `t_scale`: factor by which the block multiplies the frame rate (2 for the time upsample), so stacks can scale
  `lookahead`.
Parameter names equal the official PyTorch names (`conv.weight`, `norm1.norm.weight`, ...).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

HAAR_3D = 0.3536  # the official literal (not 1/(2*sqrt 2)); forward∘inverse = 1.000264
HAAR_2D = 0.5


def cast(x, dtype):
    """`x.astype(dtype)` that adds no op when the dtype already matches (fewer graph nodes to compile)."""
    return x if x.dtype == dtype else x.astype(dtype)


def silu(x):
    return x * ops.sigmoid(x)


def _band_matrix(ndim: int, value: float) -> np.ndarray:
    """M[b, d] = value * (-1)^(popcount(b & d)) over `ndim` axes of a 2^ndim block.

    3-D: b = 4*bt + 2*bh + bw (official band order LLL, W, H, HW, T, TW, TH, THW), d = 4*dt + 2*dh + dw.
    2-D: the official order is (LL, H, W, HH), i.e. b = bh + 2*bw, so swap the two bits of b.
    """
    n = 2 ** ndim
    m = np.empty((n, n), np.float32)
    for b in range(n):
        bits = b if ndim == 3 else ((b & 1) << 1) | (b >> 1)
        for d in range(n):
            m[b, d] = value * (-1) ** bin(bits & d).count("1")
    return m


def _lerp2x(x, axis: int, left=None):
    """Linear x2 upsampling along `axis` with half-pixel centres (torch `align_corners=False`).

    out[2k] = 0.25 x[k-1] + 0.75 x[k], out[2k+1] = 0.75 x[k] + 0.25 x[k+1]; x[-1] is `left` (default: edge
    replicate), x[n] is the edge. Works in float32 for accuracy and casts back.
    """
    dtype = x.dtype
    x = cast(x, ms.float32)
    n = x.shape[axis]
    first = ops.narrow(x, axis, 0, 1)
    last = ops.narrow(x, axis, n - 1, 1)
    left = first if left is None else cast(left, ms.float32)
    if n == 1:
        prev, nxt = left, last
    else:
        prev = ops.cat((left, ops.narrow(x, axis, 0, n - 1)), axis)
        nxt = ops.cat((ops.narrow(x, axis, 1, n - 1), last), axis)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    y = ops.stack((even, odd), axis + 1)
    shape = x.shape[:axis] + (2 * n,) + x.shape[axis + 1:]
    return cast(y.reshape(shape), dtype)


def _nearest2x(x, axis: int):
    n = x.shape[axis]
    y = ops.stack((x, x), axis + 1)
    return y.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def default_conv_impl() -> str:
    """'native' (Conv2d/Conv3d kernels; Ascend) or 'unfold' (im2col + MatMul; CPU, where MindSpore 2.10's Conv3d is
    ~20x slower than torch and the unfold form is ~20x faster than it). Both compute the same convolution."""
    return "unfold" if ms.get_context("device_target") == "CPU" else "native"


def conv2d_frames(x, weight, bias, stride: int, padding: int, impl: str):
    """2-D convolution of x (N, C, H, W) with weight (Co, Ci, kh, kw) and zero padding."""
    if impl == "native":
        return ops.conv2d(x, weight, bias, stride, "pad" if padding else "valid", padding)
    n, c, h, w = x.shape
    co, _, kh, kw = weight.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if kh == 1 and kw == 1 and stride == 1 and padding == 0:
        cols = x.reshape(n, c, h * w)
    else:
        cols = ops.unfold(x, (kh, kw), 1, padding, stride)  # (N, C*kh*kw, Ho*Wo), C-major like the weight
    y = ops.matmul(weight.reshape(co, -1), cols)
    if bias is not None:
        y = y + bias.reshape(co, 1)
    return y.reshape(n, co, ho, wo)


def _frames_to_batch(x):
    b, c, t, h, w = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(b * t, c, h, w), b, t


def _batch_to_frames(x, b, t):
    n, c, h, w = x.shape
    return x.reshape(b, t, c, h, w).transpose(0, 2, 1, 3, 4)


class HaarWavelet3D(nn.Cell):
    """Forward 3-D Haar: prepend frame 0 (first chunk), 2x2x2 space-to-depth, ±0.3536 band matrix, band-major."""

    def __init__(self):
        super().__init__()
        self.band_t = Tensor(_band_matrix(3, HAAR_3D).T)

    def construct(self, x, first=True):
        dtype = x.dtype
        x = cast(x, ms.float32)
        if first:
            x = ops.cat((x[:, :, :1], x), 2)
        b, c, t, h, w = x.shape  # t is even: callers check chunk lengths
        y = x.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 6, 3, 5, 7)
        y = ops.matmul(y.reshape(b, c, t // 2, h // 2, w // 2, 8), self.band_t)
        y = y.transpose(0, 5, 1, 2, 3, 4).reshape(b, 8 * c, t // 2, h // 2, w // 2)
        return cast(y, dtype)


class InverseHaarWavelet3D(nn.Cell):
    """Inverse of `HaarWavelet3D`: T -> 2T, dropping the replicated frame 0 on the first chunk."""

    def __init__(self):
        super().__init__()
        self.band = Tensor(_band_matrix(3, HAAR_3D))

    def construct(self, x, first=True):
        dtype = x.dtype
        x = cast(x, ms.float32)
        b, c8, t, h, w = x.shape
        c = c8 // 8
        y = x.reshape(b, 8, c, t, h, w).transpose(0, 2, 3, 4, 5, 1)
        y = ops.matmul(y, self.band).reshape(b, c, t, h, w, 2, 2, 2)
        y = y.transpose(0, 1, 2, 5, 3, 6, 4, 7).reshape(b, c, 2 * t, 2 * h, 2 * w)
        if first:
            y = y[:, :, 1:]
        return cast(y, dtype)


class HaarWavelet2D(nn.Cell):
    """Per-frame 2-D Haar (orthonormal, factor 0.5), bands (LL, H-high, W-high, HH), band-major."""

    def __init__(self):
        super().__init__()
        self.band_t = Tensor(_band_matrix(2, HAAR_2D).T)

    def construct(self, x, first=True):
        dtype = x.dtype
        x = cast(x, ms.float32)
        b, c, t, h, w = x.shape
        y = x.reshape(b, c, t, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 3, 5, 4, 6)
        y = ops.matmul(y.reshape(b, c, t, h // 2, w // 2, 4), self.band_t)
        y = y.transpose(0, 5, 1, 2, 3, 4).reshape(b, 4 * c, t, h // 2, w // 2)
        return cast(y, dtype)


class InverseHaarWavelet2D(nn.Cell):
    def __init__(self):
        super().__init__()
        self.band = Tensor(_band_matrix(2, HAAR_2D))

    def construct(self, x, first=True):
        dtype = x.dtype
        x = cast(x, ms.float32)
        b, c4, t, h, w = x.shape
        c = c4 // 4
        y = x.reshape(b, 4, c, t, h, w).transpose(0, 2, 3, 4, 5, 1)
        y = ops.matmul(y, self.band).reshape(b, c, t, h, w, 2, 2)
        y = y.transpose(0, 1, 2, 3, 5, 4, 6).reshape(b, c, t, 2 * h, 2 * w)
        return cast(y, dtype)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with torch parameter names (`weight`, `bias`), computed in float32.

    Uses the `LayerNorm` primitive (CPU and Ascend kernels; `mint.nn.LayerNorm` has no CPU kernel in MindSpore 2.10).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones(channels, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(channels, np.float32)), name="bias")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        y, _, _ = self.layer_norm(cast(x, ms.float32), self.weight, self.bias)
        return cast(y, x.dtype)


class ChannelNorm(nn.Cell):
    """Official `Normalize(ch, "layernorm")`: LayerNorm over channels of a B,C,T,H,W tensor (key `<name>.norm.*`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = LayerNorm(channels)

    def construct(self, x):
        return self.norm(x.transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)


class FrameConv2d(nn.Cell):
    """Official `Conv2d`: a 2-D conv applied to every frame (keys `weight`, `bias`)."""

    n_cache = 0
    t_scale = 1

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = Parameter(Tensor(np.zeros((cout, cin, kernel, kernel), np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(cout, np.float32)), name="bias")
        self.stride, self.padding = stride, padding
        self.impl = default_conv_impl()

    def construct(self, x, cache=None, lookahead=0):
        y, b, t = _frames_to_batch(x)
        y = conv2d_frames(y, self.weight, self.bias, self.stride, self.padding, self.impl)
        return _batch_to_frames(y, b, t), ()


class CausalConv3d(nn.Cell):
    """Conv3d with causal temporal padding (first frame replicated `kt-1` times) and zero spatial padding.

    Cache: the frames of the padded input that the next chunk's first window needs (look-ahead frames excluded).
    """

    t_scale = 1

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        if padding:
            self.conv = nn.Conv3d(cin, cout, kernel, stride, pad_mode="pad", padding=(0, 0) + (padding,) * 4,
                                  has_bias=bias, weight_init="zeros", bias_init="zeros")
        else:
            self.conv = nn.Conv3d(cin, cout, kernel, stride, pad_mode="valid", has_bias=bias,
                                  weight_init="zeros", bias_init="zeros")
        self.kt, self.st, self.padding = kernel, stride, padding
        self.n_cache = 1 if kernel > 1 else 0
        self.impl = default_conv_impl()

    def _conv(self, x):
        if self.impl == "native":
            return self.conv(x)
        # Unfold form: the kt temporal taps are stacked on channels, then one per-frame 2-D conv.
        weight = self.conv.weight
        co, ci, kt, kh, kw = weight.shape
        n_out = (x.shape[2] - kt) // self.st + 1
        taps = ()
        for dt in range(kt):
            taps = taps + (x[:, :, dt:dt + self.st * (n_out - 1) + 1:self.st],)
        xs = ops.cat(taps, 1) if kt > 1 else x
        xs, b, t = _frames_to_batch(xs)
        w2 = weight.transpose(0, 2, 1, 3, 4).reshape(co, kt * ci, kh, kw)
        y = conv2d_frames(xs, w2, self.conv.bias, self.st, self.padding, "unfold")
        return _batch_to_frames(y, b, t)

    def construct(self, x, cache=None, lookahead=0):
        if self.kt == 1:
            return self._conv(x), ()
        if cache is None:
            pad = ops.tile(x[:, :, :1], (1, 1, self.kt - 1, 1, 1))
        else:
            pad = cache[0]
        x = ops.cat((pad, x), 2)
        n = x.shape[2]
        if lookahead:
            keep = n - lookahead  # stride 1 only (decoder)
            new_cache = x[:, :, keep - (self.kt - 1):keep]
        else:
            new_cache = x[:, :, ((n - self.kt) // self.st + 1) * self.st:]
        return self._conv(x), (new_cache,)


def _split(cache, offset: int, n: int):
    return None if cache is None else cache[offset:offset + n]


class ResnetBlock2D(nn.Cell):
    n_cache = 0
    t_scale = 1

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = ChannelNorm(cin)
        self.conv1 = FrameConv2d(cin, cout, 3, padding=1)
        self.norm2 = ChannelNorm(cout)
        self.conv2 = FrameConv2d(cout, cout, 3, padding=1)
        self.has_shortcut = cin != cout
        if self.has_shortcut:
            self.nin_shortcut = FrameConv2d(cin, cout, 1)

    def construct(self, x, cache=None, lookahead=0):
        h, _ = self.conv1(silu(self.norm1(x)))
        h, _ = self.conv2(silu(self.norm2(h)))
        if self.has_shortcut:
            x, _ = self.nin_shortcut(x)
        return x + h, ()


class ResnetBlock3D(nn.Cell):
    n_cache = 2
    t_scale = 1

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = ChannelNorm(cin)
        self.conv1 = CausalConv3d(cin, cout, 3, padding=1)
        self.norm2 = ChannelNorm(cout)
        self.conv2 = CausalConv3d(cout, cout, 3, padding=1)
        self.has_shortcut = cin != cout
        if self.has_shortcut:
            self.nin_shortcut = CausalConv3d(cin, cout, 1)

    def construct(self, x, cache=None, lookahead=0):
        h, c1 = self.conv1(silu(self.norm1(x)), _split(cache, 0, 1), lookahead)
        h, c2 = self.conv2(silu(self.norm2(h)), _split(cache, 1, 1), lookahead)
        if self.has_shortcut:
            x, _ = self.nin_shortcut(x)
        return x + h, c1 + c2


class AttnBlock3DFix(nn.Cell):
    """Single-head attention over the H*W positions of each frame (scale C^-1/2); per frame, so chunk-safe."""

    n_cache = 0
    t_scale = 1

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ChannelNorm(channels)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)
        self.scale = float(channels) ** -0.5

    def construct(self, x, cache=None, lookahead=0):
        h = self.norm(x)
        q, _ = self.q(h)
        k, _ = self.k(h)
        v, _ = self.v(h)
        b, c, t, hh, ww = q.shape
        q = q.transpose(0, 2, 3, 4, 1).reshape(b * t, hh * ww, c)
        k = k.transpose(0, 2, 3, 4, 1).reshape(b * t, hh * ww, c)
        v = v.transpose(0, 2, 3, 4, 1).reshape(b * t, hh * ww, c)
        scores = cast(ops.bmm(q, k.transpose(0, 2, 1)), ms.float32) * self.scale
        attn = cast(ops.softmax(scores, -1), v.dtype)
        h = ops.bmm(attn, v).reshape(b, t, hh, ww, c).transpose(0, 4, 1, 2, 3)
        h, _ = self.proj_out(h)
        return x + h, ()


class Downsample2D(nn.Cell):
    """Per frame: zero-pad right/bottom by 1, 3x3 stride-2 conv (official `Downsample`, key `conv.*`)."""

    n_cache = 0
    t_scale = 1

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, stride=2)

    def construct(self, x, cache=None, lookahead=0):
        return self.conv(ops.pad(x, (0, 1, 0, 1)))


class Downsample3D(nn.Cell):
    """Official `Spatial2xTime2x3DDownsample`: zero-pad right/bottom by 1, causal 3x3x3 stride-2 conv."""

    n_cache = 1
    t_scale = 1

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, stride=2)

    def construct(self, x, cache=None, lookahead=0):
        return self.conv(ops.pad(x, (0, 1, 0, 1)), cache, lookahead)


class Upsample2D(nn.Cell):
    """Official `Upsample`: per-frame nearest x2, then 3x3 conv."""

    n_cache = 0
    t_scale = 1

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, padding=1)

    def construct(self, x, cache=None, lookahead=0):
        return self.conv(_nearest2x(_nearest2x(x, 3), 4))


class Upsample3D(nn.Cell):
    """Official `Spatial2xTime2x3DUpsample` (trilinear): frame 0 is upsampled alone (spatially); frames 1.. are
    linearly interpolated x2 in time, then bilinearly x2 in space; then a causal 3x3x3 conv.

    Cache: (previous real frame, valid flag, conv cache). The time interpolation of a chunk's first frame needs
    the previous chunk's last real frame on its left; `valid` is 0 right after the clip's frame 0 (frames 1.. then
    start a fresh sequence with an edge-replicated left neighbour) and 1 afterwards. With 0/1 the blend below is exact.
    """

    n_cache = 3
    t_scale = 2

    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, 3, padding=1)

    def _spatial(self, x):
        return _lerp2x(_lerp2x(x, 3), 4)

    def construct(self, x, cache=None, lookahead=0):
        t = x.shape[2]
        last_real = x[:, :, t - 1 - lookahead:t - lookahead]
        if cache is None:
            y = self._spatial(x[:, :, :1])
            if t > 1:
                y = ops.cat((y, self._spatial(_lerp2x(x[:, :, 1:], 2))), 2)
            valid = ops.full((1,), 0.0 if t == 1 else 1.0, dtype=x.dtype)
            conv_cache = None
        else:
            prev, valid_in, conv_cache = cache[0], cache[1], cache[2:]
            left = valid_in * prev + (1.0 - valid_in) * x[:, :, :1]
            y = self._spatial(_lerp2x(x, 2, left))
            valid = ops.ones((1,), x.dtype)
        y, c = self.conv(y, conv_cache, 2 * lookahead)
        return y, (last_real, valid) + c


class StreamSequential(nn.SequentialCell):
    """SequentialCell whose children follow the streaming protocol (keys `<name>.0.*`, `<name>.1.*`, ...)."""

    def __init__(self, cells):
        super().__init__(cells)
        self.n_cache = sum(c.n_cache for c in cells)
        self.t_scale = int(np.prod([c.t_scale for c in cells]))

    def construct(self, x, cache=None, lookahead=0):
        new_cache = ()
        offset = 0
        for cell in self.cell_list:
            x, c = cell(x, _split(cache, offset, cell.n_cache), lookahead)
            new_cache = new_cache + c
            offset = offset + cell.n_cache
            lookahead = lookahead * cell.t_scale
        return x, new_cache
