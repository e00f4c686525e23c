"""The README's two opening commands stay true: the sample it analyses exists and loads, and
CI runs exactly its test command."""

from __future__ import annotations

import shlex

from conftest import ROOT

from spikelens import read_log


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands() -> None:
    cmds = _commands()
    assert len(cmds) == 2
    assert "spikelens analyze" in cmds[0]
    assert cmds[1].endswith("pytest")


def test_readme_sample_exists_and_reads() -> None:
    words = shlex.split(_commands()[0].split("spikelens analyze", 1)[1])
    for name in words:
        assert (ROOT / name).exists(), name
        assert "loss" in read_log(ROOT / name).roles


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci
