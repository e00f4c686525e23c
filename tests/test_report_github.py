"""GitHub workflow annotations: level per event kind, `file=` the log, the top cause and its
remedy in the message, and the runner's escaping rules."""

from __future__ import annotations

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
from spikelens.report import render
from spikelens.report.github import command, escape_data, escape_property


def test_levels_follow_the_event_kind() -> None:
    run = long_run()
    lines = render(long_report(run), [run], "github").splitlines()
    heads = [line.split("::")[1].split(" ")[0] for line in lines]
    # oscillation, spike, grad-norm surge (informational), nonfinite, verdict
    assert heads == ["notice", "warning", "notice", "error", "notice"]
    assert lines[3] == (
        "::error file=runs/fp16_lm/train_log.csv,title=spikelens%3A nonfinite at step 1500::"
        "nonfinite on loss, steps 1500–1501 (peak 1500), size non-finite, z inf, recovered: "
        "yes, 1 step.%0ALikely cause: amp_overflow (score 0.88): Non-finite loss on a skipped "
        "step; the loss scale was cut 65536 → 32768.%0ARemedy: Use bf16, or start GradScaler "
        "at 2**14 with growth_interval 2000."
    )
    assert lines[0].endswith("::oscillation on loss, steps 200–400, size period 20, amplitude "
                             "15.3%25, recovered: -.")


def test_bloom_spike_is_a_warning_on_the_log_file() -> None:
    lines = render(bloom_report(), [], "github").splitlines()
    assert lines[0].startswith(f"::warning file={BLOOM_SOURCE},title=spikelens%3A spike at step "
                               "31219::spike on loss, steps 31216–31250 (peak 31219)")
    assert "%0ALikely cause: grad_explosion (score 0.93): The grad norm climbed" in lines[0]
    assert lines[1] == (f"::notice file={BLOOM_SOURCE},title=spikelens%3A reader warning::"
                        f"{BLOOM_SOURCE}: steps 31223-31249 are not in the log")
    assert lines[2] == (f"::notice file={BLOOM_SOURCE},title=spikelens%3A spiky::spiky: "
                        f"{BLOOM_SOURCE} — 1 spike; worst: spike at step 31219, likely "
                        "grad_explosion")
    assert len(lines) == 3


def test_divergence_is_an_error() -> None:
    ev = bloom_report().runs[0].findings[0].event
    div = type(ev)(kind="divergence", metric="loss", start_step=5, peak_step=9, end_step=20,
                   recovered=False, size=ev.size)
    rr = RunReport("d.log", "csv", "diverged", StepInfo(0, 20, 21, 1), {"loss": "loss"},
                   (Finding(div),), ())
    first = render(Report(runs=(rr,)), [], "github").splitlines()[0]
    assert first.startswith("::error file=d.log,title=spikelens%3A divergence at step 9::")
    assert "recovered: no." in first


def test_escaping_follows_the_runner() -> None:
    assert escape_data("100% done\r\nnext") == "100%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    assert command("warning", "m", file="x,y.log", title="t: 1") == \
        "::warning file=x%2Cy.log,title=t%3A 1::m"
    # a log cannot end the annotation early or start a second command
    ev = bloom_report().runs[0].findings[0].event
    cause = Evidence("bad_batch", 0.5, "evil\n::error::injected", {}, "r")
    rr = RunReport("a,b:c.log", "csv", "spiky", StepInfo(0, 1, 2, 1), {"loss": "loss"},
                   (Finding(ev, (cause,)),), ("w\n::set-output name=x::y",))
    out = render(Report(runs=(rr,)), [], "github")
    assert all(line.startswith(("::warning ", "::notice ")) for line in out.splitlines())
    assert "file=a%2Cb%3Ac.log," in out
    assert "evil%0A::error::injected" in out


def test_empty_eventless_and_multi_run() -> None:
    assert render(empty_report(), [], "github") == \
        "::notice title=spikelens%3A verdict::no runs analysed. Runs: none\n"
    assert render(healthy_report(), [], "github") == (
        "::notice file=runs/clean/metrics.jsonl,title=spikelens%3A healthy::healthy: "
        "runs/clean/metrics.jsonl — no events\n")
    lines = render(multi_report(), [], "github").splitlines()
    assert lines[-2] == ("::notice title=spikelens%3A recurring incident::incident at step 918 "
                         "recurs in: a.log (step 918), b.log (step 919)")
    assert lines[-1] == ("::notice title=spikelens%3A verdict::spiky: worst of 2 runs "
                         f"(1 spiky, 1 healthy). Runs: runs/clean/metrics.jsonl, {BLOOM_SOURCE}")
