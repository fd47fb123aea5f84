"""Inference fast path of the v1.5 SUV denoiser for a sampling loop (eager PyTorch, no compilation).

`SUVDiT.forward` stays the reference. `FastSUV(model).bind(text, text_mask, pooled)` returns a callable
`step(latents, timestep)` that computes the same prediction as `model(latents, timestep, text, text_mask, pooled)`
(equal within float32 rounding), for every denoising step of one sample:

* text tokens masked in every prompt of the batch (the tokenizer's padding to max_length) are dropped: a text
  token only reaches the video through attention, as a key, and a masked key is seen by no query;
* computed once per sample (the text and the latent grid do not change between steps): the caption projection
  of the T5 states, the pooled-CLIP part of the conditioning, the RoPE tables (as one full-width cos table and
  one signed sin table with a rotate-half index), the joint attention masks of every (k, group) in the plan, and
  whether any query row can be fully masked (so no per-step host sync or mask arithmetic);
* per step: all adaLN modulations of the model in one matmul (weights concatenated once, while they are small),
  the q/k/v (and text q/k/v) projections of a block in one matmul each, LayerNorm-modulate and gated residuals
  as single `addcmul`s, qk-RMSNorm with `F.rms_norm`, RoPE as `x * cos + x[..., perm] * sin`, and
  `F.scaled_dot_product_attention` on the joint sequence;
* Skiparse text attention without the k-fold repetition of the text keys: the text queries attend to the text
  keys once (not k times) and to the video keys of each of the k groups, and the two partial softmaxes are merged
  exactly with their log-sum-exps; the video queries of all k groups attend to the text keys in one batch of B.

Valid (see `FastSUV.unsupported`) for a plain single-process float32 `SUVDiT` whose attention cores are the stock
`CoreAttention` on the "sdpa" backend, without a latent attention mask; anything else runs the reference path.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from mindspeed_mm.osp.dit.embeddings import timestep_embedding, unpatchify
from mindspeed_mm.osp.dit.layers import CoreAttention
from mindspeed_mm.osp.ops.skiparse import padded_length, skiparse, skiparse_key_mask, unskiparse

# Concatenated copies of weights are kept only while they are this small (the adaLN weights of the 8.5B model
# are ~1.2B parameters: there they run as separate matmuls instead of being duplicated).
FUSE_LIMIT_BYTES = 256 * 2 ** 20


def _rope_tables(rope, grid, device):
    """(cos, signed sin, rotate-half index) over the full head_dim, (N, 1, 1, hd) tables in float32."""
    cos, sin, perm, sign, offset = [], [], [], [], 0
    for (c, s), d in zip(rope.tables(grid, device, torch.float32), rope.splits):
        half = d // 2
        cos.append(c.float())
        sin.append(s.float())
        perm += [offset + half + i for i in range(half)] + [offset + i for i in range(half)]
        sign += [-1.0] * half + [1.0] * half
        offset += d
    sign_t = torch.tensor(sign, device=device)
    return (torch.cat(cos, dim=-1).contiguous(), (torch.cat(sin, dim=-1) * sign_t).contiguous(),
            torch.tensor(perm, device=device))


class _Linears:
    """Several linears on the same input as one matmul (weights concatenated once, if small enough)."""

    def __init__(self, linears, limit: int):
        self.linears = [m for m in linears]
        self.sizes = [m.out_features for m in self.linears]
        w = self.linears[0].weight
        fused_bytes = sum(m.weight.numel() for m in self.linears) * w.element_size()
        self.weight = self.bias = None
        if len(self.linears) > 1 and fused_bytes <= limit and len({m.bias is None for m in self.linears}) == 1:
            self.weight = torch.cat([m.weight for m in self.linears]).contiguous()
            if self.linears[0].bias is not None:
                self.bias = torch.cat([m.bias for m in self.linears])

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.weight is None:
            return [m(x) for m in self.linears]
        return list(F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1))


class FastSUV:
    """Sampling fast path for one `SUVDiT` (see the module docstring). Weights are read at construction: build a
    new one after changing the model's weights, dtype or device."""

    def __init__(self, model, fuse_limit_bytes: int = FUSE_LIMIT_BYTES):
        reason = self.unsupported(model)
        if reason:
            raise ValueError(f"FastSUV: {reason}")
        self.model = m = model
        self.text_sharing: Optional[bool] = None  # None: by size (see share_text)
        self.drop_masked_text = True  # skip the text tokens masked in every prompt (they cannot change the output)
        cfg = m.config
        self.d, self.hd = cfg.hidden_size, cfg.head_dim
        self.blocks = list(m.transformer_blocks)
        mods = [b.norm1.linear for b in self.blocks] + [b.norm2.linear for b in self.blocks] + [m.norm_out.linear]
        limit = fuse_limit_bytes
        self.modulation = _Linears(mods, limit)
        self.qkv = [_Linears([b.attn1.proj_q, b.attn1.proj_k, b.attn1.proj_v], limit) for b in self.blocks]
        self.text_qkv = [_Linears([b.attn1.added_proj_q, b.attn1.added_proj_k, b.attn1.added_proj_v], limit)
                         for b in self.blocks]

    def share_text(self, n: int, text_len: int, k: int) -> bool:
        """Use the shared-text Skiparse attention (`_shared_text_attention`) for this size? It saves the k-fold
        text-to-text attention of the text queries (k L^2 scores -> L^2) at the price of more, smaller kernels:
        worth it when the text is long next to a group's video tokens. `self.text_sharing` forces it on or off."""
        if self.text_sharing is not None:
            return self.text_sharing
        return text_len >= 64 and text_len * 2 >= padded_length(n, k) // k

    @staticmethod
    def unsupported(model) -> Optional[str]:
        """Why the fast path cannot stand in for `model`'s forward, or None when it can."""
        from mindspeed_mm.osp.dit.suv import SUVBlock, SUVDiT
        from mindspeed_mm.osp.ops.attention import get_backend

        if type(model) is not SUVDiT:
            return f"{type(model).__name__} is not a plain SUVDiT"
        if model.training:
            return "inference only (model.eval())"
        p = model.proj_out.weight
        if p.dtype != torch.float32 or p.is_meta:
            return f"float32 weights only (got {p.dtype})"
        if any(t.device != p.device or t.dtype != torch.float32 for t in model.parameters()):
            return "all weights must be float32 on one device"
        for b in model.transformer_blocks:
            core = b.attn1.core_attention
            if type(b) is not SUVBlock or type(core) is not CoreAttention:
                return "a block or attention core is replaced (sequence parallel, offload, ...)"
            try:
                if get_backend(core.backend).name != "sdpa":
                    return f"attention backend {get_backend(core.backend).name!r} (the fast path uses sdpa)"
            except (ValueError, RuntimeError) as err:
                return str(err)
        if model._forward_hooks or model._forward_pre_hooks or any(
                mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules()):
            return "the model has forward hooks (they would not run)"
        return None

    # ------------------------------------------------------------------------------------------------ binding
    def bind(self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: Optional[torch.Tensor],
             pooled_projections: torch.Tensor, sparsity=None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The per-sample state; returns step(hidden_states (B, C, T, H, W), timestep (B,)) -> prediction."""
        from mindspeed_mm.osp.dit.embeddings import text_key_mask

        m = self.model
        dtype = m.proj_out.weight.dtype
        text = encoder_hidden_states.to(dtype)
        b = text.shape[0]
        text = text.reshape(b, -1, text.shape[-1])                                                      # (B, L, C)
        tmask = text_key_mask(encoder_attention_mask, b, text.shape[1])                                 # (B, L)
        if tmask is not None and self.drop_masked_text:
            # A text token is only ever seen as an attention key, and a masked one by no query: the text tokens
            # masked in every prompt of the batch cannot change the prediction, so they are not computed at all.
            used = (~tmask).any(dim=0)
            if not bool(used.any()):
                used[0] = True  # keep one (masked) token so every tensor keeps its shape
            if not bool(used.all()):
                index = used.nonzero().flatten()
                text, tmask = text.index_select(1, index), tmask.index_select(1, index)
        e0 = m.caption_projection(text).transpose(0, 1).contiguous()                                    # (L, B, D)
        pooled = m.time_text_embed.text_embedder(pooled_projections.to(dtype)).float()                # (B, Dt)
        plan = m.sparsity_plan(sparsity) if sparsity is not None else [
            (blk.skiparse_k, blk.skiparse_group) for blk in self.blocks]
        state = _Bound(self, e0, pooled, tmask, plan)
        return state.step


class _Bound:
    def __init__(self, fast: FastSUV, e0, pooled, tmask, plan):
        self.fast, self.e0, self.pooled, self.plan = fast, e0, pooled, plan
        self.b = e0.shape[1]
        self.tmask = tmask
        # text keys visible to the queries (SDPA: True = attend); None when nothing is masked
        self.text_keep = None if tmask is None or not bool(tmask.any()) else (~tmask)[:, None, None, :]
        self.text_all_masked = tmask is not None and bool(tmask.all(dim=1).any())
        self.grid = None
        self.rope = None
        self.masks: dict = {}

    # -------------------------------------------------------------------------------------------- per grid
    def _set_grid(self, grid, device):
        self.grid = grid
        self.rope = _rope_tables(self.fast.model.rope, grid, device)
        n, b = grid[0] * grid[1] * grid[2], self.b
        self.masks = {}
        for k, group in set(self.plan):
            if k == 1:
                self.masks[k, group] = None
                continue
            masked = skiparse_key_mask(None, n, b, k, group, device=device)  # padded video keys, (k*B, N'/k)
            self.masks[k, group] = None if masked is None else (~masked)[:, None, None, :]

    # -------------------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def step(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        fast, m = self.fast, self.fast.model
        cfg = m.config
        b, c_in, t, h, w = hidden_states.shape
        p = cfg.patch_size_thw[1]
        if b != self.b or c_in != cfg.in_channels or h % p or w % p:
            raise ValueError(f"latents {tuple(hidden_states.shape)} do not fit this bound sample (batch {self.b}, "
                             f"{cfg.in_channels} channels, sizes divisible by {p})")
        grid = (t, h // p, w // p)
        if grid != self.grid:
            self._set_grid(grid, hidden_states.device)
        dtype = m.proj_out.weight.dtype
        x = m.patch_embed(hidden_states.to(dtype)).transpose(0, 1)                                # (N, B, D)
        te = m.time_text_embed.timestep_embedder
        c = te(timestep_embedding(timestep, te.linear_1.in_features).to(dtype)).float() + self.pooled
        mods = fast.modulation(F.silu(c))
        nb = len(fast.blocks)
        e = self.e0
        skips = []
        mid = m.mid_stage
        for i, block in enumerate(fast.blocks):
            stage = m.stage_of_block[i]
            if cfg.skip_connection and stage > mid and i == m.stage_ranges[stage][0]:
                xs, es = skips.pop()
                j = stage - mid - 1
                x = m.skip_norm_linear[j](torch.cat([x, xs], dim=-1))
                e = m.skip_norm_linear_enc[j](torch.cat([e, es], dim=-1))
            x, e = self._block(i, block, x, e, mods[i], mods[nb + i])
            if cfg.skip_connection and stage < mid and i == m.stage_ranges[stage][1] - 1:
                skips.append((x, e))
        shift, scale = mods[-1][None].chunk(2, dim=-1)
        norm = m.norm_out.norm
        xn = F.layer_norm(m.norm_final(x), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        out = m.proj_out(torch.addcmul(shift, xn, 1 + scale))
        return unpatchify(out.transpose(0, 1), grid, (1, p, p), cfg.out_channels)

    @staticmethod
    def _ln_mod(norm, x, shift, scale1):
        return torch.addcmul(shift, F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps), scale1)

    def _block(self, i, block, x, e, mod1, mod2):
        sh, sc, g, esh, esc, eg = mod1[None].chunk(6, dim=-1)
        xn = self._ln_mod(block.norm1.norm, x, sh, 1 + sc)
        en = self._ln_mod(block.norm1.norm_enc, e, esh, 1 + esc)
        ax, ae = self._attention(i, block.attn1, xn, en)
        x = torch.addcmul(x, g, ax)
        sh, sc, g2, esh2, esc2, eg2 = mod2[None].chunk(6, dim=-1)
        x = torch.addcmul(x, g2, block.ff(self._ln_mod(block.norm2.norm, x, sh, 1 + sc)))
        if block.context_pre_only:
            return x, e
        e = torch.addcmul(e, eg, ae)
        en = self._ln_mod(block.norm2.norm_enc, e, esh2, 1 + esc2)
        e = torch.addcmul(e, eg2, (block.ff_enc or block.ff)(en))
        return x, e

    def _attention(self, i, attn, x, e):
        k, group = self.plan[i]
        hd = self.fast.hd
        n = x.shape[0]
        cos, sin, perm = self.rope
        q, key, v = (t.unflatten(-1, (-1, hd)) for t in self.fast.qkv[i](x))               # (N, B, H, hd)
        q = F.rms_norm(q, (hd,), attn.norm_proj_q.weight, attn.norm_proj_q.eps)
        key = F.rms_norm(key, (hd,), attn.norm_proj_k.weight, attn.norm_proj_k.eps)
        q = torch.addcmul(q * cos, q.index_select(-1, perm), sin)
        key = torch.addcmul(key * cos, key.index_select(-1, perm), sin)
        tq, tk, tv = (t.unflatten(-1, (-1, hd)) for t in self.fast.text_qkv[i](e))        # (L, B, H, hd)
        tq = F.rms_norm(tq, (hd,), attn.norm_added_proj_q.weight, attn.norm_added_proj_q.eps)
        tk = F.rms_norm(tk, (hd,), attn.norm_added_proj_k.weight, attn.norm_added_proj_k.eps)
        if k > 1 and self.fast.share_text(n, tq.shape[0], k):
            video, text = self._shared_text_attention(q, key, v, tq, tk, tv, k, group)
        else:
            video, text = self._joint_attention(q, key, v, tq, tk, tv, k, group)
        video = attn.proj_out(video)
        text = None if attn.added_proj_out is None else attn.added_proj_out(text)
        return video, text

    def _joint_keep(self, k, group, ns, device):
        """SDPA mask (k*B, 1, 1, N'/k + L), True = visible, or None."""
        key = ("joint", k, group)
        if key not in self.masks:
            vkeep, tkeep, kb = self.masks[k, group], self.text_keep, k * self.b
            keep = None
            if vkeep is not None or tkeep is not None:
                vk = vkeep if vkeep is not None else torch.ones(kb, 1, 1, ns, dtype=torch.bool, device=device)
                tk = (tkeep.repeat(k, 1, 1, 1) if tkeep is not None else
                      torch.ones(kb, 1, 1, self.e0.shape[0], dtype=torch.bool, device=device))
                keep = torch.cat([vk, tk], dim=-1)
            empty = None  # rows with no visible key (SDPA gives NaN there; the reference gives 0)
            if keep is not None and self.text_all_masked:
                empty = ~keep.any(dim=-1, keepdim=True)
            self.masks[key] = (keep, empty)
        return self.masks[key]

    def _joint_attention(self, q, key, v, tq, tk, tv, k, group):
        """The reference's joint attention: video tokens Skiparse-rearranged, text repeated k times."""
        n = q.shape[0]
        qs, ks, vs = (skiparse(t, k, group) for t in (q, key, v))                           # (N'/k, kB, H, hd)
        ns = qs.shape[0]
        rep = (lambda t: t.repeat(1, k, 1, 1)) if k > 1 else (lambda t: t)  # noqa: E731
        keep, empty = self._joint_keep(k, group, ns, q.device)
        out = F.scaled_dot_product_attention(*(torch.cat([a, rep(t)]).permute(1, 2, 0, 3)
                                               for a, t in ((qs, tq), (ks, tk), (vs, tv))),
                                             attn_mask=keep, scale=self.fast.hd ** -0.5)    # (kB, H, S, hd)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        out = out.permute(2, 0, 1, 3).flatten(2)                                            # (S, kB, D)
        video = unskiparse(out[:ns], k, group, n)
        text = out[ns:]
        if k > 1:
            text = text.unflatten(1, (k, self.b)).mean(dim=1)
        return video, text

    def _shared_text_attention(self, q, key, v, tq, tk, tv, k, group):
        """Joint Skiparse attention without attending the text queries k times to the same text keys: per group,
        softmax over [video keys of the group, text keys] is the log-sum-exp merge of the attention to the group's
        video keys and the attention to the text keys (computed once)."""
        n, b = q.shape[:2]
        scale = self.fast.hd ** -0.5
        vkeep, tkeep = self.masks[k, group], self.text_keep
        qs, ks, vs = (skiparse(t, k, group).permute(1, 2, 0, 3) for t in (q, key, v))      # (kB, H, N'/k, hd)
        tqb, tkb, tvb = (t.permute(1, 2, 0, 3) for t in (tq, tk, tv))                      # (B, H, L, hd)
        # video queries: their group's video keys ++ the text keys (one SDPA over the k*B sub-batches)
        keep, empty = self._joint_keep(k, group, qs.shape[2], q.device)
        out_v = F.scaled_dot_product_attention(qs, torch.cat([ks, tkb.repeat(k, 1, 1, 1)], dim=2),
                                               torch.cat([vs, tvb.repeat(k, 1, 1, 1)], dim=2),
                                               attn_mask=keep, scale=scale)                 # (kB, H, N'/k, hd)
        if empty is not None:
            out_v = out_v.masked_fill(empty, 0.0)
        video = unskiparse(out_v.permute(2, 0, 1, 3).flatten(2), k, group, n)             # (N, B, D)
        # text queries: once against the text keys, and against the video keys of each group
        lse_t, o_t = _attend_lse(tqb, tkb, tvb, tkeep, scale)                              # (B, H, L, 1 / hd)
        lse_v, o_v = _attend_lse(tqb.repeat(k, 1, 1, 1), ks, vs, vkeep, scale)            # (kB, H, L, 1 / hd)
        lse_v, o_v = lse_v.unflatten(0, (k, b)), o_v.unflatten(0, (k, b))
        lse = torch.logaddexp(lse_t, lse_v)                                                # (k, B, H, L, 1)
        w_t = torch.exp(lse_t - lse).nan_to_num_(0.0)
        w_v = torch.exp(lse_v - lse).nan_to_num_(0.0)
        o = torch.addcmul(o_v * w_v, o_t, w_t).mean(dim=0)                                 # (B, H, L, hd)
        return video, o.permute(2, 0, 1, 3).flatten(2)                                     # (L, B, D)


def _attend_lse(q, k, v, keep, scale):
    """softmax(scale q k^T) v and the log-sum-exp of the scores, on BNSD tensors; masked keys (keep False)
    excluded; a row with no visible key gives output 0 and lse -inf."""
    s = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    pr = torch.exp(s - lse).nan_to_num_(0.0)
    return lse, torch.matmul(pr, v)
