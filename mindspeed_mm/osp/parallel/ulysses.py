"""Ulysses context parallel: all-to-all over megatron's CP group around a model's attention core.

`parallelize` hooks these around each planned core: it receives q/k/v (and, for joint attention, the text q/k/v) in S-B-H layout with this rank's
sequence chunk and all of its (TP-local) heads; the all-to-all hands it the whole sequence with 1/CP of the heads,
so RoPE, qk-norm, Skiparse and masks inside the core see full sequences. Its outputs go back the same way.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import all_to_all


def sequence_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """(S/cp, B, H) -> (S, B, H/cp): gather the sequence, scatter the hidden (heads) dimension."""
    cp = torch.distributed.get_world_size(group)
    s, b, h = x.shape
    if h % cp:
        raise ValueError(f"hidden size {h} of a {cp}-way Ulysses all-to-all is not divisible by {cp}")
    x = x.reshape(s, b, cp, h // cp).permute(2, 0, 1, 3).contiguous()  # (cp, s, b, h/cp)
    x = all_to_all(group, x.reshape(cp * s, b, h // cp))                 # chunk j: sequence part j
    return x.reshape(cp * s, b, h // cp)


def heads_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """(S, B, H/cp) -> (S/cp, B, H): the inverse of `sequence_to_heads`."""
    cp = torch.distributed.get_world_size(group)
    s, b, h = x.shape
    x = all_to_all(group, x.contiguous())                                 # chunk j: head group j
    x = x.reshape(cp, s // cp, b, h).permute(1, 2, 0, 3)
    return x.reshape(s // cp, b, cp * h)
