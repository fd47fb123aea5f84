"""State-dict keys: strict checks against a model, `module.` prefixes, and the key names of the released layouts.

* v1.3: diffusers names (what `OSP13DiT` uses) <-> MindSpeed-MM names (`videodit_sparse_blocks.{i}`, `self_atten` /
  `cross_atten`, `proj_q/k/v`, `proj_out`).
* v1.5: MindSpeed-MM names (what the official `SparseUMMDiT` state dict uses, `transformer_blocks.{stage}.{j}`) <->
  PKU-branch names (`to_q`, `add_q_proj`, ...) and <-> `SUVDiT`'s flat `transformer_blocks.{i}`.
The model family (v1.3 / v1.5) is told by the key names (`detect_version`).
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
V13_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_V13_MM_BLOCK = re.compile(r"^videodit_sparse_blocks\.(\d+)\.(.+)$")
V15_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(\d+)\.(.+)$")


# ------------------------------------------------------------------------------------------------ key checks
def listing(keys, limit: int = 12) -> str:
    """The first `limit` of `keys`, sorted and comma-separated, with how many more there are."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_keys(expected: dict, state_dict: dict, what: str = "model") -> None:
    """Raise naming the missing / unexpected keys and shape mismatches of `state_dict` against `expected`
    (a state dict of the model, under the names the checkpoint uses)."""
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    bad_shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if bad_shapes:
        problems.append(f"shape mismatches ({len(bad_shapes)}): " + "; ".join(bad_shapes[:12]))
    if problems:
        raise ValueError(f"{what}: the checkpoint does not match the model config: " + " | ".join(problems)
                         + ". Check that the config (preset or config.json) belongs to this checkpoint.")


def load_checked(model: nn.Module, state_dict: dict, what: str = "model",
                 dtype: Optional[torch.dtype] = None) -> None:
    """Strictly load `state_dict` into `model`. A model on the meta device takes the tensors themselves
    (cast to `dtype`, default the model's), so no second copy of the weights is made."""
    check_keys(model.state_dict(), state_dict, what)
    on_meta = any(p.is_meta for p in model.parameters())
    if on_meta:
        dtype_of = {k: dtype or v.dtype for k, v in model.state_dict().items()}
        state_dict = {k: v.to(dtype_of[k]) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=on_meta)


# ------------------------------------------------------------------------------------------------ v1.5 names
# PKU (Open-Sora-Plan mindspeed_mmdit branch) -> MindSpeed-MM attention names, applied as substring renames
# in this order (spec: MindSpeed-MM opensoraplan_converter, v1.5).
PKU_TO_MM = (
    ("attn1.norm_q.", "attn1.norm_proj_q."), ("attn1.norm_k.", "attn1.norm_proj_k."),
    ("attn1.norm_added_q.", "attn1.norm_added_proj_q."), ("attn1.norm_added_k.", "attn1.norm_added_proj_k."),
    ("attn1.to_q.", "attn1.proj_q."), ("attn1.to_k.", "attn1.proj_k."), ("attn1.to_v.", "attn1.proj_v."),
    ("attn1.add_q_proj.", "attn1.added_proj_q."), ("attn1.add_k_proj.", "attn1.added_proj_k."),
    ("attn1.add_v_proj.", "attn1.added_proj_v."),
    ("attn1.to_out.0.", "attn1.proj_out."), ("attn1.to_add_out.", "attn1.added_proj_out."),
)
_PKU_MARKERS = ("attn1.to_q.", "attn1.add_q_proj.", "attn1.to_out.0.", "attn1.norm_q.")


def rename_pku_v15(state_dict: dict) -> dict:
    """PKU-branch v1.5 key names -> MindSpeed-MM names (no-op for MindSpeed-MM names)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in PKU_TO_MM:
            key = key.replace(old, new)
        out[key] = value
    return out


def to_pku_v15(state_dict: dict) -> dict:
    """MindSpeed-MM v1.5 key names -> PKU-branch names (the inverse of `rename_pku_v15`)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in PKU_TO_MM:
            key = key.replace(new, old)
        out[key] = value
    return out


def is_pku_v15(state_dict: dict) -> bool:
    return any(marker in key for key in state_dict for marker in _PKU_MARKERS)


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def drop_tp_leftovers(state_dict: dict, num_layers: list[int]) -> dict:
    """Drop the last block's text-stream weights that PKU TP>1 training builds but no model uses."""
    last = f"transformer_blocks.{len(num_layers) - 1}.{num_layers[-1] - 1}."
    unused = tuple(last + name for name in ("attn1.added_proj_out.", "norm2.norm_enc.", "ff_enc."))
    dropped = [k for k in state_dict if k.startswith(unused)]
    if dropped:
        logger.info("note: dropping %d unused last-block text-stream weights left by tensor-parallel training "
                    "(%s); the model never reads them", len(dropped), listing(dropped, 6))
    return {k: v for k, v in state_dict.items() if k not in set(dropped)}


_SUV_OFFICIAL = re.compile(r"^transformer_blocks\.(\d+)\.(\d+)\.(.*)$")
_SUV_FLAT = re.compile(r"^transformer_blocks\.(\d+)\.(.*)$")


def suv_official_to_flat(state_dict: dict, num_layers: list[int]) -> dict:
    """`transformer_blocks.{stage}.{j}.*` -> `transformer_blocks.{flat index}.*`."""
    starts = [sum(num_layers[:s]) for s in range(len(num_layers))]
    out = {}
    for key, value in state_dict.items():
        m = _SUV_OFFICIAL.match(key)
        if m:
            stage, j = int(m.group(1)), int(m.group(2))
            if stage >= len(num_layers) or j >= num_layers[stage]:
                raise ValueError(f"unexpected key {key!r}: block ({stage}, {j}) is outside num_layers {num_layers}")
            key = f"transformer_blocks.{starts[stage] + j}.{m.group(3)}"
        out[key] = value
    return out


def suv_flat_to_official(state_dict: dict, num_layers: list[int]) -> dict:
    """Inverse of `suv_official_to_flat`."""
    where = [(s, j) for s, n in enumerate(num_layers) for j in range(n)]
    out = {}
    for key, value in state_dict.items():
        m = _SUV_FLAT.match(key)
        if m:
            s, j = where[int(m.group(1))]
            key = f"transformer_blocks.{s}.{j}.{m.group(2)}"
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ v1.3 names
_MM_ATTENTION = {"attn1": "self_atten", "attn2": "cross_atten"}
_MM_PROJECTION = {"to_q": "proj_q", "to_k": "proj_k", "to_v": "proj_v"}


def _attention_rest(rest: str, to_mm: bool) -> str:
    """Token-wise rename of the part of a v1.3 block key after the block index."""
    attention = _MM_ATTENTION if to_mm else {v: k for k, v in _MM_ATTENTION.items()}
    parts = rest.split(".")
    if parts[0] not in attention:
        return rest
    head, tail = attention[parts[0]], parts[1:]
    if to_mm and tail[:1] and tail[0] in _MM_PROJECTION:
        tail = [_MM_PROJECTION[tail[0]]] + tail[1:]
    elif to_mm and tail[:2] == ["to_out", "0"]:
        tail = ["proj_out"] + tail[2:]
    elif not to_mm and tail[:1] and tail[0] in _MM_PROJECTION.values():
        tail = [{v: k for k, v in _MM_PROJECTION.items()}[tail[0]]] + tail[1:]
    elif not to_mm and tail[:1] == ["proj_out"]:
        tail = ["to_out", "0"] + tail[1:]
    return ".".join([head] + tail)


def v13_to_mm(state_dict: StateDict) -> StateDict:
    """v1.3 diffusers names -> MindSpeed-MM names (blocks only; the top-level `proj_out` is untouched)."""
    out = {}
    for key, value in state_dict.items():
        m = V13_BLOCK.match(key)
        out[f"videodit_sparse_blocks.{m.group(1)}.{_attention_rest(m.group(2), True)}" if m else key] = value
    return out


def v13_from_mm(state_dict: StateDict) -> StateDict:
    """The inverse of `v13_to_mm` (no-op on diffusers names)."""
    out = {}
    for key, value in state_dict.items():
        m = _V13_MM_BLOCK.match(key)
        out[f"transformer_blocks.{m.group(1)}.{_attention_rest(m.group(2), False)}" if m else key] = value
    return out


def detect_version(keys: Sequence[str], what: str = "checkpoint", expected: Optional[str] = None) -> str:
    """'v13' or 'v15' from the key names (either naming flavour); `expected` (--model) must agree, and decides
    when the names do not tell."""
    v15 = any(V15_BLOCK.match(k) or k.startswith(("patch_embed.", "time_text_embed.")) for k in keys)
    v13 = any(k.startswith(("videodit_sparse_blocks.", "adaln_single.", "scale_shift_table"))
              or (V13_BLOCK.match(k) and not V15_BLOCK.match(k)) for k in keys)
    if v13 == v15:
        if expected is not None:
            return expected
        raise ValueError(f"{what}: cannot tell v1.3 from v1.5 by its key names; pass --model v13 or --model v15")
    found = "v13" if v13 else "v15"
    if expected is not None and found != expected:
        raise ValueError(f"{what} holds a {found} checkpoint (by its key names), not --model {expected}")
    return found


def to_official_names(state_dict: StateDict, version: str) -> StateDict:
    """Any supported naming (v1.3 MindSpeed-MM, v1.5 PKU) -> the official names our models load."""
    if version == "v13":
        return v13_from_mm(state_dict)
    return rename_pku_v15(state_dict) if is_pku_v15(state_dict) else dict(state_dict)


# ------------------------------------------------------------------------------------------------ block structure
def v15_num_layers(keys: Sequence[str]) -> List[int]:
    """Blocks per U-stage from `transformer_blocks.{stage}.{j}` keys; gaps are errors."""
    stages: Dict[int, set] = {}
    for k in keys:
        m = V15_BLOCK.match(k)
        if m:
            stages.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(stages) != list(range(len(stages))):
        raise ValueError(f"v1.5 stages {sorted(stages)} have gaps: transformer_blocks.{{stage}} must run from 0")
    for s, js in stages.items():
        if sorted(js) != list(range(len(js))):
            raise ValueError(f"v1.5 stage {s} has blocks {sorted(js)}: transformer_blocks.{s}.{{j}} must run from 0 "
                             "without gaps")
    return [len(stages[s]) for s in range(len(stages))]


def v13_blocks(keys) -> List[int]:
    """The v1.3 block indices of `transformer_blocks.{i}` keys, sorted."""
    return sorted({int(m.group(1)) for m in map(V13_BLOCK.match, keys) if m})

