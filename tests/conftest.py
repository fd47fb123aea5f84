"""Shared test helpers. Fixtures are copies of ../shared/fixtures (see tests/fixtures/README.md)."""
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
