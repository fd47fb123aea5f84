"""Prompt templates and default negative prompts of the official Open-Sora Plan samplers.

v1.3: Open-Sora-Plan `opensora/sample/sample.py`; v1.5: MindSpeed-MM's OpenSoraPlan pipeline, version "v1.5".
The official strings are triple-quoted with indentation; the T5/mT5 sentencepiece normaliser folds that whitespace,
so the stripped single-line forms below tokenise to the same ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence


@dataclass(frozen=True)
class PromptTemplate:
    positive: str = "{}"
    negative: str = ""

    def apply(self, prompts: Sequence[str], negative_prompts: Optional[Sequence[str]] = None):
        """Format each prompt; a user negative prompt is appended to the default one (as MindSpeed-MM does)."""
        positives = [self.positive.format(p) for p in prompts]
        if negative_prompts is None:
            negative_prompts = [""] * len(prompts)
        if len(negative_prompts) != len(prompts):
            raise ValueError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts: give one per prompt or one for all")
        negatives: List[str] = [" ".join(s for s in (self.negative, n) if s) for n in negative_prompts]
        return positives, negatives


V13_TEMPLATE = PromptTemplate(
    positive="high quality, high aesthetic, {}",
    negative=("nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
              "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."),
)

V15_TEMPLATE = PromptTemplate(
    positive="high quality, {}",
    negative=("Worst quality, Normal quality, Low quality, Low res, Blurry details, Jpeg artifacts, Grainy, watermark, "
              "too garish, Cropped, Out of frame, Out of focus, Transition, Jump cut, Bad anatomy, Bad proportions, "
              "Deformed, Disconnected limbs, Disfigured, duplicate, ugly, monochrome, mutation, disgusting, overexposed, "
              "underexposed, Subtitles, Motionless, Overall gray, Extra fingers, Poorly drawn hands, Poorly drawn face, "
              "Fused fingers, Extra legs, Walking backward."),
)

NO_TEMPLATE = PromptTemplate()

TEMPLATES = {"v1.3": V13_TEMPLATE, "v1.5": V15_TEMPLATE, "none": NO_TEMPLATE}
