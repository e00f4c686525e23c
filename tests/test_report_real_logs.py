"""Every format rendered from real logs, end to end (read -> analyze -> render): the JSON
validates against the schema and agrees with the Report, and the other formats carry the
same verdict and events. Runs on every log in `sample_logs/`, on the BLOOM excerpt bundled
in tests/data/report/ and, when `../shared` is beside the checkout, on real logs there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from test_report_common import BLOOM_CSV

from spikelens.model import Report, Run
from spikelens.readers import read_runs
from spikelens.report import RENDERERS, render
from spikelens.report._common import is_incident
from spikelens.report.github import escape_property

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = sorted(p for p in (ROOT / "sample_logs").rglob("*")
                 if p.is_file() and p.name != "README.md" and not p.name.startswith("."))
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text("utf-8"))
REAL = [
    "megatron_deepspeed_text/bigscience_tr11-176B_first_lm_loss_spike_31214-31251.log",
    "megatron_deepspeed_text/bigscience_tr1-13B_spike_29020-29090.log",
    "megatron_deepspeed_text/bigscience_tr8-104B_exp1_glitch_7000-7220.log",
    "megatron_deepspeed_text/deepspeed_chat_step1_sft_opt-1.3b_fp16.log",
    "hf_trainer_state/qlora_25epochs_10000steps_trainer_state.json",
    "modded_nanogpt/124M_2024-10-10_Muon_eb5659d0.log",
    "wandb_export_csv/olmo2-peteish1_lr_schedule_wandb_export.csv",
]


def _analyze(runs: list[Run]) -> Report:
    from spikelens.analyze import analyze

    return analyze(runs)


def _read(path: Path) -> list[Run]:
    return read_runs(path)


def check_every_format(report: Report, runs: list[Run], tmp_path: Path) -> None:
    doc = json.loads(render(report, runs, "json"))
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    for rr, jr in zip(report.runs, doc["runs"], strict=True):
        assert jr["verdict"] == rr.verdict
        assert [(e["kind"], e["peak_step"]) for e in jr["events"]] == \
            [(f.event.kind, f.event.peak_step) for f in rr.findings]
    terminal = render(report, runs, "terminal", color=False, verbose=True)
    assert "\x1b[" not in terminal
    if len(report.runs) == 1:
        assert terminal.startswith(f"{report.runs[0].verdict}: ")
    md = render(report, runs, "markdown")
    gh = render(report, runs, "github").splitlines()
    assert all(re.match(r"::(notice|warning|error) ", line) for line in gh)
    for rr in report.runs:
        incidents = [f for f in rr.findings if is_incident(f.event)]
        mine = [line for line in gh if f"file={escape_property(rr.source)}," in line]
        assert sum(f"at step {f.event.peak_step}::" in line for f in incidents
                   for line in mine) == len(incidents)
        for f in rr.findings:
            assert f"at step {f.event.peak_step}" in md or f.event.kind == "oscillation"
    page = render(report, runs, "html", plotlyjs="cdn")
    (tmp_path / "page.html").write_text(page, encoding="utf-8")
    assert page.count('<article class="card') == sum(len(r.findings) for r in report.runs)
    # a plot per run, and for several runs an overlay of their losses
    overlay = len(report.runs) > 1 and sum(r.has("loss") for r in runs) > 1
    assert page.count('class="plot"') == len(report.runs) + overlay
    assert ('id="runs-table"' in page) == (len(report.runs) > 1)
    assert set(RENDERERS.names()) == {"terminal", "json", "markdown", "github", "html"}


def test_bundled_bloom_excerpt(tmp_path: Path) -> None:
    runs = _read(BLOOM_CSV)
    check_every_format(_analyze(runs), runs, tmp_path)


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name[:40] for p in SAMPLES])
def test_sample_logs(path: Path, tmp_path: Path) -> None:
    runs = _read(path)
    check_every_format(_analyze(runs), runs, tmp_path)


@pytest.mark.parametrize("name", REAL, ids=[Path(n).stem[:40] for n in REAL])
def test_shared_real_logs(name: str, tmp_path: Path) -> None:
    path = SHARED / "real_logs" / name
    if not path.exists():
        pytest.skip("../shared/real_logs is not beside this checkout")
    runs = _read(path)
    check_every_format(_analyze(runs), runs, tmp_path)


def test_modded_nanogpt_logs_together(tmp_path: Path) -> None:
    folder = SHARED / "real_logs" / "modded_nanogpt"
    if not folder.exists():
        pytest.skip("../shared/real_logs is not beside this checkout")
    runs = [r for name in ("124M_2024-10-10_Muon_eb5659d0.log",
                           "124M_2024-10-14_ModernArch_dabaaddd.log")
            for r in _read(folder / name)]
    check_every_format(_analyze(runs), runs, tmp_path)
