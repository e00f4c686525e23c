"""The analysis modules' imports overlap the read of a CSV (`fleet.preload_analysis`, the
`before_read` of `readers.read_runs`): the thread starts only for a reader that leaves a
core idle, the hook sees the format the read uses (sniffed once), and a command whose
imports ran on that thread prints exactly what the library computes. The thread cases run
in a fresh interpreter, since this one has the modules loaded already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES

from spikelens.errors import LogFormatError
from spikelens.fleet import ANALYSIS_MODULES
from spikelens.readers import read_runs

ROOT = Path(__file__).resolve().parents[1]
STORM = SAMPLES / "csv" / "bench_r05_fp16_overflow_storm.csv"


def _fresh(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SPIKELENS_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


def _command(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The console entry point with `argv`, in a fresh interpreter."""
    return _fresh(f"import sys\nsys.argv = ['spikelens', *{list(argv)!r}]\n"
                  "from spikelens.cli import main\nmain()\n", tmp_path)


_PROBE = """
import sys, threading
from spikelens.readers import format_names
format_names()  # the readers register as `read_runs` has them before its hook
from spikelens.fleet import ANALYSIS_MODULES, preload_analysis
preload_analysis({fmt!r})
started = [t for t in threading.enumerate() if t.name == "spikelens-preload"]
for t in started:
    t.join()
print(len(started), all(m in sys.modules for m in ANALYSIS_MODULES))
"""


@pytest.mark.parametrize(("fmt", "want"), [("csv", ["1", "True"]), ("jsonl", ["0", "False"]),
                                           ("tensorboard", ["0", "False"]),
                                           ("no-such-format", ["0", "False"])])
def test_preload_only_where_the_read_leaves_a_core_idle(
        tmp_path: Path, fmt: str, want: list[str]) -> None:
    done = _fresh(_PROBE.format(fmt=fmt), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == want
    assert "spikelens.detect" in ANALYSIS_MODULES


def test_before_read_gets_the_format_read_once(tmp_path: Path) -> None:
    seen: list[str] = []
    runs = read_runs(STORM, before_read=seen.append)
    assert seen == ["csv"] and len(runs) == 1
    log = tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps({"step": i, "loss": 2.0 - i / 100}) + "\n"
                           for i in range(50)))
    read_runs(log, before_read=seen.append)
    assert seen == ["csv", "jsonl"]
    with pytest.raises(LogFormatError):  # nothing to read: no hook, the one-line error
        read_runs(tmp_path / "nowhere.csv", before_read=seen.append)
    assert seen == ["csv", "jsonl"]


def test_the_command_with_the_preload_reports_what_the_library_does(tmp_path: Path) -> None:
    done = _command(tmp_path, "analyze", str(STORM), "--format", "json")
    assert done.returncode == 0, done.stderr
    import spikelens
    from spikelens.report import render

    expected = render(spikelens.analyze(spikelens.read_log(STORM)), [], "json")
    assert json.loads(done.stdout) == json.loads(expected)
    assert json.loads(done.stdout)["runs"][0]["verdict"] != "healthy"


def test_report_html_with_the_preload_writes_the_page(tmp_path: Path) -> None:
    page = tmp_path / "out.html"
    done = _command(tmp_path, "report", str(STORM), "--html", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "amp_overflow" in text
