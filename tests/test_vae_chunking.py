"""Chunked (streaming) encode/decode equals whole-clip output for every frame count and chunk size."""
from __future__ import annotations

import pytest
import torch

from mindspeed_mm.osp.vae import WFVAE

TOL = 1e-5


def _model(preset: str) -> WFVAE:
    torch.manual_seed(0)
    vae = WFVAE.from_preset(preset).eval()
    with torch.no_grad():  # make every parameter matter (random biases / norm affines)
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


@pytest.fixture(scope="module", params=["tiny_v13", "tiny_v15"])
def vae(request):
    return _model(request.param)


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_encode_chunk_grid(vae):
    r = vae.temporal_compression
    gen = torch.Generator().manual_seed(1)
    for n in range(0, 4):
        t = 1 + r * n
        video = torch.rand(1, 3, t, 8, 16, generator=gen) * 2 - 1
        whole = vae.encode(video).moments
        assert whole.shape[2] == n + 1
        for chunk in sorted({1, 2, r - 1, r + 1, 2 * r + 3, t + 5}):
            assert _max_diff(vae.encode(video, chunk_frames=chunk).moments, whole) <= TOL, (t, chunk)


def test_decode_chunk_grid(vae):
    r = vae.temporal_compression
    gen = torch.Generator().manual_seed(2)
    for n_lat in (1, 2, 3, 5):
        z = torch.randn(2, vae.latent_dim, n_lat, 1, 2, generator=gen)
        whole = vae.decode(z)
        assert whole.shape == (2, 3, 1 + r * (n_lat - 1), 8, 16)
        for chunk in sorted({1, 2, 3, n_lat + 4}):
            assert _max_diff(vae.decode(z, chunk_frames=chunk), whole) <= TOL, (n_lat, chunk)


def test_image_mode(vae):
    image = torch.rand(1, 3, 1, 24, 16) * 2 - 1
    post = vae.encode(image, chunk_frames=1)
    assert post.mean.shape == (1, vae.latent_dim, 1, 3, 2)
    assert _max_diff(vae.decode(post.mode(), chunk_frames=4), vae.decode(post.mode())) <= TOL


def test_stream_state_is_bounded(vae):
    """Between chunks each module keeps only a few frames, whatever the clip length."""
    held = []

    def record(module, args, output):
        sizes = [t.shape[2] for m in module.modules() for name in ("_pending", "_last")
                 for t in ([getattr(m, name, None)] if not isinstance(getattr(m, name, None), list)
                           else getattr(m, name)) if isinstance(t, torch.Tensor)]
        held.append(max(sizes, default=0))

    handle = vae.decoder.register_forward_hook(record)
    try:
        vae.decode(torch.randn(1, vae.latent_dim, 7, 1, 1), chunk_frames=1)
    finally:
        handle.remove()
    assert len(held) == 7 and max(held) <= 4
    # state is cleared after the call
    assert all(getattr(m, "_pending", None) is None for m in vae.modules() if hasattr(m, "_pending")
               and not isinstance(m._pending, list))
