"""Parallel plans for the OSP denoisers (layer split per specs/dit.md 6.2 / 7.1, MindSpeed-MM's layout), and the
registry `plan_for(model)` looks plans up in (by class name, along the MRO; `register_plan` adds one).

The pieces run the models' own `prepare` / `run_blocks` / `head`; only the state changes form: the pipeline
carries a flat dict of tensors (sequence tensors in S-B-H layout), packed from and unpacked into the models'
state dataclasses here.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Callable, Dict

import torch

from mindspeed_mm.osp.dit.osp13 import OSP13State
from mindspeed_mm.osp.dit.suv import SUVState
from mindspeed_mm.osp.parallel.plan import ParallelPlan

_BLK = "transformer_blocks.*."
_STRUCTURED = ("rope_tables", "skips", "grid", "plan")  # state fields that are not single tensors


def _pack(state) -> dict:
    """A model state dataclass -> {name: tensor}: RoPE tables as rope{axis}_cos/sin, U-net skips (a stack) as
    skip{depth}_x/e; absent masks are left out."""
    if state.plan is not None:
        raise ValueError("a per-call `sparsity` is not supported by the parallel engine; call "
                         "model.set_sparsity(...) before parallel.parallelize(model)")
    packed = {f.name: getattr(state, f.name) for f in fields(state)
              if f.name not in _STRUCTURED and getattr(state, f.name) is not None}
    for axis, (cos, sin) in enumerate(state.rope_tables):
        packed[f"rope{axis}_cos"], packed[f"rope{axis}_sin"] = cos, sin
    for depth, (xs, es) in enumerate(getattr(state, "skips", ())):
        packed[f"skip{depth}_x"], packed[f"skip{depth}_e"] = xs, es
    return packed


def _unpack(state_cls, packed: dict):
    names = {f.name for f in fields(state_cls)}
    kwargs = {name: packed.get(name) for name in names if name not in _STRUCTURED}
    kwargs["rope_tables"] = [(packed[f"rope{a}_cos"], packed[f"rope{a}_sin"]) for a in range(3)]
    if "skips" in names:
        depth = sum(1 for k in packed if k.startswith("skip") and k.endswith("_x"))
        kwargs["skips"] = [(packed[f"skip{d}_x"], packed[f"skip{d}_e"]) for d in range(depth)]
    return state_cls(**kwargs, grid=None)  # the blocks and the head never read the grid


def _is_skip(key: str) -> bool:
    return key.startswith("skip") and key[-2:] in ("_x", "_e")


def _embed(model, inputs):
    return _pack(model.prepare(**inputs))


def _run_block(state_cls):
    def run_block(model, i, packed):
        return _pack(model.run_blocks(_unpack(state_cls, packed), i, i + 1))
    return run_block


def _head(state_cls):
    return lambda model, packed: model.head(_unpack(state_cls, packed))


def _finish(model, tokens, inputs):
    from mindspeed_mm.osp.dit.embeddings import unpatchify
    cfg = model.config
    p = cfg.patch_size if hasattr(cfg, "patch_size") else cfg.patch_size_thw[1]
    _, _, t, h, w = inputs["hidden_states"].shape
    return unpatchify(tokens.transpose(0, 1), (t, h // p, w // p), (1, p, p), cfg.out_channels)


# ------------------------------------------------------------------------------------------------ v1.3
def osp13_plan(model) -> ParallelPlan:
    pre = ("pos_embed", "adaln_single", "caption_projection")
    if model.config.inpaint:
        pre += ("pos_embed_masked_hidden_states", "pos_embed_mask")
    return ParallelPlan(
        column=tuple(_BLK + f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v"))
        + (_BLK + "ff.net.0.proj",),
        row=(_BLK + "attn1.to_out.0", _BLK + "attn2.to_out.0", _BLK + "ff.net.2"),
        conditioning=(),
        ulysses_in=tuple(_BLK + f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v")),
        ulysses_out=(_BLK + "attn1.to_out.0", _BLK + "attn2.to_out.0"),
        blocks=lambda m: [f"transformer_blocks.{i}" for i in range(len(m.transformer_blocks))],
        heads=lambda m: m.config.num_attention_heads,
        sequence_keys=lambda k: k in ("x", "text"),
        embed=_embed, run_block=_run_block(OSP13State), head=_head(OSP13State), finish=_finish,
        pre=pre, post=("norm_out", "proj_out", "scale_shift_table"),
        gather_inputs={_BLK + "attn1": 1, _BLK + "attn2": 2},  # one sequence gather for q, k and v
    )


# ------------------------------------------------------------------------------------------------ v1.5
def suv_plan(model) -> ParallelPlan:
    attn = ("proj_q", "proj_k", "proj_v", "added_proj_q", "added_proj_k", "added_proj_v")
    attached = {}
    if model.config.skip_connection:
        for j in range(model.mid_stage):
            first_block = model.stage_ranges[model.mid_stage + 1 + j][0]
            attached[f"skip_norm_linear.{j}"] = attached[f"skip_norm_linear_enc.{j}"] = first_block
    return ParallelPlan(
        column=tuple(_BLK + "attn1." + n for n in attn) + (_BLK + "ff.net.0.proj", _BLK + "ff_enc.net.0.proj"),
        row=(_BLK + "attn1.proj_out", _BLK + "attn1.added_proj_out", _BLK + "ff.net.2", _BLK + "ff_enc.net.2"),
        conditioning=(_BLK + "norm1.linear", _BLK + "norm2.linear", "norm_out.linear"),
        ulysses_in=tuple(_BLK + "attn1." + n for n in attn),
        ulysses_out=(_BLK + "attn1.proj_out", _BLK + "attn1.added_proj_out"),
        blocks=lambda m: [f"transformer_blocks.{i}" for i in range(len(m.transformer_blocks))],
        heads=lambda m: m.config.num_heads,
        sequence_keys=lambda k: k in ("x", "e") or _is_skip(k),
        embed=_embed, run_block=_run_block(SUVState), head=_head(SUVState), finish=_finish,
        pre=("patch_embed", "time_text_embed", "caption_projection"),
        post=("norm_final", "norm_out", "proj_out"),
        attached=attached,
        gather_inputs={_BLK + "attn1": 2},  # one sequence gather for q, k, v and the text q, k, v
        head_local=(_BLK + "attn1.norm_*",),
    )


# ------------------------------------------------------------------------------------------------ registry
_PLANS: Dict[str, Callable[[torch.nn.Module], ParallelPlan]] = {"OSP13DiT": osp13_plan, "SUVDiT": suv_plan}


def register_plan(class_name: str, make_plan: Callable[[torch.nn.Module], ParallelPlan]) -> None:
    _PLANS[class_name] = make_plan


def plan_for(model: torch.nn.Module) -> ParallelPlan:
    for cls in type(model).__mro__:
        if cls.__name__ in _PLANS:
            return _PLANS[cls.__name__](model)
    raise TypeError(f"no parallel plan for {type(model).__name__}; known: {sorted(_PLANS)} "
                    "(register one with mindspeed_mm.osp.parallel.register_plan)")
