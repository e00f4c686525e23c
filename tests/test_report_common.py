"""Sample reports for the renderer tests, and tests of the helpers they share.

The reports are built by hand so the renderers can be tested exactly, independent of the
detector: a BLOOM-176B iteration-31219 report (the textbook grad explosion, on the real
excerpt in tests/data/report/), a long synthetic run that has every panel of the HTML page
and every kind of event, a run with no events, and an empty report. The other
`test_report_*.py` files and `test_browser.py` import the builders from here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.model import (
    Event,
    Evidence,
    Finding,
    Recurrence,
    Report,
    Run,
    RunReport,
    Size,
    Skipped,
    StepInfo,
)
from spikelens.readers._base import RawLog, build_run
from spikelens.report import RENDERERS, render
from spikelens.report._common import (
    downsample,
    envelope_indices,
    event_counts,
    fmt_num,
    fmt_size,
    fmt_steps,
    jsonable,
    overall_line,
    round_sig,
    sample_steps,
    verdict_line,
    worst_finding,
)

DATA = Path(__file__).resolve().parent / "data" / "report"
BLOOM_CSV = DATA / "bloom_tr11-176B_31214-31251.csv"
BLOOM_SOURCE = "tests/data/report/bloom_tr11-176B_31214-31251.csv"
XSS = "<img src=x onerror=alert(1)>"

BLOOM_SUMMARY = (
    "The grad norm climbed 0.242 → 960 (×3970) over the 5 logged steps before the loss "
    "peaked at step 31219, while the LR stayed at 5.28e-05."
)
BLOOM_REMEDY = (
    "Restart from a checkpoint before step 31116, skip the batches of steps 31216–31219 "
    "(consumed samples 47772592–47778736), and clip the grad norm at 0.4 (above its 99th "
    "percentile before the rise)."
)


def bloom_run() -> Run:
    return build_run(RawLog(frame=pd.read_csv(BLOOM_CSV)), BLOOM_CSV, "megatron")


def bloom_finding() -> Finding:
    event = Event(
        kind="spike", metric="loss", start_step=31216, peak_step=31219, end_step=31250,
        recovered=True, size=Size(z=14.234712, ratio=2.3185712345), recovery_steps=34,
        baseline=2.198845,
    )
    grad = Evidence(
        cause="grad_explosion", score=0.93, summary=BLOOM_SUMMARY,
        evidence={"grad_norm_before": 0.242, "grad_norm_peak": 960.351,
                  "growth": 3968.392561983471, "lead_steps": 5, "lr_ratio": 1.0},
        remedy=BLOOM_REMEDY,
    )
    batch = Evidence(
        cause="bad_batch", score=0.2,
        summary="The loss rose 2.32× in one step and was back near 2.2 within 31 steps.",
        evidence={"rise_steps": 1, "recurs_in_runs": 0},
        remedy="Inspect consumed samples 47776688–47778736.",
    )
    return Finding(event=event, causes=(grad, batch),
                   skipped=(Skipped("amp_overflow", "needs loss_scale, not in this log"),))


def bloom_report() -> Report:
    run = RunReport(
        source=BLOOM_SOURCE, format="megatron", verdict="spiky",
        steps=StepInfo(first=31214, last=31251, count=11, interval=1),
        metrics={"loss": "lm loss", "lr": "learning rate", "grad_norm": "grad norm",
                 "skipped": "number of skipped iterations",
                 "nan_count": "number of nan iterations", "samples": "consumed samples",
                 "tokens": "consumed tokens"},
        findings=(bloom_finding(),),
        warnings=(f"{BLOOM_SOURCE}: steps 31223-31249 are not in the log",),
    )
    return Report(runs=(run,))


def long_frame(n: int = 2000, seed: int = 7) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A fp16 LM run: warmup + cosine LR, a one-step spike at 800 (grad norm jumps on the same
    step), a grad-norm surge at 1200, an overflow at 1500 (NaN grad norm, inf loss, scale
    halves, step skipped)."""
    rng = np.random.default_rng(seed)
    step = np.arange(1, n + 1)
    loss = 1.8 + 3.0 * np.exp(-step / 300) + rng.normal(0, 0.02, n)
    lr = np.where(step < 100, 3e-4 * step / 100,
                  3e-4 * 0.5 * (1 + np.cos(np.pi * (step - 100) / (n - 100))))
    grad = 0.9 + 0.1 * rng.standard_normal(n) ** 2
    scale = np.full(n, 65536.0)
    skipped = np.zeros(n)
    loss[step == 800] *= 3.1
    grad[step == 800] = 14.0
    grad[step == 1200] = 25.0
    loss[step == 1500] = np.inf
    grad[step == 1500] = np.nan
    scale[step >= 1500] = 32768.0
    skipped[step == 1500] = 1
    frame = pd.DataFrame({"step": step, "loss": loss, "lr": lr, "grad_norm": grad,
                          "loss_scale": scale, "skipped": skipped})
    return frame, {"grad_norm": (step == 1500)}


def long_run(n: int = 2000, source: str = "runs/fp16_lm/train_log.csv") -> Run:
    frame, nan_mask = long_frame(n)
    return build_run(RawLog(frame=frame, nan_mask=nan_mask), Path(source), "csv")


def long_findings() -> tuple[Finding, ...]:
    osc = Finding(Event(kind="oscillation", metric="loss", start_step=200, peak_step=300,
                        end_step=400, recovered=True, size=Size(z=3.1, ratio=1.12),
                        period=20.0, amplitude=0.153))
    spike = Finding(
        Event(kind="spike", metric="loss", start_step=800, peak_step=800, end_step=801,
              recovered=True, size=Size(z=41.5, ratio=3.1), recovery_steps=1, baseline=1.87),
        causes=(
            Evidence("bad_batch", 0.81, "A one-step rise ×3.10 with no LR change, no grad-norm "
                     "precursor and no loss-scale event.", {"rise_steps": 1}, "Skip the batch "
                     "of step 800 (samples 25568–25599) and resume from step 700."),
            Evidence("grad_explosion", 0.31, "The grad norm jumped ×15.6 on the same step.",
                     {"grad_norm_ratio": 15.6, "lead_steps": 0}, "Clip the grad norm at 1.2."),
        ),
    )
    surge = Finding(Event(kind="spike", metric="grad_norm", start_step=1200, peak_step=1200,
                          end_step=1201, recovered=True, size=Size(z=30.2, ratio=27.0)))
    nonfinite = Finding(
        Event(kind="nonfinite", metric="loss", start_step=1500, peak_step=1500, end_step=1501,
              recovered=True, size=Size(z=math.inf, ratio=math.inf), recovery_steps=1,
              first_nonfinite="grad_norm"),
        causes=(Evidence("amp_overflow", 0.88, "Non-finite loss on a skipped step; the loss "
                         "scale was cut 65536 → 32768.", {"scale_cuts": 1, "factor": 0.5,
                                                         "skipped_steps": 1,
                                                         "loss": math.inf},
                         "Use bf16, or start GradScaler at 2**14 with growth_interval 2000."),),
    )
    return (osc, spike, surge, nonfinite)


def long_report(run: Run, source: str | None = None) -> Report:
    steps = run.steps
    rr = RunReport(
        source=source or run.source, format=run.format, verdict="nonfinite",
        steps=StepInfo(int(steps[0]), int(steps[-1]), len(steps), run.interval),
        metrics=dict(run.roles), findings=long_findings(), warnings=run.warnings,
    )
    return Report(runs=(rr,))


def healthy_report(source: str = "runs/clean/metrics.jsonl") -> Report:
    return Report(runs=(RunReport(
        source=source, format="jsonl", verdict="healthy",
        steps=StepInfo(1, 1000, 1000, 1), metrics={"loss": "train_loss"}, findings=(),
        warnings=(),
    ),))


def empty_report() -> Report:
    return Report(runs=())


def multi_report() -> Report:
    bloom = bloom_report().runs[0]
    healthy = healthy_report().runs[0]
    rec = Recurrence(axis="step", position=918.0,
                     members=(("a.log", 918), ("b.log", 919)))
    return Report(runs=(healthy, bloom), recurrences=(rec,))


def xss_run(tmp_dir: Path) -> Run:
    frame, nan_mask = long_frame(400)
    frame = frame.rename(columns={"loss": XSS})
    return build_run(RawLog(frame=frame, nan_mask=nan_mask), tmp_dir / "xss.csv", "csv",
                     overrides={"loss": XSS})


def xss_report(run: Run) -> Report:
    """Everything a log controls, made hostile: metric name, file name, warnings, text."""
    ev = Finding(
        Event(kind="spike", metric="loss", start_step=100, peak_step=100, end_step=102,
              recovered=True, size=Size(z=9.0, ratio=2.0)),
        causes=(Evidence("bad_batch", 0.7, f"loss {XSS} rose", {XSS: XSS}, f"fix {XSS}"),),
    )
    rr = RunReport(
        source="runs/<script>document.title='pwned'</script>.csv", format="csv",
        verdict="spiky", steps=StepInfo(1, 400, 400, 1), metrics=dict(run.roles),
        findings=(ev,), warnings=(f"line 7: {XSS}", "</script><script>alert(2)</script>"),
    )
    return Report(runs=(rr,))


# --- the helpers ----------------------------------------------------------------------------

def test_registry_lists_every_format_in_order() -> None:
    assert RENDERERS.names() == ["terminal", "json", "markdown", "github", "html"]


@pytest.mark.parametrize("fmt", RENDERERS.names())
def test_every_renderer_handles_an_empty_report_and_a_run_without_events(fmt: str) -> None:
    empty = render(empty_report(), [], fmt, color=False, plotlyjs="cdn")
    assert empty.strip()
    healthy = render(healthy_report(), [], fmt, color=False, plotlyjs="cdn")
    assert "healthy" in healthy


def test_unknown_format_lists_the_known_ones() -> None:
    from spikelens.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown report format 'pdf' \(known: terminal, "
                       r"json, markdown, github, html\)"):
        render(empty_report(), [], "pdf")


def test_runs_must_match_the_report() -> None:
    from spikelens.errors import ConfigError

    with pytest.raises(ConfigError, match=r"the report has 1 run\(s\) but 2 Run\(s\)"):
        render(bloom_report(), [bloom_run(), bloom_run()], "json")


def test_bloom_sample_reads_with_the_roles_the_report_names() -> None:
    run = bloom_run()
    assert run.roles["loss"] == "lm loss"
    assert run.roles["grad_norm"] == "grad norm"
    assert run.series("grad_norm").loc[31219] == pytest.approx(960.351)


def test_envelope_keeps_a_one_step_spike_in_a_million_points() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    y = 2.0 + 0.01 * rng.standard_normal(n)
    y[123_457] = 9.0  # up
    y[654_321] = -5.0  # and down
    x = np.arange(n, dtype=np.int64)
    xs, ys = downsample(x, y, 8000)
    assert len(xs) <= 8000
    assert 123_457 in xs and 654_321 in xs
    assert ys.max() == 9.0 and ys.min() == -5.0
    assert xs[0] == 0 and xs[-1] == n - 1
    assert np.all(np.diff(xs) > 0)


def test_envelope_ignores_nan_and_leaves_short_series_alone() -> None:
    y = np.array([1.0, np.nan, 3.0, np.nan, np.nan, np.nan, 0.5, 2.0, 7.0, 1.0])
    assert envelope_indices(y, 100).tolist() == list(range(10))
    idx = envelope_indices(y, 2).tolist()
    assert 8 in idx and 6 in idx  # the max and min of the second half survive
    assert all(not np.isnan(y[i]) for i in idx if i not in (0, 9))


def test_sample_steps_keeps_the_ends_of_each_stretch() -> None:
    steps = np.concatenate([np.arange(100, 200), np.arange(500, 900)])
    assert sample_steps(steps, 10).tolist() == [100, 199, 500, 899]
    assert sample_steps(steps[:5], 10).tolist() == [100, 101, 102, 103, 104]


def test_numbers_for_people_and_machines() -> None:
    assert fmt_num(2.3185712) == "2.32"
    assert fmt_num(5.279e-05) == "5.28e-05"
    assert fmt_num(65536.0) == "65536"
    assert fmt_num(math.inf) == "inf"
    assert fmt_num(None) == "n/a"
    assert round_sig(2.3185712345) == 2.31857
    assert round_sig(3968.392561983471) == 3968.39
    assert round_sig(math.inf) is None and round_sig(math.nan) is None
    assert jsonable({"a": np.float32(0.1), "b": (np.int64(3), math.nan), "c": np.bool_(True)}) \
        == {"a": 0.1, "b": [3, None], "c": True}
    # machine output keeps every digit: no 1048580 for a loss scale of 2**20
    assert jsonable({"scale": 1048576.0, "tokens": 123456789012.0, "x": 2.3185712345}) == \
        {"scale": 1048576.0, "tokens": 123456789012.0, "x": 2.3185712345}
    assert fmt_num(3968.392561983471) == "3968"  # text rounds for reading, without an exponent


def test_event_words() -> None:
    findings = long_findings()
    osc, spike, surge, nonfinite = findings
    assert fmt_steps(spike.event) == "800–801 (peak 800)"
    assert fmt_size(spike.event) == "×3.1, z 41.5"
    assert fmt_size(nonfinite.event) == "non-finite, z inf"
    assert fmt_size(osc.event) == "period 20, amplitude 15.3%"
    assert event_counts(findings) == "1 nonfinite, 1 spike, 1 oscillation, 1 grad_norm spike"
    assert worst_finding(findings) is nonfinite
    assert worst_finding((osc, surge)) is osc


def test_verdict_lines() -> None:
    assert verdict_line(bloom_report().runs[0]) == (
        f"spiky: {BLOOM_SOURCE} — 1 spike; worst: spike at step 31219, likely grad_explosion")
    assert overall_line(empty_report()) == "no runs analysed"
    assert overall_line(multi_report()) == "spiky: worst of 2 runs (1 spiky, 1 healthy)"
    assert verdict_line(healthy_report().runs[0]) == \
        "healthy: runs/clean/metrics.jsonl — no events"


def test_short_names_drop_what_all_paths_share() -> None:
    from spikelens.report._common import short_names

    nanogpt = "/work/shared/real_logs/modded_nanogpt/"
    assert short_names([nanogpt + "124M_2024-10-09_SOAP_5bdc3988.log",
                        nanogpt + "124M_2024-10-10_Muon_eb5659d0.log"]) == \
        ["124M_2024-10-09_SOAP_5bdc3988", "124M_2024-10-10_Muon_eb5659d0"]
    assert short_names(["/x/a/train.log", "/x/b/train.log", "/x/b/c/train.log"]) == \
        ["a", "b", "b/c"]
    assert short_names(["s3://bucket/r1/m.jsonl", "s3://bucket/r2/m.csv"]) == \
        ["r1/m.jsonl", "r2/m.csv"]
    # the same path twice (two runs of one W&B export) stays unique
    assert short_names(["e.csv [run-1]", "e.csv [run-2]"]) == ["e.csv [run-1]", "e.csv [run-2]"]
    assert short_names(["a.log", "a.log"]) == ["a.log", "a.log#2"]
    assert short_names(["/only/one/run.log"]) == ["run.log"]
    assert short_names([]) == []


def test_run_summary_rows_worst_first_and_cut_to_the_top() -> None:
    from spikelens.report._common import run_summary_rows

    run = long_run()
    long = long_report(run).runs[0]
    report = Report(runs=(healthy_report().runs[0], bloom_report().runs[0], long))
    table = run_summary_rows(report)
    assert [r.verdict for r in table.rows] == ["nonfinite", "spiky", "healthy"]
    worst = table.rows[0]
    assert (worst.index, worst.incidents, worst.worst, worst.top_cause) == \
        (2, "1 nonfinite, 1 spike, 1 oscillation", "nonfinite at step 1500", "amp_overflow")
    assert dict(worst.counts) == {"nonfinite": 1, "spike": 1, "oscillation": 1}
    assert worst.title == "runs/fp16_lm/train_log.csv"
    assert table.rows[2].incidents == "none" and table.rows[2].worst == "-"
    assert (table.left_out, table.total) == (0, 3)
    cut = run_summary_rows(report, top=1)
    assert [r.index for r in cut.rows] == [2] and (cut.left_out, cut.total) == (2, 3)


def test_evidence_labels_come_from_the_causes_package_or_the_key_in_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    from spikelens.report import _common
    from spikelens.report._common import evidence_label, evidence_rows

    fake = types.ModuleType("spikelens.causes.labels")
    fake.EVIDENCE_LABELS = {"grad_norm_before": "grad norm before the rise"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "spikelens.causes.labels", fake)
    _common._evidence_labels.cache_clear()
    try:
        assert evidence_label("grad_norm_before") == "grad norm before the rise"
        assert evidence_label("lr_ratio") == "LR ratio"  # no label: the key in words
    finally:
        _common._evidence_labels.cache_clear()
    assert evidence_label("loss_scale_after") == "Loss scale after"
    # rows that do not apply are hidden; numbers are rounded for reading
    assert evidence_rows({"a_b": 1.23456, "none": None, "nan": math.nan, "na": "n/a",
                          "flag": False, "z": math.inf}) == \
        [("A b", "1.23"), ("Flag", "false"), ("z", "inf")]
