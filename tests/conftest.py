"""Shared fixtures: where the repo's own data lives, and the optional `../shared` folder
(present in CI and on the developers' machines, absent in a user's clone)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def random_event_table(rng: Any, wide: bool, rows: int, words: Sequence[str],
                       summary_words: Sequence[str], summary_max: int) -> Any:
    """The terminal's event table (`_event_table`) with `rows` rows of random cells: up to 3
    `words` a cell, and up to `summary_max - 1` `summary_words` in the last (summary) column
    of a wide table, for the plain layout's tests against rich's own."""
    from rich.text import Text

    from spikelens.report.terminal import _event_table

    table = _event_table(wide)
    for i in range(rows):
        cells = [str(i + 1)]
        for c in range(len(table.columns) - 1):
            last = c == len(table.columns) - 2
            k = int(rng.integers(0, summary_max if last and wide else 4))
            cells.append(" ".join(str(w) for w in rng.choice(summary_words if last else words,
                                                             k)))
        table.add_row(*(Text(c) for c in cells))
    return table


def isnan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)  # numpy float64 is a float


@pytest.fixture(autouse=True, scope="session")
def _private_result_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`spikelens analyze` caches results in the user cache dir; the tests use their own."""
    import os

    os.environ.setdefault("SPIKELENS_CACHE_DIR", str(tmp_path_factory.mktemp("result-cache")))
