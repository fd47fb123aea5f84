"""Chunked (causal-cache) MindSpore WF-VAE == whole clip, with one compiled graph per chunk shape (tiny model)."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="MindSpore is not installed (pip install 'mindspeed-mm-osp[mindspore]')")

from _vae_ms_tiny import tiny_vae  # noqa: E402


@pytest.fixture(scope="module")
def graph_vae():
    ms.set_context(mode=ms.GRAPH_MODE)
    return tiny_vae()[0]


def test_chunked_encode_equals_clip_graph_mode(graph_vae):
    video = np.random.default_rng(1).uniform(-1, 1, (1, 3, 17, 16, 16)).astype(np.float32)
    whole = graph_vae.encode(video)
    chunked = graph_vae.encode(video, chunk_frames=8)  # [frame 0], [1..8], [9..16]
    assert np.abs(chunked.mean.asnumpy() - whole.mean.asnumpy()).max() <= 1e-5
    assert np.abs(chunked.logvar.asnumpy() - whole.logvar.asnumpy()).max() <= 1e-5
    keys = [k for k in graph_vae.compile_stats.first_call_s if k.startswith("encode")]
    assert len(keys) == 3  # clip, first chunk, one graph for both 8-frame chunks
    with pytest.raises(ValueError, match="multiple of 8"):
        graph_vae.encode(video, chunk_frames=4)


def test_chunked_decode_equals_clip_graph_mode(graph_vae):
    z = np.random.default_rng(2).standard_normal((1, 4, 4, 2, 2)).astype(np.float32)
    whole = graph_vae.decode(z).asnumpy()
    assert whole.shape == (1, 3, 25, 16, 16)
    before = graph_vae.compile_stats.count
    # single-latent chunks (the hardest case for the time upsample): [0], [1 +look-ahead 2], [2 +3], [3]
    got = graph_vae.decode(z, chunk_frames=1).asnumpy()
    assert np.abs(whole).max() > 0.5  # a meaningful signal, so 1e-5 is a real bound
    assert np.abs(got - whole).max() <= 1e-5
    decode_keys = sorted(k for k in graph_vae.compile_stats.first_call_s if k.startswith("decode"))
    # clip, first, next+la(2 latents) reused by both middle chunks, next(1): no graph per chunk
    assert len(decode_keys) == 4, decode_keys
    assert graph_vae.compile_stats.count - before == 3


def test_pynative_matches_graph_and_dtypes(graph_vae):
    video = np.random.default_rng(1).uniform(-1, 1, (1, 3, 9, 16, 16)).astype(np.float32)
    ref = graph_vae.encode(video).mean.asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        eager, _ = tiny_vae()
        assert np.abs(eager.encode(video, chunk_frames=8).mean.asnumpy() - ref).max() <= 1e-5
        half, _ = tiny_vae(dtype=ms.float16)  # the Ascend low-precision path (fp16 Conv3d exists on CPU)
        got = half.encode(video).mean.asnumpy()
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= 5e-2 * max(1.0, np.abs(ref).max())
        with pytest.raises(ValueError, match="bfloat16"):
            tiny_vae(dtype=ms.bfloat16)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
