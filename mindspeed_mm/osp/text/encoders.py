"""Text conditioning through transformers, from local folders only (no downloads at run time).

v1.3: mT5-XXL encoder last hidden state (max 512 tokens) + attention mask.
v1.5: T5-v1.1-XL encoder last hidden state (max 512) + mask, and CLIP-bigG `text_embeds` (max 77) as the pooled input.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)


@dataclass
class TextEmbeddings:
    hidden_states: torch.Tensor          # (B, L, C)
    attention_mask: torch.Tensor         # (B, L), 1 = token, 0 = padding
    pooled: Optional[torch.Tensor] = None  # (B, P) CLIP text_embeds for v1.5

    def to(self, device=None, dtype=None) -> "TextEmbeddings":
        return TextEmbeddings(
            self.hidden_states.to(device=device, dtype=dtype),
            self.attention_mask.to(device=device),
            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
        )

    @staticmethod
    def cat(parts: Sequence["TextEmbeddings"]) -> "TextEmbeddings":
        pooled = [p.pooled for p in parts]
        return TextEmbeddings(
            torch.cat([p.hidden_states for p in parts]),
            torch.cat([p.attention_mask for p in parts]),
            None if pooled[0] is None else torch.cat(pooled),
        )


def load_text_encoder(folder, dtype=torch.float32):
    """Load a T5/mT5 encoder or a CLIP text model with projection, chosen by the folder's config.json."""
    import transformers

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}/config.json is missing: not a transformers model folder")
    config = transformers.AutoConfig.from_pretrained(folder)
    classes = {
        "mt5": transformers.MT5EncoderModel,
        "t5": transformers.T5EncoderModel,
        "clip_text_model": transformers.CLIPTextModelWithProjection,
        "clip": transformers.CLIPTextModelWithProjection,
    }
    if config.model_type not in classes:
        raise ValueError(f"{folder}: text encoder type {config.model_type!r} is not one of {sorted(classes)}")
    model = classes[config.model_type].from_pretrained(folder, torch_dtype=dtype)
    return model.eval().requires_grad_(False)


def load_tokenizer(folder):
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    return AutoTokenizer.from_pretrained(folder)


class TextConditioner:
    """Tokenise and encode prompts for one model version: one sequence encoder, optionally a pooled CLIP encoder."""

    def __init__(self, encoder, tokenizer, max_length: int = 512,
                 pooled_encoder=None, pooled_tokenizer=None, pooled_max_length: int = 77):
        if (pooled_encoder is None) != (pooled_tokenizer is None):
            raise ValueError("the pooled (CLIP) text encoder and its tokenizer must be given together")
        self.encoder, self.tokenizer, self.max_length = encoder, tokenizer, max_length
        self.pooled_encoder, self.pooled_tokenizer, self.pooled_max_length = pooled_encoder, pooled_tokenizer, pooled_max_length

    def _tokens(self, tokenizer, prompts: List[str], max_length: int, device):
        for prompt, ids in zip(prompts, tokenizer(prompts, verbose=False).input_ids):
            if len(ids) > max_length:
                logger.warning("prompt truncated to %d of its %d tokens: %r", max_length, len(ids), prompt[:80] + "...")
        batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                          return_attention_mask=True, return_tensors="pt")
        return batch.input_ids.to(device), batch.attention_mask.to(device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEmbeddings:
        prompts = list(prompts)
        device = next(self.encoder.parameters()).device
        ids, mask = self._tokens(self.tokenizer, prompts, self.max_length, device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = None
        if self.pooled_encoder is not None:
            pdev = next(self.pooled_encoder.parameters()).device
            pids, pmask = self._tokens(self.pooled_tokenizer, prompts, self.pooled_max_length, pdev)
            pooled = self.pooled_encoder(input_ids=pids, attention_mask=pmask).text_embeds
        return TextEmbeddings(hidden, mask, pooled)

    def to(self, device) -> "TextConditioner":
        self.encoder.to(device)
        if self.pooled_encoder is not None:
            self.pooled_encoder.to(device)
        return self
