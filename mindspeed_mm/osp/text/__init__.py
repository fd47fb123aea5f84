"""Text encoders (mT5 for v1.3; T5 + CLIP for v1.5), prompt templates and the optional prompt refiner."""
from __future__ import annotations

from .encoders import TextConditioner, TextEmbeddings, load_text_encoder, load_tokenizer
from .refiner import PromptRefiner
from .templates import NO_TEMPLATE, TEMPLATES, V13_TEMPLATE, V15_TEMPLATE, PromptTemplate

__all__ = [
    "NO_TEMPLATE",
    "PromptRefiner",
    "PromptTemplate",
    "TEMPLATES",
    "TextConditioner",
    "TextEmbeddings",
    "V13_TEMPLATE",
    "V15_TEMPLATE",
    "load_text_encoder",
    "load_tokenizer",
]
