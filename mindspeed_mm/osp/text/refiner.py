"""Optional prompt refiner: a local causal language model that rewrites a short prompt into a detailed caption.

Off by default. The official v1.3 sampler used a fine-tuned LLM for this (`--caption_refiner`); any local
transformers causal LM folder works here. Not used for image-to-video (it invents content absent from the image).
"""
from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_INSTRUCTION = ("Rewrite this short video description as one detailed paragraph describing subject, "
                       "motion, scene, lighting and camera: {}")


class PromptRefiner:
    def __init__(self, folder, device="cpu", dtype=torch.float32, max_new_tokens: int = 256,
                 instruction: str = DEFAULT_INSTRUCTION):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"prompt refiner folder {folder} has no config.json")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
        self.max_new_tokens, self.instruction = max_new_tokens, instruction

    @torch.no_grad()
    def __call__(self, prompt: str) -> str:
        text = self.instruction.format(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        inputs = self.tokenizer(text, return_tensors="pt").to(self.model.device)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        refined = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return refined or prompt
