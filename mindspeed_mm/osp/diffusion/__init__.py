"""Samplers and training objectives: v1.3 v-prediction (DDPM family), v1.5 flow matching with sigma shift."""
from __future__ import annotations

from .flow import (
    FlowMatchEulerSampler,
    FlowMatchingObjective,
    dynamic_shift,
    shift_sigmas,
)
from .guidance import classifier_free_guidance, rescale_guidance
from .vpred import VPredictionObjective, v13_sampler, v13_train_scheduler, uniform_timesteps_for_rank

__all__ = [
    "FlowMatchEulerSampler",
    "FlowMatchingObjective",
    "VPredictionObjective",
    "classifier_free_guidance",
    "dynamic_shift",
    "load_sampler",
    "rescale_guidance",
    "shift_sigmas",
    "uniform_timesteps_for_rank",
    "v13_sampler",
    "v13_train_scheduler",
]


def load_sampler(folder):
    """Read a `scheduler/` folder written by either sampler's `save_pretrained`."""
    import json
    from pathlib import Path

    config_file = Path(folder) / "scheduler_config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} is missing: a pipeline's scheduler/ folder needs scheduler_config.json")
    name = json.loads(config_file.read_text()).get("_class_name")
    if name == FlowMatchEulerSampler.__name__:
        return FlowMatchEulerSampler.from_pretrained(folder)
    if name == "EulerAncestralDiscreteScheduler":
        from diffusers import EulerAncestralDiscreteScheduler

        return EulerAncestralDiscreteScheduler.from_pretrained(folder)
    raise ValueError(f"{config_file}: unknown scheduler class {name!r} "
                     f"(expected {FlowMatchEulerSampler.__name__} or EulerAncestralDiscreteScheduler)")
