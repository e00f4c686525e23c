"""Shared fixtures: where the repo's own data lives, and the optional `../shared` folder
(present in CI and on the developers' machines, absent in a user's clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "sample_logs"
SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "bench" / "labels.json").exists():
        pytest.skip("../shared is not beside this checkout")
    return SHARED
