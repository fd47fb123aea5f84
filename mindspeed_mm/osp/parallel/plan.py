"""What the parallel engine needs to know about a model class, kept outside the model code.

A plan names (fnmatch patterns over `model.named_modules()` names) the linears to make column-, row- or
conditioning-parallel, the attention projections to hook for Ulysses, which modules run before the blocks (first
pipeline stage) and in the token-wise head (last stage), and how to run the model piecewise:

    state  = plan.embed(model, inputs)        # dict of tensors, sequence tensors in S-B-H layout
    state  = plan.run_block(model, i, state)  # block i (flat index over all blocks)
    tokens = plan.head(model, state)          # (S, B, C) token-wise output head
    out    = plan.finish(model, tokens, inputs)  # whole-sequence work (unpatchify)

`sequence_keys(key)` says which state entries are cut along the sequence (residual streams, long-skip stacks).
The plans of the OSP denoisers, and `plan_for(model)`, are in plans.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Callable, Dict, Sequence, Tuple

import torch

# Which dimension of the official weight / bias each kind of linear is cut along over TP (None: replicated).
# The checkpoint converter reads it; parallel/layers.py cuts the same way when it builds the parallel linears.
SPLIT_DIMS = {"column": (0, 0), "conditioning": (0, 0), "row": (1, None)}


@dataclass
class ParallelPlan:
    column: Tuple[str, ...]
    row: Tuple[str, ...]
    conditioning: Tuple[str, ...]
    # Ulysses CP: linears whose output is all-to-all'ed sequence -> heads (q/k/v projections), and linears
    # whose input goes back heads -> sequence (output projections). Between them the model must take the
    # sequence length from the projected tensors (RoPE, Skiparse and masks then see whole sequences).
    ulysses_in: Tuple[str, ...]
    ulysses_out: Tuple[str, ...]
    blocks: Callable[[torch.nn.Module], Sequence[str]]   # module names of the blocks, in execution order
    heads: Callable[[torch.nn.Module], int]
    sequence_keys: Callable[[str], bool]
    embed: Callable
    run_block: Callable
    head: Callable
    finish: Callable
    pre: Tuple[str, ...] = ()                # module names used only by `embed`
    post: Tuple[str, ...] = ()               # module names used only by `head`
    attached: Dict[str, int] = field(default_factory=dict)  # other module name -> block index using it
    # Under SP: modules (pattern -> number of leading S-B-H arguments) whose inputs are gathered once on entry,
    # for models that need the whole sequence length inside (e.g. attention reading n = x.shape[0]).
    gather_inputs: Dict[str, int] = field(default_factory=dict)
    # Modules with replicated parameters applied to this rank's heads only (qk-norm weights shared by all
    # heads): their gradients are summed over TP.
    head_local: Tuple[str, ...] = ()

    def kind_of(self, name: str):
        for kind, patterns in (("column", self.column), ("row", self.row), ("conditioning", self.conditioning)):
            if any(fnmatchcase(name, p) for p in patterns):
                return kind
        return None

    def split_dim(self, key: str):
        """The dimension along which parameter `key` (official name) is cut over TP, or None when replicated."""
        module, _, leaf = key.rpartition(".")
        kind = self.kind_of(module)
        if kind is None:
            return None
        weight_dim, bias_dim = SPLIT_DIMS[kind]
        return weight_dim if leaf == "weight" else bias_dim if leaf == "bias" else None

    def gathered_args(self, name: str):
        for pattern, n in self.gather_inputs.items():
            if fnmatchcase(name, pattern):
                return n
        return None

    def ulysses_role(self, name: str):
        if any(fnmatchcase(name, p) for p in self.ulysses_in):
            return "in"
        if any(fnmatchcase(name, p) for p in self.ulysses_out):
            return "out"
        return None
