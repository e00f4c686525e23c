"""The HTML page, checked without a browser: what it contains, what it escapes, how big it
gets and what survives the downsampling. `test_browser.py` checks that it actually renders."""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_common import (
    BLOOM_SOURCE,
    XSS,
    bloom_report,
    bloom_run,
    empty_report,
    healthy_report,
    long_report,
    long_run,
    multi_report,
    xss_report,
    xss_run,
)

from spikelens.errors import ConfigError
from spikelens.model import (
    Event,
    Evidence,
    Finding,
    Recurrence,
    Report,
    Run,
    RunReport,
    Size,
    StepInfo,
)
from spikelens.readers._base import RawLog, build_run
from spikelens.report import render
from spikelens.report._common import evidence_label
from spikelens.report.html import COLORS


def payload(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="spikelens-data">(.*?)</script>', page,
                  re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


def unpack(full: dict) -> tuple[np.ndarray, np.ndarray]:
    """What the page script does with a full-resolution series, in numpy."""
    n = full["n"]
    dx = np.frombuffer(zlib.decompress(base64.b64decode(full["dx"])), dtype="<i4")
    xs = np.concatenate(([full["x0"]], full["x0"] + np.cumsum(dx)))
    raw = np.frombuffer(zlib.decompress(base64.b64decode(full["y"])), dtype=np.uint8)
    if full["shuffle"]:
        raw = raw.reshape(4, n).T.copy().reshape(-1)
    return xs, raw.view("<f4")


def traces(page: str, run: int = 0) -> dict[str, dict]:
    fig = payload(page)["runs"][run]["figure"]
    return {t["name"]: t for t in fig["data"]}


def test_long_run_has_every_panel_on_a_shared_step_axis() -> None:
    run = long_run()
    page = render(long_report(run), [run], "html", plotlyjs="cdn")
    tr = traces(page)
    assert list(tr) == ["loss", "loss: NaN/inf", "learning rate (lr)", "grad norm (grad_norm)",
                        "grad norm: NaN/inf", "loss scale (loss_scale)", "skipped"]
    layout = payload(page)["runs"][0]["figure"]["layout"]
    # loss on top, the panels below, all x axes tied to the first
    assert layout["yaxis"]["domain"][1] == 1.0
    assert layout["yaxis"]["domain"][0] > layout["yaxis2"]["domain"][1]
    assert [layout[f"xaxis{k}"]["matches"] for k in range(2, 6)] == ["x"] * 4
    assert tr["loss: NaN/inf"]["x"] == [1500]
    # the marker sits on the axis: on an invisible 0..1 axis laid over the loss panel
    marker = tr["loss: NaN/inf"]
    assert marker["y"] == [0.03]
    overlay = layout["yaxis" + marker["yaxis"][1:]]
    assert overlay["overlaying"] == "y" and overlay["range"] == [0, 1]
    assert overlay["visible"] is False
    # and the line breaks there: a null between the last finite loss (1499) and 1501
    x, y = tr["loss"]["x"], tr["loss"]["y"]
    at = x.index(1499)
    assert y[at + 1] is None and x[at + 2] == 1501
    assert tr["grad norm: NaN/inf"]["x"] == [1500]
    assert 1500 not in x  # a non-finite point is a marker, not a line point
    assert x[799] == 800 and y[799] > 5.5  # the spike


def test_events_are_shaded_labelled_and_carded() -> None:
    run = long_run()
    page = render(long_report(run), [run], "html", plotlyjs="cdn")
    layout = payload(page)["runs"][0]["figure"]["layout"]
    rects = [(s["x0"], s["x1"]) for s in layout["shapes"] if s["type"] == "rect"]
    assert rects == [(200, 400), (800, 801), (1200, 1201), (1500, 1501)]
    labels = [a["text"] for a in layout["annotations"]]
    assert labels == ["1. oscillation", "2. spike: bad_batch", "3. grad_norm spike",
                      "4. nonfinite: amp_overflow"]
    assert payload(page)["runs"][0]["events"] == [[200, 400, 300], [800, 801, 800],
                                                  [1200, 1201, 1200], [1500, 1501, 1500]]
    assert page.count('<article class="card') == 4
    assert '<article class="card kind-nonfinite" role="button" tabindex="0" data-run="0" ' \
           'data-event="3"' in page
    assert "Use bf16, or start GradScaler at 2**14 with growth_interval 2000." in page
    # evidence in plain words (the causes package's label when it has one)
    assert f"<th>{evidence_label('scale_cuts')}</th><td>1</td>" in page
    assert "scale_cuts" not in page
    # not applicable (an infinite loss is a fact; None would be hidden): see test below
    assert 'class="logscale" data-run="0">' in page  # linear to start with


def test_bloom_page_summary_warnings_and_skipped_causes() -> None:
    page = render(bloom_report(), [bloom_run()], "html", plotlyjs="cdn")
    assert "<dt>steps</dt><dd>steps 31214–31251 (11 logged steps)</dd>" in page
    assert "<tr><th>loss</th><td><code>lm loss</code></td></tr>" in page
    assert "<li>tests/data/report/bloom_tr11-176B_31214-31251.csv: steps 31223-31249 are not " \
           "in the log</li>" in page
    assert "Not judged: amp_overflow (needs loss_scale, not in this log)" in page
    assert "The grad norm climbed 0.242 → 960 (×3970)" in page
    # the skipped and NaN counters are 0 at every step: no empty panels, a note instead
    assert list(traces(page)) == ["loss (lm loss)", "learning rate", "grad norm"]
    assert "Skipped (number of skipped iterations): 0 at all 11 logged steps, panel left " \
           "out." in page
    assert "NaN steps (number of nan iterations): 0 at all 11 logged steps" in page


def test_wide_loss_range_starts_on_a_log_scale() -> None:
    steps = np.arange(1, 301)
    loss = np.geomspace(1e-3, 1e-13, 300)
    run = build_run(RawLog(frame=pd.DataFrame({"step": steps, "loss": loss})), Path("e.csv"),
                    "csv")
    rr = RunReport("e.csv", "csv", "healthy", StepInfo(1, 300, 300, 1), dict(run.roles), (), ())
    page = render(Report(runs=(rr,)), [run], "html", plotlyjs="cdn")
    assert payload(page)["runs"][0]["figure"]["layout"]["yaxis"]["type"] == "log"
    assert 'class="logscale" data-run="0" checked>' in page


def test_log_controlled_text_is_escaped_everywhere(tmp_path: Path) -> None:
    run = xss_run(tmp_path)
    page = render(xss_report(run), [run], "html", plotlyjs="cdn")
    assert "<img" not in page
    assert "<script>document.title" not in page
    assert "</script><script>alert(2)" not in page
    # as page text, as plotly text (plotly decodes entities), and as JSON
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert traces(page)["loss (&lt;img src=x onerror=alert(1)&gt;)"]
    assert payload(page)["runs"][0]["figure"]["data"][0]["name"] == \
        "loss (&lt;img src=x onerror=alert(1)&gt;)"
    assert "<title>spikelens: runs/&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" \
        ".csv</title>" in page
    # the only <script> elements are ours: plotly's loader, the data block and the app
    assert len(re.findall(r"<script\b", page)) == 3
    assert XSS not in page


def test_inline_page_works_offline_and_cdn_page_is_small() -> None:
    run = long_run()
    inline = render(long_report(run), [run], "html")
    cdn = render(long_report(run), [run], "html", plotlyjs="cdn")
    assert "<script src=" not in inline and "Plotly" in inline
    assert len(inline) > 3_000_000  # plotly.js itself
    assert re.search(r'<script src="https://cdn\.plot\.ly/plotly-[0-9.]+\.min\.js" '
                     r'integrity="sha384-[A-Za-z0-9+/=]{64}" crossorigin="anonymous"', cdn)
    assert len(cdn) < 400_000
    with pytest.raises(ConfigError, match=r"unknown plotlyjs mode 'local' \(known: inline, cdn\)"):
        render(long_report(run), [run], "html", plotlyjs="local")


def test_a_million_steps_make_a_small_page_and_keep_a_one_step_spike() -> None:
    n = 1_000_000
    rng = np.random.default_rng(3)
    steps = np.arange(n, dtype=np.int64)
    loss = 2.0 + 0.05 * rng.standard_normal(n)
    loss[777_777] = 6.0  # one step
    grad = 1.0 + 0.1 * rng.standard_normal(n)
    grad[777_776] = 50.0
    frame = pd.DataFrame({"step": steps, "loss": loss, "lr": np.full(n, 1e-4),
                          "grad_norm": grad, "loss_scale": np.full(n, 65536.0),
                          "skipped": np.zeros(n)})
    run = build_run(RawLog(frame=frame), Path("big.csv"), "csv")
    ev = Event("spike", "loss", 777_777, 777_777, 777_778, True, Size(40.0, 3.0))
    rr = RunReport("big.csv", "csv", "spiky", StepInfo(0, n - 1, n, 1), dict(run.roles),
                   (Finding(ev),), ())
    page = render(Report(runs=(rr,)), [run], "html")
    assert len(page.encode("utf-8")) <= 10_000_000
    tr = traces(page)
    lx, ly = tr["loss"]["x"], tr["loss"]["y"]
    assert len(lx) < 20_000
    assert ly[lx.index(777_777)] == 6.0
    assert max(ly) == 6.0
    gx, gy = tr["grad norm (grad_norm)"]["x"], tr["grad norm (grad_norm)"]["y"]
    assert gy[gx.index(777_776)] == 50.0
    # the page says it shows an envelope, and carries the loss at full resolution
    assert "Long series are drawn as a min/max envelope, which keeps every spike: loss " \
           "7,971 of 1,000,000 points" in page
    series = {m["role"]: m for m in payload(page)["runs"][0]["series"]}
    xs, ys = unpack(series["loss"]["full"])
    assert np.array_equal(xs, steps) and np.array_equal(ys, loss.astype(np.float32))
    # the smooth series fit the budget too; the second noisy one does not, and keeps its
    # full resolution around the event (and says so)
    assert series["lr"]["full"] and series["loss_scale"]["full"]
    assert series["grad_norm"]["full"] is None and series["grad_norm"]["nearEvents"]
    assert all(s in gx for s in range(777_777 - 25, 777_778 + 26))
    assert re.search(r"grad norm 8,0\d\d of 1,000,000 points \(full resolution only near the "
                     r"events", page)


def test_without_runs_the_page_still_has_cards_but_no_plot() -> None:
    page = render(bloom_report(), [], "html", plotlyjs="cdn")
    assert 'id="plot-0"' not in page
    assert "were not given to the renderer" in page
    assert page.count('<article class="card') == 1


def test_empty_and_eventless_and_multi_run_pages() -> None:
    empty = render(empty_report(), [], "html", plotlyjs="cdn")
    assert "No runs analysed." in empty and payload(empty)["runs"] == []
    healthy = render(healthy_report(), [], "html", plotlyjs="cdn")
    assert "<p class=\"muted\">No events.</p>" in healthy
    multi = render(multi_report(), [], "html", plotlyjs="cdn")
    assert '<p class="overall">spiky: worst of 2 runs (1 spiky, 1 healthy)</p>' in multi
    # per-run sections folded, under their short names (full path on hover)
    assert '<details class="run" id="run-0" data-run="0">' in multi
    assert '<details class="run" id="run-1" data-run="1">' in multi
    assert '<span title="runs/clean/metrics.jsonl">runs/clean/metrics.jsonl</span>' in multi
    # the summary table first, worst run first; the recurrences next, by short name
    assert multi.index('id="runs-table"') < multi.index("Incidents that recur") \
        < multi.index('id="run-0"')
    rows = re.findall(r'<td title="([^"]*)" data-key="[^"]*"><a href="#run-(\d)"', multi)
    assert rows == [(BLOOM_SOURCE, "1"), ("runs/clean/metrics.jsonl", "0")]
    assert "<td>R1</td><td>step 918</td><td>2</td><td>" \
           '<span title="a.log">a.log</span> (step 918), ' \
           '<span title="b.log">b.log</span> (step 919)</td>' in multi


def test_numpy_integers_from_the_detector_are_plain_json() -> None:
    run = long_run()
    ev = Event("spike", "loss", np.int64(800), np.int64(800), np.int64(801), True,
               Size(np.float64(41.5), np.float64(3.1)))
    rr = RunReport(run.source, "csv", "spiky", StepInfo(1, 2000, 2000, 1), dict(run.roles),
                   (Finding(ev),), ())
    page = render(Report(runs=(rr,)), [run], "html", plotlyjs="cdn")
    assert payload(page)["runs"][0]["events"] == [[800, 801, 800]]


def _run_with_warmup_and_eval() -> tuple[Run, RunReport]:
    """A run that starts at ln(50257) = 10.8, warms the LR up over 200 steps, logs an eval
    loss every 100 steps, has a spike at 1500 and a hole in the log at 3000-3400."""
    steps = np.concatenate([np.arange(0, 3000), np.arange(3400, 4000)])
    rng = np.random.default_rng(11)
    loss = 2.5 + 8.3 * np.exp(-steps / 60) + 0.02 * rng.standard_normal(len(steps))
    loss[steps == 1500] = 3.4
    lr = np.where(steps < 200, 3e-4 * (steps + 1) / 200, 3e-4)
    frame = pd.DataFrame({"step": steps, "loss": loss, "lr": lr})
    ev_steps = np.arange(100, 4000, 100)
    ev_steps = ev_steps[(ev_steps < 3000) | (ev_steps >= 3400)]
    eval_frame = pd.DataFrame({"step": ev_steps, "eval_loss": 2.6 + 8.2 * np.exp(-ev_steps / 60)})
    run = build_run(RawLog(frame=frame, eval_frame=eval_frame), Path("warm.csv"), "csv")
    ev = Event("spike", "loss", 1500, 1500, 1501, True, Size(30.0, 1.36))
    rr = RunReport("warm.csv", "csv", "spiky", StepInfo(0, 3999, len(steps), 1),
                   dict(run.roles), (Finding(ev),), ())
    return run, rr


def test_loss_axis_fits_the_training_after_warmup_and_eval_loss_stands_out() -> None:
    run, rr = _run_with_warmup_and_eval()
    assert run.has("eval_loss")
    page = render(Report(runs=(rr,)), [run], "html", plotlyjs="cdn")
    data = payload(page)["runs"][0]
    layout = data["figure"]["layout"]
    # the step-0 loss of 10.8 is outside the starting range; the spike (3.4) is inside
    lo, hi = layout["yaxis"]["range"]
    assert hi < 4.0 and lo > 2.3 and hi > 3.4
    assert data["fit"]["from"] == 180  # where the LR reached 90% of its peak
    assert 'class="fitloss" data-run="0" checked> loss axis fitted to the training after ' \
           "warmup (from step 180)" in page
    tr = traces(page)
    names = list(tr)
    # eval loss after (so drawn above) the train loss, in a colour of its own, with markers
    assert names.index("eval loss (eval_loss)") == names.index("loss") + 1
    ev, train = tr["eval loss (eval_loss)"], tr["loss"]
    assert ev["line"]["color"] != train["line"]["color"]
    assert ev["line"]["color"] not in {c for role, c in COLORS.items() if role != "eval_loss"}
    assert ev["mode"] == "lines+markers"
    # the hole in the log breaks both lines: no segment joins 2999 and 3400
    for t in (train, ev):
        pairs = list(zip(t["x"], t["y"], t["x"][1:], t["y"][1:], strict=False))
        assert not any(a < 3000 and b >= 3400 and ya is not None and yb is not None
                       for a, ya, b, yb in pairs)
    assert None in train["y"] and None in ev["y"]
    # every x axis prints exact steps
    assert all(layout[k]["tickformat"] == "d" and layout[k]["hoverformat"] == "d"
               for k in layout if k.startswith("xaxis"))
    assert all(layout[k].get("automargin") for k in layout
               if k.startswith(("xaxis", "yaxis")) and "overlaying" not in layout[k])


def test_a_flat_start_needs_no_fit_and_a_sparse_log_gets_markers() -> None:
    steps = np.arange(0, 5000, 50)  # 100 points
    loss = 2.0 + 0.01 * np.sin(steps)
    run = build_run(RawLog(frame=pd.DataFrame({"step": steps, "loss": loss})), Path("s.csv"),
                    "csv")
    rr = RunReport("s.csv", "csv", "healthy", StepInfo(0, 4950, 100, 50), dict(run.roles), (),
                   ())
    page = render(Report(runs=(rr,)), [run], "html", plotlyjs="cdn")
    data = payload(page)["runs"][0]
    assert data["fit"] is None and "range" not in data["figure"]["layout"]["yaxis"]
    assert 'class="fitloss"' not in page
    assert traces(page)["loss"]["mode"] == "lines+markers"
    # every point is drawn: no envelope, and no note about one
    assert len(traces(page)["loss"]["x"]) == 100 and 'class="plot-note"' not in page


def test_oscillation_card_reads_like_a_spike_and_na_evidence_is_hidden() -> None:
    run = long_run()
    osc = Finding(
        Event(kind="oscillation", metric="loss", start_step=200, peak_step=300, end_step=400,
              recovered=True, size=Size(z=3.1, ratio=1.12), period=20.0, amplitude=0.153),
        causes=(Evidence("lr_schedule", 0.7, "The loss swings with the LR's 20-step cycle.",
                         {"lr_period_steps": 20, "correlation": 0.81, "lag_steps": None,
                          "phase": math.nan, "note": "n/a"},
                         "Lower the peak LR of the cycle by half."),),
    )
    report = long_report(run)
    rr = report.runs[0]
    rr = RunReport(rr.source, rr.format, rr.verdict, rr.steps, rr.metrics,
                   (osc, *rr.findings[1:]), rr.warnings)
    page = render(Report(runs=(rr,)), [run], "html", plotlyjs="cdn")
    card = page[page.index('<article class="card kind-oscillation"'):]
    card = card[:card.index("</article>")]
    assert "1. oscillation, steps 200–400" in card
    assert "the loss swings up and down instead of settling (period 20, amplitude 15.3%)" in card
    assert '<span class="cause">lr_schedule</span>' in card
    assert "<b>Remedy:</b> Lower the peak LR of the cycle by half." in card
    assert f"<th>{evidence_label('correlation')}</th><td>0.81</td>" in card
    assert f"<th>{evidence_label('lr_period_steps')}</th><td>20</td>" in card
    # None, NaN and "n/a" rows are hidden
    for key in ("lag_steps", "phase", "note"):
        assert f"<th>{evidence_label(key)}</th>" not in card
    assert "n/a" not in card and ">nan<" not in card
    # the same in the text outputs
    for fmt in ("terminal", "markdown"):
        text = render(Report(runs=(rr,)), [run], fmt, verbose=True, color=False)
        flat = " ".join(text.split())
        assert "Lower the peak LR of the cycle by half." in flat
        assert evidence_label("lag_steps") not in flat and "n/a" not in flat


def test_events_in_a_superseded_segment_say_so() -> None:
    @dataclass(frozen=True)
    class RolledBack(Event):
        superseded_at: int | None = None

    run = long_run()
    ev = RolledBack("spike", "loss", 800, 800, 801, True, Size(41.5, 3.1), segment=1,
                    superseded_at=950)
    rr = RunReport(run.source, "csv", "spiky", StepInfo(1, 2000, 2000, 1), dict(run.roles),
                   (Finding(ev),), ())
    page = render(Report(runs=(rr,)), [run], "html", plotlyjs="cdn")
    assert "segment 1 · in a superseded segment (rolled back at step 950)" in page


def test_multi_run_overlay_aligns_on_tokens_and_marks_the_recurrence() -> None:
    def tokens_run(name: str, batch: int, spike: int) -> tuple[Run, RunReport]:
        steps = np.arange(1, 1001)
        rng = np.random.default_rng(batch)
        loss = 2.0 + 0.01 * rng.standard_normal(1000)
        loss[steps == spike] = 5.0
        frame = pd.DataFrame({"step": steps, "loss": loss, "consumed_tokens": steps * batch})
        run = build_run(RawLog(frame=frame), Path(f"/exp/{name}/log.csv"), "csv")
        ev = Event("spike", "loss", spike, spike, spike + 1, True, Size(50.0, 2.5))
        rr = RunReport(run.source, "csv", "spiky", StepInfo(1, 1000, 1000, 1),
                       dict(run.roles), (Finding(ev),), ())
        return run, rr

    (ra, a), (rb, b) = tokens_run("small-batch", 1024, 500), tokens_run("big-batch", 2048, 250)
    assert ra.has("tokens")
    rec = Recurrence("tokens", 512000.0, ((ra.source, 500), (rb.source, 250)))
    page = render(Report(runs=(a, b), recurrences=(rec,)), [ra, rb], "html", plotlyjs="cdn")
    overlay = payload(page)["overlay"]
    curves = {t["name"]: t for t in overlay["data"]}
    assert list(curves) == ["small-batch", "big-batch", "recurring incidents"]
    # both spikes land at 512,000 tokens, where the recurrence is marked
    for name, step in (("small-batch", 500), ("big-batch", 250)):
        t = curves[name]
        assert t["x"][t["customdata"].index(step)] == 512000.0
    assert curves["recurring incidents"]["x"] == [512000.0, 512000.0]
    assert overlay["layout"]["xaxis"]["title"]["text"] == "tokens consumed"
    assert [s["x0"] for s in overlay["layout"]["shapes"]] == [512000.0]
    # the recurrence table names the runs by their short names, full path on hover
    assert '<td>R1</td><td>tokens 512000</td><td>2</td>' in page
    assert 'title="/exp/small-batch/log.csv">small-batch</a> (step 500)' in page


def test_overlay_of_a_fleet_draws_the_worst_runs_and_says_so() -> None:
    runs, reports = [], []
    for k in range(25):
        steps = np.arange(1, 101)
        loss = 2 + 0.01 * np.random.default_rng(k).standard_normal(100)
        run = build_run(RawLog(frame=pd.DataFrame({"step": steps, "loss": loss})),
                        Path(f"/sweep/s{k}/log.csv"), "csv")
        spiky = k in (21, 24)
        found = (Finding(Event("spike", "loss", 50, 50, 51, True, Size(20.0, 2.0))),) \
            if spiky else ()
        runs.append(run)
        reports.append(RunReport(run.source, "csv", "spiky" if spiky else "healthy",
                                 StepInfo(1, 100, 100, 1), dict(run.roles), found, ()))
    page = render(Report(runs=tuple(reports)), runs, "html", plotlyjs="cdn")
    names = [t["name"] for t in payload(page)["overlay"]["data"]]
    assert len(names) == 20 and "s21" in names and "s24" in names
    assert "Only the 20 worst of the 25 runs are drawn." in page
    # the summary table still lists every run, the spiky ones first
    rows = re.findall(r'<a href="#run-\d+" class="open-run" data-run="\d+">([^<]+)</a></td>',
                      page)
    assert len(rows) == 25 and rows[:2] == ["s21", "s24"]
