"""The HTML page, checked without a browser: what it contains, what it escapes, how big it
gets and what survives the downsampling. `test_browser.py` checks that it actually renders."""

from __future__ import annotations

import base64
import json
import re
import zlib
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
from spikelens.model import Event, Finding, Report, RunReport, Size, StepInfo
from spikelens.readers._base import RawLog, build_run
from spikelens.report import render
from spikelens.report._common import evidence_label


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
