"""Shared test helpers. Fixtures are copies of ../shared/fixtures (see tests/fixtures/README.md)."""
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny v1.3 WF-VAE saved as a model folder (for the CLI tests)."""
    import torch

    from mindspeed_mm.osp.vae import WFVAE

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny_v13"
    WFVAE.from_preset("tiny_v13").save_pretrained(path)
    return path
