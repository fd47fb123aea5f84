"""Small random text encoders and word-level tokenizers built in code: for tests and the tiny CLI presets (over
TINY_WORDS), and, over a dataset's own vocabulary, the frozen text encoders of the embedded default model
(`osp text tiny`, `save_tiny_text_encoders`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import torch

TINY_WORDS = (
    "a the of and in on with at to is are high quality aesthetic video cat dog man woman car street city sky sea "
    "forest mountain sunset night rain snow running walking flying red blue green slow motion camera close up "
    "nsfw lowres bad anatomy worst low normal blurry watermark text"
).split()


def caption_words(captions) -> list[str]:
    """Sorted distinct lower-case words (letters, digits, _) of `captions`, as the word tokenizer splits them."""
    return sorted({w for c in captions for w in re.findall(r"\w+", c.lower())})


def _vocab_size(words: Sequence[str]) -> int:
    return 64 + len(words)


def tiny_tokenizer(model_max_length: int, bos: bool = False, words: Sequence[str] = TINY_WORDS):
    """Word-level fast tokenizer over `words`: <pad>=0, </s>=1, <unk>=2, <s>=3, then the words; appends </s> (and
    prepends <s> if `bos`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    vocab = {w: i for i, w in enumerate(specials + list(dict.fromkeys(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("removed")])
    single = ("<s> $A </s>" if bos else "$A </s>")
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("</s>", 1), ("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>", model_max_length=model_max_length)


def tiny_t5_encoder(d_model: int, multilingual: bool = False, seed: int = 0, words: Sequence[str] = TINY_WORDS):
    from transformers import MT5Config, MT5EncoderModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg_cls, model_cls = (MT5Config, MT5EncoderModel) if multilingual else (T5Config, T5EncoderModel)
    config = cfg_cls(vocab_size=_vocab_size(words), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                     num_heads=2, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                     decoder_start_token_id=0)
    return model_cls(config).eval()


def tiny_clip_text_encoder(projection_dim: int, seed: int = 0, words: Sequence[str] = TINY_WORDS):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=_vocab_size(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim,
                            pad_token_id=0, bos_token_id=3, eos_token_id=1)
    return CLIPTextModelWithProjection(config).eval()


def save_tiny_text_encoders(out, words: Sequence[str], dim: int, pooled_dim: Optional[int], max_length: int,
                            seed: int = 0) -> Path:
    """transformers folders of a tiny T5 encoder (hidden size `dim`, as the DiT's caption_channels) and, with
    `pooled_dim`, a tiny CLIP text model (projection `pooled_dim`, as pooled_projection_dim), each with a
    word-level tokenizer over `words`: `out/text_encoder`, `out/tokenizer` (+ `_2`). Random and frozen: the
    denoiser learns to read them. Refuses an existing `out`."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another folder or remove it")
    words = sorted(dict.fromkeys(w.lower() for w in words))
    parts = {"text_encoder": tiny_t5_encoder(dim, seed=seed, words=words),
             "tokenizer": tiny_tokenizer(max_length, words=words)}
    if pooled_dim is not None:
        parts.update(text_encoder_2=tiny_clip_text_encoder(pooled_dim, seed=seed, words=words),
                     tokenizer_2=tiny_tokenizer(77, bos=True, words=words))
    for name, part in parts.items():
        part.save_pretrained(out / name)
    return out
