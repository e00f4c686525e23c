"""The invalid-input corpus: every file in tests/data/invalid is paired in expected.json with
the exact one-line error the CLI must print, and every one exits 2 without a traceback."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from typer.testing import CliRunner

from spikelens.cli import app
from spikelens.readers import format_names

INVALID = DATA / "invalid"
EXPECTED: dict[str, str] = json.loads((INVALID / "expected.json").read_text())
runner = CliRunner()


def _expected(name: str, path: Path) -> str:
    return EXPECTED[name].replace("{path}", str(path)).replace(
        "{formats}", ", ".join(format_names())
    )


def _run(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_every_corpus_file_has_an_expected_message() -> None:
    files = {p.name for p in INVALID.iterdir() if p.name != "expected.json"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_bad_input_one_line_exit_2(name: str) -> None:
    path = INVALID / name
    result = _run("inspect", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {_expected(name, path)}\n"
    assert "Traceback" not in result.stdout


def test_missing_file() -> None:
    result = _run("inspect", "no/such/log.csv")
    assert result.exit_code == 2
    assert result.stderr == "Error: no/such/log.csv: no such file or directory\n"


def test_empty_directory(tmp_path: Path) -> None:
    result = _run("inspect", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path}: directory with no logs in it\n"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root can read a mode-000 file, so make open() itself refuse this one path
    path = tmp_path / "secret.csv"
    path.write_text("step,loss\n1,2.0\n")
    real_open = builtins.open

    def refusing_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    result = _run("inspect", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {path}: cannot read (Permission denied)\n"


def test_unknown_forced_format() -> None:
    result = _run("inspect", "--log-format", "parquet", str(INVALID / "no_loss.csv"))
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: unknown format 'parquet' (known: {', '.join(format_names())})\n"
    )
