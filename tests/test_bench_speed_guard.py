"""`benchmarks/speed.py` hashes the package's sources around its measurements, so that a
checkout edited during a run cannot pass for one version's figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed() -> ModuleType:
    path = list(sys.path)  # speed.py puts benchmarks/ first on it, for its own imports
    try:
        spec = importlib.util.spec_from_file_location("spikelens_bench_speed", SPEED)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = path


def test_the_digest_changes_with_an_edit_and_only_then(speed: ModuleType,
                                                        tmp_path: Path) -> None:
    pkg = tmp_path / "spikelens" / "readers"
    pkg.mkdir(parents=True)
    (tmp_path / "spikelens" / "__init__.py").write_text("")
    (pkg / "csv.py").write_text("X = 1\n")
    (tmp_path / "notes.txt").write_text("outside the package")
    before = speed.package_digest(tmp_path)
    assert speed.package_digest(tmp_path) == before
    (tmp_path / "notes.txt").write_text("edited, but not the package")
    assert speed.package_digest(tmp_path) == before
    (pkg / "csv.py").write_text("X = 2\n")
    edited = speed.package_digest(tmp_path)
    assert edited != before
    (pkg / "csv.py").rename(pkg / "jsonl.py")  # same bytes, another module
    assert speed.package_digest(tmp_path) not in (before, edited)
