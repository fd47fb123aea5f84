"""Versions, devices and usable backends, with warnings for known bad combinations (`osp env`), and what to install
for a missing optional package (every `osp` command)."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform as _platform
import sys
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp import platform

MEGATRON_SUPPORTED = ((0, 12), (0, 16))  # inclusive major.minor range we test against

# Optional packages: import name -> (pip name, extra of setup.py, what needs it)
OPTIONAL = {
    "av": ("av", "video", "mp4 output (osp sample, osp vae reconstruct, osp data make-shapes/synth) and reading "
                          "videos where decord and OpenCV are missing"),
    "transformers": ("transformers", "text", "text encoders: osp sample, osp train on raw media, osp data extract "
                                             "--text-encoder, osp text tiny"),
    "tokenizers": ("tokenizers", "text", "the tokenizers of the text encoders (same commands as transformers)"),
    "diffusers": ("diffusers", "sample", "the v1.3 sampler (osp sample of v1.3 models)"),
    "megatron": ("megatron-core", "megatron", "the parallel engine: osp train, osp sample --tp/--cp, osp convert "
                                              "dit from/to training checkpoints"),
    "huggingface_hub": ("huggingface_hub", "convert", "osp download, and sharded safetensors in diffusers and "
                                                       "pipeline folders"),
    "PIL": ("pillow", "sample", "images: osp sample --image, image datasets, osp data make-shapes --images"),
    "mindspore": ("mindspore", "mindspore", "the MindSpore WF-VAE and osp convert mindspore"),
    "scenedetect": ("scenedetect-headless", "curate", "jump-cut detection of osp data curate (PySceneDetect)"),
    "cv2": ("opencv-python-headless", "video", "optical-flow motion scores of osp data curate, and the OpenCV reader"),
    "tensorboard": ("tensorboard", None, "TensorBoard logs of osp train (optional; metrics.jsonl is always written)"),
}


def missing_package(error: ModuleNotFoundError) -> Optional[str]:
    """What to install for an optional package that is missing, or None when `error` is not about one."""
    name = (error.name or "").split(".")[0]
    if name not in OPTIONAL:
        return None
    pip_name, extra, needed_for = OPTIONAL[name]
    fix = f"pip install {pip_name}" + (f" (or this package's extra: pip install -e '.[{extra}]')" if extra else "")
    return f"the Python package {pip_name!r} is not installed; it is needed for {needed_for}. Install it: {fix}"


def _version(dist: str) -> Optional[str]:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def mindspeed_mm_layout() -> dict:
    """Where `mindspeed_mm` resolves, and whether our `osp` subpackage is reachable through it."""
    ours = Path(__file__).resolve().parent
    spec = importlib.util.find_spec("mindspeed_mm")
    # Editable installs add path-hook entries that are not directories; list real directories only.
    locations = [str(p) for p in (spec.submodule_search_locations or []) if Path(p).is_dir()] if spec else []
    locations = locations or [str(ours.parent)]
    regular = bool(spec and spec.origin and spec.origin.endswith("__init__.py"))
    # Only a regular package (a MindSpeed-MM checkout) can hide us; a namespace package always merges portions.
    osp_visible = not regular or any(Path(p, "osp").resolve() == ours for p in locations)
    return {"locations": locations, "regular_package": regular, "osp_visible": osp_visible,
            "mindspeed_mm_installed": _version("mindspeed_mm") or _version("mindspeed-mm")}


def collect() -> dict:
    import torch

    info: dict = {
        "python": sys.version.split()[0], "platform": _platform.platform(),
        "torch": torch.__version__, "numpy": _version("numpy"),
        "torch_npu": _version("torch_npu") or _version("torch-npu"),
        "cann": platform.cann_version(),
        "mindspore": _version("mindspore"),
        "megatron-core": _version("megatron-core") or _version("megatron_core"),
        "mindspeed": _version("mindspeed") if importlib.util.find_spec("mindspeed") else None,
        "transformers": _version("transformers"), "diffusers": _version("diffusers"),
        "flash-attn": _version("flash-attn") or _version("flash_attn"), "triton": _version("triton"),
        "video readers": [m for m in ("decord", "av", "cv2") if importlib.util.find_spec(m)],
        "device": platform.device_type(), "collective backend": platform.collective_backend(),
        "cuda devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "npu devices": _npu_devices(),
    }
    info["missing optional packages"] = {OPTIONAL[m][0]: OPTIONAL[m][2] for m in OPTIONAL
                                         if importlib.util.find_spec(m) is None}
    from mindspeed_mm.osp.ops import attention
    info["attention backends"] = attention.available_backends()
    info["mindspeed_mm namespace"] = mindspeed_mm_layout()
    info["warnings"] = warnings_for(info)
    return info


def _npu_devices() -> list[str]:
    if not platform.npu_available():
        return []
    import torch
    return [torch.npu.get_device_name(i) for i in range(torch.npu.device_count())]


def warnings_for(info: dict) -> list[str]:
    """Known bad combinations, each with what to do about it."""
    out = []
    torch_v, npu_v = info["torch"], info.get("torch_npu")
    if npu_v and _major_minor(npu_v) != _major_minor(torch_v):
        out.append(f"torch_npu {npu_v} is built for torch {'.'.join(map(str, _major_minor(npu_v)))}.x but torch "
                   f"{torch_v} is installed: install the torch_npu release that matches your torch.")
    if npu_v and info.get("cann") is None:
        out.append("torch_npu is installed but no CANN toolkit was found (source set_env.sh, or set "
                   "ASCEND_TOOLKIT_HOME); without CANN, torch_npu cannot be imported. On a machine without "
                   "an NPU, uninstall torch_npu.")
    numpy_v = info.get("numpy")
    if info.get("mindspore") and numpy_v and _major_minor(numpy_v)[0] >= 2:
        out.append(f"MindSpore {info['mindspore']} with numpy {numpy_v}: MindSpore's PyNative mode breaks on "
                   "numpy 2.x; install 'numpy<2'.")
    meg = info.get("megatron-core")
    if meg:
        lo, hi = MEGATRON_SUPPORTED
        if not lo <= _major_minor(meg) <= hi:
            out.append(f"megatron-core {meg} is outside the tested range {lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}.x "
                       "(MindSpeed pins 0.12.1; CUDA users 0.16.x).")
        if _major_minor(meg) <= (0, 12) and numpy_v and _major_minor(numpy_v)[0] >= 2:
            out.append(f"megatron-core {meg} calls np.product, removed in numpy {numpy_v}: install 'numpy<2'.")
    return out


def format_report(info: dict) -> str:
    lines = []
    for key, value in info.items():
        if key in ("warnings", "mindspeed_mm namespace", "missing optional packages"):
            continue
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        lines.append(f"{key:>20}: {value if value is not None else 'not installed'}")
    ns = info["mindspeed_mm namespace"]
    kind = "regular package (MindSpeed-MM)" if ns["regular_package"] else "namespace package"
    route = "" if ns["osp_visible"] else " (osp reached through mindspeed_mm_osp_finder: a checkout shadows it)"
    lines.append(f"{'mindspeed_mm':>20}: {kind} at {', '.join(ns['locations'])}{route}")
    for pip_name, needed_for in info["missing optional packages"].items():
        extra = next(e for p, e, _ in OPTIONAL.values() if p == pip_name)
        how = f"pip install {pip_name}" + (f" or pip install -e '.[{extra}]'" if extra else "")
        lines.append(f"MISSING: {pip_name}, needed for {needed_for}; {how}")
    for w in info["warnings"]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)
