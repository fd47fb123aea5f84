"""`osp reshard`: re-cut a Megatron tensor-parallel checkpoint (or an official state dict) for another TP size."""
from __future__ import annotations

from pathlib import Path

MODELS = {"v13": ("mindspeed_mm.osp.dit.osp13", "OSP13DiT", "osp13_tiny"),
          "v15": ("mindspeed_mm.osp.dit.suv", "SUVDiT", "osp15_suv_tiny")}


def plan_for_version(version: str):
    """The split rules of a model family (they do not depend on the model size)."""
    import importlib
    from mindspeed_mm.osp.parallel.plan import plan_for
    module, cls, preset = MODELS[version]
    return plan_for(getattr(importlib.import_module(module), cls).from_preset(preset, device="meta"))


def _reshard(args) -> int:
    import torch
    from mindspeed_mm.osp.parallel import convert
    plan = plan_for_version(args.model)
    src = Path(args.src)
    if src.is_dir():
        state_dict = convert.load_megatron(src, plan)
    else:
        obj = torch.load(src, map_location="cpu", weights_only=True)
        state_dict = obj.get("model", obj) if isinstance(obj, dict) else obj
    convert.save_megatron(state_dict, plan, args.tp, args.dst)
    print(f"wrote {args.dst}: {len(state_dict)} tensors in {args.tp} tensor-parallel shards")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("reshard", help="re-cut a Megatron TP checkpoint (mp_rank_XX) for another TP size")
    p.add_argument("src", help="Megatron checkpoint folder (release/mp_rank_XX) or an official .pt state dict")
    p.add_argument("dst", help="new output folder (must not exist or be empty)")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel size to write")
    p.add_argument("--model", choices=sorted(MODELS), default="v15", help="model family (its split rules)")
    p.set_defaults(func=_reshard)
