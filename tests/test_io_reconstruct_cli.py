"""`osp vae reconstruct`: demo, a generated clip with a tiny saved model, overwrite refusal, bad input, progress."""
from __future__ import annotations

import re

import pytest
import torch

from mindspeed_mm.osp import cli, metrics
from mindspeed_mm.osp.cli import vae as vae_cli
from mindspeed_mm.osp.data import video_io
from mindspeed_mm.osp.data.synthetic import moving_pattern
from mindspeed_mm.osp.vae import WFVAE
from mindspeed_mm.osp.vae.roundtrip import chunk_counts, reconstruct

pytest.importorskip("av", reason="writing mp4 needs PyAV (pip install av)")
torch.set_num_threads(2)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["vae", "reconstruct", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _printed(out: str) -> tuple[float, float]:
    m = re.search(r"PSNR ([0-9.]+) dB\s+SSIM (-?[0-9.]+)", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def _clip(path, frames=9, size=(32, 40)):
    video_io.write_video(path, moving_pattern(frames, *size), 10, crf=0)
    return path


def test_demo(tmp_path, capsys, monkeypatch):
    from mindspeed_mm.osp.pipelines import folder
    monkeypatch.setattr(folder, "DEFAULT_MODEL", tmp_path / "no_default_model")   # the random-weights demo
    out = tmp_path / "outputs" / "demo_recon.mp4"
    rc, stdout, _ = _run(capsys, "--demo", out)
    assert rc == 0, stdout
    assert "RANDOM weights" in stdout and "meaningless" in stdout
    diff = float(re.search(r"max \|diff\| = (\S+)", stdout).group(1))
    assert diff < 1e-4  # chunked inference equals whole-clip inference
    psnr, ssim = _printed(stdout)
    assert 0 < psnr < 60 and -1 <= ssim <= 1
    for path in (out, tmp_path / "outputs" / "demo_recon_input.mp4"):
        frames, fps = video_io.read_video(path)
        assert frames.shape == (vae_cli.DEMO_FRAMES, vae_cli.DEMO_SIZE, vae_cli.DEMO_SIZE, 3)
        assert fps == pytest.approx(vae_cli.DEMO_FPS)


def test_demo_uses_the_embedded_default_vae_on_a_held_out_clip(tmp_path, tiny_model, capsys, monkeypatch):
    import shutil

    from mindspeed_mm.osp.pipelines import folder
    default = tmp_path / "default_model"
    shutil.copytree(tiny_model, default / "vae")
    (default / folder.INDEX_FILE).write_text("{}")
    monkeypatch.setattr(folder, "DEFAULT_MODEL", default)
    rc, stdout, _ = _run(capsys, "--demo", tmp_path / "demo.mp4")
    assert rc == 0, stdout
    assert "held-out shapes clip: a red triangle moving up" in stdout
    assert "RANDOM" not in stdout and "meaningless" not in stdout
    assert f"the embedded default model's WF-VAE ({default / 'vae'})" in stdout


def test_generated_clip_with_saved_model(tmp_path, tiny_model, capsys):
    inp = _clip(tmp_path / "in.mp4")
    out = tmp_path / "out" / "rec.mp4"
    rc, stdout, stderr = _run(capsys, inp, out, "--model", tiny_model, "--chunk-frames", 4, "--save-input")
    assert rc == 0, stderr
    assert "chunks of 4 frames: 3 encode / 3 decode" in stdout and "float32 on cpu; fast path" in stdout
    # the printed figures equal an independent computation with the library API (whole clip, no chunks)
    video, _ = video_io.load_video(inp)
    with torch.no_grad():
        ref = WFVAE.from_pretrained(tiny_model).reconstruct(video)
    x01, y01 = (video + 1) / 2, (ref.clamp(-1, 1) + 1) / 2
    psnr, ssim = _printed(stdout)
    assert psnr == pytest.approx(metrics.psnr(y01, x01), abs=0.006)
    assert ssim == pytest.approx(metrics.ssim(y01, x01), abs=6e-5)
    frames, fps = video_io.read_video(out)
    assert frames.shape == (9, 32, 40, 3) and fps == pytest.approx(10)
    saved, _ = video_io.read_video(tmp_path / "out" / "rec_input.mp4")
    assert saved.shape == frames.shape
    rc, stdout, stderr = _run(capsys, inp, out, "--model", tiny_model, "--no-fast-path", "--overwrite")
    assert rc == 0 and "fast path" not in stdout, stderr


def test_preprocessing_options(tmp_path, tiny_model, capsys):
    inp = _clip(tmp_path / "in.mp4", frames=12, size=(40, 56))
    out = tmp_path / "rec.mp4"
    rc, stdout, stderr = _run(capsys, inp, out, "--model", tiny_model, "--num-frames", 5, "--stride", 2,
                              "--resolution", 32, "--center-crop", "--dtype", "bf16")
    assert rc == 0, stderr
    assert "5 frames 32x32 at 5 fps" in stdout and "bfloat16" in stdout and "fast path" not in stdout
    assert video_io.read_video(out)[0].shape == (5, 32, 32, 3)


def test_overwrite_refused(tmp_path, tiny_model, capsys):
    inp = _clip(tmp_path / "in.mp4", frames=5)
    out = tmp_path / "rec.mp4"
    out.write_bytes(b"user data")
    rc, _, stderr = _run(capsys, inp, out, "--model", tiny_model)
    assert rc == 2 and "already exists; pass --overwrite" in stderr
    assert out.read_bytes() == b"user data"
    rc, _, stderr = _run(capsys, inp, out, "--model", tiny_model, "--overwrite")
    assert rc == 0, stderr
    assert video_io.read_video(out)[0].shape[0] == 5


def test_bad_frame_count_and_pad(tmp_path, tiny_model, capsys):
    inp = _clip(tmp_path / "in.mp4", frames=7, size=(36, 44))
    out = tmp_path / "rec.mp4"
    rc, _, stderr = _run(capsys, inp, out, "--model", tiny_model)
    assert rc == 2 and "frame count must be 1 + 4*n" in stderr and "pad" in stderr
    assert not out.exists()
    rc, stdout, stderr = _run(capsys, inp, out, "--model", tiny_model, "--pad")
    assert rc == 0, stderr
    assert video_io.read_video(out)[0].shape == (7, 36, 44, 3)


def test_usage_errors(tmp_path, tiny_model, capsys):
    rc, _, stderr = _run(capsys, tmp_path / "missing.mp4", tmp_path / "o.mp4", "--model", tiny_model)
    assert rc == 2 and "video file not found" in stderr and "missing.mp4" in stderr
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 2000)
    rc, _, stderr = _run(capsys, bad, tmp_path / "o.mp4", "--model", tiny_model)
    assert rc == 2 and "bad.mp4" in stderr and "cannot decode" in stderr
    rc, _, stderr = _run(capsys, tmp_path / "in.mp4", tmp_path / "o.mp4")
    assert rc == 2 and "--model PATH is required" in stderr
    rc, _, stderr = _run(capsys, "--demo")
    assert rc == 2 and "exactly one path" in stderr
    rc, _, stderr = _run(capsys, "--demo", tmp_path / "o.mp4", "--model", tiny_model)
    assert rc == 2 and "random weights" in stderr


def test_progress_counts_every_chunk(tiny_model):
    vae = WFVAE.from_pretrained(tiny_model)
    video = torch.rand(1, 3, 9, 8, 8) * 2 - 1
    seen = []
    recon, _, latent_shape = reconstruct(vae, video, chunk_frames=4, on_chunk=seen.append)
    n_enc, n_dec, dec_chunk = chunk_counts(vae, 9, 4)
    assert (n_enc, n_dec, dec_chunk) == (3, 3, 1)
    assert seen == ["encode"] * n_enc + ["decode"] * n_dec
    assert latent_shape == (1, 4, 3, 1, 1) and recon.shape == video.shape
    assert not vae.encoder._forward_hooks and not vae.decoder._forward_hooks
