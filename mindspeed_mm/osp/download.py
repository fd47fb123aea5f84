"""The released Open-Sora Plan weights on Hugging Face (and the text encoders they need), as `osp download` fetches
them, and the `osp make-pipeline` command that turns a finished download into a pipeline folder for
`osp sample --model`.

Each part of a release is one Hugging Face repository fetched with `huggingface_hub.snapshot_download` and
`allow_patterns` into its own sub-folder of `--output` (resumable: re-running the same command continues an
interrupted download). A token, for gated or rate-limited downloads, is read from the HF_TOKEN environment variable
only (never from the command line, never printed).

File names: the v1.3 folders `vae/`, `any93x640x640/` and `any93x640x640_i2v/`, and mT5-XXL's `pytorch_model.bin`,
are named in the Open-Sora Plan README and sampling scripts; the other patterns (the v1.5 repository's
`model_ema.pt` / VAE files, the T5 / CLIP file names) follow MindSpeed-MM's instructions and the usual Hugging Face
layouts and were not checked against the repositories (no network here). A part whose download holds no weights file
stops with an error that suggests `--all-files`.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

MARKER = ".osp-download.json"  # written first into --output: a folder holding it (same release) is resumed
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
SIZE_UNKNOWN = "size: see the repository"


@dataclass(frozen=True)
class Part:
    role: str                   # what it is, for --list and the stage lines
    repo: str                   # Hugging Face model repository
    folder: str                 # sub-folder of --output
    patterns: Tuple[str, ...]   # allow_patterns of snapshot_download
    verified: bool              # file names confirmed in public sources (see the module docstring)
    main: bool = False          # the Open-Sora Plan repository (--revision applies to it only)
    size: str = SIZE_UNKNOWN


@dataclass(frozen=True)
class Release:
    name: str
    version: str                # make-pipeline --version
    about: str
    parts: Tuple[Part, ...]
    # (flag, part folder, glob inside it, default relative path): the make-pipeline arguments found after download
    arguments: Tuple[Tuple[str, str, str, str], ...] = field(default=())


_TEXT = ("*.json", "spiece.model", "pytorch_model*.bin")
MT5_XXL = Part("text encoder mT5-XXL (MT5EncoderModel is read from the full model)", "google/mt5-xxl", "mt5-xxl",
               _TEXT, verified=True)
T5_XL = Part("text encoder T5-v1.1-XL", "google/t5-v1_1-xl", "t5-v1_1-xl", _TEXT, verified=False)
CLIP_BIGG = Part("text encoder 2 CLIP-ViT-bigG-14 (CLIPTextModelWithProjection)",
                 "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "CLIP-ViT-bigG-14-laion2B-39B-b160k",
                 ("*.json", "merges.txt", "vocab.json", "model*.safetensors"), verified=False)
OSP13_REPO, OSP15_REPO = "LanguageBind/Open-Sora-Plan-v1.3.0", "LanguageBind/Open-Sora-Plan-v1.5.0"
OSP13_DIR, OSP15_DIR = "Open-Sora-Plan-v1.3.0", "Open-Sora-Plan-v1.5.0"


def _osp13(transformer: str) -> Part:
    return Part(f"WF-VAE (vae/) and denoiser ({transformer}/)", OSP13_REPO, OSP13_DIR,
                ("vae/*", f"{transformer}/*"), verified=True, main=True)


RELEASES: Dict[str, Release] = {r.name: r for r in (
    Release("v1.3", "v1.3", "Open-Sora Plan v1.3 text-to-video (Skiparse DiT 2.7B, any93x640x640) + WF-VAE 4x8x8",
            (_osp13("any93x640x640"), MT5_XXL),
            (("--transformer", OSP13_DIR, "any93x640x640", "any93x640x640"),
             ("--vae", OSP13_DIR, "vae", "vae"), ("--text-encoder", "mt5-xxl", ".", "."))),
    Release("v1.3-i2v", "v1.3", "Open-Sora Plan v1.3 image-to-video (inpainting weights, any93x640x640_i2v) + "
                                "WF-VAE 4x8x8",
            (_osp13("any93x640x640_i2v"), MT5_XXL),
            (("--transformer", OSP13_DIR, "any93x640x640_i2v", "any93x640x640_i2v"),
             ("--vae", OSP13_DIR, "vae", "vae"), ("--text-encoder", "mt5-xxl", ".", "."))),
    Release("v1.5", "v1.5", "Open-Sora Plan v1.5 text-to-video (SUV MMDiT 8.5B, 121x576x1024) + WF-VAE-M 8x8x8",
            (Part("denoiser (model_ema.pt) and WF-VAE-M", OSP15_REPO, OSP15_DIR,
                  ("*model_ema.pt", "*vae*", "*.json", "*.md"), verified=False, main=True), T5_XL, CLIP_BIGG),
            (("--transformer", OSP15_DIR, "**/model_ema.pt", "model_ema.pt"),
             ("--vae", OSP15_DIR, "vae", "vae"), ("--text-encoder", "t5-v1_1-xl", ".", "."),
             ("--text-encoder-2", "CLIP-ViT-bigG-14-laion2B-39B-b160k", ".", "."))),
)}


def format_list() -> str:
    lines = []
    for r in RELEASES.values():
        lines.append(f"{r.name}: {r.about}")
        for part in r.parts:
            note = "" if part.verified else " (file names unverified)"
            lines.append(f"  {part.repo} -> {part.folder}/  {part.role}")
            lines.append(f"      files: {', '.join(part.patterns)}{note}; {part.size}")
    lines.append("Token: set HF_TOKEN in the environment (gated or rate-limited downloads); it is never printed.")
    return "\n".join(lines)


def read_marker(out: Path) -> Optional[dict]:
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def weights_files(folder: Path) -> List[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
            and ".cache" not in p.relative_to(folder).parts]


def _find(folder: Path, pattern: str, default: str) -> Tuple[Path, bool]:
    """The make-pipeline path inside `folder`: `pattern` ("." = the folder; a glob for files), else `default`."""
    if pattern == ".":
        return folder, True
    if "*" in pattern:
        found = sorted(p for p in folder.glob(pattern) if ".cache" not in p.parts)
        return (found[0], True) if found else (folder / default, False)
    return folder / pattern, (folder / pattern).exists()


def make_pipeline_command(release: Release, out: Path, skip_text: bool) -> Tuple[str, List[str]]:
    """(the `osp make-pipeline` command for a finished download, notes on paths not found in it)."""
    words = ["osp", "make-pipeline", "--version", release.version]
    notes = []
    for flag, part_folder, pattern, default in release.arguments:
        path, found = _find(out / part_folder, pattern, default)
        if flag.startswith("--text-encoder") and skip_text:
            path = Path(f"/path/to/{part_folder}")
            notes.append(f"{flag}: give your own copy of {part_folder}")
        elif not found:
            notes.append(f"{flag}: {path} was not found in the download; check the folder and adjust the path")
        words += [flag, str(path)]
    words += ["--output", str(out.parent / f"{out.name}-pipeline")]
    return " ".join(shlex.quote(w) for w in words), notes
