"""This process's random number generators, captured and restored for resumable checkpoints.

Python `random`, numpy's global generator, torch's CPU generator, every CUDA device's generator when CUDA is up
(the NPU's through torch_npu's `torch.cuda` redirect), and megatron's model-parallel RNG tracker (the streams
that dropout and weight init fork from inside TP regions). These states differ per rank.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict:
    from megatron.core import tensor_parallel
    states = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "tracker": {name: state.clone() for name, state in
                          tensor_parallel.get_cuda_rng_tracker().get_states().items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict) -> None:
    from megatron.core import tensor_parallel
    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(dict(states["tracker"]))
