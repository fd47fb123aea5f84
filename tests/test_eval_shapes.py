"""`osp eval shapes`: prompts, scoring plumbing, the random-weights baseline and the command."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.cli import main
from mindspeed_mm.osp.data.shapes import (COLOUR_WORDS, HELD_OUT, MOTION_WORDS, SHAPE_WORDS, caption_words,
                                          seen_combinations)
from mindspeed_mm.osp.pipelines import folder
from mindspeed_mm.osp.eval.shapes_eval import (accuracy, eval_prompts, evaluate, random_baseline, render_expected,
                                               vae_ceiling)
from mindspeed_mm.osp.text import TEMPLATES


def parse_prompt(prompt: str) -> dict:
    """The colour, shape and motion a shapes caption names (each must be named exactly once)."""
    words = caption_words(prompt)
    found = {"colour": [c for c, syn in COLOUR_WORDS.items() if set(syn) & set(words)],
             "shape": [s for s, syn in SHAPE_WORDS.items() if set(syn) & set(words)],
             "motion": [m for m, phrases in MOTION_WORDS.items() if any(p in prompt for p in phrases)]}
    assert all(len(v) == 1 for v in found.values()), (prompt, found)
    return {key: v[0] for key, v in found.items()}


class FakePipeline:
    """Draws exactly what each prompt asks for (`render=True`) or uniform noise, in [-1, 1], (B, 3, F, H, W)."""

    def __init__(self, render: bool):
        self.render = render
        self.defaults = SimpleNamespace(num_frames=17, height=64, width=64, steps=1)
        self.template = TEMPLATES["none"]

    def __call__(self, prompts, seeds, steps=None, **_):
        d = self.defaults
        clips = []
        for prompt, seed in zip(prompts, seeds):
            if self.render:
                clip = render_expected(parse_prompt(prompt), seed, d.num_frames, d.height, d.width)
            else:
                clip = np.random.default_rng(seed).integers(0, 256, (d.num_frames, d.height, d.width, 3),
                                                            dtype=np.uint8)
            clips.append(torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1)
        return torch.stack(clips)


def test_prompts_are_deterministic_and_split_correctly():
    a, b = eval_prompts(20, seed=5), eval_prompts(20, seed=5)
    assert a == b and eval_prompts(20, seed=6) != a
    assert {len(v) for v in a.values()} == {20}
    held, seen = set(HELD_OUT), set(seen_combinations())
    for split, allowed in (("held-out", held), ("seen", seen)):
        for prompt, expected in a[split]:
            triple = (expected["colour"], expected["shape"], expected["motion"])
            assert triple in allowed and parse_prompt(prompt) == expected
    # 20 > 8 held-out triples: every triple is asked for, repeats get other captions where the synonyms allow
    assert {tuple(e.values()) for _, e in a["held-out"]} == held
    assert len({p for p, _ in a["held-out"]}) > len(HELD_OUT)
    assert len({tuple(e.values()) for _, e in a["seen"]}) == 20      # no repeats while n allows


def test_scoring_plumbing_rendered_ground_truth_and_noise():
    prompts = eval_prompts(8, seed=0)
    items = prompts["held-out"] + prompts["seen"]
    seeds = list(range(len(items)))
    perfect = evaluate(FakePipeline(render=True), items, seeds, steps=1, batch_size=3)
    assert [r["prompt"] for r in perfect] == [p for p, _ in items]
    assert accuracy(perfect) == {"colour": 100.0, "shape": 100.0, "motion": 100.0, "all": 100.0, "n": 16}
    noise = accuracy(evaluate(FakePipeline(render=False), items, seeds, steps=1, batch_size=16))
    assert noise["n"] == 16 and noise["all"] <= 20 and max(noise[k] for k in ("colour", "shape", "motion")) <= 50


class FakeVAE:
    """`reconstruct` returns its input (a lossless VAE) or a flat grey clip (one that loses everything)."""

    def __init__(self, lossless: bool):
        self.lossless = lossless
        self.calls = 0

    def reconstruct(self, video):
        self.calls += 1
        assert video.shape == (1, 3, 17, 64, 64) and video.min() >= -1 and video.max() <= 1
        return video.clone() if self.lossless else torch.zeros_like(video)


def test_vae_ceiling_scores_reconstructions_of_rendered_prompts():
    items = eval_prompts(4, seed=0)["held-out"]
    seeds = [7, 8, 9, 10]
    pipe = FakePipeline(render=True)
    pipe.device, pipe.dtype = torch.device("cpu"), torch.float32
    pipe.vae = FakeVAE(lossless=True)
    lossless = vae_ceiling(pipe, items, seeds)
    assert pipe.vae.calls == 4 and accuracy(lossless)["all"] == 100.0
    # the same clips as a perfect transformer draws for the same prompts and seeds
    assert [r["detected"] for r in lossless] == [r["detected"] for r in evaluate(pipe, items, seeds, batch_size=4)]
    pipe.vae = FakeVAE(lossless=False)
    assert accuracy(vae_ceiling(pipe, items, seeds))["all"] == 0.0
    with pytest.raises(ValueError, match="3 seeds for 4 prompts"):
        vae_ceiling(pipe, items, seeds[:3])


def test_random_baseline_changes_weights_and_leaves_the_pipeline_alone():
    from mindspeed_mm.osp.pipelines import build_preset

    pipe = build_preset("tiny-osp15-random")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    transformer = pipe.transformer
    baseline = random_baseline(pipe)
    assert pipe.transformer is transformer and baseline.transformer is not transformer
    assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())
    after = baseline.transformer.state_dict()
    matrices = [k for k, v in before.items() if v.ndim >= 2]
    assert matrices and all(not torch.equal(after[k], before[k]) for k in matrices)
    again = random_baseline(pipe).transformer.state_dict()
    assert all(torch.equal(again[k], after[k]) for k in after)          # deterministic
    assert baseline.vae is pipe.vae and baseline.defaults == pipe.defaults


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from mindspeed_mm.osp.pipelines import build_preset

    path = tmp_path_factory.mktemp("pipe") / "tiny15"
    build_preset("tiny-osp15-random").save_pretrained(path)
    return path


def test_command_end_to_end(tiny_pipeline, capsys):
    args = ["eval", "shapes", "--model", str(tiny_pipeline), "--prompts", "1", "--steps", "1", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "colour" in out and "all-three" in out and "goals:" in out
    assert all(f"{name:<8} {split:<9}" in out for name in ("model", "random", "vae") for split in ("held-out", "seen"))

    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 1 and set(report["goals_met"]) == {"colour", "motion", "shape"}
    for name in ("model", "random", "vae"):
        for split in ("held-out", "seen"):
            entry = report["results"][name][split]
            assert entry["accuracy"]["n"] == 1 and len(entry["items"]) == 1
            assert set(entry["items"][0]["detected"]) >= {"colour", "shape", "motion", "found_fraction"}


def test_command_input_errors(tmp_path, capsys, monkeypatch):
    assert main(["eval", "shapes", "--model", str(tmp_path / "missing")]) == 2
    assert "missing is not a folder" in capsys.readouterr().err
    assert main(["eval", "shapes", "--model", str(tmp_path), "--prompts", "0"]) == 2
    assert "--prompts must be >= 1" in capsys.readouterr().err
    monkeypatch.setattr(folder, "DEFAULT_MODEL", tmp_path / "default_model")
    assert main(["eval", "shapes"]) == 2
    assert "no embedded default model is installed" in capsys.readouterr().err
