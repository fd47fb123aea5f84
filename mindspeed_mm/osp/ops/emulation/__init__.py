"""CPU emulators of accelerator-only fused ops, for tests.

`emulate_torch_npu()` installs the torch_npu emulator as the `torch_npu` module and makes
`platform.is_npu_tensor` treat CPU tensors as NPU tensors, so the real NPU calling code of our ops runs on CPU.
`emulate_flash_attn()` does the same for the `flash_attn` package. Both undo everything on exit.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from typing import Iterator

from mindspeed_mm.osp import platform
from mindspeed_mm.osp.ops.emulation import flash_attn_emulator, torch_npu_emulator

EMULATOR_ATTR = "__osp_emulator__"


def is_emulated(module_name: str) -> bool:
    return bool(getattr(sys.modules.get(module_name), EMULATOR_ATTR, False))


@contextlib.contextmanager
def _fake_module(name: str, source: types.ModuleType, functions: tuple[str, ...]) -> Iterator[types.ModuleType]:
    module = types.ModuleType(name, f"CPU emulator of {name} (mindspeed_mm.osp.ops.emulation)")
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    setattr(module, EMULATOR_ATTR, True)
    for f in functions:
        setattr(module, f, getattr(source, f))
    saved = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield module
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


@contextlib.contextmanager
def emulate_torch_npu() -> Iterator[types.ModuleType]:
    """Within the block, `import torch_npu` gives the emulator and CPU tensors take the NPU code paths."""
    with _fake_module("torch_npu", torch_npu_emulator,
                      ("npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul")) as module:
        previous = platform._npu_emulated
        platform._npu_emulated = True
        try:
            yield module
        finally:
            platform._npu_emulated = previous


@contextlib.contextmanager
def emulate_flash_attn() -> Iterator[types.ModuleType]:
    """Within the block, `import flash_attn` gives the CPU emulator (and the flash_attn backend is usable)."""
    with _fake_module("flash_attn", flash_attn_emulator, ("flash_attn_func", "flash_attn_varlen_func")) as module:
        yield module
