"""Ulysses context parallel: the all-to-alls over megatron's CP group.

`parallelize` hooks `sequence_to_heads` onto the outputs of the q/k/v projections (this rank's sequence chunk,
all of its TP-local heads -> the whole sequence, 1/CP of the heads) and `heads_to_sequence` onto the inputs of
the output projections, so RoPE, qk-norm, Skiparse and masks in between see whole sequences.
"""
from __future__ import annotations

import torch
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
