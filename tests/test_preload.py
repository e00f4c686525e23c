"""The analysis modules' imports overlap the read of a CSV (`fleet.preload_analysis`): the
thread starts only for a reader that leaves a core idle, never for a source it cannot sniff,
and a command whose imports ran on it prints exactly what the library computes. Each case
runs in a fresh interpreter, since this one has the modules loaded already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES

from spikelens.fleet import ANALYSIS_MODULES

ROOT = Path(__file__).resolve().parents[1]
STORM = SAMPLES / "csv" / "bench_r05_fp16_overflow_storm.csv"


def _fresh(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SPIKELENS_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


_PROBE = """
import sys, threading
from spikelens.fleet import ANALYSIS_MODULES, preload_analysis
preload_analysis({source!r})
started = [t for t in threading.enumerate() if t.name == "spikelens-preload"]
for t in started:
    t.join()
print(len(started), all(m in sys.modules for m in ANALYSIS_MODULES))
"""


def test_preload_starts_for_a_csv_and_loads_the_analysis(tmp_path: Path) -> None:
    done = _fresh(_PROBE.format(source=str(STORM)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]
    assert "spikelens.detect" in ANALYSIS_MODULES


@pytest.mark.parametrize("name", ["jsonl", "missing"])
def test_no_preload_where_the_read_keeps_the_cores_busy_or_fails(
        tmp_path: Path, name: str) -> None:
    if name == "jsonl":
        source = tmp_path / "run.jsonl"
        source.write_text("".join(json.dumps({"step": i, "loss": 2.0 - i / 100}) + "\n"
                                  for i in range(50)))
    else:
        source = tmp_path / "nowhere.csv"
    done = _fresh(_PROBE.format(source=str(source)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "False"]


def test_the_command_with_the_preload_reports_what_the_library_does(tmp_path: Path) -> None:
    code = ("import sys\n"
            f"sys.argv = ['spikelens', 'analyze', {str(STORM)!r}, '--format', 'json']\n"
            "from spikelens.cli import main\n"
            "main()\n")
    done = _fresh(code, tmp_path)
    assert done.returncode == 0, done.stderr
    import spikelens
    from spikelens.report import render

    expected = render(spikelens.analyze(spikelens.read_log(STORM)), [], "json")
    assert json.loads(done.stdout) == json.loads(expected)
    assert json.loads(done.stdout)["runs"][0]["verdict"] != "healthy"


def test_report_html_with_the_preload_writes_the_page(tmp_path: Path) -> None:
    page = tmp_path / "out.html"
    code = ("import sys\n"
            f"sys.argv = ['spikelens', 'report', {str(STORM)!r}, '--html', {str(page)!r}]\n"
            "from spikelens.cli import main\n"
            "main()\n")
    done = _fresh(code, tmp_path)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "amp_overflow" in text
