"""Score a text-to-video model trained on the shapes dataset (`mindspeed_mm.osp.data.shapes`): prompt it with
single-object captions, detect what each clip shows (`shapes_detect.detect`) and report colour, shape and motion
accuracy on two splits -- "held-out" (the `HELD_OUT` triples, never in training: composition) and "seen" (triples
the training data contains: recall) -- next to two references measured in the same run: a chance baseline (the same
pipeline with its transformer's weights re-initialised randomly, sampled with the same prompts and seeds) and the
VAE's ceiling (clips of the same triples drawn by the dataset's renderer, passed through the pipeline's VAE and
scored alike: what a perfect transformer could reach through this VAE).

Prompts are written by the dataset's own `caption` function with a seeded generator, so they use its templates and
synonyms ("footage of a crimson disc sliding right") exactly as training captions do.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mindspeed_mm.osp.data.shapes import (HELD_OUT, ShapeObject, caption, place_object, random_background,
                                          render_clip, seen_combinations)
from mindspeed_mm.osp.eval.shapes_detect import detect, score

SPLITS = ("held-out", "seen")
ATTRIBUTES = ("colour", "shape", "motion")
# Goals of the default model on the held-out split (accuracy, %); reported, never enforced.
GOALS = {"colour": 90.0, "motion": 85.0, "shape": 75.0}
BASELINE_SEED = 1234       # seed of the random re-initialisation of the chance baseline

Prompt = tuple[str, dict]  # (caption, expected {"colour", "shape", "motion"})


def resolve_model(arg: Optional[str]) -> Path:
    """The pipeline folder to score: `arg` if given, else the embedded default model when it is installed.
    Raises FileNotFoundError with a clear message otherwise."""
    from mindspeed_mm.osp.pipelines import folder

    if arg is not None:
        path = Path(arg)
        if not path.is_dir():
            raise FileNotFoundError(f"--model {arg} is not a folder")
        return path
    if folder.default_model() is None:
        raise FileNotFoundError(f"no embedded default model is installed ({folder.DEFAULT_MODEL} has no "
                                f"{folder.INDEX_FILE}); pass --model DIR, a pipeline folder trained on the shapes "
                                "dataset")
    return folder.default_model()


def _captioned(triples: Sequence[tuple[str, str, str]], rng: np.random.Generator) -> list[Prompt]:
    prompts = []
    for colour, shape, motion in triples:
        obj = ShapeObject(colour, shape, motion, size=0.0, start=(0.0, 0.0), end=(0.0, 0.0))
        prompts.append((caption([obj], rng), {"colour": colour, "shape": shape, "motion": motion}))
    return prompts


def _cycle(triples: Sequence[tuple[str, str, str]], n: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """`n` triples: whole shuffled passes over `triples`, then a shuffled part of one."""
    picked: list[tuple[str, str, str]] = []
    while len(picked) < n:
        picked += [triples[i] for i in rng.permutation(len(triples))]
    return picked[:n]


def eval_prompts(n: int, seed: int) -> dict[str, list[Prompt]]:
    """`n` prompts per split, deterministic for `seed`: "held-out" cycles through `HELD_OUT` (each pass in a new
    order, each repeat with a new caption), "seen" is a sample of `seen_combinations()` without repeats while
    `n` allows. Captions come from the dataset's `caption` (random templates and synonyms)."""
    if n < 1:
        raise ValueError(f"the number of prompts must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return {"held-out": _captioned(_cycle(HELD_OUT, n, rng), rng),
            "seen": _captioned(_cycle(seen_combinations(), n, rng), rng)}


def _detection_record(detection) -> dict:
    """A detection as JSON-friendly values (NaN becomes None)."""
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v
    return {"colour": detection.colour, "shape": detection.shape, "motion": detection.motion,
            "colour_distance": clean(detection.colour_distance), "colour_strength": clean(detection.colour_strength),
            "shape_error": clean(detection.shape_error), "displacement": [clean(v) for v in detection.displacement],
            "found_fraction": detection.found_fraction}


def _scored(prompt: Prompt, seed: int, video: torch.Tensor) -> dict:
    """One clip's record: prompt, seed, expected, detected, correct (per attribute and "all")."""
    from mindspeed_mm.osp.data.video_io import model_output_to_frames

    text, expected = prompt
    detection = detect(model_output_to_frames(video).numpy())
    correct = score(expected, detection)
    return {"prompt": text, "seed": int(seed), "expected": expected, "detected": _detection_record(detection),
            "correct": {**correct, "all": all(correct.values())}}


def _check_seeds(prompts: Sequence[Prompt], seeds: Sequence[int]) -> None:
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")


def evaluate(pipe, prompts: Sequence[Prompt], seeds: Sequence[int], steps: Optional[int] = None,
             batch_size: int = 8, progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Sample one clip per prompt (the pipeline's own frames, size, guidance and prompt template; `steps` or its
    own), detect what it shows and score it. Returns per prompt: prompt, seed, expected, detected, correct
    (per attribute and "all"). `progress(done, total)` is called after each batch."""
    _check_seeds(prompts, seeds)
    results = []
    for start in range(0, len(prompts), batch_size):
        batch, batch_seeds = prompts[start:start + batch_size], list(seeds[start:start + batch_size])
        videos = pipe([text for text, _ in batch], seeds=batch_seeds, steps=steps)
        results += [_scored(prompt, seed, video) for prompt, seed, video in zip(batch, batch_seeds, videos)]
        if progress is not None:
            progress(len(results), len(prompts))
    return results


def render_expected(expected: dict, seed: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3): the expected colour/shape/motion drawn by the dataset's renderer, with a random size,
    path and background for `seed`."""
    rng = np.random.default_rng(seed)
    obj = place_object(rng, expected["colour"], expected["shape"], expected["motion"], height, width)
    return render_clip([obj], num_frames, height, width, random_background(rng))


@torch.no_grad()
def vae_ceiling(pipe, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[dict]:
    """Like `evaluate`, with each clip drawn exactly as its prompt asks (`render_expected`, the pipeline's frames and
    size) and passed through the pipeline's VAE (encode, posterior mode, decode): the accuracy a perfect
    transformer could reach through this VAE."""
    from mindspeed_mm.osp.data.video_io import frames_to_model_input

    _check_seeds(prompts, seeds)
    d = pipe.defaults
    results = []
    for prompt, seed in zip(prompts, seeds):
        clip = torch.from_numpy(render_expected(prompt[1], seed, d.num_frames, d.height, d.width))
        video = frames_to_model_input(clip, pipe.dtype).to(pipe.device)
        results.append(_scored(prompt, seed, pipe.vae.reconstruct(video).float()[0]))
    return results


def accuracy(results: Sequence[dict]) -> dict:
    """Accuracy (%) per attribute and for all three together, and the number of clips `n`."""
    n = len(results)
    return {**{key: 100.0 * sum(r["correct"][key] for r in results) / n for key in (*ATTRIBUTES, "all")}, "n": n}


@torch.no_grad()
def randomize_weights(module: torch.nn.Module, seed: int = BASELINE_SEED) -> torch.nn.Module:
    """Re-initialise every parameter of `module` in place, deterministically for `seed`: matrices and tensors
    N(0, 0.02), biases 0, other vectors (norm scales) 1. Returns `module`."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.ndim >= 2:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        elif name.endswith("bias"):
            param.zero_()
        else:
            param.fill_(1.0)
    return module


def random_baseline(pipe, seed: int = BASELINE_SEED):
    """A copy of `pipe` whose transformer has random weights (`randomize_weights`); `pipe` is left untouched (the
    VAE, text encoders and sampler are shared)."""
    baseline = copy.copy(pipe)
    baseline.transformer = randomize_weights(copy.deepcopy(pipe.transformer), seed)
    return baseline


def run_shapes_eval(pipe, n: int, seed: int, steps: Optional[int] = None, batch_size: int = 8,
                    log: Optional[Callable[[str], None]] = None) -> dict:
    """Both splits for the model, its random baseline and the VAE's ceiling, with the same prompts and seeds (split
    "held-out" clip i has seed `seed` + i, split "seen" clip i `seed` + n + i). Returns {"model" | "random" |
    "vae": {split: {"accuracy", "items"}}}."""
    prompts = eval_prompts(n, seed)
    seeds = {"held-out": [seed + i for i in range(n)], "seen": [seed + n + i for i in range(n)]}
    report = {}
    for name, candidate in (("model", pipe), ("random", random_baseline(pipe))):
        report[name] = {}
        for split in SPLITS:
            progress = None if log is None else (
                lambda done, total, name=name, split=split: log(f"{name} {split}: {done}/{total} clips"))
            items = evaluate(candidate, prompts[split], seeds[split], steps, batch_size, progress)
            report[name][split] = {"accuracy": accuracy(items), "items": items}
    report["vae"] = {}
    for split in SPLITS:
        items = vae_ceiling(pipe, prompts[split], seeds[split])
        report["vae"][split] = {"accuracy": accuracy(items), "items": items}
    return report


def goal_status(held_out: dict) -> dict[str, bool]:
    """Per goal attribute: whether the held-out accuracy reaches `GOALS`."""
    return {key: held_out[key] >= goal for key, goal in GOALS.items()}


def format_table(report: dict) -> str:
    """Rows model / random baseline x split, columns colour, shape, motion, all-three (%) and n; the goals beside
    the model's held-out row."""
    lines = [f"{'':<8} {'split':<9} {'colour':>7} {'shape':>7} {'motion':>7} {'all-three':>10} {'n':>5}"]
    for name, label in (("model", "model"), ("random", "random"), ("vae", "vae")):
        for split in SPLITS:
            acc = report[name][split]["accuracy"]
            row = (f"{label:<8} {split:<9} {acc['colour']:>6.1f}% {acc['shape']:>6.1f}% {acc['motion']:>6.1f}% "
                   f"{acc['all']:>9.1f}% {acc['n']:>5}")
            if name == "model" and split == "held-out":
                met = goal_status(acc)
                row += "   goals: " + ", ".join(f"{key} >= {goal:.0f}% {'PASS' if met[key] else 'MISS'}"
                                                for key, goal in GOALS.items())
            lines.append(row)
    lines.append("random = the same pipeline with its transformer re-initialised randomly (chance baseline), "
                 "same prompts and seeds")
    lines.append("vae = clips drawn exactly as each prompt asks, through the pipeline's VAE (encode + decode): the "
                 "most a transformer can reach with this VAE")
    return "\n".join(lines)
