"""WF-VAE converters: official <-> ours, bit-exact, through the `osp convert` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from mindspeed_mm.osp.cli import main
from mindspeed_mm.osp.vae import WFVAE

FIXTURES = Path(__file__).parent / "fixtures" / "wfvae"


def _official_dir(tmp_path, case, dtype=torch.bfloat16):
    meta = json.loads((FIXTURES / case / "meta.json").read_text())
    weights = {k: v.to(dtype) for k, v in load_file(str(FIXTURES / case / "weights.safetensors")).items()}
    src = tmp_path / f"official_{case}"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"_class_name": "WFVAEModel", **meta["config"]}))
    torch.save({"ema_state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 1}, src / "merged.ckpt")
    return src, meta["config"], weights


def test_round_trip_bit_exact(tmp_path, capsys):
    for case in ("v13_4x8x8", "v15_8x8x8"):
        src, config, weights = _official_dir(tmp_path, case)
        ours, back = tmp_path / f"osp_{case}", tmp_path / f"back_{case}"
        assert main(["convert", "wfvae", "--to", "osp", str(src), str(ours)]) == 0
        converted = load_file(str(ours / "model.safetensors"))
        assert converted.keys() == weights.keys()
        assert all(converted[k].dtype == torch.bfloat16 and torch.equal(converted[k], weights[k]) for k in weights)
        assert main(["convert", "wfvae", "--to", "official", str(ours), str(back)]) == 0
        again = torch.load(back / "merged.ckpt", weights_only=True)["ema_state_dict"]
        assert again.keys() == weights.keys()
        assert all(again[k].dtype == weights[k].dtype and torch.equal(again[k], weights[k]) for k in weights)
        official_cfg = json.loads((back / "config.json").read_text())
        assert {k: official_cfg[k] for k in config} == config
        # the converted directories load to the same model
        a, b = WFVAE.from_pretrained(ours), WFVAE.from_pretrained(back)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_refuses_to_overwrite(tmp_path, capsys):
    src, _, _ = _official_dir(tmp_path, "v13_4x8x8")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("user data")
    assert main(["convert", "wfvae", "--to", "osp", str(src), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (dst / "keep.txt").exists()
    assert main(["convert", "wfvae", "--to", "osp", str(src), str(dst), "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    single = tmp_path / "model.safetensors"
    assert main(["convert", "wfvae", "--to", "official", str(dst), str(single)]) == 0
    assert load_file(str(single)).keys() == load_file(str(dst / "model.safetensors")).keys()


def test_bad_source_is_reported(tmp_path, capsys):
    src = tmp_path / "broken"
    src.mkdir()
    torch.save({"state_dict": {"encoder.down1.0.weight": torch.zeros(16, 24, 3, 3)}}, src / "x.ckpt")
    assert main(["convert", "wfvae", "--to", "osp", str(src), str(tmp_path / "o")]) == 2
    assert "missing keys" in capsys.readouterr().err and not (tmp_path / "o").exists()
