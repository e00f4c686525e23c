"""The terminal report: verdict first, the event table, the remedy, verbose details, and
plain text with no escape codes when colour is off."""

from __future__ import annotations

import re

import pytest
from test_report_common import (
    BLOOM_SOURCE,
    bloom_report,
    empty_report,
    healthy_report,
    long_report,
    long_run,
    multi_report,
)

from spikelens.model import Evidence, Finding, Report, RunReport, StepInfo
from spikelens.report import auto_color, render
from spikelens.report._common import evidence_label

ANSI = re.compile(r"\x1b\[")


def test_bloom_plain_text_exactly() -> None:
    out = render(bloom_report(), [], "terminal", color=False)
    row = "1   spike   31216–31250 (peak 31219)   ×2.32, z 14.2   yes, 34 steps   "
    assert out.splitlines() == [
        f"spiky: {BLOOM_SOURCE} — 1 spike; worst: spike at step 31219, likely grad_explosion",
        "megatron log, steps 31214–31251 (11 logged steps); metrics: loss=lm loss, "
        "lr=learning rate,",
        "grad_norm=grad norm, skipped=number of skipped iterations, nan_count=number of nan "
        "iterations,",
        "samples=consumed samples, tokens=consumed tokens",
        "#   kind    steps                      size            recovered       top cause",
        "─" * 90,
        row + "grad_explosion 0.93",
        " 1. The grad norm climbed 0.242 → 960 (×3970) over the 5 logged steps before the loss "
        "peaked at step",
        " 31219, while the LR stayed at 5.28e-05.",
        "",
        "Remedy for the worst event (spike at step 31219, grad_explosion): Restart from a "
        "checkpoint before",
        "step 31116, skip the batches of steps 31216–31219 (consumed samples 47772592–47778736), "
        "and clip the",
        "grad norm at 0.4 (above its 99th percentile before the rise).",
        "",
        "Warnings (1):",
        f"  - {BLOOM_SOURCE}: steps 31223-31249 are not in the log",
    ]
    assert not ANSI.search(out)


def test_first_line_is_the_verdict_in_every_case() -> None:
    run = long_run()
    firsts = [render(r, rs, "terminal", color=False).splitlines()[0] for r, rs in [
        (bloom_report(), []), (long_report(run), [run]), (healthy_report(), []),
        (multi_report(), []), (empty_report(), [])]]
    assert firsts == [
        f"spiky: {BLOOM_SOURCE} — 1 spike; worst: spike at step 31219, likely grad_explosion",
        "nonfinite: runs/fp16_lm/train_log.csv — 1 nonfinite, 1 spike, 1 oscillation, "
        "1 grad_norm spike; worst: nonfinite at step 1500, likely amp_overflow",
        "healthy: runs/clean/metrics.jsonl — no events",
        "spiky: worst of 2 runs (1 spiky, 1 healthy)",
        "no runs analysed",
    ]


def test_remedy_is_the_worst_events() -> None:
    run = long_run()
    out = render(long_report(run), [run], "terminal", color=False)
    assert "Remedy for the worst event (nonfinite at step 1500, amp_overflow): Use bf16, or " \
           "start" in out
    assert "Skip the batch of step 800" not in out  # the spike's remedy is verbose-only


def test_verbose_adds_every_cause_evidence_and_skipped_causes() -> None:
    quiet = render(bloom_report(), [], "terminal", color=False)
    loud = render(bloom_report(), [], "terminal", color=False, verbose=True)
    # evidence in plain words, numbers rounded for reading
    flat = " ".join(loud.split())
    facts = "; ".join(f"{evidence_label(k)}: {v}" for k, v in [
        ("grad_norm_before", "0.242"), ("grad_norm_peak", "960"), ("growth", "3968"),
        ("lead_steps", "5"), ("lr_ratio", "1")])
    assert f"evidence: {facts} remedy:" in flat
    assert "grad_norm_before" not in loud
    for line in [
        "Event 1: spike, steps 31216–31250 (peak 31219)",
        "  2. bad_batch (score 0.2): The loss rose 2.32× in one step and was back near 2.2 "
        "within 31 steps.",
        "     remedy: Inspect consumed samples 47776688–47778736.",
        "  not judged: amp_overflow (needs loss_scale, not in this log)",
    ]:
        assert line in loud.splitlines()
        assert line not in quiet.splitlines()


def test_wide_terminal_puts_the_summary_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    import spikelens.report as rep

    monkeypatch.setattr(rep, "_width", lambda: 160)
    out = render(bloom_report(), [], "terminal", color=False)
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert re.match(r"#\s+kind\s+steps\s+size\s+recovered\s+top cause\s+summary$", header)
    assert " 1. The grad norm" not in out


def test_multi_run_has_a_section_per_run_and_the_recurrences() -> None:
    out = render(multi_report(), [], "terminal", color=False)
    lines = out.splitlines()
    assert lines[0] == "spiky: worst of 2 runs (1 spiky, 1 healthy)"
    # the summary table first, worst run first, one row per run
    assert re.match(r"run\s+verdict\s+incidents\s+worst incident\s+top cause$", lines[2])
    assert re.match(r"tests/data/report/bloom_tr11-176B_31214\S*\s+spiky\s+1 spike\s+"
                    r"spike at step 31219\s+grad_explosion$", lines[4])
    assert re.match(r"runs/clean/metrics\.jsonl\s+healthy\s+none\s+-\s+-$", lines[6])
    # then the recurrences, then a section per run, worst first
    assert "  R1 at step 918: 2 runs: a.log (step 918), b.log (step 919)" in lines
    first = next(i for i, line in enumerate(lines) if line.startswith("run 1/2: "))
    assert lines[first].startswith(f"run 1/2: {BLOOM_SOURCE} ───")
    second = next(i for i, line in enumerate(lines) if line.startswith("run 2/2: "))
    assert lines[second].startswith("run 2/2: runs/clean/metrics.jsonl ───")
    assert lines[second + 1] == "healthy: runs/clean/metrics.jsonl — no events"
    assert lines[-1] == "No events."


def test_colour_when_asked_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    out = render(bloom_report(), [], "terminal", color=True)
    assert ANSI.search(out)
    monkeypatch.setenv("NO_COLOR", "1")
    assert auto_color() is False
    assert not ANSI.search(render(bloom_report(), [], "terminal"))
    monkeypatch.delenv("NO_COLOR")
    # pytest captures stdout: not a terminal, so no colour either
    assert not ANSI.search(render(bloom_report(), [], "terminal"))


def test_text_from_the_log_is_not_rich_markup() -> None:
    ev = bloom_report().runs[0].findings[0]
    cause = Evidence("bad_batch", 0.5, "[bold red]loss[/] rose", {}, "[link=x]skip[/link]")
    rr = RunReport("[red]x.log", "csv", "spiky", StepInfo(0, 1, 2, 1), {"loss": "[i]l"},
                   (Finding(ev.event, (cause,)),), ("[blink]w",))
    out = render(Report(runs=(rr,)), [], "terminal", color=False)
    for text in ["[red]x.log", "loss=[i]l", "[bold red]loss[/] rose", "[link=x]skip[/link]",
                 "- [blink]w"]:
        assert text in out
