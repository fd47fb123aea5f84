"""Parallel plans for the OSP denoisers (layer split per specs/dit.md 6.2 / 7.1, MindSpeed-MM's layout).

The `embed` / `run_block` / `head` / `finish` functions follow `OSP13DiT.forward` and `SUVDiT.forward` step by
step (tests/test_parallel_layouts.py checks that a TP/PP run equals `model.forward` on the official fixtures, so a
drift between the two shows up there).
"""
from __future__ import annotations

import torch

from mindspeed_mm.osp.parallel.plan import ParallelPlan, register_plan

_BLK = "transformer_blocks.*."


def _param_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _rope_state(model, grid, device, dtype) -> dict:
    state = {}
    for axis, (cos, sin) in enumerate(model.rope.tables(grid, device, dtype)):
        state[f"rope{axis}_cos"], state[f"rope{axis}_sin"] = cos, sin
    return state


def _rope_tables(state) -> list:
    return [(state[f"rope{a}_cos"], state[f"rope{a}_sin"]) for a in range(3)]


def _masks(model, inputs, b, text_len, patch):
    from mindspeed_mm.osp.dit.embeddings import text_key_mask, video_key_mask
    state = {}
    text_mask = text_key_mask(inputs.get("encoder_attention_mask"), b, text_len)
    video_mask = video_key_mask(inputs.get("attention_mask"), patch)
    if text_mask is not None:
        state["text_mask"] = text_mask
    if video_mask is not None:
        state["video_mask"] = video_mask
    return state


def _grid(inputs, p):
    _, _, t, h, w = inputs["hidden_states"].shape
    return (t, h // p, w // p)


# ------------------------------------------------------------------------------------------------ v1.3
def _osp13_embed(model, inputs):
    cfg, dtype = model.config, _param_dtype(model)
    hidden = inputs["hidden_states"]
    b, p = hidden.shape[0], cfg.patch_size
    x = model.embed(hidden.to(dtype)).transpose(0, 1)
    t6, emb = model.adaln_single(inputs["timestep"], dtype)
    text = inputs["encoder_hidden_states"].to(dtype)
    text = model.caption_projection(text.reshape(b, -1, text.shape[-1])).transpose(0, 1)
    state = {"x": x, "text": text, "t6": t6.view(b, 6, -1).transpose(0, 1), "emb": emb}
    state.update(_masks(model, inputs, b, text.shape[0], (1, p, p)))
    state.update(_rope_state(model, _grid(inputs, p), x.device, dtype))
    return state


def _osp13_block(model, i, state):
    state = dict(state)
    state["x"] = model.transformer_blocks[i](state["x"], state["t6"], state["text"], state.get("text_mask"),
                                             state.get("video_mask"), model.rope, _rope_tables(state))
    return state


def _osp13_head(model, state):
    shift, scale = (model.scale_shift_table[:, None] + state["emb"][None]).chunk(2, dim=0)
    return model.proj_out(model.norm_out(state["x"]) * (1 + scale) + shift)


def _finish(model, tokens, inputs):
    from mindspeed_mm.osp.dit.embeddings import unpatchify
    cfg = model.config
    p = cfg.patch_size if hasattr(cfg, "patch_size") else cfg.patch_size_thw[1]
    return unpatchify(tokens.transpose(0, 1), _grid(inputs, p), (1, p, p), cfg.out_channels)


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
        embed=_osp13_embed, run_block=_osp13_block, head=_osp13_head, finish=_finish,
        pre=pre, post=("norm_out", "proj_out", "scale_shift_table"),
        gather_inputs={_BLK + "attn1": 1, _BLK + "attn2": 2},  # one sequence gather for q, k and v
    )


# ------------------------------------------------------------------------------------------------ v1.5
def _suv_embed(model, inputs):
    cfg, dtype = model.config, _param_dtype(model)
    hidden = inputs["hidden_states"]
    b, p = hidden.shape[0], cfg.patch_size_thw[1]
    if inputs.get("pooled_projections") is None:
        raise ValueError("SUVDiT needs pooled_projections (the CLIP pooled text embedding)")
    x = model.patch_embed(hidden.to(dtype)).transpose(0, 1)
    c = model.time_text_embed(inputs["timestep"], inputs["pooled_projections"])
    text = inputs["encoder_hidden_states"].to(dtype)
    e = model.caption_projection(text.reshape(b, -1, text.shape[-1])).transpose(0, 1)
    state = {"x": x, "e": e, "c": c}
    state.update(_masks(model, inputs, b, e.shape[0], (1, p, p)))
    state.update(_rope_state(model, _grid(inputs, p), x.device, dtype))
    return state


def _suv_stage_of(model, i):
    for stage, (start, stop) in enumerate(model.stage_ranges):
        if start <= i < stop:
            return stage, start, stop
    raise IndexError(i)


def _suv_block(model, i, state):
    state = dict(state)
    stage, start, stop = _suv_stage_of(model, i)
    mid, skip = model.mid_stage, model.config.skip_connection
    if i == start and stage > mid and skip:
        j = stage - mid - 1
        src = 2 * mid - stage  # LIFO: decoder stage mid+1+j takes encoder stage mid-1-j
        state["x"] = model.skip_norm_linear[j](torch.cat([state["x"], state.pop(f"skip{src}_x")], dim=-1))
        state["e"] = model.skip_norm_linear_enc[j](torch.cat([state["e"], state.pop(f"skip{src}_e")], dim=-1))
    state["x"], state["e"] = model.transformer_blocks[i](state["x"], state["e"], state["c"], state.get("video_mask"),
                                                         state.get("text_mask"), model.rope, _rope_tables(state))
    if i == stop - 1 and stage < mid and skip:
        state[f"skip{stage}_x"], state[f"skip{stage}_e"] = state["x"], state["e"]
    return state


def _suv_head(model, state):
    return model.proj_out(model.norm_out(model.norm_final(state["x"]), state["c"]))


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
        sequence_keys=lambda k: k in ("x", "e") or (k.startswith("skip") and k[-2:] in ("_x", "_e")),
        embed=_suv_embed, run_block=_suv_block, head=_suv_head, finish=_finish,
        pre=("patch_embed", "time_text_embed", "caption_projection"),
        post=("norm_final", "norm_out", "proj_out"),
        attached=attached,
        gather_inputs={_BLK + "attn1": 2},  # one sequence gather for q, k, v and the text q, k, v
        head_local=(_BLK + "attn1.norm_*",),
    )


register_plan("OSP13DiT", osp13_plan)
register_plan("SUVDiT", suv_plan)
