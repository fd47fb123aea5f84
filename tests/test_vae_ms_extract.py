"""Latent extraction (MindSpore): sharding across workers, atomic outputs, resume; real videos, tiny model."""
from __future__ import annotations

import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="MindSpore is not installed (pip install 'mindspeed-mm-osp[mindspore]')")
av = pytest.importorskip("av", reason="PyAV is needed to write the test videos")

from _vae_ms_tiny import tiny_vae  # noqa: E402

from mindspeed_mm.osp.vae_ms import extract  # noqa: E402


def _write_video(path, frames):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_shards_cover_the_list_once_and_rerun_skips(tmp_path):
    rng = np.random.default_rng(0)
    videos = []
    for i in range(3):
        path = tmp_path / f"clip{i}.mp4"
        _write_video(path, rng.integers(0, 255, (12, 16, 24, 3), dtype=np.uint8))
        videos.append(str(path))
    listing = tmp_path / "videos.txt"
    listing.write_text("# test list\n" + "\n".join(videos) + "\n\n")
    assert extract.read_video_list(str(listing)) == videos

    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        vae, _ = tiny_vae()

        def encode(clip):
            post = vae.encode(clip)
            return post.mean.asnumpy(), post.logvar.asnumpy()

        def load(v):
            clip = extract.read_clip(v, num_frames=12, temporal_compression=8, resolution=None)
            assert clip.shape == (1, 3, 9, 16, 24) and -1 <= clip.min() and clip.max() <= 1
            return clip

        out = tmp_path / "latents"
        results = [extract.extract_shard(videos, str(out), encode, load, rank, 2, log=lambda s: None)
                   for rank in (0, 1)]
        written = results[0].written + results[1].written
        assert [len(r.written) for r in results] == [2, 1] and len(set(written)) == 3
        assert sorted(os.listdir(out)) == sorted(os.path.basename(w) for w in written)  # no temp files left
        from safetensors.numpy import load_file
        lat = load_file(written[0])
        post = vae.encode(load(videos[0]))
        np.testing.assert_allclose(lat["latent_mean"], post.mean.asnumpy()[0], atol=1e-6)
        assert lat["latent_logvar"].shape == (4, 2, 2, 3)

        os.remove(written[1])  # an interrupted run: one output missing
        again = extract.extract_shard(videos, str(out), encode, load, 0, 2, log=lambda s: None)
        assert again.written == [written[1]] and again.skipped == [written[0]]
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    with pytest.raises(ValueError, match="rank 2 outside"):
        extract.shard(videos, 2, 2)
