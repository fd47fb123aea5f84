"""Shared helpers for the DiT tests: reading the official-implementation fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DIT_FIXTURES = Path(__file__).parent / "fixtures" / "dit"
V13_CASES = ("v13_t2v", "v13_t2v_padded", "v13_i2v", "v13_t2v_h4")
V15_CASES = ("v15_suv", "v15_suv_padded", "v15_suv_h4")


def read_case(case: str):
    folder = DIT_FIXTURES / case
    meta = json.loads((folder / "meta.json").read_text())
    return meta, load_file(str(folder / "weights.safetensors")), load_file(str(folder / "tensors.safetensors"))


def run_model(model, case: str, tensors, **kwargs):
    t = tensors
    if case.startswith("v13"):
        return model(t["hidden_states"], t["timestep"], t["encoder_hidden_states"], t["encoder_attention_mask"],
                     t["attention_mask"], **kwargs)
    return model(t["hidden_states"], t["timestep"], t["encoder_hidden_states"], t["encoder_attention_mask"],
                 t["pooled_projections"], attention_mask=t["attention_mask"], **kwargs)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny shapes run fastest on one thread on a shared CI machine; restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
