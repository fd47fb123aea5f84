"""Open-Sora Plan v1.5 SUV denoiser (`SparseUMMDiT` as in MindSpeed-MM): a U-shaped MMDiT whose stages use
Skiparse joint attention with per-stage sparse ratios (released: k = 1, 2, 4, 8, 4, 2, 1).

Blocks live in one flat `transformer_blocks` ModuleList (stage boundaries in `stage_ranges`); the official
checkpoint's `transformer_blocks.{stage}.{j}` keys are mapped by `checkpoints.keys.suv_official_to_flat`. Inside
the blocks: sequence-first (S, B, D); LayerNorms, modulation, gates and residual adds run in float32 and are cast
back to the stream dtype.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from mindspeed_mm.osp.checkpoints.keys import (
    check_keys, drop_tp_leftovers, is_pku_v15, load_checked, rename_pku_v15, suv_flat_to_official, suv_official_to_flat,
)
from mindspeed_mm.osp.checkpoints.presets import read_preset
from mindspeed_mm.osp.dit.embeddings import (
    PatchEmbed2D, TextProjection, TimestepEmbedding, text_key_mask, timestep_embedding, unpatchify,
    video_key_mask,
)
from mindspeed_mm.osp.dit.layers import CoreAttention, FeedForward, FP32LayerNorm, HeadRMSNorm, split_heads
from mindspeed_mm.osp.dit.rope import RoPE3D
from mindspeed_mm.osp.ops.skiparse import (
    mean_over_groups, padded_length, repeat_batch, skiparse, skiparse_key_mask, unskiparse,
)

logger = logging.getLogger(__name__)

Sparsity = Union[None, str, int, Sequence[int]]

_IGNORED_OFFICIAL_KEYS = {
    "sample_size_t", "sample_size_h", "sample_size_w", "model_id", "from_pretrained", "dtype",
    "norm_elementwise_affine", "explicit_uniform_rope",
}


@dataclass
class SUVConfig:
    """MindSpeed-MM `SparseUMMDiT` kwargs (defaults = the released 8.5B model)."""
    num_layers: list = field(default_factory=lambda: [2, 4, 6, 8, 6, 4, 2])
    sparse_n: list = field(default_factory=lambda: [1, 2, 4, 8, 4, 2, 1])
    double_ff: bool = True
    sparse1d: bool = True
    num_heads: int = 24
    head_dim: int = 128
    in_channels: int = 32
    out_channels: int = 32
    timestep_embed_dim: int = 1024
    caption_channels: int = 2048
    pooled_projection_dim: int = 1280
    skip_connection: bool = True
    skip_connection_zero_init: bool = True
    dropout: float = 0.0
    attention_bias: bool = True
    patch_size_thw: list = field(default_factory=lambda: [1, 2, 2])
    activation_fn: str = "gelu-approximate"
    norm_cls: str = "fp32_layer_norm"
    norm_eps: float = 1e-6

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @classmethod
    def from_official(cls, config: dict) -> "SUVConfig":
        known = {f.name for f in fields(cls)}
        kwargs, unknown = {}, []
        for key, value in config.items():
            if key in known:
                kwargs[key] = list(value) if isinstance(value, (list, tuple)) else value
            elif not key.startswith("_") and key not in _IGNORED_OFFICIAL_KEYS:
                unknown.append(key)
        if unknown:
            logger.warning("SUVConfig: ignoring unknown official config keys %s", sorted(unknown))
        if config.get("explicit_uniform_rope"):
            raise ValueError("explicit_uniform_rope=True (random RoPE offsets in training) is not implemented")
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_official(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if len(self.num_layers) != len(self.sparse_n) or len(self.num_layers) % 2 == 0:
            raise ValueError(f"num_layers {self.num_layers} and sparse_n {self.sparse_n} must have the same odd "
                             f"number of stages (encoder, middle, decoder)")
        if any(n < 1 for n in self.num_layers) or any(k < 1 for k in self.sparse_n):
            raise ValueError("every stage needs >= 1 block and sparse ratio >= 1")
        if self.activation_fn != "gelu-approximate":
            raise ValueError(f"activation_fn {self.activation_fn!r} is not supported (use 'gelu-approximate')")
        if self.norm_cls != "fp32_layer_norm":
            raise ValueError(f"norm_cls {self.norm_cls!r} is not supported (use 'fp32_layer_norm')")
        if self.patch_size_thw[0] != 1:
            raise ValueError(f"patch_size_thw {self.patch_size_thw}: the patch embedding is per frame (t = 1)")
        if self.patch_size_thw[1] != self.patch_size_thw[2]:
            raise ValueError(f"patch_size_thw {self.patch_size_thw}: square spatial patches only")


class AdaNormZero(nn.Module):
    """Per-block modulation: linear(SiLU(c)) -> 6 vectors; `norm` (video) and `norm_enc` (text) LayerNorms."""

    def __init__(self, cond_dim: int, dim: int, eps: float, with_text_norm: bool):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 6 * dim)
        self.norm = FP32LayerNorm(dim, eps=eps)
        self.norm_enc = FP32LayerNorm(dim, eps=eps) if with_text_norm else None

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, cond) -> six float32 (1, B, D) tensors: shift, scale, gate, text shift, text scale, text gate."""
        m = self.linear(F.silu(c).to(self.linear.weight.dtype)).float()
        return tuple(t[None] for t in m.chunk(6, dim=-1))


def _modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (norm(x).float() * (1 + scale) + shift).to(x.dtype)


def _gated_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() + gate * y.float()).to(x.dtype)


class SUVAttention(nn.Module):
    """attn1: joint video+text attention; video tokens Skiparse-rearranged, text repeated k times."""

    def __init__(self, dim: int, head_dim: int, bias: bool, eps: float, context_pre_only: bool):
        super().__init__()
        self.head_dim = head_dim
        for name in ("proj_q", "proj_k", "proj_v", "added_proj_q", "added_proj_k", "added_proj_v"):
            setattr(self, name, nn.Linear(dim, dim, bias=bias))
        self.norm_proj_q = HeadRMSNorm(head_dim, eps)
        self.norm_proj_k = HeadRMSNorm(head_dim, eps)
        self.norm_added_proj_q = HeadRMSNorm(head_dim, eps)
        self.norm_added_proj_k = HeadRMSNorm(head_dim, eps)
        self.proj_out = nn.Linear(dim, dim, bias=bias)
        self.added_proj_out = None if context_pre_only else nn.Linear(dim, dim, bias=bias)
        self.core_attention = CoreAttention()

    def forward(self, x, e, video_mask, text_mask, rope: RoPE3D, rope_tables, k: int, group: bool):
        hd = self.head_dim
        q = rope.apply(self.norm_proj_q(split_heads(self.proj_q(x), hd)), rope_tables)
        n, b = q.shape[:2]  # the whole sequence, also when x is a shard (Ulysses CP)
        key = rope.apply(self.norm_proj_k(split_heads(self.proj_k(x), hd)), rope_tables)
        v = split_heads(self.proj_v(x), hd)
        tq = self.norm_added_proj_q(split_heads(self.added_proj_q(e), hd))
        tk = self.norm_added_proj_k(split_heads(self.added_proj_k(e), hd))
        tv = split_heads(self.added_proj_v(e), hd)
        q, key, v = (skiparse(t, k, group) for t in (q, key, v))
        tq, tk, tv = (repeat_batch(t, k) for t in (tq, tk, tv))
        vmask = skiparse_key_mask(video_mask, n, b, k, group, device=x.device)
        mask = None
        if vmask is not None or text_mask is not None:
            vmask = vmask if vmask is not None else torch.zeros(k * b, q.shape[0], dtype=torch.bool, device=x.device)
            tmask = (repeat_batch(text_mask.transpose(0, 1), k).transpose(0, 1) if text_mask is not None
                     else torch.zeros(k * b, tq.shape[0], dtype=torch.bool, device=x.device))
            mask = torch.cat([vmask, tmask], dim=1)
        out = self.core_attention(torch.cat([q, tq]), torch.cat([key, tk]), torch.cat([v, tv]), mask)
        nv = padded_length(n, k) // k
        video = self.proj_out(unskiparse(out[:nv], k, group, n))
        text = None if self.added_proj_out is None else self.added_proj_out(mean_over_groups(out[nv:], k))
        return video, text


class SUVBlock(nn.Module):
    """SparseMMDiTBlock. `context_pre_only` (the last block): text stream only feeds the attention."""

    def __init__(self, cfg: SUVConfig, context_pre_only: bool = False):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.norm_eps
        self.context_pre_only = context_pre_only
        self.norm1 = AdaNormZero(cfg.timestep_embed_dim, d, eps, with_text_norm=True)
        self.attn1 = SUVAttention(d, cfg.head_dim, cfg.attention_bias, eps, context_pre_only)
        self.norm2 = AdaNormZero(cfg.timestep_embed_dim, d, eps, with_text_norm=not context_pre_only)
        self.ff = FeedForward(d, mult=4, bias=False, dropout=cfg.dropout)
        use_text_ff = cfg.double_ff and not context_pre_only
        self.ff_enc = FeedForward(d, mult=4, bias=False, dropout=cfg.dropout) if use_text_ff else None
        self.skiparse_k, self.skiparse_group = 1, False  # set by SUVDiT.set_sparsity

    def forward(self, x, e, c, video_mask, text_mask, rope, rope_tables,
                sparse: Optional[tuple[int, bool]] = None):
        k, group = sparse if sparse is not None else (self.skiparse_k, self.skiparse_group)
        sh, sc, g, esh, esc, eg = self.norm1.modulation(c)
        xn = _modulate(self.norm1.norm, x, sh, sc)
        en = _modulate(self.norm1.norm_enc, e, esh, esc)
        ax, ae = self.attn1(xn, en, video_mask, text_mask, rope, rope_tables, k, group)
        x = _gated_add(x, g, ax)
        sh, sc, g, esh, esc, eg2 = self.norm2.modulation(c)
        x = _gated_add(x, g, self.ff(_modulate(self.norm2.norm, x, sh, sc)))
        if self.context_pre_only:
            return x, e
        e = _gated_add(e, eg, ae)
        en = _modulate(self.norm2.norm_enc, e, esh, esc)
        e = _gated_add(e, eg2, (self.ff_enc or self.ff)(en))
        return x, e


class TimeTextEmbedding(nn.Module):
    """c = TimestepEmbedding(sinusoid(t)) + TextProjection(pooled CLIP), in float32 (B, timestep_embed_dim)."""

    def __init__(self, dim: int, pooled_dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim, dim)
        self.text_embedder = TextProjection(pooled_dim, dim, act="silu")

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        dtype = self.timestep_embedder.linear_1.weight.dtype
        t = self.timestep_embedder(timestep_embedding(timestep, self.timestep_embedder.linear_1.in_features).to(dtype))
        return t.float() + self.text_embedder(pooled.to(dtype)).float()


class AdaNormOut(nn.Module):
    """Output modulation: shift, scale = linear(SiLU(c)); LN(x) * (1 + scale) + shift."""

    def __init__(self, cond_dim: int, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = FP32LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(c).to(self.linear.weight.dtype)).float().chunk(2, dim=-1)
        return _modulate(self.norm, x, shift[None], scale[None])


@dataclass
class SUVState:
    """Activations between `SUVDiT.prepare`, `run_blocks` and `finish` (sequence-first)."""
    x: torch.Tensor                      # video tokens (N, B, D)
    e: torch.Tensor                      # text tokens (L, B, D)
    c: torch.Tensor                      # conditioning (B, timestep_embed_dim), float32
    video_mask: Optional[torch.Tensor]   # (B, N) bool, True = masked
    text_mask: Optional[torch.Tensor]    # (B, L) bool, True = masked
    rope_tables: list
    grid: tuple
    plan: Optional[list] = None          # per-block (k, group) override; None = the blocks' own settings
    skips: list = field(default_factory=list)


class SUVDiT(nn.Module):
    """v1.5 SUV MMDiT. See `forward` for the inputs."""

    def __init__(self, config: SUVConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        d, p = cfg.hidden_size, cfg.patch_size_thw[1]
        self.patch_embed = PatchEmbed2D(cfg.in_channels, d, p)
        self.time_text_embed = TimeTextEmbedding(cfg.timestep_embed_dim, cfg.pooled_projection_dim)
        self.caption_projection = nn.Linear(cfg.caption_channels, d)
        total = sum(cfg.num_layers)
        self.transformer_blocks = nn.ModuleList([SUVBlock(cfg, context_pre_only=(i == total - 1))
                                                 for i in range(total)])
        starts = [sum(cfg.num_layers[:s]) for s in range(len(cfg.num_layers))]
        self.stage_ranges = [(s, s + n) for s, n in zip(starts, cfg.num_layers)]
        self.stage_of_block = [s for s, n in enumerate(cfg.num_layers) for _ in range(n)]
        self.mid_stage = len(cfg.num_layers) // 2
        if cfg.skip_connection:
            self.skip_norm_linear = nn.ModuleList([self._skip_layer(d) for _ in range(self.mid_stage)])
            self.skip_norm_linear_enc = nn.ModuleList([self._skip_layer(d) for _ in range(self.mid_stage)])
        self.norm_final = FP32LayerNorm(d, eps=cfg.norm_eps)
        self.norm_out = AdaNormOut(cfg.timestep_embed_dim, d, cfg.norm_eps)
        self.proj_out = nn.Linear(d, p * p * cfg.out_channels)
        self.rope = RoPE3D.v15(cfg.head_dim)
        self.set_sparsity(None)
        if not self.proj_out.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialisation for training from scratch: skip linears [I | 0] (zero-init mode: the decoder stream
        passes through, the skip is ignored); everything else keeps torch defaults."""
        if not (self.config.skip_connection and self.config.skip_connection_zero_init):
            return
        d = self.config.hidden_size
        for lin in [m[1] for m in (*self.skip_norm_linear, *self.skip_norm_linear_enc)]:
            lin.weight.zero_()
            lin.weight[:, :d].copy_(torch.eye(d))
            lin.bias.zero_()

    def _skip_layer(self, d: int) -> nn.Sequential:
        # zero-init: Identity then Linear(2D -> D) initialised to [I | 0]; otherwise a LayerNorm over 2D first.
        first = nn.Identity() if self.config.skip_connection_zero_init else FP32LayerNorm(2 * d, eps=self.config.norm_eps)
        return nn.Sequential(first, nn.Linear(2 * d, d))

    # ----------------------------------------------------------------------------------------- sparsity
    def sparsity_plan(self, sparsity: Sparsity = None) -> list[tuple[int, bool]]:
        """(k, group) per block. `sparsity`: None/"trained" = config sparse_n, "dense" or 1 = no Skiparse,
        int k > 1 = k in every stage trained sparse, list = k per stage. Group Skip on odd blocks of a stage."""
        trained = list(self.config.sparse_n) if self.config.sparse1d else [1] * len(self.config.num_layers)
        if sparsity in (None, "trained"):
            per_stage = trained
        elif sparsity == "dense":
            per_stage = [1] * len(trained)
        elif isinstance(sparsity, int) and not isinstance(sparsity, bool) and sparsity >= 1:
            per_stage = [sparsity if k > 1 else 1 for k in trained]
        elif isinstance(sparsity, (list, tuple)) and len(sparsity) == len(trained) and all(
                isinstance(k, int) and k >= 1 for k in sparsity):
            per_stage = list(sparsity)
        else:
            raise ValueError(f"sparsity must be None, 'trained', 'dense', an int k >= 1 or one int per stage "
                             f"({len(trained)} stages), got {sparsity!r}")
        return [(k, k > 1 and j % 2 == 1) for k, n in zip(per_stage, self.config.num_layers) for j in range(n)]

    def set_sparsity(self, sparsity: Sparsity = None) -> None:
        """Set the Skiparse plan used by later forwards (weights unchanged)."""
        for block, (k, group) in zip(self.transformer_blocks, self.sparsity_plan(sparsity)):
            block.skiparse_k, block.skiparse_group = k, group

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: Optional[torch.Tensor] = None,
                pooled_projections: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                sparsity: Sparsity = None) -> torch.Tensor:
        """hidden_states (B, C, T, H, W); timestep (B,) = sigma*1000; encoder_hidden_states (B, 1, L, C_t5) or
        (B, L, C_t5); encoder_attention_mask (B, 1, L), 1 = keep; pooled_projections (B, 1280) CLIP text_embeds;
        attention_mask (B, T, H, W), 1 = keep (optional); `sparsity` overrides the plan for this call.
        Returns the prediction (B, out_channels, T, H, W). Same as finish(run_blocks(prepare(...)))."""
        state = self.prepare(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                             pooled_projections, attention_mask, sparsity)
        return self.finish(self.run_blocks(state))

    def prepare(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None,
                pooled_projections=None, attention_mask=None, sparsity: Sparsity = None) -> SUVState:
        """Embeddings, conditioning, masks and RoPE tables: everything before the first block."""
        cfg = self.config
        if pooled_projections is None:
            raise ValueError("SUVDiT needs pooled_projections (the CLIP pooled text embedding, (B, "
                             f"{cfg.pooled_projection_dim}))")
        b, c_in, t, h, w = hidden_states.shape
        p = cfg.patch_size_thw[1]
        if c_in != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} latent channels, got {c_in}")
        if h % p or w % p:
            raise ValueError(f"latent height/width ({h}, {w}) must be divisible by the patch size {p}")
        grid = (t, h // p, w // p)
        dtype = self.patch_embed.proj.weight.dtype  # a first-stage module: the head may live on another stage
        x = self.patch_embed(hidden_states.to(dtype)).transpose(0, 1)                            # (N, B, D)
        text = encoder_hidden_states.to(dtype)
        e = self.caption_projection(text.reshape(b, -1, text.shape[-1])).transpose(0, 1)         # (L, B, D)
        return SUVState(
            x=x, e=e, c=self.time_text_embed(timestep, pooled_projections),                       # c: (B, Dt) fp32
            video_mask=video_key_mask(attention_mask, (1, p, p)),
            text_mask=text_key_mask(encoder_attention_mask, b, e.shape[0]),
            rope_tables=self.rope.tables(grid, x.device, dtype), grid=grid,
            plan=self.sparsity_plan(sparsity) if sparsity is not None else None)

    def run_blocks(self, state: SUVState, start: int = 0, stop: Optional[int] = None) -> SUVState:
        """Run blocks start..stop-1 (flat indices), with the U-net skips: the output of the last block of each
        encoder stage is pushed on `state.skips`, and popped and fused before the first block of the mirrored
        decoder stage. A pipeline stage runs its own range and hands the state (x, e, skips) on."""
        stop = len(self.transformer_blocks) if stop is None else stop
        use_skips = self.config.skip_connection
        for i in range(start, stop):
            stage = self.stage_of_block[i]
            if use_skips and stage > self.mid_stage and i == self.stage_ranges[stage][0]:
                xs, es = state.skips.pop()
                j = stage - self.mid_stage - 1
                state.x = self.skip_norm_linear[j](torch.cat([state.x, xs], dim=-1))
                state.e = self.skip_norm_linear_enc[j](torch.cat([state.e, es], dim=-1))
            state.x, state.e = self.transformer_blocks[i](
                state.x, state.e, state.c, state.video_mask, state.text_mask, self.rope, state.rope_tables,
                None if state.plan is None else state.plan[i])
            if use_skips and stage < self.mid_stage and i == self.stage_ranges[stage][1] - 1:
                state.skips.append((state.x, state.e))
        return state

    def head(self, state: SUVState) -> torch.Tensor:
        """Token-wise output head: norm_final, AdaNorm, proj_out -> (N, B, p*p*C_out)."""
        return self.proj_out(self.norm_out(self.norm_final(state.x), state.c))

    def finish(self, state: SUVState) -> torch.Tensor:
        """Output head, then unpatchify to (B, C_out, T, H, W)."""
        p = self.config.patch_size_thw[1]
        return unpatchify(self.head(state).transpose(0, 1), state.grid, (1, p, p), self.config.out_channels)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_official(cls, config: dict, state_dict: dict, *, dtype: torch.dtype = torch.float32,
                      device: Union[str, torch.device] = "cpu") -> "SUVDiT":
        """Build from SparseUMMDiT kwargs and a MindSpeed-MM (or PKU-named) TP=1 state dict; strict keys,
        except the last block's unused text-stream weights left by TP>1 training (dropped with a note)."""
        with torch.device("meta"):
            model = cls(SUVConfig.from_official(config))
        load_checked(model, model.state_dict_from_official(state_dict), what="v1.5 SUV DiT", dtype=dtype)
        return model.to(device=device, dtype=dtype)

    def state_dict_from_official(self, state_dict: dict) -> dict:
        """An official (MindSpeed-MM or PKU-named) state dict under this module's names, keys checked strictly."""
        if is_pku_v15(state_dict):
            logger.info("renaming PKU-branch v1.5 keys (to_q, add_q_proj, ...) to MindSpeed-MM names")
            state_dict = rename_pku_v15(state_dict)
        state_dict = drop_tp_leftovers(state_dict, self.config.num_layers)
        check_keys(self.official_state_dict(), state_dict, what="v1.5 SUV DiT")  # errors name official keys
        return suv_official_to_flat(state_dict, self.config.num_layers)

    @classmethod
    def from_preset(cls, name: str = "osp15_suv_8b", *, device: Union[str, torch.device] = "meta") -> "SUVDiT":
        """Build a preset (mindspeed_mm/osp/configs/<name>.json) with fresh weights (meta device by default)."""
        with torch.device(device):
            return cls(SUVConfig.from_official(read_preset(name)))

    def official_state_dict(self) -> dict:
        """State dict under the MindSpeed-MM names (`transformer_blocks.{stage}.{j}.*`)."""
        return suv_flat_to_official(self.state_dict(), self.config.num_layers)
