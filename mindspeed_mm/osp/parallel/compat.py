"""Version-gated fixes for megatron-core releases older than the torch they run on (every device).

megatron-core 0.12.1 (what MindSpeed pins, built against torch 2.6 / 2.7.1) writes checkpoint files through
torch's private `torch.distributed.checkpoint.filesystem._write_item(transforms, stream, data, write_item,
storage_key)` (megatron/core/dist_checkpointing/strategies/filesystem_async.py,
`FileSystemWriterAsync.write_preloaded_data`). Newer torch (2.13 here) made `serialization_format` a required
argument, so every 0.12.1 checkpoint save raised `TypeError: _write_item() missing 1 required positional argument:
'serialization_format'` in the writer process (the other ranks then waited forever). 0.16 passes it itself. With
0.12.x and such a torch, megatron's module gets a wrapper that passes torch's own default
(`SerializationFormat.TORCH_SAVE`, the format of torch's `.distcp` files), which 0.12.1's reader loads as before.
"""
from __future__ import annotations

import importlib
import inspect


def megatron_version() -> tuple[int, int, int]:
    from megatron.core import package_info
    return (package_info.MAJOR, package_info.MINOR, package_info.PATCH)


def apply() -> list[str]:
    """Apply the fixes this megatron-core / torch pair needs; returns their names. Idempotent."""
    return [name for name, fix in (("write_item_serialization_format", _pass_serialization_format),) if fix()]


def _pass_serialization_format() -> bool:
    if megatron_version()[:2] != (0, 12):
        return False
    from torch.distributed.checkpoint import filesystem
    required = inspect.signature(filesystem._write_item).parameters.get("serialization_format")
    if required is None or required.default is not inspect.Parameter.empty:
        return False  # the torch that 0.12 was written for
    writer = importlib.import_module("megatron.core.dist_checkpointing.strategies.filesystem_async")
    if writer._write_item is not filesystem._write_item:
        return True  # already wrapped

    def write_item(*args, **kwargs):
        return filesystem._write_item(*args, serialization_format=filesystem.SerializationFormat.TORCH_SAVE,
                                      **kwargs)

    writer._write_item = write_item
    return True
