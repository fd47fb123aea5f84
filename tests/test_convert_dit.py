"""`osp convert dit`: official / diffusers / Megatron TP x PP x VPP layouts of the denoisers, bit-exact round trips,
loading merged checkpoints, and the errors for damaged or mismatched folders (specs/dit.md 7)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dit_helpers import one_torch_thread, read_case, run_model  # noqa: F401
from mindspeed_mm.osp import cli
from mindspeed_mm.osp.checkpoints.megatron import read_megatron
from mindspeed_mm.osp.convert.dit import convert
from mindspeed_mm.osp.convert.megatron import write_megatron
from mindspeed_mm.osp.dit import SUVDiT, from_pretrained
from mindspeed_mm.osp.dit.loading import split_plan
from mindspeed_mm.osp.pipelines.folder import load_transformer, save_transformer

VERSION = {"v13_t2v_h4": "v13", "v13_i2v": "v13", "v15_suv_h4": "v15", "v15_suv": "v15"}


def official(case):
    return read_case(case)[1]


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def chunk_models(folder, tp_rank=0):
    """{folder name: [state dict per virtual stage]} of one TP rank."""
    out = {}
    for f in sorted((folder / "release").glob(f"mp_rank_{tp_rank:02d}*/model_optim_rng.pt")):
        obj = torch.load(f, weights_only=True)
        out[f.parent.name] = [obj["model"]] if "model" in obj else [obj[f"model{v}"] for v in range(len(obj) - 1)]
    return out


def test_split_rules_follow_mindspeed_mm():
    plan = split_plan("v15")
    blk = "transformer_blocks.1.0."
    assert plan.split_dim(blk + "attn1.proj_q.weight") == 0 and plan.split_dim(blk + "attn1.added_proj_v.bias") == 0
    assert plan.split_dim(blk + "attn1.proj_out.weight") == 1 and plan.split_dim(blk + "attn1.proj_out.bias") is None
    assert plan.split_dim(blk + "norm1.linear.weight") == 0 and plan.split_dim(blk + "ff_enc.net.2.weight") == 1
    assert plan.split_dim("norm_out.linear.bias") == 0 and plan.split_dim("patch_embed.proj.weight") is None
    assert plan.split_dim(blk + "attn1.norm_proj_q.weight") is None
    plan13 = split_plan("v13")
    assert plan13.split_dim("transformer_blocks.3.attn2.to_k.bias") == 0
    assert plan13.split_dim("transformer_blocks.3.ff.net.0.proj.bias") == 0
    assert plan13.split_dim("transformer_blocks.3.attn1.to_out.0.weight") == 1
    assert plan13.split_dim("proj_out.weight") is None and plan13.split_dim("scale_shift_table") is None


@pytest.mark.parametrize("case", ["v13_t2v_h4", "v15_suv_h4"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("pp", [1, 2])
def test_round_trip_tp_pp(tmp_path, case, tp, pp):
    sd = official(case)
    out = write_megatron(sd, VERSION[case], tmp_path / "ckpt", tp=tp, pp=pp)
    ranks = sorted(p.name for p in (out / "release").iterdir())
    assert ranks == sorted(f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") for t in range(tp) for p in range(pp))
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "release"
    q = {"v13": ("videodit_sparse_blocks.0.self_atten.proj_q.weight", "transformer_blocks.0.attn1.to_q.weight"),
         "v15": ("transformer_blocks.0.0.attn1.proj_q.weight",) * 2}[VERSION[case]]
    first = chunk_models(out, tp_rank=tp - 1)[ranks[-1] if pp == 1 else f"mp_rank_{tp - 1:02d}_000"][0]
    assert torch.equal(first[q[0]], sd[q[1]].chunk(tp, dim=0)[-1])  # column-parallel: last rank, last rows
    version, back = read_megatron(out, split_plan)
    assert version == VERSION[case]
    assert_same(back, sd)


@pytest.mark.parametrize("case,pp,vpp,layers,names", [
    ("v13_t2v_h4", 2, 2, None, "mm"),
    ("v13_t2v_h4", 2, None, [3, 5], "official"),
    ("v13_i2v", 2, 2, [1, 3, 2, 2], "mm"),
    ("v15_suv_h4", 2, 2, [3, 2, 2, 3], None),
    ("v15_suv_h4", 2, None, [7, 3], None),
])
def test_round_trip_vpp_uneven_names(tmp_path, case, pp, vpp, layers, names):
    sd = official(case)
    out = write_megatron(sd, VERSION[case], tmp_path / "ckpt", tp=2, pp=pp, vpp=vpp, pp_layers=layers,
                                  names=names or "mm")
    models = chunk_models(out)
    chunks = [models[f"mp_rank_00_{r:03d}"][v] for v in range(vpp or 1) for r in range(pp)]  # global chunk order
    if VERSION[case] == "v13":
        prefix = "videodit_sparse_blocks" if names == "mm" else "transformer_blocks"
        counts = [len({k.split(".")[1] for k in c if k.startswith(prefix)}) for c in chunks]
        assert counts == (layers or [8 // len(chunks)] * len(chunks))
        assert "pos_embed.proj.weight" in chunks[0] and "adaln_single.linear.weight" in chunks[0]
        assert "proj_out.weight" in chunks[-1] and "scale_shift_table" in chunks[-1]
        if case == "v13_i2v":
            assert "pos_embed_masked_hidden_states.0.proj.weight" in chunks[0]
            assert "pos_embed_mask.1.weight" in chunks[0]
        if names == "mm":  # token-wise renames inside blocks; the final proj_out keeps its name
            keys = set().union(*chunks)
            assert "videodit_sparse_blocks.0.self_atten.proj_q.weight" in keys
            assert "videodit_sparse_blocks.0.cross_atten.proj_out.weight" in keys
            assert not any("to_out" in k or "attn1" in k or k.startswith("transformer_blocks") for k in keys)
    else:  # global names kept; the skip linears sit with the first block of their decoder stage
        blocks = [sorted({".".join(k.split(".")[1:3]) for k in c if k.startswith("transformer_blocks")})
                  for c in chunks]
        assert [len(b) for b in blocks] == layers
        for j, stage in ((0, 3), (1, 4)):
            holder = next(i for i, b in enumerate(blocks) if f"{stage}.0" in b)
            assert f"skip_norm_linear.{j}.1.weight" in chunks[holder]
            assert f"skip_norm_linear_enc.{j}.1.weight" in chunks[holder]
        assert "patch_embed.proj.weight" in chunks[0] and "proj_out.weight" in chunks[-1]
    assert_same(read_megatron(out, split_plan)[1], sd)


def test_megatron_to_megatron_recut(tmp_path):
    sd = official("v15_suv_h4")
    write_megatron(sd, "v15", tmp_path / "tp2pp2", tp=2, pp=2)
    convert(tmp_path / "tp2pp2", tmp_path / "tp4", "megatron", tp=4)
    assert sorted(p.name for p in (tmp_path / "tp4" / "release").iterdir()) == [f"mp_rank_0{i}" for i in range(4)]
    assert_same(read_megatron(tmp_path / "tp4", split_plan, expect_tp=4)[1], sd)
    with pytest.raises(ValueError, match=r"TP=4, this run uses TP=2.*osp convert dit --to megatron --tp 2"):
        read_megatron(tmp_path / "tp4", split_plan, expect_tp=2)


def test_cli_diffusers_to_megatron_to_official(tmp_path):
    meta, sd, _ = read_case("v13_t2v_h4")
    src = tmp_path / "transformer"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "diffusion_pytorch_model.safetensors"))
    (src / "config.json").write_text(json.dumps(dict(meta["config"], _class_name="OpenSoraT2V_v1_3")))
    assert cli.main(["convert", "dit", "--to", "megatron", "--tp", "2", "--pp", "2", "--vpp", "2", str(src),
                     str(tmp_path / "mm")]) == 0
    assert cli.main(["convert", "dit", "--to", "official", str(tmp_path / "mm"), str(tmp_path / "sd.safetensors")]) == 0
    assert_same(load_file(str(tmp_path / "sd.safetensors")), sd)


def sharded_files(folder):
    shards = sorted(p.name for p in folder.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1 and (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    return shards


@pytest.mark.parametrize("case", ["v13_i2v", "v15_suv"])
def test_megatron_to_sharded_diffusers_matches_fixture(tmp_path, case):
    meta, sd, tensors = read_case(case)
    write_megatron(sd, VERSION[case], tmp_path / "mm", tp=2, pp=2)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(meta["config"]))
    convert(tmp_path / "mm", tmp_path / "transformer", "diffusers", config=str(config), max_shard_size="100KB")
    sharded_files(tmp_path / "transformer")
    written = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert written["_class_name"] == {"v13_i2v": "OpenSoraInpaint_v1_3", "v15_suv": "SparseUMMDiT"}[case]
    model = from_pretrained(tmp_path / "transformer")
    with torch.no_grad():
        out = run_model(model, case, tensors)
    assert (out - tensors["output"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", ["v13_i2v", "v15_suv"])
def test_from_pretrained_merges_megatron_tp2_pp2(tmp_path, case):
    meta, sd, tensors = read_case(case)
    write_megatron(sd, VERSION[case], tmp_path, tp=2, pp=2)
    model = from_pretrained(tmp_path, config=meta["config"])
    with torch.no_grad():
        out = run_model(model, case, tensors)
    assert (out - tensors["output"]).abs().max().item() <= 1e-4
    if case == "v13_i2v":
        with pytest.raises(ValueError, match="v1.3 checkpoint without config.json: pass its config"):
            from_pretrained(tmp_path)


def test_pipeline_transformer_folder_is_sharded(tmp_path):
    meta, sd, tensors = read_case("v15_suv")
    model = SUVDiT.from_official(meta["config"], sd)
    save_transformer(model, tmp_path / "transformer", max_shard_size="100KB")
    sharded_files(tmp_path / "transformer")
    with torch.no_grad():
        out = run_model(load_transformer(tmp_path / "transformer"), "v15_suv", tensors)
    assert (out - tensors["output"]).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture
def tp2pp2(tmp_path):
    return write_megatron(official("v13_t2v_h4"), "v13", tmp_path / "ckpt", tp=2, pp=2)


def _edit(path, edit):
    obj = torch.load(path, weights_only=True)
    edit(obj["model"])
    torch.save(obj, path)


def test_tp_shards_with_different_keys(tp2pp2):
    _edit(tp2pp2 / "release" / "mp_rank_01_000" / "model_optim_rng.pt",
          lambda sd: sd.pop("videodit_sparse_blocks.0.ff.net.2.bias"))
    with pytest.raises(ValueError, match=r"mp_rank_00_000 and mp_rank_01_000 hold different keys .*"
                                         r"videodit_sparse_blocks\.0\.ff\.net\.2\.bias"):
        read_megatron(tp2pp2, split_plan)


def test_duplicate_keys_across_pipeline_shards(tp2pp2):
    for t in ("00", "01"):
        _edit(tp2pp2 / "release" / f"mp_rank_{t}_000" / "model_optim_rng.pt",
              lambda sd: sd.__setitem__("scale_shift_table", torch.zeros(2, 96)))
    with pytest.raises(ValueError, match="scale_shift_table is in both mp_rank_XX_000 and mp_rank_XX_001"):
        read_megatron(tp2pp2, split_plan)


def test_pku_renumbered_v15_pipeline_is_refused(tmp_path):
    sd = official("v15_suv")
    folder = write_megatron(sd, "v15", tmp_path / "ckpt", pp=2)
    # PKU's layout restarts the stage index on every pipeline rank: stage 3 -> 0 on the second rank
    _edit(folder / "release" / "mp_rank_00_001" / "model_optim_rng.pt",
          lambda d: d.update({k.replace("transformer_blocks.3.", "transformer_blocks.0."): d.pop(k)
                              for k in [k for k in d if k.startswith("transformer_blocks.3.")]}))
    with pytest.raises(ValueError, match="is in both .*PKU's v1.5 pipeline layout, which is not read"):
        read_megatron(folder, split_plan)


def test_missing_shard_folder(tp2pp2):
    shutil.rmtree(tp2pp2 / "release" / "mp_rank_01_001")
    with pytest.raises(FileNotFoundError, match=r"missing shard folders \['mp_rank_01_001'\] for TP=2 x PP=2"):
        read_megatron(tp2pp2, split_plan)


def test_gap_in_block_numbering(tp2pp2):
    for t in ("00", "01"):
        _edit(tp2pp2 / "release" / f"mp_rank_{t}_001" / "model_optim_rng.pt",
              lambda sd: [sd.pop(k) for k in [k for k in sd if k.startswith("videodit_sparse_blocks.1.")]])
    with pytest.raises(ValueError, match=r"mp_rank_XX_001: block numbering has gaps \(missing transformer_blocks "
                                         r"\[1\]\)"):
        read_megatron(tp2pp2, split_plan)


def test_config_mismatch_and_layout_errors(tmp_path, tp2pp2):
    with pytest.raises(ValueError, match=r"missing keys .*transformer_blocks\.8\..*Check that the config"):
        convert(tp2pp2, tmp_path / "out", "megatron", config=str(_config(tmp_path, "v13_t2v_h4", num_layers=9)))
    with pytest.raises(ValueError, match=r"8 blocks do not split evenly over PP 3 = 3 chunks; .*--pp-layers"):
        convert(tp2pp2, tmp_path / "out", "megatron", pp=3)
    with pytest.raises(ValueError, match=r"--pp-layers \[4, 3\]: need 2 counts"):
        convert(tp2pp2, tmp_path / "out", "megatron", pp=2, pp_layers=[4, 3])
    with pytest.raises(FileExistsError, match="not empty; choose a new output path or pass --overwrite"):
        convert(tp2pp2, tp2pp2.parent, "megatron")
    with pytest.raises(ValueError, match=r"no 'ema_model' entry .*drop --ema"):
        convert(tp2pp2, tmp_path / "out", "megatron", ema=True)
    with pytest.raises(ValueError, match=r"holds a v13 checkpoint \(by its key names\), not --model v15"):
        convert(tp2pp2, tmp_path / "out", "official", version="v15")
    with pytest.raises(ValueError, match=r"TP=2, this run uses TP=1.*osp convert dit --to megatron --tp 1 --pp 2 "):
        read_megatron(tp2pp2, split_plan, expect_tp=1)
    with pytest.raises(ValueError, match=r"v1.3 checkpoint without config.json; pass --config"):
        convert(tp2pp2, tmp_path / "out", "diffusers")
    assert not (tmp_path / "out").exists()


def _config(tmp_path, case, **overrides):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(read_case(case)[0]["config"], **overrides)))
    return path


class TrainingState:
    """A Python object of a training checkpoint that torch's safe loader refuses."""

    def __init__(self, iteration):
        self.iteration = iteration


def test_training_checkpoint_with_ema_needs_trust(tmp_path):
    sd = official("v15_suv")
    rank = tmp_path / "ckpt" / "iter_0000100" / "mp_rank_00"
    rank.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("100")
    zeros = {k: torch.zeros_like(v) for k, v in sd.items()}
    torch.save({"model": zeros, "ema_model": sd, "rng_state": TrainingState(100)}, rank / "model_optim_rng.pt")
    with pytest.raises(ValueError, match=r"trust_pickle=True \(CLI: --trust-pickle\)"):
        read_megatron(tmp_path / "ckpt", split_plan, ema=True)
    assert_same(read_megatron(tmp_path / "ckpt", split_plan, ema=True, trust_pickle=True)[1], sd)


def test_convert_help_speaks_to_users(capsys):
    from mindspeed_mm.osp import cli

    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "osp convert MODEL --to LAYOUT SRC DST" in out and "--overwrite" in out
    assert "CONVERTER_MODULES" not in out and "add_arguments" not in out
