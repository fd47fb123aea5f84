"""`osp plan`, `osp convert` and `osp make-pipeline` check their inputs before computing and say what to do
(issue #15): bad layout values are argparse errors; missing, non-checkpoint, damaged and untrusted files are
told apart; an existing MindSpore target folder is refused."""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from mindspeed_mm.osp.cli import build_parser, main
from mindspeed_mm.osp.checkpoints.tensors import NOT_A_CHECKPOINT, checkpoint_kind, load_tensor_file


# ------------------------------------------------------------------------------------------------ osp plan
@pytest.mark.parametrize("argv, flag, value", [
    (["--tp", "0"], "--tp", "0"),
    (["--dp", "0"], "--dp", "0"),
    (["--tp", "-2"], "--tp", "-2"),
    (["--pp", "x"], "--pp", "x"),
    (["--micro-batch", "0"], "--micro-batch", "0"),
    (["--frames", "0"], "--frames", "0"),
    (["--frames", "120"], "--frames", "120"),
    (["--height", "0"], "--height", "0"),
    (["--width", "1000"], "--width", "1000"),
])
def test_plan_rejects_bad_values_before_building_the_model(argv, flag, value, capsys, monkeypatch):
    from mindspeed_mm.osp.dit import suv
    monkeypatch.setattr(suv.SUVDiT, "from_preset", lambda *a, **k: pytest.fail("model built before the checks"))
    with pytest.raises(SystemExit) as exc:
        main(["plan", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid value" in err and value in err
    assert "positive integer" in err or "takes" in err  # what is valid


@pytest.mark.parametrize("argv, flag, valid", [
    (["--tp", "16"], "--tp/--cp", "1, 2, 3, 4, 6, 8, 12, 24"),
    (["--tp", "4", "--cp", "4"], "--tp/--cp", "1, 2, 3, 4, 6, 8, 12, 24"),
    (["--pp", "7"], "--pp", "1, 2, 4, 8, 16, 32"),
])
def test_plan_rejects_layouts_the_model_cannot_split(argv, flag, valid, capsys):
    pytest.importorskip("megatron.core", reason="megatron-core is not installed")
    with pytest.raises(SystemExit) as exc:
        main(["plan", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid value" in err and valid in err


def test_plan_help_describes_every_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    plan = sub.choices["plan"]
    for action in plan._actions:
        assert action.help, f"osp plan {action.option_strings} has no help"


# ------------------------------------------------------------------------------------------------ files
class RunArgs:
    """A training run's non-tensor object (argparse.Namespace may be allowlisted by megatron's import)."""
    lr = 1.0


@pytest.fixture
def files(tmp_path):
    import random
    rng = random.Random(0)
    junk = bytes(rng.randrange(256) for _ in range(2048))
    (tmp_path / "random.pt").write_bytes(junk)
    (tmp_path / "random.safetensors").write_bytes(junk)
    save_file({"w": torch.zeros(4)}, str(tmp_path / "ok.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes()[:-4])
    torch.save({"model": {"w": torch.zeros(2)}, "args": RunArgs()}, tmp_path / "objects.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "objects.pt").read_bytes()[:200])
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    return tmp_path


def test_checkpoint_kind_reads_the_bytes_not_the_name(files):
    assert checkpoint_kind(files / "ok.safetensors") == "safetensors"
    assert checkpoint_kind(files / "objects.pt") == "torch-zip"
    assert checkpoint_kind(files / "legacy.pt") == "torch-pickle"
    for name in ("random.pt", "random.safetensors", "cut.safetensors", "cut.pt"):
        assert checkpoint_kind(files / name) is None, name
    assert torch.equal(load_tensor_file(files / "legacy.pt")["w"], torch.ones(2))


def test_damaged_zip_checkpoint_is_named(files):
    data = bytearray((files / "objects.pt").read_bytes())
    data[60:400] = bytes(340)  # zip directory intact at the end, member data destroyed
    (files / "broken.pt").write_bytes(bytes(data))
    if checkpoint_kind(files / "broken.pt") is None:
        pytest.skip("zip directory damaged too")
    with pytest.raises(ValueError, match="damaged torch checkpoint|holds Python objects"):
        load_tensor_file(files / "broken.pt")


@pytest.mark.parametrize("name, message", [
    ("missing.pt", "does not exist"),
    ("random.pt", NOT_A_CHECKPOINT),
    ("random.safetensors", NOT_A_CHECKPOINT),
    ("cut.safetensors", NOT_A_CHECKPOINT),
    ("cut.pt", NOT_A_CHECKPOINT),
])
def test_convert_dit_and_wfvae_tell_bad_sources_apart(files, name, message, capsys):
    for argv in (["convert", "dit", "--to", "official"], ["convert", "wfvae", "--to", "osp"]):
        dst = files / ("out.safetensors" if "dit" in argv else "out")
        assert main([*argv, str(files / name), str(dst)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(files / name) in err, err
        assert "pickle" not in err and "weights_only" not in err and "Traceback" not in err
        assert not dst.exists()


def test_only_a_real_pickle_with_objects_gets_the_trust_advice(files, capsys):
    assert main(["convert", "dit", "--to", "official", str(files / "objects.pt"), str(files / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects" in err and "--trust-pickle" in err and "weights_only" not in err
    assert main(["convert", "wfvae", "--to", "osp", str(files / "objects.pt"), str(files / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects" in err and "--unsafe-pickle" in err and "weights_only" not in err


def _make_pipeline(files, transformer, vae):
    (files / "t5").mkdir(exist_ok=True)
    (files / "clip").mkdir(exist_ok=True)
    return ["make-pipeline", "--version", "v1.5", "--transformer", str(transformer), "--vae", str(vae),
            "--text-encoder", str(files / "t5"), "--text-encoder-2", str(files / "clip"),
            "--output", str(files / "pipe")]


@pytest.mark.parametrize("transformer, vae, message", [
    ("missing.pt", "ok.safetensors", "--transformer {} does not exist"),
    ("ok.safetensors", "missing", "--vae {} does not exist"),
    ("random.pt", "ok.safetensors", "--transformer: {} is " + NOT_A_CHECKPOINT),
    ("ok.safetensors", "random.safetensors", "--vae: {} is " + NOT_A_CHECKPOINT),
])
def test_make_pipeline_checks_its_sources_first(files, transformer, vae, message):
    bad = files / (transformer if transformer != "ok.safetensors" else vae)
    with pytest.raises(SystemExit) as exc:
        main(_make_pipeline(files, files / transformer, files / vae))
    text = str(exc.value.code)
    assert message.format(bad) in text and "pickle" not in text and "weights_only" not in text


def test_make_pipeline_says_what_to_do_with_a_trusted_pickle(files):
    with pytest.raises(SystemExit) as exc:
        main(_make_pipeline(files, files / "objects.pt", files / "ok.safetensors"))
    text = str(exc.value.code)
    assert "holds Python objects" in text and "osp convert dit --to official --trust-pickle" in text
    assert "weights_only" not in text and not (files / "pipe").exists()


# ------------------------------------------------------------------------------------------------ mindspore
def test_convert_mindspore_refuses_an_existing_folder(files, capsys):
    src = files / "vae"
    src.mkdir()
    dst = files / "ms"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", "mindspore", str(src), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert main(["convert", "mindspore", str(files / "missing"), str(files / "ms2")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (files / "ms2").exists()
