"""Weights files: safetensors, torch zip archives and legacy torch pickles, told apart by their bytes (not their
names), checked before reading, and read safely: a pickle holding Python objects besides tensors (Megatron `args`,
RNG states) is refused with an `UntrustedPickleError` unless the caller trusts the file."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import torch

PathLike = Union[str, os.PathLike]
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
NOT_A_CHECKPOINT = "not a checkpoint (neither safetensors nor a torch checkpoint)"


class UntrustedPickleError(ValueError):
    """A real torch pickle that holds Python objects besides tensors; only a full (unsafe) unpickle reads it.
    Commands catch it to say what to do in their own terms (`fix` is the library-level advice)."""

    def __init__(self, path: Path, detail: str, fix: str = "if you trust the file, pass trust_pickle=True "
                                                           "(CLI: --trust-pickle)"):
        self.path, self.detail = Path(path), detail
        super().__init__(self.describe(fix))

    def describe(self, fix: str) -> str:
        return (f"problem: {self.path} holds Python objects besides tensors (e.g. Megatron `args`, RNG states: "
                f"{self.detail}), which the safe loader refuses; fix: {fix}")


def _safetensors_header_ok(path: Path, size: int) -> bool:
    """The 8-byte length + JSON header of a safetensors file, with every tensor's bytes inside the file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        n = int.from_bytes(head, "little")
        if n < 2 or 8 + n > size:
            return False
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return False
        end = max(end, offsets[1])
    return 8 + n + end <= size


def checkpoint_kind(path: PathLike) -> Optional[str]:
    """"safetensors", "torch-zip" or "torch-pickle" by the file's bytes (not its name); None when it is none of
    them. Reads the header only."""
    import zipfile
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:4] == b"PK\x03\x04":
        return "torch-zip" if zipfile.is_zipfile(path) else None
    if len(magic) >= 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5:  # pickle protocol 2-5 (legacy torch.save)
        return "torch-pickle"
    return "safetensors" if _safetensors_header_ok(path, size) else None


def check_checkpoint_file(path: PathLike, what: str = "") -> str:
    """Before reading: the file exists and is a safetensors or torch checkpoint. Returns its kind."""
    path = Path(path)
    label = f"{what}: " if what else ""
    if not path.exists():
        raise FileNotFoundError(f"problem: {label}{path} does not exist; fix: check the path")
    if not path.is_file():
        raise ValueError(f"problem: {label}{path} is not a file; fix: pass the checkpoint file")
    kind = checkpoint_kind(path)
    if kind is None:
        raise ValueError(f"problem: {label}{path} is {NOT_A_CHECKPOINT}; fix: pass the weights file itself "
                         "(re-download it if it is truncated or damaged)")
    return kind


def check_checkpoint_path(path: PathLike, what: str = "") -> None:
    """Before reading: `path` exists; a file, or a folder's top-level weights files, are real checkpoints."""
    path = Path(path)
    if path.is_dir():
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in CHECKPOINT_SUFFIXES:
                check_checkpoint_file(f, what)
    else:
        check_checkpoint_file(path, what)


def untrusted_pickle(path: PathLike, err: BaseException) -> Optional[UntrustedPickleError]:
    """An `UntrustedPickleError` when `err` is torch's weights-only unpickler refusing non-tensor objects (not a
    damaged file); else None."""
    message = str(err)
    if not (isinstance(err, pickle.UnpicklingError) and
            any(s in message for s in ("GLOBAL", "allowlisted", "add_safe_globals", "unrecognized function",
                                       "Unsupported class"))):
        return None
    detail = message.split("Unsupported global: ")[-1].splitlines()[0]
    return UntrustedPickleError(path, re.sub(r" (was not an allowed global|whose module).*", "", detail)[:200])


def load_tensor_file(path: PathLike, trust_pickle: bool = False) -> dict:
    """A .safetensors file, or a torch pickle. Pickles load with weights_only=True unless `trust_pickle`
    (Megatron training checkpoints also hold `args` and RNG states, which only a full unpickle reads).
    A missing file, a file that is no checkpoint, a damaged one and a pickle needing trust are told apart."""
    path = Path(path)
    kind = check_checkpoint_file(path)
    if kind == "safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError is not a ValueError
            raise ValueError(f"problem: {path} is a damaged safetensors file ({str(err).splitlines()[0]}); "
                             "fix: re-download or re-export it") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        refused = None if trust_pickle else untrusted_pickle(path, err)
        if refused is not None:
            raise refused from None
        raise ValueError(f"problem: {path} is a damaged torch checkpoint ({str(err).splitlines()[0][:200]}); "
                         "fix: re-download or re-export it") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"problem: {path} is a damaged torch checkpoint ({str(err).splitlines()[0][:200]}); "
                         "fix: re-download or re-export it") from None

