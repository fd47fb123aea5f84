"""Open-Sora Plan v1.3 "joint image-video Skiparse denoiser" (`OpenSoraT2V_v1_3`, and the inpainting / I2V
variant `OpenSoraInpaint_v1_3`), with the official diffusers parameter names.

Layout inside the blocks is sequence-first (S, B, D). Block i of the official model uses Skiparse iff
1 < i < 30 (hard-coded, not relative to depth), Group Skip iff i is odd, k = `sparse_n`; `set_sparsity` /
`forward(sparsity=...)` change that at run time with the same weights.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mindspeed_mm.osp.checkpoints.keys import load_checked
from mindspeed_mm.osp.checkpoints.presets import read_preset
from mindspeed_mm.osp.dit.embeddings import (
    PatchEmbed2D, TextProjection, TimestepEmbedding, text_key_mask, timestep_embedding, unpatchify,
    video_key_mask,
)
from mindspeed_mm.osp.dit.layers import CoreAttention, FeedForward, split_heads
from mindspeed_mm.osp.dit.rope import RoPE3D
from mindspeed_mm.osp.ops.skiparse import skiparse, skiparse_key_mask, unskiparse

logger = logging.getLogger(__name__)

Sparsity = Union[None, str, int]

# Official constructor kwargs that do not change the computation of the released models.
_IGNORED_OFFICIAL_KEYS = {
    "sample_size_t", "sample_size_h", "sample_size_w", "dropout", "only_cross_attention", "double_self_attention",
    "upcast_attention", "norm_type", "use_additional_conditions", "attention_type", "num_embeds_ada_norm",
    "use_linear_projection",
}


@dataclass
class OSP13Config:
    """`OpenSoraT2V_v1_3` kwargs (defaults = the released 2B model, "OpenSoraT2V_v1_3-2B/122")."""
    num_attention_heads: int = 24
    attention_head_dim: int = 96
    in_channels: int = 8
    out_channels: int = 8
    num_layers: int = 32
    cross_attention_dim: int = 2304
    caption_channels: int = 4096
    patch_size: int = 2
    patch_size_t: int = 1
    activation_fn: str = "gelu-approximate"
    attention_bias: bool = True
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale_t: float = 1.0
    interpolation_scale_h: float = 1.0
    interpolation_scale_w: float = 1.0
    sparse1d: bool = True
    sparse_n: int = 4
    inpaint: bool = False          # OpenSoraInpaint_v1_3: input = [noisy | masked video | mask] on channels
    vae_scale_factor_t: int = 4    # mask channels of the inpainting variant

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_official(cls, config: dict, inpaint: Optional[bool] = None) -> "OSP13Config":
        """From the official constructor kwargs / diffusers config.json (keys starting with '_' are metadata)."""
        known = {f.name for f in fields(cls)}
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key in known:
                kwargs[key] = value
            elif not key.startswith("_") and key not in _IGNORED_OFFICIAL_KEYS:
                unknown.append(key)
        if unknown:
            logger.warning("OSP13Config: ignoring unknown official config keys %s", sorted(unknown))
        if inpaint is None:
            inpaint = "Inpaint" in str(config.get("_class_name", "")) or "vae_scale_factor_t" in config
        kwargs["inpaint"] = bool(inpaint) or bool(kwargs.get("inpaint", False))
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_official(self) -> dict:
        out = asdict(self)
        out.pop("inpaint")
        if not self.inpaint:
            out.pop("vae_scale_factor_t")
        out["_class_name"] = "OpenSoraInpaint_v1_3" if self.inpaint else "OpenSoraT2V_v1_3"
        return out

    def validate(self) -> None:
        if self.activation_fn != "gelu-approximate":
            raise ValueError(f"activation_fn {self.activation_fn!r} is not supported; the v1.3 models use "
                             f"'gelu-approximate'")
        if self.patch_size_t != 1:
            raise ValueError(f"patch_size_t={self.patch_size_t}: the v1.3 patch embedding is per frame (use 1)")
        if self.sparse_n < 1:
            raise ValueError(f"sparse_n must be >= 1, got {self.sparse_n}")


class SelfAttention13(nn.Module):
    """attn1: to_q/k/v -> 3-D RoPE -> (Skiparse) -> attention -> to_out.0."""

    def __init__(self, dim: int, head_dim: int, bias: bool):
        super().__init__()
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=bias), nn.Dropout(0.0)])
        self.core_attention = CoreAttention()

    def forward(self, x, rope: RoPE3D, rope_tables, video_mask, k: int, group: bool):
        q = rope.apply(split_heads(self.to_q(x), self.head_dim), rope_tables)
        n, b = q.shape[:2]  # the whole sequence, also when x is a shard (Ulysses CP)
        key = rope.apply(split_heads(self.to_k(x), self.head_dim), rope_tables)
        v = split_heads(self.to_v(x), self.head_dim)
        q, key, v = (skiparse(t, k, group) for t in (q, key, v))
        mask = skiparse_key_mask(video_mask, n, b, k, group, device=x.device)
        out = unskiparse(self.core_attention(q, key, v, mask), k, group, n)
        return self.to_out[0](out)


class CrossAttention13(nn.Module):
    """attn2: video queries attend to the projected text (dense; the official sparse layout is equivalent)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int, bias: bool):
        super().__init__()
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context_dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=bias), nn.Dropout(0.0)])
        self.core_attention = CoreAttention()

    def forward(self, x, text, text_mask):
        q, k, v = (split_heads(lin(src), self.head_dim)
                   for lin, src in ((self.to_q, x), (self.to_k, text), (self.to_v, text)))
        return self.to_out[0](self.core_attention(q, k, v, text_mask))


class OSP13Block(nn.Module):
    """PixArt-style block: gated self-attn, un-normed ungated cross-attn, gated FFN; table (6, D) + t6."""

    def __init__(self, cfg: OSP13Config):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.attn1 = SelfAttention13(d, cfg.attention_head_dim, cfg.attention_bias)
        self.attn2 = CrossAttention13(d, cfg.cross_attention_dim, cfg.attention_head_dim, cfg.attention_bias)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.ff = FeedForward(d, mult=4, bias=True)
        self.scale_shift_table = nn.Parameter(torch.empty(6, d))  # N(0, 1/D) in OSP13DiT.init_weights
        self.skiparse_k, self.skiparse_group = 1, False  # set by OSP13DiT.set_sparsity

    def forward(self, x, t6, text, text_mask, video_mask, rope, rope_tables,
                sparse: Optional[tuple[int, bool]] = None):
        k, group = sparse if sparse is not None else (self.skiparse_k, self.skiparse_group)
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table[:, None] + t6).chunk(6, dim=0)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn1(h, rope, rope_tables, video_mask, k, group)
        x = x + self.attn2(x, text, text_mask)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.ff(h)


class AdaLNSingle(nn.Module):
    """PixArt adaLN-single: timestep -> embedded (B, D) and the shared modulation t6 = linear(SiLU(emb))."""

    def __init__(self, dim: int):
        super().__init__()
        self.emb = nn.Module()
        self.emb.timestep_embedder = TimestepEmbedding(256, dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype):
        emb = self.emb.timestep_embedder(timestep_embedding(timestep, 256).to(dtype))
        return self.linear(F.silu(emb)), emb


@dataclass
class OSP13State:
    """Activations between `OSP13DiT.prepare`, `run_blocks` and `finish` (sequence-first)."""
    x: torch.Tensor                      # video tokens (N, B, D)
    t6: torch.Tensor                     # shared block modulation (6, B, D)
    embedded_timestep: torch.Tensor      # (B, D), used by the output head
    text: torch.Tensor                   # projected text (L, B, D)
    text_mask: Optional[torch.Tensor]    # (B, L) bool, True = masked
    video_mask: Optional[torch.Tensor]   # (B, N) bool, True = masked
    rope_tables: list
    grid: tuple
    plan: Optional[list] = None          # per-block (k, group) override; None = the blocks' own settings


class OSP13DiT(nn.Module):
    """v1.3 Skiparse DiT (T2V, or I2V when `config.inpaint`). See `forward` for the inputs."""

    def __init__(self, config: OSP13Config):
        super().__init__()
        config.validate()
        self.config = cfg = config
        d, p = cfg.hidden_size, cfg.patch_size
        self.pos_embed = PatchEmbed2D(cfg.in_channels, d, p)
        if cfg.inpaint:
            self.pos_embed_masked_hidden_states = nn.ModuleList(
                [PatchEmbed2D(cfg.in_channels, d, p), nn.Linear(d, d, bias=False)])
            self.pos_embed_mask = nn.ModuleList(
                [PatchEmbed2D(cfg.vae_scale_factor_t, d, p), nn.Linear(d, d, bias=False)])
        self.adaln_single = AdaLNSingle(d)
        self.caption_projection = TextProjection(cfg.caption_channels, d, act="gelu_tanh")
        self.transformer_blocks = nn.ModuleList([OSP13Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.scale_shift_table = nn.Parameter(torch.empty(2, d))
        self.proj_out = nn.Linear(d, cfg.patch_size_t * p * p * cfg.out_channels)
        self.rope = RoPE3D.v13(cfg.attention_head_dim, (cfg.interpolation_scale_t, cfg.interpolation_scale_h,
                                                        cfg.interpolation_scale_w))
        self.set_sparsity(None)
        if not self.proj_out.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialisation for training from scratch: PixArt tables N(0, 1/D); the I2V condition projections
        zero (so T2V weights loaded into the I2V model reproduce T2V). Linear/conv keep torch defaults."""
        d = self.config.hidden_size
        for table in [self.scale_shift_table] + [blk.scale_shift_table for blk in self.transformer_blocks]:
            table.normal_(std=d ** -0.5)
        if self.config.inpaint:
            self.pos_embed_masked_hidden_states[1].weight.zero_()
            self.pos_embed_mask[1].weight.zero_()

    # ----------------------------------------------------------------------------------------- sparsity
    def sparsity_plan(self, sparsity: Sparsity = None) -> list[tuple[int, bool]]:
        """(k, group) per block. `sparsity`: None/"trained" = official rule (1 < i < 30 sparse with k =
        sparse_n when sparse1d), "dense" or 1 = full attention everywhere, int k = official blocks with k."""
        if sparsity in (None, "trained"):
            k = self.config.sparse_n if self.config.sparse1d else 1
        elif sparsity == "dense":
            k = 1
        elif isinstance(sparsity, int) and not isinstance(sparsity, bool) and sparsity >= 1:
            k = sparsity
        else:
            raise ValueError(f"sparsity must be None, 'trained', 'dense' or an int k >= 1, got {sparsity!r}")
        return [(k if 1 < i < 30 else 1, i % 2 == 1) for i in range(len(self.transformer_blocks))]

    def set_sparsity(self, sparsity: Sparsity = None) -> None:
        """Set the Skiparse plan used by later forwards (weights unchanged)."""
        for block, (k, group) in zip(self.transformer_blocks, self.sparsity_plan(sparsity)):
            block.skiparse_k, block.skiparse_group = k, group

    # ----------------------------------------------------------------------------------------- forward
    def embed(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) -> tokens (B, N, D); the I2V variant adds its masked-video and mask streams."""
        c = self.config.in_channels
        if not self.config.inpaint:
            if hidden_states.shape[1] != c:
                raise ValueError(f"expected {c} latent channels, got {hidden_states.shape[1]}")
            return self.pos_embed(hidden_states)
        want = 2 * c + self.config.vae_scale_factor_t
        if hidden_states.shape[1] != want:
            raise ValueError(f"the inpainting model takes [noisy latent ({c}) | masked-video latent ({c}) | "
                             f"mask ({self.config.vae_scale_factor_t})] = {want} channels, got {hidden_states.shape[1]}")
        noisy, masked, mask = hidden_states.split([c, c, self.config.vae_scale_factor_t], dim=1)
        pm, pk = self.pos_embed_masked_hidden_states, self.pos_embed_mask
        return self.pos_embed(noisy) + pm[1](pm[0](masked)) + pk[1](pk[0](mask))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, sparsity: Sparsity = None) -> torch.Tensor:
        """hidden_states (B, C, T, H, W) latents (I2V: 2C+4 channels); timestep (B,) integers 0..999;
        encoder_hidden_states (B, 1, L, caption_channels) or (B, L, caption_channels); encoder_attention_mask
        (B, 1, L), 1 = keep; attention_mask (B, T, H, W), 1 = keep (optional); `sparsity` overrides the plan for
        this call. Returns the prediction (B, out_channels, T, H, W). Same as finish(run_blocks(prepare(...)))."""
        state = self.prepare(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                             attention_mask, sparsity)
        return self.finish(self.run_blocks(state))

    def prepare(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None,
                attention_mask=None, sparsity: Sparsity = None) -> OSP13State:
        """Embeddings, adaLN-single, caption projection, masks and RoPE tables (before the first block)."""
        b, _, t, h, w = hidden_states.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"latent height/width ({h}, {w}) must be divisible by patch_size {p}")
        grid = (t, h // p, w // p)
        dtype = self.pos_embed.proj.weight.dtype  # a first-stage module: the head may live on another stage
        x = self.embed(hidden_states.to(dtype)).transpose(0, 1)                        # (N, B, D)
        t6, emb = self.adaln_single(timestep, dtype)
        text = encoder_hidden_states.to(dtype)
        text = self.caption_projection(text.reshape(b, -1, text.shape[-1])).transpose(0, 1)   # (L, B, D)
        return OSP13State(
            x=x, t6=t6.view(b, 6, -1).transpose(0, 1), embedded_timestep=emb, text=text,
            text_mask=text_key_mask(encoder_attention_mask, b, text.shape[0]),
            video_mask=video_key_mask(attention_mask, (1, p, p)),
            rope_tables=self.rope.tables(grid, x.device, dtype), grid=grid,
            plan=None if sparsity is None else self.sparsity_plan(sparsity))

    def run_blocks(self, state: OSP13State, start: int = 0, stop: Optional[int] = None) -> OSP13State:
        """Run blocks start..stop-1 on `state.x` (a pipeline stage runs its own range)."""
        stop = len(self.transformer_blocks) if stop is None else stop
        for i in range(start, stop):
            state.x = self.transformer_blocks[i](state.x, state.t6, state.text, state.text_mask, state.video_mask,
                                                 self.rope, state.rope_tables,
                                                 None if state.plan is None else state.plan[i])
        return state

    def head(self, state: OSP13State) -> torch.Tensor:
        """Token-wise output head: LN, (table + embedded timestep) modulation, proj_out -> (N, B, p*p*C_out)."""
        shift, scale = (self.scale_shift_table[:, None] + state.embedded_timestep[None]).chunk(2, dim=0)
        return self.proj_out(self.norm_out(state.x) * (1 + scale) + shift)

    def finish(self, state: OSP13State) -> torch.Tensor:
        """Output head, then unpatchify to (B, C_out, T, H, W)."""
        p = self.config.patch_size
        return unpatchify(self.head(state).transpose(0, 1), state.grid, (1, p, p), self.config.out_channels)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_official(cls, config: dict, state_dict: dict, *, dtype: torch.dtype = torch.float32,
                      device: Union[str, torch.device] = "cpu") -> "OSP13DiT":
        """Build from official kwargs and an official (diffusers-named) state dict; strict key check."""
        inpaint = True if any(key.startswith("pos_embed_masked_hidden_states.") for key in state_dict) else None
        cfg = OSP13Config.from_official(config, inpaint=inpaint)
        with torch.device("meta"):
            model = cls(cfg)
        load_checked(model, state_dict, what="v1.3 DiT", dtype=dtype)
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_preset(cls, name: str = "osp13_t2v_2b", *, device: Union[str, torch.device] = "meta") -> "OSP13DiT":
        """Build a preset (mindspeed_mm/osp/configs/<name>.json) with fresh weights (meta device by default)."""
        with torch.device(device):
            return cls(OSP13Config.from_official(read_preset(name)))

    def official_state_dict(self) -> dict:
        """State dict under the official diffusers names (this module already uses them)."""
        return self.state_dict()

    def state_dict_from_official(self, state_dict: dict) -> dict:
        """An official state dict under this module's names (the same names)."""
        return state_dict
