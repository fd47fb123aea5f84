"""`osp download`: fetch the released Open-Sora Plan weights (and the text encoders they need) from Hugging Face,
then print the `osp make-pipeline` command that turns the folder into a pipeline folder for `osp sample --model`
(the releases, their repositories and files: mindspeed_mm.osp.download)."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

from mindspeed_mm.osp.download import (
    MARKER, RELEASES, WEIGHT_SUFFIXES, format_list, make_pipeline_command, read_marker, weights_files,
)


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


def _check_output(out: Path, release: str, overwrite: bool) -> bool:
    """Before any download: refuse a file, or a non-empty folder that is not an earlier download of this release
    (unless `overwrite`). True when an earlier download of this release is continued."""
    if out.exists() and not out.is_dir():
        raise _error(f"--output {out} is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    marker = read_marker(out)
    if marker is not None and marker.get("release") == release:
        return True
    if not overwrite:
        what = f"a download of {marker.get('release')}" if marker else "files"
        raise _error(f"--output {out} exists and holds {what}; choose an empty or new folder, or pass --overwrite "
                     "to download into it anyway")
    return False


def run(args: argparse.Namespace) -> int:
    from mindspeed_mm.osp.progress import human_size, stage_printer, tree_size

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
        if not weights_files(target):
            raise _error(f"{part.repo}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) matched "
                         f"{', '.join(part.patterns)}; the repository's layout may differ: re-run with --all-files: "
                         f"{retry_command(args)} --all-files", code=1)
        log(f"[{n}/{len(parts)}] {part.repo}: {human_size(tree_size(target))} in {target}")
    marker = read_marker(out) or {}
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
