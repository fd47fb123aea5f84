"""`osp convert` and `osp make-pipeline` say what they are doing: one stdout line per stage (reading, converting N
tensors, writing) and a closing `wrote PATH (SIZE)`; their tqdm bars stay off when the output is not a terminal."""
from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file, save_file

from dit_helpers import read_case
from mindspeed_mm.osp.cli import main
from mindspeed_mm.osp.progress import human_size, tree_size


def _stage_lines(text, command):
    return [line for line in text.splitlines() if line.startswith(f"osp {command}: ")]


def test_convert_prints_its_stages_and_the_output_size(tmp_path, capsys):
    meta, sd, _ = read_case("v13_t2v_h4")
    src = tmp_path / "transformer"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(src / "diffusion_pytorch_model.safetensors"))
    (src / "config.json").write_text(json.dumps(dict(meta["config"], _class_name="OpenSoraT2V_v1_3")))
    dst = tmp_path / "sharded"
    smallest = max(v.numel() * v.element_size() for v in sd.values())
    assert main(["convert", "dit", "--to", "diffusers", "--max-shard-size", str(smallest), str(src), str(dst)]) == 0
    captured = capsys.readouterr()
    stages = _stage_lines(captured.out, "convert dit")
    assert stages[0] == f"osp convert dit: reading {src}"
    assert re.fullmatch(rf"osp convert dit: converting {len(sd)} tensors \(.*M values, v1.3 Skiparse DiT\) to the "
                        "diffusers layout", stages[1])
    assert stages[2].startswith("osp convert dit: writing safetensors shards of at most")
    assert captured.out.splitlines()[-1] == f"wrote {dst} ({human_size(tree_size(dst))})"
    assert "writing shards" not in captured.err          # the bar is off: stderr is not a TTY here
    # the shard writer keeps huggingface_hub's layout and every tensor bit-exactly
    index = json.loads((dst / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(re.fullmatch(r"diffusion_pytorch_model-\d{5}-of-\d{5}\.safetensors", s)
                                   for s in shards)
    back = {k: v for s in shards for k, v in load_file(str(dst / s)).items()}
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_shared_tensors_are_stored_under_every_name(tmp_path):
    from mindspeed_mm.osp.checkpoints.diffusers import write_safetensors_shards

    base = torch.arange(12.0)
    state = {"a": base[:6], "b": base[6:], "c": base}        # three views of one storage
    assert write_safetensors_shards(state, tmp_path, "w{suffix}.safetensors") == 1
    back = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_make_pipeline_prints_its_stages_and_the_output_size(tmp_path, capsys):
    from mindspeed_mm.osp.pipelines import build_preset

    pipe = build_preset("tiny-osp13-random")
    dit = pipe.transformer
    tdir = tmp_path / "transformer"
    tdir.mkdir()
    (tdir / "config.json").write_text(json.dumps(dit.config.to_official()))
    save_file({k: v.contiguous() for k, v in dit.official_state_dict().items()},
              str(tdir / "diffusion_pytorch_model.safetensors"))
    pipe.vae.save_pretrained(tmp_path / "vae")
    pipe.text.encoder.save_pretrained(tmp_path / "t5")
    pipe.text.tokenizer.save_pretrained(tmp_path / "t5")
    out = tmp_path / "pipe"
    capsys.readouterr()
    assert main(["make-pipeline", "--version", "v1.3", "--transformer", str(tdir), "--vae", str(tmp_path / "vae"),
                 "--text-encoder", str(tmp_path / "t5"), "--dtype", "fp32", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    stages = _stage_lines(captured.out, "make-pipeline")
    n = len(dit.state_dict())
    assert stages[0] == f"osp make-pipeline: reading the denoiser from {tdir}"
    assert re.fullmatch(rf"osp make-pipeline: converted {n} denoiser tensors \(.*B parameters\) to float32",
                        stages[1])
    assert stages[2] == f"osp make-pipeline: reading the text encoder from {tmp_path / 't5'}"
    assert stages[3] == f"osp make-pipeline: reading the WF-VAE from {tmp_path / 'vae'}"
    assert stages[4].startswith(f"osp make-pipeline: writing the pipeline folder {out}")
    last = captured.out.splitlines()[-1]
    assert last.startswith(f"wrote {out} ({human_size(tree_size(out))}, v1.3, fp32); sample with: osp sample")
    assert "writing components" not in captured.err
