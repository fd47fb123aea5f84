"""The Winograd fast path (ops/winograd.py) against the direct convolution, op by op and through the WF-VAE."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mindspeed_mm.osp.ops import winograd
from mindspeed_mm.osp.vae import WFVAE
from mindspeed_mm.osp.vae.blocks import Upsample
from mindspeed_mm.osp.vae.causal_conv import CausalConv3d, FastConvMixin, FrameConv2d

REL_TOL = 2e-5   # F(4x4, 3x3) in float32: about 1e-5 of the output scale


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("ci,co,kt,t,h,w,batch", [
    (16, 24, 3, 7, 12, 20, 1),   # whole tiles
    (8, 5, 3, 4, 9, 14, 2),      # partial tiles on both edges, batch 2
    (6, 6, 1, 3, 5, 3, 1),       # 2-D kernel, tiny frame
    (4, 7, 2, 2, 4, 4, 1),       # two taps, one output frame
])
def test_matches_conv3d(ci, co, kt, t, h, w, batch):
    gen = torch.Generator().manual_seed(ci * co + h)
    x = torch.randn(batch, ci, t, h, w, generator=gen)
    weight = torch.randn(co, ci, kt, 3, 3, generator=gen)
    bias = torch.randn(co, generator=gen)
    ref = F.conv3d(x, weight, bias, padding=(0, 1, 1))
    out = winograd.winograd_conv(x, weight, bias)
    assert _rel_diff(out, ref) < REL_TOL
    assert (out - ref).abs().max() > 0   # it is a different algorithm, not the direct conv in disguise


def test_segments_stand_for_their_concatenation():
    """A causal conv passes [first frame repeated (a view), frames] or [carried frames, frames], never a copy."""
    gen = torch.Generator().manual_seed(4)
    x, carried = torch.randn(2, 6, 5, 8, 12, generator=gen), torch.randn(2, 6, 2, 8, 12, generator=gen)
    weight = torch.randn(7, 6, 3, 3, 3, generator=gen)
    for segments in ([x[:, :, :1].expand(-1, -1, 2, -1, -1), x], [carried, x], [carried, x[:, :, :1]]):
        ref = F.conv3d(torch.cat(segments, dim=2), weight, padding=(0, 1, 1))
        assert _rel_diff(winograd.winograd_conv(segments, weight, None), ref) < REL_TOL


@pytest.mark.parametrize("workspace", [1, 60 * 4 * 2 * (8 * 9 + 8 * 7) * 2])   # 1 frame x 1 row; all frames x 2 rows
def test_blocks_cover_the_output_exactly(monkeypatch, workspace):
    """Small workspaces split the work into frame and tile-row blocks: each must read its own input window."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 8, 9, 21, 7, generator=gen)
    weight, bias = torch.randn(8, 8, 3, 3, 3, generator=gen), torch.randn(8, generator=gen)
    whole = winograd.winograd_conv(x, weight, bias)
    monkeypatch.setattr(winograd, "WORKSPACE_BYTES", workspace)
    frames, rows = winograd._blocks(8, 8, 3, 7, 6, 2, 4)
    assert (frames, rows) == ((1, 1) if workspace == 1 else (7, 2))
    blocked = winograd.winograd_conv(x, weight, bias)
    assert _rel_diff(blocked, whole) < 1e-5   # GEMM sizes differ, so rounding does; a misplaced block is O(1)
    assert _rel_diff(whole, F.conv3d(x, weight, bias, padding=(0, 1, 1))) < REL_TOL


@pytest.mark.parametrize("workspace, expected", [(400_000, [None]), (None, [0, 1, 2])])
def test_the_weight_is_transformed_once_per_call(monkeypatch, workspace, expected):
    """Several blocks (6 at a 400 KB workspace) share one transform of the whole weight; a single block (the default
    workspace) transforms it tap by tap. Either way the result is the convolution."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 32, 9, 21, 7, generator=gen)
    weight, bias = torch.randn(32, 32, 3, 3, 3, generator=gen), torch.randn(32, generator=gen)
    if workspace is not None:
        monkeypatch.setattr(winograd, "WORKSPACE_BYTES", workspace)
    assert winograd._blocks(32, 32, 3, 7, 6, 2, 4) == ((7, 1) if workspace else (7, 6))
    taps = []
    original = winograd.transform_weight
    monkeypatch.setattr(winograd, "transform_weight", lambda *a, **k: taps.append(k.get("tap")) or original(*a, **k))
    out = winograd.winograd_conv(x, weight, bias)
    assert taps == expected
    assert _rel_diff(out, F.conv3d(x, weight, bias, padding=(0, 1, 1))) < REL_TOL


def test_used_only_where_it_is_valid_and_worthwhile():
    x = torch.zeros(1, 128, 3, 64, 64)
    with torch.no_grad():
        assert winograd.supported(torch.nn.Conv3d(128, 128, 3, padding=(0, 1, 1)), x)
        assert not winograd.supported(torch.nn.Conv3d(64, 64, 3, padding=(0, 1, 1)), x[:, :64])   # too narrow
        assert not winograd.supported(torch.nn.Conv3d(128, 128, 3, padding=(0, 1, 1)), x[..., :16, :16])  # too small
        assert not winograd.supported(torch.nn.Conv3d(128, 128, 3, stride=2), x)
        assert not winograd.supported(torch.nn.Conv3d(128, 128, 1), x)
        assert not winograd.supported(torch.nn.Conv3d(128, 128, 3, padding=(0, 1, 1)), x.double())
    assert not winograd.supported(torch.nn.Conv3d(128, 128, 3, padding=(0, 1, 1)), x)   # grad enabled: training


def test_frame_conv2d_fast_path_matches(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_TAP_CHANNELS", 0)
    monkeypatch.setattr(winograd, "MIN_OUTPUT_POSITIONS", 0)
    conv = FrameConv2d(16, 24, 3, padding=1)
    conv.fast_conv = True
    x = torch.randn(2, 16, 3, 10, 14)
    with torch.no_grad():
        fast = conv(x)
        conv.fast_conv = False
        ref = conv(x)
    assert _rel_diff(fast, ref) < REL_TOL and (fast - ref).abs().max() > 0


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 0), (1, 1, 0)])
def test_frame_conv2d_direct_5d_matches_per_frame(kernel, stride, padding):
    """Convs the fast path leaves to oneDNN run as one 1 x k x k conv3d on the 5-D tensor, whatever its layout."""
    gen = torch.Generator().manual_seed(kernel + stride)
    conv = FrameConv2d(8, 12, kernel, stride=stride, padding=padding)
    base = torch.randn(2, 8, 3, 10, 14, generator=gen)
    layouts = {"contiguous": base, "channels-last": base.contiguous(memory_format=torch.channels_last_3d),
               "frames-major view": base.transpose(1, 2).contiguous().transpose(1, 2)}
    with torch.no_grad():
        ref = conv(base)
        conv.fast_conv = True
        for name, x in layouts.items():
            out = conv(x)
            assert out.shape == ref.shape and _rel_diff(out, ref) < 1e-6, name


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (3, 2, 0), (3, 1, 1)])
def test_causal_conv_direct_reads_channels_last_inputs(kernel, stride, padding):
    """Under the fast path a causal conv that Winograd does not take reads a channels-last input as it is (1x1x1:
    one GEMM in that layout), with the reference's result."""
    gen = torch.Generator().manual_seed(10 + kernel + stride)
    conv = CausalConv3d(8, 12, kernel, stride=stride, padding=padding)
    base = torch.randn(2, 8, 5, 10, 14, generator=gen)
    with torch.no_grad():
        ref = conv(base)
        for x in (base, base.contiguous(memory_format=torch.channels_last_3d)):
            conv.reset_stream()
            conv.fast_conv = True
            out = conv(x)
            assert out.shape == ref.shape and _rel_diff(out, ref) < 1e-6


def test_upsample_fast_path_is_the_per_frame_upsample():
    up = Upsample(8)
    x = torch.randn(1, 8, 3, 5, 6)
    with torch.no_grad():
        ref = up(x)
        up.conv.fast_conv = True
        assert _rel_diff(up(x), ref) < 1e-6


@pytest.fixture(params=["tiny_v13", "tiny_v15"])
def vae(request, monkeypatch):
    monkeypatch.setattr(winograd, "MIN_TAP_CHANNELS", 0)   # tiny sizes: run every 3x3 conv on the fast path
    monkeypatch.setattr(winograd, "MIN_OUTPUT_POSITIONS", 0)
    torch.manual_seed(0)
    model = WFVAE.from_preset(request.param).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_wfvae_fast_path_matches_reference_whole_and_chunked(vae):
    r = vae.temporal_compression
    video = torch.rand(1, 3, 1 + 2 * r, 16, 24, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ref_z = vae.encode(video).mode()
    ref_video = vae.decode(ref_z)
    vae.use_fast_conv()
    fast_z = vae.encode(video).mode()
    assert _rel_diff(fast_z, ref_z) < 1e-4 and (fast_z - ref_z).abs().max() > 0
    assert _rel_diff(vae.encode(video, chunk_frames=r).mode(), fast_z) < 1e-4
    fast_video = vae.decode(ref_z)
    assert (fast_video - ref_video).abs().max() < 1e-4
    assert (vae.decode(ref_z, chunk_frames=1) - fast_video).abs().max() < 1e-4
    vae.use_fast_conv(False)
    assert torch.equal(vae.decode(ref_z), ref_video)


def test_fast_layout_keeps_the_weights(vae, tmp_path):
    """A conv's first fast-path call stores its weight in winograd.fast_layout: the same values, a view for the
    weight transform; the direct conv still reads it right, saving writes it plainly, turning the path off undoes it."""
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    video = torch.rand(1, 3, 1 + vae.temporal_compression, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video).mode()
        vae.use_fast_conv()
        fast = vae.decode(z)
        moved = [k for k, v in vae.state_dict().items() if not v.is_contiguous()]
        assert moved and all(winograd.in_fast_layout(vae.state_dict()[k]) for k in moved)
        assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())
        assert torch.equal(vae.decode(z), fast)
        for m in vae.modules():   # direct convolutions on the weights still in the fast layout
            if isinstance(m, FastConvMixin):
                m.fast_conv = False
        direct_on_fast_layout = vae.decode(z)
        vae.save_pretrained(tmp_path / "saved")
        vae.use_fast_conv(False)
        assert all(p.is_contiguous() for p in vae.parameters())
        assert _rel_diff(direct_on_fast_layout, vae.decode(z)) < 1e-6
    reloaded = WFVAE.from_pretrained(tmp_path / "saved").state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in before.items())


def test_training_never_takes_the_fast_path(vae):
    vae.use_fast_conv()
    video = torch.rand(1, 3, 1 + vae.temporal_compression, 16, 16) * 2 - 1
    calls = []
    original = winograd.winograd_conv
    try:
        winograd.winograd_conv = lambda *a: calls.append(1) or original(*a)
        recon, *_ = vae(video, sample_posterior=False)
        recon.mean().backward()
        assert not calls
        with torch.no_grad():
            vae.encode(video)
        assert calls
    finally:
        winograd.winograd_conv = original
