"""`report --html` over many logs goes through the fleet engine (process pool, result cache)
and writes the very page the in-process analysis writes; the cross-run passes reuse what the
first pass parsed instead of reading each log again; a damaged compressed log is one line
naming it (exit 2), never "empty file" and never silently skipped in a sweep folder."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from fleet_sweep import jsonl_text, write_sweep
from typer.testing import CliRunner

from spikelens import analyze
from spikelens.cli import app
from spikelens.errors import LogFormatError
from spikelens.fleet import analyze_sources
from spikelens.paths import expand_candidates, expand_sources
from spikelens.readers import read_log, read_runs
from spikelens.report import render

BAD = (200, 410)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    write_sweep(root, 5, steps=600, bad=BAD, bad_runs=(0, 1, 2, 3))
    return root


def test_report_html_over_a_sweep_is_the_in_process_page(sweep: Path, tmp_path: Path) -> None:
    runs = [r for s in expand_sources([str(sweep)]) for r in read_runs(s)]
    expected = render(analyze(runs), runs, "html", plotlyjs="cdn")
    cache = tmp_path / "cache"
    for jobs in ("2", "1"):  # cold through the pool, then warm from the cache
        page = tmp_path / f"page-{jobs}.html"
        r = CliRunner().invoke(app, ["report", str(sweep), "--html", str(page), "--plotlyjs",
                                     "cdn", "--jobs", jobs, "--cache-dir", str(cache)])
        assert r.exit_code == 0, r.stderr
        assert page.read_text(encoding="utf-8") == expected
    assert len(list(cache.rglob("*.pkl"))) >= 5  # the analysis went through the cache


def test_the_cross_run_passes_read_each_log_once(sweep: Path, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    import spikelens.readers

    reads: list[str] = []
    real = spikelens.readers.read_runs

    def counted(path: object, *args: object, **kwargs: object) -> object:
        reads.append(str(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(spikelens.readers, "read_runs", counted)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the passes keep the parsed runs
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    found = expand_candidates([str(sweep)])
    totals: list[int] = []
    fleet = analyze_sources([s for s, _ in found], jobs=1, found_in=[w for _, w in found],
                            total=totals.append)
    assert totals[1:], "the sweep's shared bad batches must start the cross-run passes"
    assert sorted(reads) == sorted(s for s, _ in found)  # each log read once, not per pass
    assert len(fleet.report.recurrences) == 2
    assert not list(tmp_path.glob("spikelens-fleet-*"))  # the kept runs are removed


def test_a_gzip_cut_after_its_header_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "metrics.jsonl.gz"
    p.write_bytes(gzip.compress(jsonl_text(0, 300).encode())[:10])
    with pytest.raises(LogFormatError, match=r"metrics\.jsonl\.gz: not a valid gzip stream"):
        read_log(p)
    r = CliRunner().invoke(app, ["analyze", str(p), "--no-cache"])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {p}: not a valid gzip stream: it ends before any data")
    assert r.stderr.count("\n") == 1


@pytest.mark.parametrize("damage", ["header only", "garbage"])
def test_a_damaged_gzip_in_a_sweep_is_reported_not_skipped(sweep: Path, damage: str) -> None:
    bad = sweep / "run-09" / "metrics.jsonl.gz"
    bad.parent.mkdir()
    data = gzip.compress(jsonl_text(9, 300).encode())
    bad.write_bytes(data[:10] if damage == "header only" else data[:10] + os.urandom(500))
    r = CliRunner().invoke(app, ["analyze", str(sweep), "--jobs", "1", "--no-cache"])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"Error: {bad}: ") and r.stderr.count("\n") == 1
    assert "gzip" in r.stderr and "empty file" not in r.stderr
