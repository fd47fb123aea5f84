"""A small MMDiT-shaped model with the conventions of the OSP denoisers, for the parallel engine's tests.

S-B-H layout; per-block AdaLN modulation from a conditioning vector; joint video+text attention whose core does
position-dependent work and a Skiparse-style regrouping (so it needs whole sequences); separate text FFN; a long
skip connection from block 1 to block 3 (crosses pipeline stages); a token-wise output head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mindspeed_mm.osp.parallel import ParallelPlan, register_plan


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Core(nn.Module):
    """Joint attention on whole sequences: qk-norm, a RoPE-like rotation, 2-way single skip, joint softmax."""

    def __init__(self, head_dim, skip):
        super().__init__()
        self.head_dim, self.skip = head_dim, skip
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)

    def forward(self, q, k, v, aq, ak, av, text_mask):
        n, b, _ = q.shape
        hd = self.head_dim
        heads = q.shape[-1] // hd
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, hd)
        q, k, v, aq, ak, av = map(split, (q, k, v, aq, ak, av))
        q, k, aq, ak = self.norm_q(q), self.norm_k(k), self.norm_q(aq), self.norm_k(ak)
        pos = torch.arange(n, dtype=q.dtype, device=q.device)[:, None, None, None]
        q, k = q * torch.cos(pos / 3) + 0.1 * torch.sin(pos / 3), k * torch.cos(pos / 5)
        s = self.skip  # single skip: token n goes to sub-sequence n mod s, batch becomes s*b
        rs = lambda t: t.reshape(n // s, s, b, heads, hd).reshape(n // s, s * b, heads, hd)
        q, k, v = map(rs, (q, k, v))
        rep = lambda t: t.repeat(1, s, 1, 1)
        aq, ak, av = map(rep, (aq, ak, av))
        qq, kk, vv = (torch.cat(p, 0).permute(1, 2, 0, 3) for p in ((q, aq), (k, ak), (v, av)))
        key_ok = torch.cat([torch.ones(s * b, n // s, dtype=torch.bool), text_mask.repeat(s, 1)], 1)
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=key_ok[:, None, None, :])
        o = o.permute(2, 0, 1, 3)                                   # (S, s*b, heads, hd)
        ov, ot = o[: n // s], o[n // s:]
        ov = ov.reshape(n // s, s, b, heads * hd).reshape(n, b, heads * hd)
        ot = ot.reshape(ot.shape[0], s, b, heads * hd).mean(1)
        return ov, ot


class Attention(nn.Module):
    def __init__(self, dim, heads, skip):
        super().__init__()
        for name in ("proj_q", "proj_k", "proj_v", "added_proj_q", "added_proj_k", "added_proj_v"):
            setattr(self, name, nn.Linear(dim, dim))
        self.core = Core(dim // heads, skip)
        self.proj_out, self.added_proj_out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, e, text_mask):
        ov, ot = self.core(self.proj_q(x), self.proj_k(x), self.proj_v(x),
                           self.added_proj_q(e), self.added_proj_k(e), self.added_proj_v(e), text_mask)
        return self.proj_out(ov), self.added_proj_out(ot)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(4 * dim, dim, bias=False)])
        self.net[0].proj = nn.Linear(dim, 4 * dim, bias=False)

    def forward(self, x):
        return self.net[2](F.gelu(self.net[0].proj(x), approximate="tanh"))


class Modulation(nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.linear = nn.Linear(dim, n * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)


class Block(nn.Module):
    def __init__(self, dim, heads, skip):
        super().__init__()
        self.norm1 = Modulation(dim, 6)
        self.attn1 = Attention(dim, heads, skip)
        self.ff, self.ff_enc = FeedForward(dim), FeedForward(dim)

    def forward(self, x, e, c, text_mask):
        m = self.norm1.linear(F.silu(c))[None].chunk(6, dim=-1)
        xn = self.norm1.norm(x) * (1 + m[0]) + m[1]
        en = self.norm1.norm(e) * (1 + m[3]) + m[4]
        ax, ae = self.attn1(xn, en, text_mask)
        x, e = x + m[2] * ax, e + m[5] * ae
        return x + self.ff(self.norm1.norm(x)), e + self.ff_enc(self.norm1.norm(e))


class ToyDiT(nn.Module):
    def __init__(self, dim=32, heads=4, in_ch=6, text_ch=10, out_ch=5, skips=(1, 2, 2, 1)):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.patch_embed = nn.Linear(in_ch, dim)
        self.caption_projection = nn.Linear(text_ch, dim)
        self.time_embed = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.transformer_blocks = nn.ModuleList(Block(dim, heads, s) for s in skips)
        self.skip_linear = nn.Linear(2 * dim, dim)
        self.norm_out = Modulation(dim, 2)
        self.proj_out = nn.Linear(dim, out_ch)

    # the piecewise interface used by the plan below (and by forward)
    def embed(self, hidden_states, text, text_mask, timestep):
        half = torch.arange(8, dtype=torch.float32) / 8
        freq = timestep.float()[:, None] * torch.exp(-math.log(100.0) * half)[None]
        return {"x": self.patch_embed(hidden_states).transpose(0, 1),
                "e": self.caption_projection(text).transpose(0, 1),
                "c": self.time_embed(torch.cat([freq.cos(), freq.sin()], -1)),
                "text_mask": text_mask}

    def run_block(self, i, state):
        state = dict(state)
        if i == 3:  # long skip from block 1 (pushed below), like SUV's decoder stages
            state["x"] = self.skip_linear(torch.cat([state["x"], state.pop("skip0")], -1))
        state["x"], state["e"] = self.transformer_blocks[i](state["x"], state["e"], state["c"], state["text_mask"])
        if i == 1:
            state["skip0"] = state["x"]
        return state

    def head(self, state):
        shift, scale = self.norm_out.linear(F.silu(state["c"]))[None].chunk(2, dim=-1)
        return self.proj_out(self.norm_out.norm(state["x"]) * (1 + scale) + shift)

    def finish(self, tokens, **inputs):
        return tokens.transpose(0, 1)

    def forward(self, **inputs):
        state = self.embed(**inputs)
        for i in range(len(self.transformer_blocks)):
            state = self.run_block(i, state)
        return self.finish(self.head(state), **inputs)


def toy_plan(model: ToyDiT) -> ParallelPlan:
    blk = "transformer_blocks.*."
    return ParallelPlan(
        column=tuple(blk + f"attn1.{n}" for n in ("proj_q", "proj_k", "proj_v", "added_proj_q", "added_proj_k",
                                                   "added_proj_v"))
        + (blk + "ff.net.0.proj", blk + "ff_enc.net.0.proj"),
        row=(blk + "attn1.proj_out", blk + "attn1.added_proj_out", blk + "ff.net.2", blk + "ff_enc.net.2"),
        conditioning=(blk + "norm1.linear", "norm_out.linear"),
        ulysses_in=tuple(blk + f"attn1.{n}" for n in ("proj_q", "proj_k", "proj_v", "added_proj_q",
                                                      "added_proj_k", "added_proj_v")),
        ulysses_out=(blk + "attn1.proj_out", blk + "attn1.added_proj_out"),
        blocks=lambda m: [f"transformer_blocks.{i}" for i in range(len(m.transformer_blocks))],
        heads=lambda m: m.heads,
        sequence_keys=lambda k: k in ("x", "e") or k.startswith("skip"),
        embed=lambda m, inputs: m.embed(**inputs),
        run_block=lambda m, i, state: m.run_block(i, state),
        head=lambda m, state: m.head(state),
        finish=lambda m, tokens, inputs: m.finish(tokens, **inputs),
        pre=("patch_embed", "caption_projection", "time_embed"),
        post=("norm_out", "proj_out"),
        attached={"skip_linear": 3},
        head_local=(blk + "attn1.core",),
    )


register_plan("ToyDiT", toy_plan)


def toy_inputs(batch=4, tokens=16, text=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[0, -3:] = False
    return {"hidden_states": torch.randn(batch, tokens, 6, generator=g),
            "text": torch.randn(batch, text, 10, generator=g), "text_mask": mask,
            "timestep": torch.rand(batch, generator=g) * 1000}
