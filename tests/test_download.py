"""`osp download`: the released weights through huggingface_hub.snapshot_download (replaced here by a fake that
records its arguments and writes a small tree: nothing is fetched), the folder checks made before any download,
the printed make-pipeline command, the token kept out of every output, and one-line errors with the retry
command."""
from __future__ import annotations

import fnmatch
import shlex
import sys

import pytest

from mindspeed_mm.osp import cli
from mindspeed_mm.osp.download import MARKER, RELEASES

# a plausible file list per repository (the fake keeps the ones allow_patterns selects, as huggingface_hub does)
REPO_FILES = {
    "LanguageBind/Open-Sora-Plan-v1.3.0": [
        "README.md", "vae/config.json", "vae/merged.ckpt", "any93x640x640/config.json",
        "any93x640x640/diffusion_pytorch_model.safetensors.index.json",
        "any93x640x640/diffusion_pytorch_model-00001-of-00002.safetensors",
        "any93x640x640/diffusion_pytorch_model-00002-of-00002.safetensors",
        "any93x640x640_i2v/config.json", "any93x640x640_i2v/diffusion_pytorch_model.safetensors",
        "prompt_refiner/model.safetensors"],
    "LanguageBind/Open-Sora-Plan-v1.5.0": ["README.md", "model_ema.pt", "vae/checkpoint.ckpt", "optimizer.pt"],
    "google/mt5-xxl": ["config.json", "pytorch_model.bin", "spiece.model", "tokenizer_config.json", "tf_model.h5"],
    "google/t5-v1_1-xl": ["config.json", "pytorch_model.bin", "spiece.model", "tf_model.h5"],
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "merges.txt", "vocab.json", "open_clip_pytorch_model.bin"],
}


class FakeHub:
    def __init__(self, fail_on=None, error=None):
        self.calls, self.fail_on, self.error = [], fail_on, error

    def __call__(self, repo_id, *, revision=None, local_dir=None, allow_patterns=None, token=None, **kwargs):
        self.calls.append(dict(repo_id=repo_id, revision=revision, local_dir=local_dir,
                               allow_patterns=allow_patterns, token=token, **kwargs))
        if repo_id == self.fail_on:
            raise self.error
        from pathlib import Path
        for name in REPO_FILES[repo_id]:
            if allow_patterns is None or any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                path = Path(local_dir) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * 16)
        return local_dir


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return fake


@pytest.mark.parametrize("release,repos,kept,skipped", [
    ("v1.3", ["LanguageBind/Open-Sora-Plan-v1.3.0", "google/mt5-xxl"],
     ["Open-Sora-Plan-v1.3.0/vae/merged.ckpt", "Open-Sora-Plan-v1.3.0/any93x640x640/config.json",
      "mt5-xxl/pytorch_model.bin", "mt5-xxl/spiece.model"],
     ["Open-Sora-Plan-v1.3.0/any93x640x640_i2v", "Open-Sora-Plan-v1.3.0/prompt_refiner", "mt5-xxl/tf_model.h5"]),
    ("v1.3-i2v", ["LanguageBind/Open-Sora-Plan-v1.3.0", "google/mt5-xxl"],
     ["Open-Sora-Plan-v1.3.0/any93x640x640_i2v/diffusion_pytorch_model.safetensors"],
     ["Open-Sora-Plan-v1.3.0/any93x640x640"]),
    ("v1.5", ["LanguageBind/Open-Sora-Plan-v1.5.0", "google/t5-v1_1-xl", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"],
     ["Open-Sora-Plan-v1.5.0/model_ema.pt", "Open-Sora-Plan-v1.5.0/vae/checkpoint.ckpt",
      "CLIP-ViT-bigG-14-laion2B-39B-b160k/model-00002-of-00002.safetensors", "t5-v1_1-xl/pytorch_model.bin"],
     ["Open-Sora-Plan-v1.5.0/optimizer.pt", "CLIP-ViT-bigG-14-laion2B-39B-b160k/open_clip_pytorch_model.bin"]),
])
def test_each_release_fetches_its_patterns_and_prints_make_pipeline(tmp_path, capsys, hub, release, repos, kept,
                                                                   skipped):
    out = tmp_path / "weights"
    assert cli.main(["download", release, "--output", str(out), "--revision", "v1"]) == 0
    assert [c["repo_id"] for c in hub.calls] == repos
    for call, part in zip(hub.calls, RELEASES[release].parts):
        assert call["allow_patterns"] == list(part.patterns) and call["local_dir"] == str(out / part.folder)
        assert call["revision"] == ("v1" if part.main else None)      # --revision: the Open-Sora Plan repo only
    assert all((out / k).is_file() for k in kept) and not any((out / s).exists() for s in skipped)
    printed = capsys.readouterr().out
    command = printed.strip().splitlines()[-1]
    words = shlex.split(command)
    assert words[:4] == ["osp", "make-pipeline", "--version", release[:4]] and "note:" not in printed
    flags = dict(zip(words[4::2], words[5::2]))
    assert flags["--output"] == str(tmp_path / "weights-pipeline")
    assert all(flags[f] and (out / flags[f]).exists() for f in flags if f != "--output")
    expected = {"v1.3": "any93x640x640", "v1.3-i2v": "any93x640x640_i2v", "v1.5": "model_ema.pt"}[release]
    assert flags["--transformer"].endswith(expected)
    assert ("--text-encoder-2" in flags) == (release == "v1.5")
    cli.build_parser().parse_args(words[1:])   # the printed command is one `osp` accepts


def test_non_empty_output_is_refused_before_any_download(tmp_path, capsys, hub):
    out = tmp_path / "w"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["download", "v1.3", "--output", str(out)])
    assert exit_.value.code == 2 and hub.calls == []
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["download", "v1.3", "--output", str(out), "--overwrite"]) == 0
    assert (out / "mine.txt").read_text() == "user data" and len(hub.calls) == 2


def test_token_comes_from_the_environment_and_is_never_printed(tmp_path, capsys, hub, monkeypatch):
    secret = "hf_SECRETtoken123"
    monkeypatch.setenv("HF_TOKEN", secret)
    assert cli.main(["download", "v1.5", "--output", str(tmp_path / "w")]) == 0
    assert {c["token"] for c in hub.calls} == {secret}
    # a failing download whose error message echoes the token
    hub.fail_on, hub.error = "google/t5-v1_1-xl", OSError(f"401 Unauthorized for token {secret}")
    with pytest.raises(SystemExit):
        cli.main(["download", "v1.5", "--output", str(tmp_path / "w2")])
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err and "HF_TOKEN" in captured.err
    assert secret not in (tmp_path / "w2" / MARKER).read_text()


def test_network_error_is_one_line_with_the_retry_command_and_the_retry_resumes(tmp_path, capsys, hub):
    out = tmp_path / "w"
    hub.fail_on, hub.error = "google/mt5-xxl", ConnectionError("Connection reset by peer\nwhile reading")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["download", "v1.3", "--output", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("osp download: error: downloading google/mt5-xxl failed")
    retry = f"osp download v1.3 --output {out}"
    assert err.rstrip().endswith(f"re-run to resume: {retry}") and "Connection reset by peer while" in err
    # the same command continues in the (now non-empty) folder without --overwrite
    hub.fail_on = None
    assert cli.main(shlex.split(retry)[1:]) == 0
    assert "resuming the download of v1.3" in capsys.readouterr().out


def test_a_part_without_weights_suggests_all_files(tmp_path, capsys, hub, monkeypatch):
    monkeypatch.setitem(REPO_FILES, "google/mt5-xxl", ["config.json", "model.safetensors"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["download", "v1.3", "--output", str(tmp_path / "w")])
    assert exit_.value.code == 1 and "--all-files" in capsys.readouterr().err
    assert cli.main(["download", "v1.3", "--output", str(tmp_path / "w"), "--all-files"]) == 0
    assert hub.calls[-1]["allow_patterns"] is None


def test_skip_text_encoders_and_list(tmp_path, capsys, hub):
    assert cli.main(["download", "v1.5", "--output", str(tmp_path / "w"), "--skip-text-encoders"]) == 0
    assert [c["repo_id"] for c in hub.calls] == ["LanguageBind/Open-Sora-Plan-v1.5.0"]
    out = capsys.readouterr().out
    assert "--text-encoder /path/to/t5-v1_1-xl" in out and "note: --text-encoder: give your own copy" in out
    assert cli.main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    for release in RELEASES.values():
        assert f"{release.name}: " in listing
        assert all(p.repo in listing for p in release.parts)
    assert "any93x640x640_i2v/*" in listing and "size: see the repository" in listing
    assert "(file names unverified)" in listing
    with pytest.raises(SystemExit):
        cli.main(["download", "v1.3"])        # no --output


def test_missing_huggingface_hub_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert cli.main(["download", "v1.3", "--output", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("osp download v1.3: error: the Python package 'huggingface_hub' is not installed")
    assert "osp download" in err.split("needed for", 1)[1] and "Traceback" not in err
    assert not (tmp_path / "w").exists()
