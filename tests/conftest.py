"""Shared fixtures: where the repo's own data lives, and the optional `../shared` folder
(present in CI and on the developers' machines, absent in a user's clone)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from spikelens.readers import READERS, Reader, format_names

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "sample_logs"
SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "bench" / "labels.json").exists():
        pytest.skip("../shared is not beside this checkout")
    return SHARED


def registered_reader(name: str) -> Reader:
    """A built-in reader, through the registry (every reader registered first)."""
    format_names()
    return READERS.get(name)


def isnan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)  # numpy float64 is a float


@pytest.fixture(autouse=True, scope="session")
def _private_result_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`spikelens analyze` caches results in the user cache dir; the tests use their own."""
    import os

    os.environ.setdefault("SPIKELENS_CACHE_DIR", str(tmp_path_factory.mktemp("result-cache")))
