"""Contracts over every registry entry: each reader has a real sample in sample_logs/ that
it reads (and that sniffing sends to it), and every sample in sample_logs/ is listed with its
source in sample_logs/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SAMPLES

from spikelens import read_log
from spikelens.readers import detect_format, format_names


def _samples() -> list[Path]:
    out: list[Path] = []
    for p in sorted(SAMPLES.rglob("*")):
        if p.name == "README.md" or not p.is_file():
            continue
        # a TensorBoard sample is its run directory
        out.append(p.parent if "tfevents" in p.name else p)
        if p.parent.parent.name.startswith("attempt_"):  # torchrun --log-dir: the run dir
            out[-1] = p.parents[3]
    return sorted(set(out))


@pytest.mark.parametrize("fmt", format_names())
def test_every_reader_has_a_sample_it_reads(fmt: str) -> None:
    mine = [p for p in _samples() if detect_format(p) == fmt]
    assert mine, f"no sample in sample_logs/ for the {fmt} reader"
    for p in mine:
        run = read_log(p)
        assert run.format == fmt
        assert len(run.steps) > 0


def test_every_sample_is_listed_with_its_source() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for p in SAMPLES.rglob("*"):
        if p.is_file() and p.name != "README.md":
            rel = p.relative_to(SAMPLES).as_posix()
            assert rel in readme, f"{rel} is not listed in sample_logs/README.md"
