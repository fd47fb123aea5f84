"""Keep a model's big block list in host memory and stream one block at a time to the accelerator.

Inference only: the host copy is the source of truth, so a block moves back by pointing its parameters at the
(pinned) host tensors again; nothing is copied device -> host.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch
from torch import nn


def find_block_lists(model: nn.Module) -> List[nn.ModuleList]:
    """The model's nn.ModuleLists whose entries hold parameters, outermost first (nested lists are skipped)."""
    found: List[nn.ModuleList] = []
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and any(True for _ in module.parameters()):
            if not any(module is sub or any(module is m for m in sub.modules()) for sub in found):
                found.append(module)
    return found


class BlockOffload:
    """Forward hooks that bring each block's weights to `device` before it runs and release them after."""

    def __init__(self, model: nn.Module, device, blocks: Optional[Iterable[nn.Module]] = None, pin: bool = True):
        self.device = torch.device(device)
        if blocks is None:  # the denoisers' `transformer_blocks`, else every block list found
            lists = [model.transformer_blocks] if isinstance(getattr(model, "transformer_blocks", None), nn.ModuleList) \
                else find_block_lists(model)
            blocks = [b for lst in lists for b in lst]
        self.blocks = list(blocks)
        if not self.blocks:
            raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks to offload")
        block_params = {id(p) for b in self.blocks for p in b.parameters()}
        for p in model.parameters():  # everything outside the blocks lives on the device
            if id(p) not in block_params:
                p.data = p.data.to(self.device)
        for b in model.buffers():
            b.data = b.data.to(self.device)
        pin = pin and self.device.type != "cpu" and torch.cuda.is_available()
        self.handles = []
        self.loads = 0
        for block in self.blocks:
            for p in block.parameters():
                host = p.data.cpu()
                p._osp_host = host.pin_memory() if pin else host
                p.data = p._osp_host
            self.handles.append(block.register_forward_pre_hook(self._load))
            self.handles.append(block.register_forward_hook(self._release))

    def _load(self, block, args):
        self.loads += 1
        for p in block.parameters():
            p.data = p._osp_host.to(self.device, non_blocking=True)

    def _release(self, block, args, output):
        for p in block.parameters():
            p.data = p._osp_host

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
