"""`osp sample` and `osp vae reconstruct` check the command line before they compute, and Ctrl-C ends in one line.

Every `osp sample` case here must fail before the pipeline loads: `build_pipeline` is replaced by a function that
fails the test if it is reached.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

from mindspeed_mm.osp import cli
from mindspeed_mm.osp.cli import sample
from mindspeed_mm.osp.cli import vae as vae_cli
from mindspeed_mm.osp.data import video_io
from mindspeed_mm.osp.data.synthetic import moving_pattern

pytest.importorskip("av", reason="writing mp4 needs PyAV (pip install av)")
torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------------ osp sample
def _main(argv) -> int:
    try:
        return cli.main(argv)
    except KeyboardInterrupt:  # not caught: pytest would stop the whole session
        pytest.fail("KeyboardInterrupt escaped osp's main")


@pytest.fixture
def no_loading(monkeypatch):
    def loaded(_args):
        raise AssertionError("the pipeline was loaded before the command line was checked")
    monkeypatch.setattr(sample, "build_pipeline", loaded)


def _sample_usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["sample", *map(str, argv)])
    assert info.value.code == 2, info.value
    return capsys.readouterr().err


def test_sample_without_a_model_uses_the_embedded_default_or_says_there_is_none(tmp_path, capsys, monkeypatch):
    from mindspeed_mm.osp.pipelines import build_preset, folder

    monkeypatch.setattr(folder, "DEFAULT_MODEL", tmp_path / "none")
    err = _sample_usage_error(capsys, "--prompt", "a red circle", "--output", tmp_path / "v.mp4")
    assert "no embedded default model" in err and "--model PIPELINE_DIR" in err
    pipe = build_preset("tiny-osp15-random")
    pipe.defaults = type(pipe.defaults)(9, 32, 32, 1, 1.0, 0.0, 8)   # the folder's own settings are used
    pipe.save_pretrained(tmp_path / "default")
    monkeypatch.setattr(folder, "DEFAULT_MODEL", tmp_path / "default")
    assert _main(["sample", "--prompt", "a red circle", "--output", str(tmp_path / "v.mp4")]) == 0
    assert "embedded default model" in capsys.readouterr().err
    assert video_io.probe(tmp_path / "v.mp4").num_frames == 9


@pytest.mark.parametrize("extra,message", [
    (["--num-frames", "0"], "--num-frames must be >= 1, got 0"),
    (["--height", "0"], "--height must be >= 1, got 0"),
    (["--width", "-16"], "--width must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--num-frames", "5"], "num_frames 5 is not 8k+1 for v1.5 (nearest: 1 or 9)"),
    (["--height", "40"], "height 40 is not a multiple of 16 (nearest: 32 or 48)"),
    (["--width", "31", "--pad"], "--width 31 is odd"),
    (["--prompt", "  "], "prompt 2 is empty"),
])
def test_sample_checks_the_request_before_loading(tmp_path, capsys, no_loading, extra, message):
    err = _sample_usage_error(capsys, "--preset", "tiny-osp15-random", "--prompt", "a cat", *extra,
                              "--output", tmp_path / "v.mp4")
    assert message in err
    assert not any(tmp_path.iterdir())


def test_sample_reads_the_version_from_the_folder_only(tmp_path, capsys, no_loading):
    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "OSPVideoPipeline", "version": "v1.5"}))
    err = _sample_usage_error(capsys, "--model", folder, "--prompt", "a cat", "--num-frames", "93",
                              "--output", tmp_path / "v.mp4")
    assert "8k+1 for v1.5" in err
    # no version in the index: the transformer's config tells
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "OSPVideoPipeline"}))
    (folder / "transformer").mkdir()
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "OpenSoraT2V_v1_3"}))
    err = _sample_usage_error(capsys, "--model", folder, "--prompt", "a cat", "--num-frames", "8",
                              "--output", tmp_path / "v.mp4")
    assert "4k+1 for v1.3" in err
    (folder / "model_index.json").write_text("{not json")
    err = _sample_usage_error(capsys, "--model", folder, "--prompt", "a cat", "--output", tmp_path / "v.mp4")
    assert str(folder / "model_index.json") in err


def test_sample_checks_the_output_folder_and_the_writer_first(tmp_path, capsys, monkeypatch, no_loading):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = _sample_usage_error(capsys, "--preset", "tiny-osp13-random", "--prompt", "a cat",
                              "--output", blocker / "v.mp4")
    assert "is a file, not a folder" in err

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")
    with monkeypatch.context() as m:
        m.setattr(sample.tempfile, "mkstemp", refuse)
        err = _sample_usage_error(capsys, "--preset", "tiny-osp13-random", "--prompt", "a cat",
                                  "--output", tmp_path / "out" / "v.mp4")
    assert "cannot write to" in err and "Permission denied" in err

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails as when PyAV is not installed
    err = _sample_usage_error(capsys, "--preset", "tiny-osp13-random", "--prompt", "a cat",
                              "--output", tmp_path / "v.mp4")
    assert "PyAV" in err and "pip install av" in err


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(_args):
        raise KeyboardInterrupt
    monkeypatch.setattr(sample, "build_pipeline", interrupted)
    assert _main(["sample", "--preset", "tiny-osp13-random", "--prompt", "a cat",
                  "--output", str(tmp_path / "v.mp4")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------- osp vae reconstruct
def _vae(capsys, *argv) -> tuple[int, str]:
    rc = _main(["vae", "reconstruct", *map(str, argv)])
    return rc, capsys.readouterr().err


def _clip(path, frames=5, size=(32, 40)):
    video_io.write_video(path, moving_pattern(frames, *size), 10, crf=0)
    return path


def test_pad_with_an_odd_size_writes_an_even_mp4(tmp_path, tiny_model, capsys):
    inp, out = _clip(tmp_path / "in.mp4"), tmp_path / "rec.mp4"
    rc, err = _vae(capsys, inp, out, "--model", tiny_model, "--resolution", 63, "--pad", "--save-input")
    assert rc == 0, err
    assert "needs even sizes" in err
    for path in (out, tmp_path / "rec_input.mp4"):
        _, h, w, _ = video_io.read_video(path)[0].shape
        assert h == 62 and w % 2 == 0


def test_demo_checks_before_writing_its_input(tmp_path, capsys):
    rc, err = _vae(capsys, "--demo", tmp_path / "demo.mp4", "--num-frames", 18)
    assert rc == 2 and "1 + 4*n frames (nearest: 17 or 21)" in err and "--pad" in err
    rc, err = _vae(capsys, "--demo", tmp_path / "demo.mp4", "--resolution", 60)
    assert rc == 2 and "multiple of 8" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag,value", [("--resolution", "0"), ("--num-frames", "0"), ("--stride", "0"),
                                        ("--start", "-1"), ("--chunk-frames", "0")])
def test_bad_numbers_are_usage_errors(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["vae", "reconstruct", "--demo", str(tmp_path / "demo.mp4"), flag, value])
    assert info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_malformed_config_is_named(tmp_path, capsys):
    inp, model = _clip(tmp_path / "in.mp4"), tmp_path / "vae"
    model.mkdir()
    (model / "config.json").write_text("{not json")
    rc, err = _vae(capsys, inp, tmp_path / "rec.mp4", "--model", model)
    assert rc == 2 and str(model / "config.json") in err and "not valid JSON" in err


def test_frame_count_hint_names_the_cli_flag(tmp_path, tiny_model, capsys):
    inp = _clip(tmp_path / "in.mp4", frames=7)
    rc, err = _vae(capsys, inp, tmp_path / "rec.mp4", "--model", tiny_model)
    assert rc == 2 and "pass --pad" in err and "pad=True" not in err


def test_ctrl_c_in_the_demo_leaves_no_files(tmp_path, capsys, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(vae_cli, "reconstruct", interrupted)
    rc, err = _vae(capsys, "--demo", tmp_path / "demo.mp4", "--num-frames", 5, "--resolution", 32)
    assert rc == 130 and err.strip().endswith("interrupted") and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # the demo input it had written is removed again
