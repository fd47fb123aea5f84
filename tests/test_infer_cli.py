"""`osp sample` end to end on the tiny presets: a playable mp4 with the requested frames and size, and bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mindspeed_mm.osp.cli import main

TINY = ["--steps", "2", "--height", "32", "--width", "48"]


def _read_back(path):
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


@pytest.mark.parametrize("preset,frames", [("tiny-osp13-random", 9), ("tiny-osp15-random", 17)])
def test_sample_writes_a_playable_mp4_and_sidecar(tmp_path, preset, frames, capsys):
    out = tmp_path / "video.mp4"
    assert main(["sample", "--preset", preset, "--prompt", "a red car in the city", "--num-frames", str(frames),
                 *TINY, "--seed", "11", "--fps", "12", "--output", str(out)]) == 0
    video = _read_back(out)
    assert video.shape == (frames, 32, 48, 3)
    assert video.std() > 1  # not a blank clip
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["seed"] == 11 and meta["num_frames"] == frames and meta["fps"] == 12 and meta["preset"] == preset
    assert meta["prompt"] == "a red car in the city" and meta["prompt_used"].startswith("high quality")
    assert meta["sampler"]["_class_name"] in ("EulerAncestralDiscreteScheduler", "FlowMatchEulerSampler")
    assert meta["fast_path"] is (preset == "tiny-osp15-random")  # v1.5 float32 on one process: the fast path
    assert meta["vae_fast_path"] is True  # float32 on CPU
    # existing outputs are never replaced silently
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["sample", "--preset", preset, "--prompt", "x", "--num-frames", str(frames), *TINY, "--output", str(out)])


def test_bad_sizes_name_the_nearest_valid_values_and_pad_works(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(SystemExit, match=r"num_frames 8 .*nearest: 5 or 9.*--pad"):
        main(["sample", "--preset", "tiny-osp13-random", "--prompt", "a cat", "--num-frames", "8", *TINY,
              "--output", str(out)])
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        main(["sample", "--preset", "tiny-osp13-random", "--prompt", "a cat", "--steps", "0", "--output", str(out)])
    assert main(["sample", "--preset", "tiny-osp13-random", "--prompt", "a cat", "--num-frames", "8", "--steps", "1",
                 "--height", "30", "--width", "40", "--guidance", "1", "--pad", "--output", str(out)]) == 0
    assert _read_back(out).shape == (8, 30, 40, 3)


def test_image_to_video_with_a_resized_image(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "i2v.mp4"
    assert main(["sample", "--preset", "tiny-osp13-i2v-random", "--prompt", "a cat", "--image", str(img),
                 "--num-frames", "9", *TINY, "--guidance", "1", "--output", str(out)]) == 0
    assert "resized and center-cropped to 48x32" in capsys.readouterr().err
    assert _read_back(out).shape == (9, 32, 48, 3)
    with pytest.raises(SystemExit, match="inpainting"):
        main(["sample", "--preset", "tiny-osp13-random", "--prompt", "a cat", "--image", str(img),
              "--num-frames", "9", *TINY, "--output", str(tmp_path / "t2v.mp4")])


def test_model_folder_and_missing_component(tmp_path):
    from mindspeed_mm.osp.pipelines import build_preset, save_pipeline

    folder = save_pipeline(build_preset("tiny-osp13-random"), tmp_path / "pipe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n# a comment\n\na dog\n")
    out = tmp_path / "m.mp4"
    assert main(["sample", "--model", str(folder), "--prompt-file", str(prompts), "--num-frames", "5", *TINY,
                 "--batch-size", "2", "--output", str(out)]) == 0
    assert _read_back(tmp_path / "m_001.mp4").shape == (5, 32, 48, 3)
    assert json.loads((tmp_path / "m_001.json").read_text())["prompt"] == "a dog"
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(SystemExit, match="no tokenizer/ component folder"):
        main(["sample", "--model", str(folder), "--prompt", "a", "--output", str(tmp_path / "z.mp4")])


@pytest.mark.parametrize("preset", ["tiny-osp13-random", "tiny-osp15-random"])
def test_make_pipeline_from_released_layouts(tmp_path, preset):
    """Write each part in the layout it is published in, assemble with `osp make-pipeline`, sample from it."""
    import torch
    from safetensors.torch import save_file

    from mindspeed_mm.osp.pipelines import build_preset

    pipe = build_preset(preset)
    dit = pipe.transformer
    if preset.startswith("tiny-osp13"):  # diffusers transformer/ folder
        tdir = tmp_path / "transformer"
        tdir.mkdir()
        (tdir / "config.json").write_text(json.dumps(dit.config.to_official()))
        save_file({k: v.contiguous() for k, v in dit.official_state_dict().items()},
                  str(tdir / "diffusion_pytorch_model.safetensors"))
        transformer, extra = tdir, []
    else:  # MindSpeed-MM EMA checkpoint + the SparseUMMDiT kwargs
        transformer = tmp_path / "model_ema.pt"
        torch.save({"ema_state_dict": dit.official_state_dict()}, transformer)
        (tmp_path / "suv.json").write_text(json.dumps(dit.config.to_official()))
        extra = ["--transformer-config", str(tmp_path / "suv.json")]
    pipe.vae.save_pretrained(tmp_path / "vae")
    pipe.text.encoder.save_pretrained(tmp_path / "t5")
    pipe.text.tokenizer.save_pretrained(tmp_path / "t5")
    if pipe.text.pooled_encoder is not None:
        pipe.text.pooled_encoder.save_pretrained(tmp_path / "clip")
        pipe.text.pooled_tokenizer.save_pretrained(tmp_path / "clip")
        extra += ["--text-encoder-2", str(tmp_path / "clip")]
    version = pipe.version
    assert main(["make-pipeline", "--version", version, "--transformer", str(transformer), "--vae",
                 str(tmp_path / "vae"), "--text-encoder", str(tmp_path / "t5"), "--dtype", "fp32",
                 "--output", str(tmp_path / "pipe"), *extra]) == 0
    out = tmp_path / "v.mp4"
    assert main(["sample", "--model", str(tmp_path / "pipe"), "--prompt", "a cat", "--num-frames",
                 "5" if version == "v1.3" else "9", *TINY, "--output", str(out), "--save-latents"]) == 0
    # same weights as the in-memory preset (text max length differs: the released 512 vs the preset's 32)
    assert _read_back(out).shape[1:] == (32, 48, 3)
    wrong = "v1.5" if version == "v1.3" else "v1.3"
    with pytest.raises(SystemExit, match="not the v1.. denoiser|needs the CLIP"):
        main(["make-pipeline", "--version", wrong, "--transformer", str(transformer), "--vae", str(tmp_path / "vae"),
              "--text-encoder", str(tmp_path / "t5"), "--output", str(tmp_path / "bad"), *extra])
