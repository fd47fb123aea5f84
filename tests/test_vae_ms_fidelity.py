"""MindSpore WF-VAE in GRAPH_MODE vs the official outputs and vs our PyTorch WF-VAE (fixtures, float32, CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="MindSpore is not installed (pip install 'mindspeed-mm-osp[mindspore]')")
from safetensors.numpy import load_file  # noqa: E402

from mindspeed_mm.osp.vae_ms import WFVAE  # noqa: E402

CASES = ("v13_4x8x8", "v15_8x8x8")
_RESULTS = {}


def _case(fixtures_dir, case):
    d = fixtures_dir / "wfvae" / case
    return json.loads((d / "meta.json").read_text()), load_file(str(d / "weights.safetensors")), \
        load_file(str(d / "tensors.safetensors"))


def _ms_outputs(fixtures_dir, case):
    """Encode the fixture video and decode the fixture latents once per case (graph compilation is the cost)."""
    if case not in _RESULTS:
        ms.set_context(mode=ms.GRAPH_MODE)
        meta, weights, tensors = _case(fixtures_dir, case)
        vae = WFVAE.from_official(meta["config"], weights)  # the public loader, official names and config
        post = vae.encode(tensors["video"])
        moments = np.concatenate([post.mean.asnumpy(), post.logvar.asnumpy()], 1)
        rec = vae.decode(tensors["latent_mean"]).asnumpy()
        _RESULTS[case] = (moments, rec, vae.compile_stats.count)
    return _RESULTS[case]


@pytest.mark.parametrize("case", CASES)
def test_graph_mode_matches_official(fixtures_dir, case):
    _, _, tensors = _case(fixtures_dir, case)
    moments, rec, n_graphs = _ms_outputs(fixtures_dir, case)
    assert n_graphs == 2  # one encoder graph, one decoder graph
    assert moments.shape == tensors["moments"].shape and rec.shape == tensors["reconstruction"].shape
    assert np.abs(moments - tensors["moments"]).max() <= 1e-4
    assert np.abs(rec - tensors["reconstruction"]).max() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_graph_mode_matches_pytorch_model(fixtures_dir, case):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_torch

    from mindspeed_mm.osp.vae import WFVAE as TorchWFVAE

    meta, _, tensors = _case(fixtures_dir, case)
    tvae = TorchWFVAE.from_official(meta["config"], load_torch(str(fixtures_dir / "wfvae" / case / "weights.safetensors")))
    with torch.no_grad():
        post = tvae.encode(torch.from_numpy(tensors["video"]))
        t_moments = torch.cat([post.mean, post.logvar], 1).numpy()
        t_rec = tvae.decode(torch.from_numpy(tensors["latent_mean"])).numpy()
    moments, rec, _ = _ms_outputs(fixtures_dir, case)
    assert np.abs(moments - t_moments).max() <= 1e-4
    assert np.abs(rec - t_rec).max() <= 1e-4
