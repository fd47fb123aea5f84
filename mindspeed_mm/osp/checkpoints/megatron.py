"""Megatron `mp_rank` checkpoint folders of the OSP denoisers <-> their official state dicts (any TP x PP x VPP).

Folder (MindSpeed-MM `mm-convert` output and Megatron training saves): `<dir>/latest_checkpointed_iteration.txt`
("release" or an iteration N -> `iter_{N:07d}`), in it `mp_rank_{tp:02d}` (PP = 1) or `mp_rank_{tp:02d}_{pp:03d}`,
each with `model_optim_rng.pt` = {"model": sd} or, with virtual stages, {"model0": sd, "model1": sd, ...,
"checkpoint_version": 3.0}. PKU training also saves EMA weights under "ema_model" (`ema=True`).

TP: the parallel plans' linears are cut (column: dim 0 of weight and bias; row: dim 1 of the weight, bias whole,
`parallel.plan.SPLIT_DIMS`); everything else is replicated. PP: the blocks are cut into `pp * vpp` chunks (even, or
the given per-chunk counts), global chunk c = vpp_index * pp + pp_rank (megatron's interleaved order); the plan's
`pre` modules go with the first chunk, `post` with the last, `attached` ones with the chunk of their block.

* v1.3: blocks `transformer_blocks.{i}` renumbered from 0 inside each chunk. Names `mm` (MindSpeed-MM, what its
  v1.3 model loads): `videodit_sparse_blocks.{i}`, `attn1/attn2 -> self_atten/cross_atten`,
  `to_q/to_k/to_v -> proj_q/k/v`, `to_out.0 -> proj_out` inside blocks; or `official` (diffusers) names.
* v1.5 (ours; MindSpeed-MM has no PP for SUV): cut at the flat-block granularity of the parallel engine
  (`transformer_blocks.{stage}.{j}` counted across stages); keys keep their global official names in every
  shard; `skip_norm_linear[_enc].{j}` go with their first decoder block. Reading takes MindSpeed-MM or PKU
  names. PKU's PP merge renumbers the stage index per pipeline rank; such checkpoints are refused (their block
  keys collide across shards).

The split rules come from a parallel plan (`plan.split_dim(key)`, `plan.pre` / `post` / `attached`), passed in by
the caller: `mindspeed_mm.osp.dit.loading.split_plan(version)` gives the denoisers' (this module imports no model).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mindspeed_mm.osp.checkpoints.keys import (
    V13_BLOCK, V15_BLOCK, StateDict, detect_version, strip_prefix, to_official_names, v13_blocks, v15_num_layers,
)
from mindspeed_mm.osp.checkpoints.tensors import load_tensor_file

TRACKER = "latest_checkpointed_iteration.txt"
WEIGHTS = "model_optim_rng.pt"
CONVERT_COMMAND = "osp convert dit --to megatron --tp {tp} {src} {dst}"
_RANK_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")


# ------------------------------------------------------------------------------------------------ chunks
def chunk_sizes(num_blocks: int, pp: int, vpp: Optional[int], pp_layers: Optional[Sequence[int]]) -> List[int]:
    """Blocks per global chunk (chunk c = vpp_index * pp + pp_rank)."""
    chunks = pp * (vpp or 1)
    what = f"PP {pp}" + (f" x VPP {vpp}" if vpp else "")
    if pp_layers is None:
        if num_blocks % chunks:
            raise ValueError(f"{num_blocks} blocks do not split evenly over {what} = {chunks} chunks; give the "
                             f"blocks per chunk with --pp-layers (pp_layers=...), {chunks} numbers summing to "
                             f"{num_blocks}")
        return [num_blocks // chunks] * chunks
    layers = [int(n) for n in pp_layers]
    if len(layers) != chunks or sum(layers) != num_blocks or min(layers) < 1:
        raise ValueError(f"--pp-layers {layers}: need {chunks} counts ({what}, in chunk order vpp_index * pp + "
                         f"pp_rank), each >= 1, summing to the model's {num_blocks} blocks")
    return layers


# ------------------------------------------------------------------------------------------------ TP
def tp_split(state_dict: StateDict, plan, tp: int) -> List[StateDict]:
    """An official state dict cut into `tp` tensor-parallel shards."""
    shards: List[StateDict] = [{} for _ in range(tp)]
    for key, value in state_dict.items():
        dim = plan.split_dim(key)
        if dim is not None and value.shape[dim] % tp:
            raise ValueError(f"{key}: dimension {dim} of size {value.shape[dim]} cannot be split over TP={tp}")
        parts = value.chunk(tp, dim=dim) if dim is not None else [value] * tp
        for rank in range(tp):
            shards[rank][key] = parts[rank].clone()
    return shards


def check_same_keys(shards: List[StateDict], labels: Sequence[str]) -> None:
    keys = set(shards[0])
    for label, s in zip(labels[1:], shards[1:]):
        if set(s) != keys:
            raise ValueError(f"tensor-parallel shards {labels[0]} and {label} hold different keys (missing in "
                             f"{label}: {sorted(keys - set(s))[:5]}, extra: {sorted(set(s) - keys)[:5]}); the "
                             "folder mixes checkpoints or a shard is damaged")


def tp_merge(shards: List[StateDict], plan, labels: Sequence[str]) -> StateDict:
    """The inverse of `tp_split`; shards with different keys are an error naming them."""
    check_same_keys(shards, labels)
    merged = {}
    for key in shards[0]:
        dim = plan.split_dim(key)
        merged[key] = torch.cat([s[key] for s in shards], dim=dim) if dim is not None else shards[0][key]
    return merged


# ------------------------------------------------------------------------------------------------ PP
def _owner(key: str, plan, block_of, chunk_of_block, last: int) -> int:
    block = block_of(key)
    if block is not None:
        return chunk_of_block[block]
    owners = [(plan.pre, 0), (plan.post, last)]
    owners += [((name,), chunk_of_block[i]) for name, i in plan.attached.items()]
    for modules, chunk in owners:
        if any(key == m or key.startswith(m + ".") for m in modules):
            return chunk
    raise ValueError(f"{key}: no pipeline stage is known for it (not a block, nor in the plan's pre/post/attached "
                     "modules); the checkpoint does not match the model")


def pp_split(state_dict: StateDict, version: str, plan, sizes: Sequence[int]) -> List[StateDict]:
    """Official state dict -> one state dict per global chunk (v1.3 blocks renumbered from 0 per chunk)."""
    if version == "v13":
        def block_of(key):
            m = V13_BLOCK.match(key)
            return int(m.group(1)) if m else None
    else:
        num_layers = v15_num_layers(list(state_dict))
        starts = [sum(num_layers[:s]) for s in range(len(num_layers))]

        def block_of(key):
            m = V15_BLOCK.match(key)
            return starts[int(m.group(1))] + int(m.group(2)) if m else None
    bounds = [sum(sizes[:c]) for c in range(len(sizes) + 1)]
    chunk_of_block = {b: c for c in range(len(sizes)) for b in range(bounds[c], bounds[c + 1])}
    chunks: List[StateDict] = [{} for _ in sizes]
    for key, value in state_dict.items():
        c = _owner(key, plan, block_of, chunk_of_block, len(sizes) - 1)
        m = V13_BLOCK.match(key) if version == "v13" else None
        chunks[c][f"transformer_blocks.{int(m.group(1)) - bounds[c]}.{m.group(2)}" if m else key] = value
    return chunks


def pp_merge(chunks: List[StateDict], version: str, labels: Sequence[str]) -> StateDict:
    """Per-chunk state dicts in global chunk order -> one official state dict."""
    merged: StateDict = {}
    where: Dict[str, str] = {}
    offset = 0
    for chunk, label in zip(chunks, labels):
        if version == "v13":
            blocks = v13_blocks(chunk)
            if blocks != list(range(len(blocks))):
                missing = sorted(set(range(max(blocks) + 1)) - set(blocks))
                raise ValueError(f"{label}: block numbering has gaps (missing transformer_blocks {missing}); each "
                                 "pipeline chunk must number its blocks from 0")
            renumber = {f"transformer_blocks.{i}.": f"transformer_blocks.{i + offset}." for i in blocks}
            offset += len(blocks)
        for key, value in chunk.items():
            m = V13_BLOCK.match(key) if version == "v13" else None
            if m:
                key = renumber[f"transformer_blocks.{m.group(1)}."] + m.group(2)
            if key in merged:
                hint = (" The stage index restarts in every shard: this looks like PKU's v1.5 pipeline layout, "
                        "which is not read; merge it with PKU's convert_mm_to_ckpt.py first."
                        if version == "v15" and V15_BLOCK.match(key) else "")
                raise ValueError(f"{key} is in both {where[key]} and {label}: pipeline shards must not overlap.{hint}")
            merged[key], where[key] = value, label
    if version == "v15":
        v15_num_layers(list(merged))  # gaps are errors
    return merged


# ------------------------------------------------------------------------------------------------ folders
def is_megatron_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / TRACKER).is_file() or (path / "release").is_dir()
                              or any(_RANK_DIR.match(p.name) for p in path.iterdir() if p.is_dir()))


def iteration_folder(path) -> Path:
    """The folder holding the `mp_rank_*` folders (via the tracker file when there is one)."""
    path = Path(path)
    tracker = path / TRACKER
    if tracker.is_file():
        it = tracker.read_text().strip()
        if it != "release" and not it.isdigit():
            raise ValueError(f"{tracker} holds {it!r}; expected 'release' or an iteration number")
        sub = path / ("release" if it == "release" else f"iter_{int(it):07d}")
        if not sub.is_dir():
            raise FileNotFoundError(f"{tracker} points to {sub.name}/, which does not exist")
        return sub
    if (path / "release").is_dir():
        return path / "release"
    return path


def rank_grid(folder: Path) -> Tuple[int, int, Dict[Tuple[int, int], Path]]:
    """(tp, pp, {(tp_rank, pp_rank): file}); missing folders or files are errors naming them."""
    found = {}
    for p in folder.iterdir():
        m = _RANK_DIR.match(p.name)
        if m and p.is_dir():
            found[(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))] = p
    if not found:
        raise FileNotFoundError(f"{folder}: no mp_rank_XX[_YYY] folders (not a Megatron checkpoint)")
    with_pp = {k[1] is not None for k in found}
    if len(with_pp) > 1:
        raise ValueError(f"{folder} mixes mp_rank_XX and mp_rank_XX_YYY folders")
    tp = max(k[0] for k in found) + 1
    pp = max(k[1] for k in found) + 1 if with_pp == {True} else 1
    expected = [(t, p if with_pp == {True} else None) for p in range(pp) for t in range(tp)]
    missing = [rank_name(t, p) for t, p in expected if (t, p) not in found]
    if missing:
        raise FileNotFoundError(f"{folder}: missing shard folders {missing} for TP={tp} x PP={pp}; copy the "
                                "complete checkpoint")
    files = {(t, p or 0): found[(t, p)] / WEIGHTS for t, p in expected}
    absent = [str(f) for f in files.values() if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"missing {WEIGHTS} in {absent}")
    return tp, pp, files


def rank_name(tp_rank: int, pp_rank: Optional[int]) -> str:
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp_rank is not None else "")


def _chunks_of(obj, prefix: str, path: Path) -> List[StateDict]:
    """The model state dicts of one file: [obj[prefix]] or [obj[prefix + '0'], obj[prefix + '1'], ...]."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict with '{prefix}' (Megatron layout)")
    if isinstance(obj.get(prefix), dict):
        found = [obj[prefix]]
    else:
        found = [obj[f"{prefix}{v}"] for v in range(len(obj)) if isinstance(obj.get(f"{prefix}{v}"), dict)]
    if not found:
        flag = "drop --ema (ema=False)" if prefix == "ema_model" else "pass --ema (ema=True) for the EMA weights"
        raise ValueError(f"{path}: no '{prefix}' entry (it holds {sorted(map(str, obj))[:8]}); {flag}")
    return [strip_prefix({k: v for k, v in sd.items() if "_extra_state" not in k}) for sd in found]


def read_megatron(path, split_plan: Callable[[str], object], *, ema: bool = False, trust_pickle: bool = False,
                  version: Optional[str] = None, expect_tp: Optional[int] = None) -> Tuple[str, StateDict]:
    """(version, official state dict) of a Megatron folder at any TP x PP x VPP; `split_plan(version)` gives the
    TP split rules of the model family (`dit.loading.split_plan`). With `expect_tp`, another TP size is an error
    that names the command re-cutting it."""
    path = Path(path)
    folder = iteration_folder(path)
    tp, pp, files = rank_grid(folder)
    if expect_tp is not None and tp != expect_tp:
        command = CONVERT_COMMAND.format(tp=expect_tp, src=path, dst=f"{path}_tp{expect_tp}")
        if pp > 1:
            command = command.replace(f" --tp {expect_tp} ", f" --tp {expect_tp} --pp {pp} ")
        raise ValueError(f"{path} holds tensor-parallel shards for TP={tp}, this run uses TP={expect_tp}; "
                         f"re-cut it first: {command}")
    prefix = "ema_model" if ema else "model"
    per_file = {}
    for (t, p), f in files.items():
        per_file[(t, p)] = _chunks_of(load_tensor_file(f, trust_pickle), prefix, f)
    vpps = {len(v) for v in per_file.values()}
    if len(vpps) > 1:
        raise ValueError(f"{folder}: shards hold different numbers of virtual-stage models {sorted(vpps)}")
    vpp = vpps.pop()
    version = detect_version([k for chunks in per_file.values() for sd in chunks for k in sd], str(path), version)
    plan = split_plan(version)
    chunks, labels = [], []
    for v in range(vpp):
        for p in range(pp):
            names = [rank_name(t, p if pp > 1 else None) + (f" model{v}" if vpp > 1 else "") for t in range(tp)]
            check_same_keys([per_file[(t, p)][v] for t in range(tp)], names)  # named as stored
            shards = [to_official_names(per_file[(t, p)][v], version) for t in range(tp)]
            chunks.append(tp_merge(shards, plan, names))
            labels.append(names[0].replace("mp_rank_00", "mp_rank_XX"))
    return version, pp_merge(chunks, version, labels)


def write_rank_files(out_dir, per_chunk: List[List[StateDict]], *, tp: int, pp: int, vpp: Optional[int]) -> Path:
    """Write `out_dir` as a `release` folder (atomically: all files or none, replacing what is there) from the TP
    shards of every global chunk (`per_chunk[vpp_index * pp + pp_rank][tp_rank]`, keys as they are stored)."""
    from mindspeed_mm.osp.files import replace_dir

    def write(tmp: Path) -> None:
        from mindspeed_mm.osp.progress import bar
        (tmp / "release").mkdir()
        for p, t in bar([(p, t) for p in range(pp) for t in range(tp)], desc="writing rank files", unit="file"):
            folder = tmp / "release" / rank_name(t, p if pp > 1 else None)
            folder.mkdir()
            if vpp is None:
                obj = {"model": per_chunk[p][t]}
            else:
                obj = {f"model{v}": per_chunk[v * pp + p][t] for v in range(vpp)}
                obj["checkpoint_version"] = 3.0
            torch.save(obj, folder / WEIGHTS)
        (tmp / TRACKER).write_text("release")

    out = Path(out_dir)
    replace_dir(out, write)
    return out
