"""The Markdown report (PR comment, $GITHUB_STEP_SUMMARY): verdict heading, event table,
causes and remedies, and escaping of everything that comes from the log."""

from __future__ import annotations

from test_report_common import (
    BLOOM_REMEDY,
    bloom_report,
    empty_report,
    healthy_report,
    long_report,
    long_run,
    multi_report,
)

from spikelens.model import Evidence, Finding, Report, RunReport, StepInfo
from spikelens.report import render
from spikelens.report._common import evidence_label
from spikelens.report.markdown import code, esc, esc_item


def test_bloom_markdown() -> None:
    md = render(bloom_report(), [], "markdown")
    lines = md.splitlines()
    assert lines[0] == ("## spiky: tests/data/report/bloom\\_tr11-176B\\_31214-31251.csv — "
                        "1 spike; worst: spike at step 31219, likely grad\\_explosion")
    assert "| # | kind | steps | size | recovered | top cause | summary |" in lines
    assert ("| 1 | spike | 31216–31250 (peak 31219) | ×2.32, z 14.2 | yes, 34 steps | "
            "`grad_explosion` (0.93) | The grad norm climbed 0.242 → 960 (×3970) over the 5 "
            "logged steps before the loss peaked at step 31219, while the LR stayed at "
            "5.28e-05. |") in lines
    assert (f"**Remedy for the worst event** (spike at step 31219, `grad_explosion`): "
            f"{BLOOM_REMEDY}") in lines
    assert "### Event 1: spike at step 31219" in lines
    assert "2. `bad_batch` (score 0.2): The loss rose 2.32× in one step and was back near 2.2 " \
           "within 31 steps." in lines
    assert "   - **Remedy:** Inspect consumed samples 47776688–47778736." in lines
    assert "<details><summary>Warnings (1)</summary>" in lines
    # evidence and skipped causes are verbose-only
    assert "Evidence" not in md and "Not judged" not in md
    verbose = render(bloom_report(), [], "markdown", verbose=True).splitlines()
    facts = "; ".join(f"{esc(evidence_label(k))}: {v}" for k, v in [
        ("grad_norm_before", "0.242"), ("grad_norm_peak", "960"), ("growth", "3968"),
        ("lead_steps", "5"), ("lr_ratio", "1")])
    assert f"   - Evidence: {facts}" in verbose
    assert "Not judged: `amp_overflow` (needs loss\\_scale, not in this log)" in verbose


def test_every_event_kind_and_the_table_shape() -> None:
    run = long_run()
    lines = render(long_report(run), [run], "markdown").splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| #")]
    assert [r.split(" | ")[1] for r in rows] == ["oscillation", "spike", "grad\\_norm spike",
                                                 "nonfinite"]
    assert all(r.count(" | ") == 6 for r in rows)  # 7 cells each
    # an oscillation is explained like a spike (here no cause scored)
    assert "| 1 | oscillation | 200–400 | period 20, amplitude 15.3% | - | - | no cause scored " \
           "above the floor |" in rows


def test_empty_eventless_and_multi_run() -> None:
    assert render(empty_report(), [], "markdown") == "## spikelens — no runs analysed\n"
    healthy = render(healthy_report(), [], "markdown").splitlines()
    assert healthy[0] == "## healthy: runs/clean/metrics.jsonl — no events"
    assert "No events." in healthy
    multi = render(multi_report(), [], "markdown").splitlines()
    assert multi[0] == "## spikelens — spiky: worst of 2 runs (1 spiky, 1 healthy)"
    # the summary table first (worst run first), the recurrences, then folded sections
    at = multi.index("| run | verdict | incidents | worst incident | top cause |")
    assert multi[at + 2] == ("| `tests/data/report/bloom_tr11-176B_31214-31251.csv` | spiky | "
                             "1 spike | spike at step 31219 | `grad_explosion` |")
    assert multi[at + 3] == "| `runs/clean/metrics.jsonl` | healthy | none | - | - |"
    assert "- R1 at step 918: 2 runs: `a.log` (step 918), `b.log` (step 919)" in multi
    assert multi.index("- R1 at step 918: 2 runs: `a.log` (step 918), `b.log` (step 919)") \
        < multi.index("### Each run")
    assert "<details><summary>healthy: runs/clean/metrics.jsonl — none</summary>" in multi
    assert "#### healthy: runs/clean/metrics.jsonl — no events" in multi
    assert "##### Event 1: spike at step 31219" in multi


def test_multi_run_says_shared_text_once_and_cuts_the_summary() -> None:
    from spikelens.report.markdown import summary_table

    bloom = bloom_report().runs[0]
    runs = tuple(RunReport(f"/data/exp/{name}/train.log", "megatron", bloom.verdict,
                           bloom.steps, bloom.metrics, bloom.findings, ())
                 for name in ("seed1", "seed2", "seed3"))
    md = render(Report(runs=runs), [], "markdown", verbose=True)
    # short names: the common directories and file name are gone
    assert "| `seed1` | spiky | 1 spike | spike at step 31219 | `grad_explosion` |" in md
    # the BLOOM remedy is said once, in the shared notes, and referred to by number
    assert md.count(BLOOM_REMEDY) == 1
    assert md.index("### Said once for all runs") < md.index(BLOOM_REMEDY) \
        < md.index("### Each run")
    assert "   - **Remedy:** see shared note 1 above" in md.splitlines()
    assert "Not judged: see shared note 3 above" in md.splitlines()
    cut = summary_table(Report(runs=runs), top=2)
    assert len([r for r in cut if r.startswith("| `seed")]) == 2
    assert cut[-1] == "… and 1 more run not shown (3 in all)."


def test_log_text_cannot_inject_markdown_or_html() -> None:
    assert esc("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert esc("**bold** _it_ [link](http://x) @team #12 a|b ~~s~~") == \
        "\\*\\*bold\\*\\* \\_it\\_ \\[link\\](http://x) \\@team \\#12 a\\|b \\~\\~s\\~\\~"
    assert esc_item("- not a list") == "\\- not a list"
    assert esc_item("1. not a list") == "1\\. not a list"
    assert esc_item("0.242 and 1.5") == "0.242 and 1.5"
    assert esc("- in a cell") == "- in a cell"
    assert esc("0.242 and 1.5") == "0.242 and 1.5"
    assert esc("line one\nline two") == "line one line two"
    assert code("a`b") == "``a`b``"
    assert code("`x`") == "`` `x` ``"
    assert code("a|b", in_table=True) == "`a\\|b`"
    ev = bloom_report().runs[0].findings[0].event
    cause = Evidence("bad_batch", 0.5, "| broke | the table", {}, "<script>x</script>")
    rr = RunReport("<b>x.log", "csv", "spiky", StepInfo(0, 1, 2, 1), {"loss": "l`o|ss"},
                   (Finding(ev, (cause,)),), ("<!-- hide -->",))
    md = render(Report(runs=(rr,)), [], "markdown")
    # HTML is literal inside a code span; everywhere else it is entities
    assert "csv log `<b>x.log`" in md
    assert "<script>" not in md and "<!--" not in md and "&lt;script&gt;x&lt;/script&gt;" in md
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert row.endswith("| \\| broke \\| the table |")
    assert "loss = ``l`o|ss``" in md
