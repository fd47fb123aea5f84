"""Text conditioning with tiny random encoders and word-level tokenizers built in the test (no downloads)."""
from __future__ import annotations

import pytest
import torch

from mindspeed_mm.osp.text import (
    PromptRefiner,
    TextConditioner,
    V13_TEMPLATE,
    V15_TEMPLATE,
    load_text_encoder,
    load_tokenizer,
)
from mindspeed_mm.osp.text.tiny import tiny_clip_text_encoder, tiny_t5_encoder, tiny_tokenizer


def test_templates_follow_the_official_samplers():
    pos, neg = V13_TEMPLATE.apply(["a cat"])
    assert pos == ["high quality, high aesthetic, a cat"] and neg[0].startswith("nsfw, lowres, bad anatomy")
    pos, neg = V15_TEMPLATE.apply(["a cat", "a dog"], ["rain", "snow"])
    assert pos[1] == "high quality, a dog"
    assert neg[0].startswith("Worst quality, Normal quality") and neg[0].endswith("Walking backward. rain")
    with pytest.raises(ValueError, match="negative prompts"):
        V15_TEMPLATE.apply(["a"], ["x", "y"])


def test_v13_mt5_hidden_states_and_mask(tmp_path):
    enc, tok = tiny_t5_encoder(16, multilingual=True), tiny_tokenizer(512)
    enc.save_pretrained(tmp_path / "text_encoder")
    tok.save_pretrained(tmp_path / "tokenizer")
    enc2, tok2 = load_text_encoder(tmp_path / "text_encoder"), load_tokenizer(tmp_path / "tokenizer")
    assert type(enc2).__name__ == "MT5EncoderModel"
    cond = TextConditioner(enc2, tok2, max_length=512)
    out = cond.encode(["a cat on the street", "a dog"])
    assert out.hidden_states.shape == (2, 512, 16) and out.pooled is None
    assert out.attention_mask.sum(1).tolist() == [6, 3]  # words + </s>
    # the padded encoding equals an unpadded forward on the real tokens
    ids = tok2("a dog", return_tensors="pt").input_ids
    direct = enc(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out.hidden_states[1, :3], direct[0], rtol=0, atol=1e-5)


def test_v15_t5_plus_clip_pooled(tmp_path):
    t5, clip = tiny_t5_encoder(16), tiny_clip_text_encoder(projection_dim=12)
    clip.save_pretrained(tmp_path / "text_encoder_2")
    clip2 = load_text_encoder(tmp_path / "text_encoder_2")
    assert type(clip2).__name__ == "CLIPTextModelWithProjection"
    cond = TextConditioner(t5, tiny_tokenizer(512), 512, clip2, tiny_tokenizer(77, bos=True), 77)
    out = cond.encode(["a red car", "night rain in the city"])
    assert out.hidden_states.shape == (2, 512, 16) and out.pooled.shape == (2, 12)
    ids = tiny_tokenizer(77, bos=True)("a red car", return_tensors="pt").input_ids
    torch.testing.assert_close(out.pooled[0], clip(input_ids=ids).text_embeds[0], rtol=0, atol=1e-5)
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        load_tokenizer(tmp_path / "nothing")


def test_prompt_refiner_with_a_tiny_local_causal_lm(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer(64)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=128,
                               eos_token_id=1, bos_token_id=3)).save_pretrained(tmp_path / "refiner")
    tok.save_pretrained(tmp_path / "refiner")
    refiner = PromptRefiner(tmp_path / "refiner", max_new_tokens=6, instruction="{}")
    a, b = refiner("a cat"), refiner("a cat")
    assert isinstance(a, str) and a == b and a  # greedy decoding is deterministic and non-empty


def test_long_prompts_are_truncated_with_a_warning(caplog):
    cond = TextConditioner(tiny_t5_encoder(16), tiny_tokenizer(8), max_length=8)
    with caplog.at_level("WARNING"):
        out = cond.encode(["a cat " * 10])
    assert out.attention_mask.sum() == 8 and "truncated to 8" in caplog.text


def test_osp_text_tiny_builds_encoders_over_the_dataset_words(tmp_path, capsys):
    from mindspeed_mm.osp import cli
    from mindspeed_mm.osp.text import TextConditioner, load_text_encoder, load_tokenizer

    anno = tmp_path / "anno.json"
    anno.write_text('[{"path": "a.jpg", "cap": ["A red Circle, moving left!"]}, {"path": "b.jpg", "cap": ["a blue square"]}]')
    out = tmp_path / "text"
    argv = ["text", "tiny", str(out), "--captions", str(anno), "--dim", "16", "--pooled-dim", "8", "--max-length", "8"]
    assert cli.main(argv) == 0
    assert "7 words" in capsys.readouterr().out
    tok = load_tokenizer(out / "tokenizer")
    ids = tok("a blue circle moving up").input_ids
    assert ids.count(tok.unk_token_id) == 1 and ids[-1] == tok.eos_token_id     # "up" is not a caption word
    text = TextConditioner(load_text_encoder(out / "text_encoder"), tok, 8, load_text_encoder(out / "text_encoder_2"),
                           load_tokenizer(out / "tokenizer_2"), 77)
    emb = text.encode(["a red circle", "a blue square"])
    assert emb.hidden_states.shape == (2, 8, 16) and emb.pooled.shape == (2, 8)
    assert not torch.equal(emb.hidden_states[0], emb.hidden_states[1])
    assert cli.main(argv) == 2 and "exists" in capsys.readouterr().err              # never over a folder
    assert cli.main([*argv[:2], str(tmp_path / "o2"), *argv[3:5], "--dim", "7"]) == 2
