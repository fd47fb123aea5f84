"""`osp download`: fetch the released Open-Sora Plan weights (and the text encoders they need) from Hugging Face,
then print the `osp make-pipeline` command that turns the folder into a pipeline folder for `osp sample --model`.

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

import argparse
import json
import os
import re
import shlex
import sys
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


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "download", help="fetch the released Open-Sora Plan weights and text encoders from Hugging Face",
        description="Download a released model (its Open-Sora Plan repository files and the text encoders it needs) "
                    "into --output, one sub-folder per repository, then print the `osp make-pipeline` command for "
                    "it. Resumable: re-run the same command after an interruption. A token is read from the "
                    "HF_TOKEN environment variable only. `osp download --list` shows the releases and their files.")
    p.add_argument("release", nargs="?", choices=sorted(RELEASES), metavar="RELEASE",
                   help=f"what to download: {', '.join(RELEASES)}")
    p.add_argument("--output", help="folder to download into (one sub-folder per repository)")
    p.add_argument("--list", action="store_true", help="print the releases, their repositories, files and sizes")
    p.add_argument("--revision", default=None,
                   help="branch, tag or commit of the Open-Sora Plan repository (default: main; the text encoder "
                        "repositories always use main)")
    p.add_argument("--skip-text-encoders", action="store_true",
                   help="download the Open-Sora Plan repository only (you already have the text encoders)")
    p.add_argument("--all-files", action="store_true",
                   help="download every file of each repository instead of the listed patterns (when a "
                        "repository's layout differs from the one expected here)")
    p.add_argument("--overwrite", action="store_true",
                   help="download into an existing non-empty --output that no earlier `osp download` of this "
                        "release started (files of the same names are replaced; others are left alone)")
    p.set_defaults(func=run)


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


def _error(message: str, code: int = 2) -> SystemExit:
    """Print `osp download: error: message` (one line) and return the SystemExit to raise: 2 for a bad command
    line or folder, 1 for a failed download."""
    print(f"osp download: error: {message}", file=sys.stderr)
    return SystemExit(code)


def retry_command(args: argparse.Namespace) -> str:
    words = ["osp", "download", args.release, "--output", str(args.output)]
    if args.revision:
        words += ["--revision", args.revision]
    for flag in ("skip_text_encoders", "all_files", "overwrite"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    return " ".join(shlex.quote(w) for w in words)


def _read_marker(out: Path) -> Optional[dict]:
    try:
        data = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_output(out: Path, release: str, overwrite: bool) -> bool:
    """Before any download: refuse a file, or a non-empty folder that is not an earlier download of this release
    (unless `overwrite`). True when an earlier download of this release is continued."""
    if out.exists() and not out.is_dir():
        raise _error(f"--output {out} is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    marker = _read_marker(out)
    if marker is not None and marker.get("release") == release:
        return True
    if not overwrite:
        what = f"a download of {marker.get('release')}" if marker else "files"
        raise _error(f"--output {out} exists and holds {what}; choose an empty or new folder, or pass --overwrite "
                     "to download into it anyway")
    return False


def _weights(folder: Path) -> List[Path]:
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


def run(args: argparse.Namespace) -> int:
    from .progress import human_size, stage_printer, tree_size

    if args.list:
        print(format_list())
        return 0
    if args.release is None or args.output is None:
        raise _error("give a RELEASE and --output DIR (see `osp download --list`)")
    release = RELEASES[args.release]
    out = Path(args.output)
    resumed = _check_output(out, release.name, args.overwrite)   # before anything is downloaded

    import huggingface_hub  # the optional package: a missing one is reported by `osp` in one line

    log = stage_printer("download")
    token = os.environ.get("HF_TOKEN") or None
    parts = [p for p in release.parts if p.main or not args.skip_text_encoders]
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"release": release.name, "revision": args.revision,
                                          "repos": [p.repo for p in parts], "complete": False}, indent=1) + "\n")
    log(("resuming" if resumed else "starting") + f" the download of {release.name} into {out}"
        + ("; using the token in HF_TOKEN" if token else ""))
    for n, part in enumerate(parts, 1):
        target = out / part.folder
        patterns = None if args.all_files else list(part.patterns)
        revision = args.revision if part.main else None
        log(f"[{n}/{len(parts)}] {part.repo}{f'@{revision}' if revision else ''} -> {target}: "
            f"{'all files' if patterns is None else ', '.join(patterns)}")
        try:
            huggingface_hub.snapshot_download(repo_id=part.repo, revision=revision, local_dir=str(target),
                                              allow_patterns=patterns, token=token)
        except ModuleNotFoundError:
            raise
        except Exception as err:   # network, HTTP, disk: one line with what to do
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            if token:
                reason = reason.replace(token, "***")
            hint = _hint(err)
            raise _error(f"downloading {part.repo} failed ({reason[:300]}){hint}; finished files are kept: "
                         f"re-run to resume: {retry_command(args)}", code=1)
        if not _weights(target):
            raise _error(f"{part.repo}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) matched "
                         f"{', '.join(part.patterns)}; the repository's layout may differ: re-run with --all-files: "
                         f"{retry_command(args)} --all-files", code=1)
        log(f"[{n}/{len(parts)}] {part.repo}: {human_size(tree_size(target))} in {target}")
    marker = _read_marker(out) or {}
    (out / MARKER).write_text(json.dumps({**marker, "complete": True}, indent=1) + "\n")
    command, notes = make_pipeline_command(release, out, args.skip_text_encoders)
    print(f"downloaded {release.name} into {out} ({human_size(tree_size(out))})")
    for note in notes:
        print(f"note: {note}")
    print("next, build the pipeline folder for `osp sample --model`:")
    print(command)
    return 0


def _hint(err: Exception) -> str:
    name = type(err).__name__
    if name == "GatedRepoError" or re.search(r"\b(401|403)\b", str(err)):
        return "; the repository needs a token: accept its terms on huggingface.co and set HF_TOKEN"
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return "; check the repository and --revision"
    return ""
