"""The library's documented calls (README: `spikelens.read_log`, `spikelens.analyze`,
`spikelens.render`) work whatever was imported before them. `spikelens.analyze` is both a
lazily exposed function and the name of a module; importing the module first (as the CLI,
the fleet and the analysis preload do) used to leave `spikelens.analyze` a module that could
not be called. Each case runs in a fresh interpreter, since import order is the point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLES

BLOOM = SAMPLES / "megatron" / "bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("first", [
    "",
    "import spikelens.analyze",
    "from spikelens.analyze import report_of",
    "import spikelens.cli",
    "import spikelens.fleet",
])
def test_spikelens_analyze_is_callable_after_any_import(first: str) -> None:
    code = (f"{first}\n"
            "import spikelens\n"
            f"run = spikelens.read_log({str(BLOOM)!r})\n"
            "report = spikelens.analyze(run)\n"
            "from spikelens import analyze\n"
            "again = analyze([run])\n"
            "print(report.runs[0].verdict, again.runs[0].verdict,\n"
            "      spikelens.render(report, [run], 'json')[:1])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["spiky", "spiky", "{"]
