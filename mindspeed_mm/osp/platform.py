"""Which accelerator this process runs on, and which collective backend goes with it.

Ascend: torch_npu (needs the CANN toolkit) with HCCL; CUDA: NCCL; CPU: gloo. torch_npu is only imported when it
is installed *and* a CANN toolkit is found, because without CANN the import fails (and breaks `import torch`).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Optional

CANN_ENV_VARS = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH")
CANN_DEFAULT_DIRS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")


def cann_home() -> Optional[Path]:
    """The CANN toolkit directory, or None when no CANN install is found."""
    for var in CANN_ENV_VARS:
        value = os.environ.get(var)
        if value and Path(value).exists():
            return Path(value) if var != "ASCEND_OPP_PATH" else Path(value).parent
    for d in CANN_DEFAULT_DIRS:
        if Path(d).exists():
            return Path(d)
    return None


def cann_version() -> Optional[str]:
    home = cann_home()
    if home is None:
        return None
    for name in ("version.cfg", "ascend_toolkit_install.info", "compiler/version.info"):
        f = home / name
        if f.exists():
            for line in f.read_text(errors="replace").splitlines():
                if "version" in line.lower() and "=" in line:
                    return line.split("=", 1)[1].strip()
    return "unknown version"


@functools.lru_cache(maxsize=None)
def npu_available() -> bool:
    """True when torch_npu imports and sees at least one NPU."""
    if importlib.util.find_spec("torch_npu") is None or cann_home() is None:
        return False
    try:
        import torch
        import torch_npu  # noqa: F401
        return bool(torch.npu.is_available())
    except Exception:  # a broken torch_npu/CANN pairing: report it in `osp env`, run elsewhere
        return False


def device_type() -> str:
    """"npu", "cuda" or "cpu"; OSP_DEVICE overrides the detection."""
    forced = os.environ.get("OSP_DEVICE")
    if forced:
        if forced not in ("cpu", "cuda", "npu"):
            raise ValueError(f"OSP_DEVICE={forced!r}: expected cpu, cuda or npu")
        return forced
    if npu_available():
        return "npu"
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_device():
    import torch
    kind = device_type()
    if kind == "cpu":
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device(kind, local_rank)


def collective_backend(kind: Optional[str] = None) -> str:
    return {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}[kind or device_type()]


# Set by mindspeed_mm.osp.ops.emulation.emulate_torch_npu(): CPU tensors then take the NPU code paths, which call
# the CPU emulator installed as `torch_npu`. Only tests should turn this on.
_npu_emulated = False


def npu_emulated() -> bool:
    """True inside `emulate_torch_npu()`, where a CPU emulator stands in for torch_npu."""
    return _npu_emulated


def is_npu_tensor(tensor) -> bool:
    """Whether `tensor` should go through torch_npu fused ops: it lives on an NPU (or on CPU under the emulator)."""
    kind = tensor.device.type
    return kind == "npu" or (_npu_emulated and kind == "cpu")
