"""WF-VAE public API: input validation, padding, checkpoint forms, strict keys, save/load, presets, wavelets."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mindspeed_mm.osp.vae import WFVAE, load_preset, preset_names
from mindspeed_mm.osp.vae.official import normalize_official_keys
from mindspeed_mm.osp.vae.wavelets import (HaarWavelet2D, HaarWavelet3D, InverseHaarWavelet2D,
                                           InverseHaarWavelet3D)

FIXTURES = Path(__file__).parent / "fixtures" / "wfvae"


@pytest.fixture(scope="module")
def official():
    d = FIXTURES / "v13_4x8x8"
    return json.loads((d / "meta.json").read_text())["config"], load_file(str(d / "weights.safetensors"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return WFVAE.from_preset("tiny_v13").eval()


# ---- input validation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, message", [
    ((1, 3, 7, 16, 16), r"1 \+ 4\*n .* got 7; nearest valid: \[5, 9\]"),
    ((1, 3, 0, 16, 16), r"frame count"),
    ((1, 3, 5, 12, 16), r"multiples of 8, got 12x16"),
    ((1, 4, 5, 16, 16), r"3 \(RGB\) channels"),
    ((3, 5, 16, 16), r"5-D"),
])
def test_bad_video_shapes(tiny, shape, message):
    with pytest.raises(ValueError, match=message):
        tiny.encode(torch.zeros(shape))


def test_bad_values_and_dtypes(tiny):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tiny.encode(torch.full((1, 3, 1, 8, 8), 255.0))
    with pytest.raises(ValueError, match="floating"):
        tiny.encode(torch.zeros(1, 3, 1, 8, 8, dtype=torch.uint8))
    tiny.encode(torch.full((1, 3, 1, 8, 8), 1.005))  # small overshoot from resampling is accepted
    with pytest.raises(ValueError, match="chunk_frames"):
        tiny.encode(torch.zeros(1, 3, 5, 8, 8), chunk_frames=0)
    with pytest.raises(ValueError, match=r"latents must be \(B, 4"):
        tiny.decode(torch.zeros(1, 8, 2, 1, 1))


def test_pad_and_crop_back(tiny):
    video = torch.rand(1, 3, 7, 12, 20) * 2 - 1
    post = tiny.encode(video, pad=True)
    assert post.mean.shape == (1, 4, 3, 2, 3) and post.original_size == (7, 12, 20)
    assert tiny.reconstruct(video, pad=True).shape == video.shape
    padded, _ = tiny.pad_video(video)
    assert padded.shape == (1, 3, 9, 16, 24)
    assert torch.equal(padded[:, :, 7, :12, :20], video[:, :, -1]) and torch.equal(padded[:, :, :7, 12, :20], video[:, :, :, 11, :])


# ---- checkpoints ------------------------------------------------------------------------------------------------
def test_state_dict_forms_load_identically(official):
    config, weights = official
    ref = WFVAE.from_official(config, weights).state_dict()
    haar = {"encoder.wavelet_transform_in.h_conv.conv.weight": torch.ones(1, 1, 2, 2, 2),
            "encoder.wavelet_transform_l1.aa": torch.ones(1, 1, 2, 2),
            "decoder.inverse_wavelet_transform_out.gh_v": torch.ones(1, 1, 2, 2, 2)}
    forms = {
        "ema+module": {"ema_state_dict": {f"module.{k}": v for k, v in weights.items()}, "state_dict": {}},
        "empty ema -> state_dict": {"ema_state_dict": {}, "state_dict": dict(weights)},
        "gen_model": {"state_dict": {"gen_model": dict(weights)}},
        "bare + haar + mindspeed": {**weights, **haar, "encoder.wavelet_tranform_in.g_conv.conv.weight":
                                    torch.ones(1, 1, 2, 2, 2), "scale": torch.ones(1, 4, 1, 1, 1),
                                    "shift": torch.zeros(1, 4, 1, 1, 1)},
        "fp32": {k: v.float() for k, v in weights.items()},
    }
    for name, sd in forms.items():
        got = WFVAE.from_official(config, sd).state_dict()
        assert all(torch.equal(got[k], ref[k]) for k in ref), name
    bf16 = WFVAE.from_official(config, {k: v.to(torch.bfloat16) for k, v in weights.items()}).state_dict()
    assert all(torch.equal(bf16[k], ref[k].to(torch.bfloat16).float()) for k in ref)


def test_scale_shift_buffers_fill_missing_config(official):
    config, weights = official
    cfg = {k: v for k, v in config.items() if k not in ("scale", "shift")}
    vae = WFVAE.from_official(cfg, {**weights, "scale": torch.full((1, 4, 1, 1, 1), 2.0)})
    assert vae.config.scale == [2.0] * 4 and vae.config.shift == [0.0] * 4


def test_strict_keys_named(official):
    config, weights = official
    missing = dict(weights)
    del missing["decoder.conv_out.bias"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): \['decoder.conv_out.bias'\]"):
        WFVAE.from_official(config, missing)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): \['decoder.extra.weight'\]"):
        WFVAE.from_official(config, {**weights, "decoder.extra.weight": torch.zeros(1)})
    bad = {**weights, "decoder.conv_out.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"decoder.conv_out.bias: checkpoint \(5,\) vs model \(24,\)"):
        WFVAE.from_official(config, bad)
    with pytest.raises(ValueError, match="connect_res_layer_num=1 .* say 2"):
        WFVAE.from_official({**config, "connect_res_layer_num": 1}, weights)
    with pytest.raises(ValueError, match="norm_type 'groupnorm'"):
        WFVAE.from_official({**config, "norm_type": "groupnorm"}, weights)


def test_shape_fields_inferred(official):
    config, weights = official
    derived = ("connect_res_layer_num", "base_channels", "latent_dim", "encoder_energy_flow_hidden_size",
               "decoder_energy_flow_hidden_size", "l1_dowmsample_block", "encoder_num_resblocks")
    vae = WFVAE.from_official({k: v for k, v in config.items() if k not in derived}, weights)
    assert (vae.config.connect_res_layer_num, vae.config.base_channels, vae.config.latent_dim,
            vae.config.temporal_compression) == (2, 16, 4, 4)
    with pytest.warns(UserWarning, match="no latent scale/shift"):
        assert WFVAE.from_official(None, weights).config.encoder_energy_flow_hidden_size == 8


def test_save_load_round_trip(official, tmp_path):
    config, weights = official
    vae = WFVAE.from_official(config, weights)
    vae.save_pretrained(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vae.save_pretrained(tmp_path / "m")
    back = WFVAE.from_pretrained(tmp_path / "m")
    assert back.config == vae.config
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), back.state_dict().values()))
    assert not list((tmp_path / "m").glob(".*"))  # no temporary files left behind


# ---- presets ---------------------------------------------------------------------------------------------------
# Spec section 2.4: official totals minus the frozen Haar conv weights (128 in 4x8x8, 192 in 8x8x8).
@pytest.mark.parametrize("preset, encoder, decoder, keys_file", [
    ("v13", 37_182_352 - 128, 110_165_436, "keys_v13_wfvae_s_d8_4x8x8.txt"),
    ("v15", 60_326_464 - 192, 166_709_352, "keys_v15_wfvae_m_d32_8x8x8.txt"),
    ("l16", 84_587_040 - 128, 232_494_332, None),
])
def test_full_size_presets(preset, encoder, decoder, keys_file):
    with torch.device("meta"):
        vae = WFVAE.from_preset(preset)
    assert sum(p.numel() for p in vae.encoder.parameters()) == encoder
    assert sum(p.numel() for p in vae.decoder.parameters()) == decoder
    if keys_file:
        rows = [line.split(" ", 2) for line in (FIXTURES / "keys" / keys_file).read_text().splitlines()]
        trainable = {name: json.loads(shape) for kind, name, shape in rows if kind == "P"}
        assert {k: list(v.shape) for k, v in vae.state_dict().items()} == trainable
        frozen = {name: torch.zeros(json.loads(shape)) for kind, name, shape in rows if kind != "P"}
        assert frozen and normalize_official_keys(frozen)[0] == {}  # every Haar filter is recognised and dropped


def test_crl1_key_list_matches():
    rows = [line.split(" ", 2) for line in (FIXTURES / "keys" / "keys_v13_wfvae_s_d8_4x8x8_crl1.txt").read_text().splitlines()]
    cfg = load_preset("v13")
    cfg.connect_res_layer_num = 1
    with torch.device("meta"):
        vae = WFVAE(cfg)
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == \
        {name: json.loads(shape) for kind, name, shape in rows if kind == "P"}


def test_preset_names():
    assert {"v13", "v15", "l16", "tiny_v13", "tiny_v15"} <= set(preset_names())
    with pytest.raises(ValueError, match="available"):
        WFVAE.from_preset("v99")


# ---- latents ---------------------------------------------------------------------------------------------------
def test_latent_scaling_and_posterior(official):
    config, weights = official
    vae = WFVAE.from_official(config, weights)
    z = torch.randn(2, 4, 3, 2, 2)
    scale = torch.tensor(config["scale"]).view(1, 4, 1, 1, 1)
    shift = torch.tensor(config["shift"]).view(1, 4, 1, 1, 1)
    assert torch.allclose(vae.scale_latents(z), (z - shift) * scale)
    assert torch.allclose(vae.unscale_latents(vae.scale_latents(z)), z, atol=1e-6)
    post = vae.encode(torch.rand(1, 3, 5, 8, 8) * 2 - 1)
    a = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, post.sample(torch.Generator().manual_seed(3))) and not torch.equal(a, post.mode())
    assert post.kl().shape == (1,)
    vae.config.scale = [1.0, 2.0]
    with pytest.raises(ValueError, match="2 values but the latents have 4"):
        vae.scale_latents(z)


def test_training_forward_has_gradients(tiny):
    recon, post, enc, dec = tiny(torch.rand(1, 3, 5, 16, 16) * 2 - 1)
    (recon.square().mean() + post.kl().mean()).backward()
    assert all(p.grad is not None for p in tiny.parameters())
    assert [c.shape for c in enc] == [c.shape for c in dec]
    tiny.zero_grad(set_to_none=True)


# ---- wavelets against a convolution reference written from the spec's filter formula --------------------------
def _conv_haar3d(x):
    w = torch.zeros(8, 1, 2, 2, 2, dtype=x.dtype)
    value = float(torch.tensor(0.3536))  # the official float32 filter value
    for (bt, bh, bw), (dt, dh, dw) in itertools.product(itertools.product((0, 1), repeat=3), repeat=2):
        w[4 * bt + 2 * bh + bw, 0, dt, dh, dw] = value * (-1) ** (bt * dt + bh * dh + bw * dw)
    c = x.shape[1]
    x = torch.cat([x[:, :, :1], x], dim=2)
    bands = [F.conv3d(x[:, i:i + 1], w, stride=2) for i in range(c)]  # (B, 8, ...) per channel
    return torch.cat([bands[i][:, b:b + 1] for b in range(8) for i in range(c)], dim=1), w


def test_haar3d_matches_conv_reference():
    x = torch.randn(2, 3, 9, 8, 12, dtype=torch.float64)
    ref, w = _conv_haar3d(x)
    ours = HaarWavelet3D().double()(x)
    assert torch.allclose(ours, ref, atol=1e-12)
    inv = InverseHaarWavelet3D().double()(ours)
    ref_inv = sum(F.conv_transpose3d(ours[:, b * 3:(b + 1) * 3].reshape(-1, 1, *ours.shape[2:]), w[b:b + 1], stride=2)
                  for b in range(8)).reshape(2, 3, 10, 8, 12)[:, :, 1:]
    assert torch.allclose(inv, ref_inv, atol=1e-12)
    assert torch.allclose(inv, x * 8 * float(torch.tensor(0.3536)) ** 2, atol=1e-12)  # 1.000264 x: the literal 0.3536 is not 1/(2 sqrt 2)


def test_haar2d_order_and_inverse():
    x = torch.randn(1, 2, 3, 4, 6, dtype=torch.float64)
    y = HaarWavelet2D().double()(x)
    p = x[:, :, :, :2, :2]
    a, b, c, d = p[..., 0, 0], p[..., 0, 1], p[..., 1, 0], p[..., 1, 1]
    expected = [(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2]  # LL, H, W, HH
    for band, value in enumerate(expected):
        assert torch.allclose(y[:, band * 2:(band + 1) * 2, :, 0, 0], value)
    assert torch.allclose(InverseHaarWavelet2D().double()(y), x, atol=1e-12)


# ---- spatial tiling ------------------------------------------------------------------------------------------
def test_tiled_blending_is_a_partition_of_unity():
    from mindspeed_mm.osp.vae.tiling import tiled_apply
    x = torch.randn(1, 2, 3, 40, 56, dtype=torch.float64)
    assert torch.allclose(tiled_apply(lambda t: t, x, 16, 8, 1, 1), x)
    up = tiled_apply(lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2), x[..., :5, :7], 3, 1, 8, 1)
    assert torch.allclose(up[..., ::8, ::8], x[..., :5, :7])


def test_tiling_api(tiny):
    video = torch.rand(1, 3, 5, 16, 32) * 2 - 1
    whole = tiny.encode(video)
    assert torch.allclose(tiny.encode(video, tile_size=32, tile_overlap=8).moments, whole.moments, atol=1e-5)
    tiled = tiny.encode(video, tile_size=16, tile_overlap=8, chunk_frames=2)
    assert tiled.mean.shape == whole.mean.shape
    assert tiny.decode(whole.mode(), tile_size=16, tile_overlap=8).shape == video.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny.decode(whole.mode(), tile_size=20)


def test_bfloat16_inference():
    torch.manual_seed(0)
    vae = WFVAE.from_preset("tiny_v15").eval()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    ref = vae.reconstruct(video)
    half = vae.to(torch.bfloat16)
    assert half.encoder.wavelet_transform_in.matrix.dtype == torch.bfloat16  # Haar constants follow the model dtype
    out = half.reconstruct(video, chunk_frames=4)
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max().item() < 0.2


def test_missing_scale_shift_come_from_the_released_model(official):
    with torch.device("meta"):
        v15 = WFVAE.from_preset("v15")
    sd = {k: torch.empty(v.shape, device="meta") for k, v in v15.state_dict().items()}
    with torch.device("meta"):
        loaded = WFVAE.from_official(None, sd)  # e.g. a bare merged.ckpt without config.json
    assert loaded.config == v15.config and len(loaded.config.scale) == 32
    config, weights = official
    with pytest.warns(UserWarning, match="matches no released model"):
        vae = WFVAE.from_official({k: v for k, v in config.items() if k not in ("scale", "shift")}, weights)
    assert vae.config.scale == [0.18215] * 4


def test_osp_vae_stats_writes_the_normaliser_that_whitens_the_latents(tmp_path, tiny_model, capsys):
    import shutil

    from mindspeed_mm.osp import cli
    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.data.synthetic import make_synthetic_dataset
    from mindspeed_mm.osp.vae.stats import latent_statistics

    data = make_synthetic_dataset(tmp_path / "data", videos=3, frames=9, height=32, width=48)
    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_model, vae_dir)
    assert cli.main(["vae", "stats", str(vae_dir), "--data", str(data), "--clips", "3", "--write"]) == 0
    assert "wrote scale and shift" in capsys.readouterr().out
    vae = WFVAE.from_pretrained(vae_dir)
    mean, std, used = latent_statistics(vae, load_annotations(data), 3, 33)
    assert used == 3
    scale, shift = torch.tensor(vae.config.scale), torch.tensor(vae.config.shift)
    assert torch.allclose(torch.tensor(mean), shift, atol=1e-5)
    assert torch.allclose(torch.tensor(std) * scale, torch.ones_like(scale), atol=1e-4)   # unit std once scaled
    assert cli.main(["vae", "stats", str(tmp_path / "nothing"), "--data", str(data)]) == 2
