"""WF-VAE against the official implementation (fixtures: official class, random weights, CPU fp32)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mindspeed_mm.osp.vae import WFVAE

CASES = ["v13_4x8x8", "v15_8x8x8"]
TOL = 1e-4


def _case(fixtures_dir, name):
    d = fixtures_dir / "wfvae" / name
    return json.loads((d / "meta.json").read_text()), load_file(str(d / "weights.safetensors")), \
        load_file(str(d / "tensors.safetensors"))


@pytest.fixture(scope="module", params=CASES)
def case(request):
    from tests.conftest import FIXTURES
    meta, weights, tensors = _case(FIXTURES, request.param)
    return request.param, meta, weights, tensors


def test_matches_official(case):
    name, meta, weights, t = case
    vae = WFVAE.from_official(meta["config"], weights).eval()
    assert sum(p.numel() for p in vae.parameters()) == sum(v.numel() for v in weights.values())
    posterior = vae.encode(t["video"])
    assert (posterior.moments - t["moments"]).abs().max().item() <= TOL
    assert (posterior.mode() - t["latent_mean"]).abs().max().item() <= TOL
    recon = vae.decode(t["latent_mean"])
    assert recon.shape == t["reconstruction"].shape
    assert (recon - t["reconstruction"]).abs().max().item() <= TOL
    # chunked (streaming) paths agree with the official whole-clip output too
    r = vae.temporal_compression
    assert (vae.encode(t["video"], chunk_frames=r).moments - t["moments"]).abs().max().item() <= TOL
    assert (vae.decode(t["latent_mean"], chunk_frames=1) - t["reconstruction"]).abs().max().item() <= TOL


def test_official_checkpoint_file_and_dir(case, tmp_path):
    """from_pretrained on an official layout: config.json + training dict with EMA and `module.` prefixes."""
    name, meta, weights, t = case
    ckpt = {"ema_state_dict": {"module." + k: v.to(torch.bfloat16) for k, v in weights.items()},
            "state_dict": {"gen_model": {}}, "optimizer": {"lr": torch.tensor(1e-5)}}
    torch.save(ckpt, tmp_path / "merged.ckpt")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WFVAEModel", "use_tiling": True,
                                                      "t_chunk_enc": 8, **meta["config"]}))
    for path in (tmp_path, tmp_path / "merged.ckpt"):
        vae = WFVAE.from_pretrained(path)
        assert vae.config.scale == pytest.approx(meta["config"]["scale"])
        z = vae.encode(t["video"]).mode()
        # bf16-rounded weights: same architecture, different numbers; compare against the bf16-rounded model
        ref = WFVAE.from_official(meta["config"], {k: v.to(torch.bfloat16) for k, v in weights.items()})
        assert torch.equal(z, ref.encode(t["video"]).mode())
