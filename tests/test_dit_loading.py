"""Released checkpoint layouts: diffusers folders (sharded or not), model_ema.pt, Megatron mp_rank_00, PKU names,
TP>1 leftovers, and strict key errors. Files are written from the fixture weights into tmp folders."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from dit_helpers import one_torch_thread, read_case, run_model  # noqa: F401
from mindspeed_mm.osp.dit import OSP13DiT, SUVDiT, from_pretrained
from mindspeed_mm.osp.checkpoints.keys import to_pku_v15



def assert_matches(model, case, tensors):
    with torch.no_grad():
        out = run_model(model, case, tensors)
    assert (out - tensors["output"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("sharded", [False, True])
def test_v13_diffusers_folder(tmp_path, sharded):
    meta, weights, tensors = read_case("v13_i2v")
    folder = tmp_path / "pipeline" / "transformer"
    folder.mkdir(parents=True)
    config = dict(meta["config"], _class_name="OpenSoraInpaint_v1_3", _diffusers_version="0.30.0")
    (folder / "config.json").write_text(json.dumps(config))
    if sharded:
        keys = sorted(weights)
        shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        weight_map = {}
        for name, ks in shards.items():
            save_file({k: weights[k].contiguous() for k in ks}, str(folder / name))
            weight_map.update({k: name for k in ks})
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    model = from_pretrained(tmp_path / "pipeline")  # the pipeline folder holding transformer/
    assert isinstance(model, OSP13DiT) and model.config.inpaint
    assert_matches(model, "v13_i2v", tensors)


@pytest.mark.parametrize("layout", ["ema", "ema_module_prefix", "plain", "megatron", "pku_names"])
def test_v15_checkpoint_layouts(tmp_path, layout):
    meta, weights, tensors = read_case("v15_suv")
    sd = {k: v.clone() for k, v in weights.items()}
    if layout == "ema":
        path = tmp_path / "model_ema.pt"
        torch.save({"ema_state_dict": sd}, path)
    elif layout == "ema_module_prefix":
        path = tmp_path / "model_ema.pt"
        torch.save({"ema_state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    elif layout == "plain":
        path = tmp_path / "model_ema.pt"
        torch.save(sd, path)
    elif layout == "pku_names":
        path = tmp_path / "model_ema.pt"
        pku = to_pku_v15(sd)
        assert "transformer_blocks.0.0.attn1.to_q.weight" in pku
        torch.save({"ema_state_dict": pku}, path)
    else:
        (tmp_path / "release" / "mp_rank_00").mkdir(parents=True)
        (tmp_path / "latest_checkpointed_iteration.txt").write_text("release")
        torch.save({"model": sd, "checkpoint_version": 3.0}, tmp_path / "release" / "mp_rank_00" / "model_optim_rng.pt")
        path = tmp_path
    model = from_pretrained(path, config=meta["config"])
    assert isinstance(model, SUVDiT)
    assert_matches(model, "v15_suv", tensors)


def test_v15_tp_leftovers_are_dropped_with_a_note(tmp_path, caplog):
    meta, weights, tensors = read_case("v15_suv")
    sd = to_pku_v15(weights)                       # a PKU-branch checkpoint trained with TP > 1 ...
    d = meta["config"]["num_heads"] * meta["config"]["head_dim"]
    last = "transformer_blocks.4.1."                # ... carries the last block's unused text-stream weights
    sd[last + "attn1.to_add_out.weight"] = torch.zeros(d, d)
    sd[last + "attn1.to_add_out.bias"] = torch.zeros(d)
    sd[last + "norm2.norm_enc.weight"] = torch.ones(d)
    sd[last + "norm2.norm_enc.bias"] = torch.zeros(d)
    sd[last + "ff_enc.net.0.proj.weight"] = torch.zeros(4 * d, d)
    sd[last + "ff_enc.net.2.weight"] = torch.zeros(d, 4 * d)
    torch.save({"ema_state_dict": sd}, tmp_path / "model_ema.pt")
    with caplog.at_level(logging.INFO, logger="mindspeed_mm.osp"):
        model = from_pretrained(tmp_path / "model_ema.pt", config=meta["config"])
    assert any("dropping 6 unused last-block" in r.getMessage() for r in caplog.records)
    assert_matches(model, "v15_suv", tensors)


def test_other_unexpected_or_missing_keys_are_named():
    meta, weights, _ = read_case("v15_suv")
    bad = dict(weights)
    bad["transformer_blocks.3.0.ff_enc.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): transformer_blocks\.3\.0\.ff_enc\.extra\.weight"):
        SUVDiT.from_official(meta["config"], bad)
    bad = dict(weights)
    bad["transformer_blocks.2.1.ff_enc.net.0.proj.weight"] = torch.zeros(1)  # not the last block: not a leftover
    del bad["transformer_blocks.1.0.attn1.proj_q.bias"]
    with pytest.raises(ValueError) as err:
        SUVDiT.from_official(meta["config"], bad)
    assert "transformer_blocks.1.0.attn1.proj_q.bias" in str(err.value)
    assert "transformer_blocks.2.1.ff_enc.net.0.proj.weight" in str(err.value)
    meta13, weights13, _ = read_case("v13_t2v")
    wrong = dict(weights13, **{"transformer_blocks.0.attn1.to_q.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"shape mismatches .*transformer_blocks\.0\.attn1\.to_q\.weight"):
        OSP13DiT.from_official(meta13["config"], wrong)


def test_official_state_dict_round_trips():
    meta, weights, _ = read_case("v15_suv")
    model = SUVDiT.from_official(meta["config"], weights)
    sd = model.official_state_dict()
    assert sorted(sd) == sorted(weights)
    assert all(torch.equal(sd[k], weights[k].float()) for k in weights)


class TrainingState:
    """Stands in for the Python objects of a Megatron training checkpoint (args, RNG states). Megatron adds
    argparse.Namespace to torch's safe globals once imported, so the test uses a class nobody allowlists."""

    def __init__(self, iteration):
        self.iteration = iteration


def test_megatron_training_checkpoint_needs_trust(tmp_path):
    meta, weights, tensors = read_case("v15_suv")
    sd = dict(weights, **{"transformer_blocks.0.0.attn1.proj_q._extra_state": None})
    path = tmp_path / "model_optim_rng.pt"
    torch.save({"model": sd, "rng_state": TrainingState(10), "iteration": 10}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        from_pretrained(path, config=meta["config"])
    model = from_pretrained(path, config=meta["config"], trust_pickle=True)
    assert_matches(model, "v15_suv", tensors)
