"""Loading forms and converters of the MindSpore WF-VAE: official dict forms, strict keys, torch <-> MindSpore
folder interchange, safetensors <-> .ckpt bit-exact round trips, legacy gamma/beta names."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="MindSpore is not installed (pip install 'mindspeed-mm-osp[mindspore]')")
from mindspore import nn  # noqa: E402

from mindspeed_mm.osp.convert import mindspore as conv  # noqa: E402
from mindspeed_mm.osp.vae_ms import WFVAE  # noqa: E402
from mindspeed_mm.osp.vae.official import is_fixed_filter_key  # noqa: E402

from _vae_ms_tiny import TINY_V15, tiny_vae  # noqa: E402


def _equal_params(model, weights):
    got = model.official_state_dict()
    assert set(got) == set(weights)
    for k, v in weights.items():
        np.testing.assert_array_equal(got[k], np.asarray(v, np.float32), err_msg=k)


def test_official_checkpoint_forms_and_strict_keys():
    _, weights = tiny_vae(seed=3)
    haar = {"encoder.wavelet_transform_in.h_conv.conv.weight": np.ones((1, 1, 2, 2, 2), np.float32),
            "decoder.inverse_wavelet_transform_out.h": np.ones((1, 1, 2, 2, 2), np.float32)}
    ema = {"ema_state_dict": {f"module.{k}": v for k, v in {**weights, **haar}.items()}, "state_dict": {}}
    _equal_params(WFVAE.from_official(TINY_V15, ema), weights)
    torch = pytest.importorskip("torch")
    gen = {"state_dict": {"gen_model": {k: torch.from_numpy(v) for k, v in weights.items()}}}
    _equal_params(WFVAE.from_official(TINY_V15, gen), weights)

    missing = dict(weights)
    missing.pop("decoder.up1.0.nin_shortcut.conv.weight")
    with pytest.raises(ValueError, match="missing: decoder.up1.0.nin_shortcut.conv.weight"):
        WFVAE.from_official(TINY_V15, missing)
    with pytest.raises(ValueError, match="unexpected: encoder.extra.weight"):
        WFVAE.from_official(TINY_V15, {**weights, "encoder.extra.weight": np.zeros(1, np.float32)})
    bad = {**weights, "decoder.conv_out.bias": np.zeros(5, np.float32)}
    with pytest.raises(ValueError, match="shape mismatch: decoder.conv_out.bias"):
        WFVAE.from_official(TINY_V15, bad)
    with pytest.raises(ValueError, match="groupnorm"):
        WFVAE.from_official({**TINY_V15, "norm_type": "groupnorm"}, weights)


def test_folder_interchange_with_pytorch_model(tmp_path):
    torch = pytest.importorskip("torch")
    from mindspeed_mm.osp.vae import WFVAE as TorchWFVAE

    vae, weights = tiny_vae(seed=4)
    vae.save_pretrained(str(tmp_path / "ms"))
    with pytest.raises(FileExistsError):
        vae.save_pretrained(str(tmp_path / "ms"))
    tvae = TorchWFVAE.from_pretrained(tmp_path / "ms")
    for k, v in tvae.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), weights[k], err_msg=k)
    tvae.save_pretrained(tmp_path / "torch")
    _equal_params(WFVAE.from_pretrained(str(tmp_path / "torch")), weights)
    del torch

    from mindspeed_mm.osp.cli import main
    assert main(["convert", "mindspore", str(tmp_path / "torch"), str(tmp_path / "ckpt")]) == 0
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.ckpt"]
    _equal_params(WFVAE.from_pretrained(str(tmp_path / "ckpt")), weights)  # strict .ckpt load


def test_safetensors_ckpt_round_trip_bit_exact(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    vae, weights = tiny_vae(seed=5)
    src = tmp_path / "model.safetensors"
    # a torch-written file with bf16 and fp32 tensors (bf16 has no numpy dtype: must survive bit for bit)
    tensors = {k: torch.from_numpy(v).to(torch.bfloat16 if i % 2 else torch.float32)
               for i, (k, v) in enumerate(sorted(weights.items()))}
    save_file(tensors, str(src))
    ckpt, back = tmp_path / "model.ckpt", tmp_path / "back.safetensors"
    assert conv.safetensors_to_ckpt(str(src), str(ckpt), net=vae) == {k: k for k in tensors}
    conv.ckpt_to_safetensors(str(ckpt), str(back))
    with pytest.raises(FileExistsError):
        conv.ckpt_to_safetensors(str(ckpt), str(back))
    again = load_file(str(back))
    assert set(again) == set(tensors)
    for k, v in tensors.items():
        assert again[k].dtype == v.dtype and torch.equal(again[k].view(torch.int16 if v.dtype == torch.bfloat16
                                                                       else torch.int32),
                                                         v.view(torch.int16 if v.dtype == torch.bfloat16 else torch.int32)), k

    fp32 = tmp_path / "fp32.safetensors"
    save_file({k: torch.from_numpy(v) for k, v in weights.items()}, str(fp32))
    conv.safetensors_to_ckpt(str(fp32), str(tmp_path / "fp32.ckpt"))
    fresh, _ = tiny_vae(seed=6)
    conv.load_into_net(fresh, str(tmp_path / "fp32.ckpt"))  # strict: load_param_into_net + both-way name check
    _equal_params(fresh, weights)
    partial = {k: v for k, v in weights.items() if k != "encoder.conv_out.conv.bias"}
    save_file({k: torch.from_numpy(v) for k, v in partial.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="encoder.conv_out.conv.bias"):
        conv.load_into_net(fresh, str(tmp_path / "partial.safetensors"))
    haar = {**weights, "encoder.wavelet_transform_in.h_conv.conv.weight": np.ones((1, 1, 2, 2, 2), np.float32)}
    save_file({k: torch.from_numpy(v) for k, v in haar.items()}, str(tmp_path / "haar.safetensors"))
    with pytest.raises(ValueError, match="unexpected"):
        conv.load_into_net(fresh, str(tmp_path / "haar.safetensors"))
    conv.load_into_net(fresh, str(tmp_path / "haar.safetensors"), ignore=is_fixed_filter_key)


class _LegacyNormNet(nn.Cell):
    """A Cell with MindSpore's legacy norm names (gamma/beta), like older MindSpore ports."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Dense(4, 4)
        self.norm = nn.LayerNorm((4,))


def test_legacy_gamma_beta_names_are_mapped(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(0)
    torch_sd = {"proj.weight": rng.standard_normal((4, 4)), "proj.bias": rng.standard_normal(4),
                "norm.weight": rng.standard_normal(4), "norm.bias": rng.standard_normal(4)}
    torch_sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in torch_sd.items()}
    save_file(torch_sd, str(tmp_path / "t.safetensors"))
    net = _LegacyNormNet()
    mapping = conv.safetensors_to_ckpt(str(tmp_path / "t.safetensors"), str(tmp_path / "m.ckpt"), net=net)
    assert mapping["norm.weight"] == "norm.gamma" and mapping["norm.bias"] == "norm.beta"
    assert mapping["proj.weight"] == "proj.weight"
    conv.load_into_net(net, str(tmp_path / "m.ckpt"))
    np.testing.assert_array_equal(net.norm.gamma.asnumpy(), torch_sd["norm.weight"].numpy())
    conv.ckpt_to_safetensors(str(tmp_path / "m.ckpt"), str(tmp_path / "back.safetensors"), torch_names=torch_sd)
    back = load_file(str(tmp_path / "back.safetensors"))
    assert set(back) == set(torch_sd) and all(torch.equal(back[k], torch_sd[k]) for k in torch_sd)
