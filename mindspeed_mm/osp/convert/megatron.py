"""Official denoiser state dicts -> Megatron `mp_rank` folders at any TP x PP x VPP (`osp convert dit --to megatron`).

The folder layout, the split rules and the reader are in `mindspeed_mm.osp.checkpoints.megatron`; this module adds
the model: the pipeline stages follow the parallel plan of the model the state dict describes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from mindspeed_mm.osp.checkpoints.keys import StateDict, v13_to_mm
from mindspeed_mm.osp.checkpoints.megatron import chunk_sizes, pp_split, tp_split, write_rank_files


def write_megatron(state_dict: StateDict, version: str, out_dir, *, tp: int = 1, pp: int = 1,
                   vpp: Optional[int] = None, pp_layers: Optional[Sequence[int]] = None, names: str = "mm",
                   overwrite: bool = False) -> Path:
    """Write an official state dict as a Megatron `release` folder (atomically: all files or none)."""
    from mindspeed_mm.osp.dit.loading import structural_model
    from mindspeed_mm.osp.files import check_target
    from mindspeed_mm.osp.parallel.plans import plan_for
    if names not in ("mm", "official"):
        raise ValueError(f"names={names!r}: use 'mm' (MindSpeed-MM) or 'official'")
    if tp < 1 or pp < 1:
        raise ValueError(f"TP {tp} and PP {pp} must be >= 1")
    if vpp is not None and (pp < 2 or vpp < 2):
        raise ValueError(f"VPP {vpp} needs PP >= 2 and VPP >= 2")
    out = Path(out_dir)
    check_target(out, overwrite)
    model = structural_model(version, state_dict)
    plan = plan_for(model)
    sizes = chunk_sizes(len(plan.blocks(model)), pp, vpp, pp_layers)
    chunks = pp_split(state_dict, version, plan, sizes)
    per_chunk = [tp_split(c, plan, tp) for c in chunks]
    if version == "v13" and names == "mm":
        per_chunk = [[v13_to_mm(s) for s in shards] for shards in per_chunk]
    return write_rank_files(out, per_chunk, tp=tp, pp=pp, vpp=vpp)
