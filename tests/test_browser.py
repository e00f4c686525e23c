"""The HTML report in a real browser: Debian's headless `chromium` loads each page from disk,
runs its scripts (with virtual time, so timers fire without waiting) and dumps the final DOM,
while `--enable-logging=stderr` reports every console message and uncaught error. The page
writes what it drew into `<body data-plots-ready data-traces-drawn>`, and the SVG it drew is
in the dump, so the test counts the traces plotly actually drew. No Python dependency beyond
the stdlib. Skipped when chromium is not installed (CI installs it: `apt-get install -y
chromium`)."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_common import (
    bloom_run,
    empty_report,
    long_report,
    long_run,
    multi_report,
    xss_report,
    xss_run,
)

from spikelens.model import Event, Finding, Recurrence, Report, RunReport, Size, StepInfo
from spikelens.readers._base import RawLog, build_run
from spikelens.report import render

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install -y "
    "chromium); the HTML report is not tested in a browser"
)

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--enable-logging=stderr", "--v=0",
]
_profiles = itertools.count()

#: Injected into a copy of a page, before any other script: an alert (what the injected
#: `onerror=alert(1)` would call) and any uncaught error leave a mark in the DOM.
TRAP = """<script>
window.alert = function (m) { document.documentElement.setAttribute("data-alert", String(m)); };
window.addEventListener("error", function (e) {
  document.documentElement.setAttribute("data-js-error", String(e.message));
});
</script>"""


def browse(page: Path, tmp_path: Path, budget_ms: int = 20000) -> tuple[str, list[str]]:
    """(DOM after the scripts ran, console messages)."""
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{next(_profiles)}"
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def body_attr(dom: str, name: str) -> str | None:
    m = re.search(r"<body([^>]*)>", dom)
    assert m, "no <body> in the dump"
    a = re.search(rf'\b{name}="([^"]*)"', m.group(1))
    return a.group(1) if a else None


def root_attr(dom: str, name: str) -> str | None:
    m = re.search(r"<html([^>]*)>", dom)
    assert m, "no <html> in the dump"
    a = re.search(rf'\b{name}="([^"]*)"', m.group(1))
    return a.group(1) if a else None


def drawn_traces(dom: str) -> int:
    return len(re.findall(r'<g class="trace scatter', dom))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_page_loads_without_console_errors_and_draws_every_trace(tmp_path: Path) -> None:
    run = long_run()
    page = write(tmp_path, "long.html", render(long_report(run), [run], "html"))
    dom, console = browse(page, tmp_path)
    assert console == []
    assert body_attr(dom, "data-plot-error") is None
    assert body_attr(dom, "data-plots-ready") == "1"
    # loss, its NaN/inf markers, LR, grad norm, its NaN markers, loss scale, skipped
    assert body_attr(dom, "data-traces-drawn") == "7"
    assert drawn_traces(dom) == 7
    assert dom.count('class="card kind-') == 4


def test_clicking_an_event_zooms_every_panel_and_the_log_toggle_works(tmp_path: Path) -> None:
    run = long_run()
    html = render(long_report(run), [run], "html")
    probe = """<script>
setTimeout(function () {
  document.querySelector('.card[data-event="1"]').click();
  setTimeout(function () {
    var gd = document.getElementById("plot-0"), root = document.documentElement;
    root.setAttribute("data-x", JSON.stringify(gd._fullLayout.xaxis.range));
    root.setAttribute("data-x5", JSON.stringify(gd._fullLayout.xaxis5.range));
    root.setAttribute("data-selected", document.querySelector(".card.selected").dataset.event);
    var box = document.querySelector("input.logscale");
    box.click();
    setTimeout(function () {
      root.setAttribute("data-ytype", gd._fullLayout.yaxis.type + "," +
                        gd._fullLayout.yaxis5.type);
    }, 500);
  }, 500);
}, 1000);
</script></body>"""
    page = write(tmp_path, "zoom.html", html.replace("</body>", probe))
    dom, console = browse(page, tmp_path)
    assert console == []
    # the spike at 800-801, padded by 25 logged steps on each side, on the loss and below
    assert root_attr(dom, "data-x") == "[775,826]"
    assert root_attr(dom, "data-x5") == "[775,826]"
    assert root_attr(dom, "data-selected") == "1"
    # loss goes to log scale; the skip flag (0/1) stays linear
    assert root_attr(dom, "data-ytype") == "log,linear"


def test_injected_metric_name_runs_no_script(tmp_path: Path) -> None:
    run = xss_run(tmp_path)
    html = render(xss_report(run), [run], "html")
    dom, console = browse(write(tmp_path, "xss.html", html), tmp_path)
    assert console == []
    # loss, LR, grad norm, loss scale (the skip counter is 0 throughout: left out)
    assert body_attr(dom, "data-traces-drawn") == "4"
    assert "<img" not in dom  # no element was made from the text
    assert "<title>spikelens: runs/&lt;script&gt;document.title='pwned'&lt;/script&gt;.csv" \
           "</title>" in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom  # shown as text
    # and with a trap set before any script: nothing called alert, nothing threw
    trapped = html.replace("<head>", "<head>" + TRAP, 1)
    dom, console = browse(write(tmp_path, "xss-trap.html", trapped), tmp_path)
    assert root_attr(dom, "data-alert") is None
    assert root_attr(dom, "data-js-error") is None
    assert console == []


def probe(html: str, script: str, wait_ms: int = 1500) -> str:
    """The page with `script` run `wait_ms` after load (the plots are drawn by then)."""
    head, sep, tail = html.rpartition("</body>")
    return (head + f"<script>setTimeout(function () {{\n{script}\n}}, {wait_ms});</script>"
            + sep + tail)


def test_empty_and_multi_run_pages_load_cleanly(tmp_path: Path) -> None:
    dom, console = browse(write(tmp_path, "empty.html", render(empty_report(), [], "html")),
                          tmp_path)
    assert console == []
    assert body_attr(dom, "data-plots-ready") == "0"
    assert "No runs analysed." in dom
    report = multi_report()
    runs = [long_run(1000), bloom_run()]
    html = render(report, runs, "html")
    script = """
var root = document.documentElement, order = function () {
  return Array.prototype.map.call(document.querySelectorAll("#runs-table tbody tr"),
    function (r) { return r.cells[1].textContent; }).join(","); };
root.setAttribute("data-order0", order());
document.querySelectorAll("#runs-table th")[0].click();
root.setAttribute("data-order1", order());
root.setAttribute("data-overlay", String(document.getElementById("plot-overlay").data.length));
root.setAttribute("data-folded", String(document.querySelectorAll("details.run:not([open])")
                                        .length));
document.getElementById("run-1").open = true;
setTimeout(function () {
  root.setAttribute("data-drawn-after-open", document.body.getAttribute("data-plots-drawn"));
  root.setAttribute("data-plot1-traces",
                    String(document.querySelectorAll("#plot-1 g.trace").length));
}, 1500);
"""
    dom, console = browse(write(tmp_path, "multi.html", probe(html, script)), tmp_path)
    assert console == []
    # the summary table is on top, worst first, and sorts on a click (by name)
    assert 'id="runs-table"' in dom
    assert root_attr(dom, "data-order0") == "spiky,healthy"
    assert root_attr(dom, "data-order1") == "healthy,spiky"
    # the overlay of both runs' losses is drawn at load, the run sections are folded ...
    assert body_attr(dom, "data-plots-ready") == "1"
    assert root_attr(dom, "data-overlay") == "2"
    assert root_attr(dom, "data-folded") == "2"
    # ... and a section's plots are drawn when it is opened (BLOOM: loss, LR, grad norm)
    assert root_attr(dom, "data-drawn-after-open") == "1"
    assert root_attr(dom, "data-plot1-traces") == "3"


def test_lines_break_at_a_gap_and_the_loss_scale_is_on_a_log_axis(tmp_path: Path) -> None:
    # BLOOM's excerpt has no steps 31223-31249: the curves must not bridge them
    from test_report_common import bloom_report

    html = render(bloom_report(), [bloom_run()], "html")
    script = """
var root = document.documentElement;
var traces = document.querySelectorAll("#plot-0 g.trace.scatter");
root.setAttribute("data-moves", Array.prototype.map.call(traces, function (t) {
  return String(t.querySelectorAll("path.js-line").length); }).join(","));
"""
    dom, console = browse(write(tmp_path, "gap.html", probe(html, script)), tmp_path)
    assert console == []
    # loss, LR, grad norm: each line is drawn in two pieces
    assert root_attr(dom, "data-moves") == "2,2,2"
    run = long_run()
    script = """
var root = document.documentElement, gd = document.getElementById("plot-0");
var types = [];
for (var k = 1; k <= 5; k++) { types.push(gd._fullLayout["yaxis" + (k > 1 ? k : "")].type); }
root.setAttribute("data-types", types.join(","));
document.querySelector('.card[data-event="1"]').click();
setTimeout(function () {
  // after the zoom, no axis title overlaps a tick label of its axis
  var bad = [];
  ["", "2", "3", "4", "5"].forEach(function (k) {
    var sub = gd.querySelector(".subplot.x" + k + "y" + k) ||
              gd.querySelector(".subplot.xy");
    var title = gd.querySelector(".g-y" + k + "title text");
    var ticks = sub.querySelectorAll(".yaxislayer-above text");
    if (!title || !ticks.length) { bad.push("missing " + k); return; }
    var right = title.getBoundingClientRect().right;
    ticks.forEach(function (t) {
      if (t.getBoundingClientRect().left < right) { bad.push(k + ":" + t.textContent); }
    });
  });
  root.setAttribute("data-overlaps", bad.join(";"));
  var xt = gd.querySelectorAll(".xaxislayer-above text");
  root.setAttribute("data-xticks", Array.prototype.map.call(
    gd.querySelectorAll(".subplot.x5y5 .xaxislayer-above text"),
    function (t) { return t.textContent; }).join(","));
}, 1500);
"""
    html = render(long_report(run), [run], "html")
    dom, console = browse(write(tmp_path, "axes.html", probe(html, script)), tmp_path)
    assert console == []
    # loss linear (a narrow range), LR and grad norm linear, the loss scale log, skips linear
    assert root_attr(dom, "data-types") == "linear,linear,linear,log,linear"
    assert root_attr(dom, "data-overlaps") == ""
    ticks = (root_attr(dom, "data-xticks") or "").split(",")
    assert ticks and all(re.fullmatch(r"\d+", t) for t in ticks), ticks


def test_a_million_step_page_renders(tmp_path: Path) -> None:
    n = 1_000_000
    rng = np.random.default_rng(5)
    loss = 2.0 + 0.05 * rng.standard_normal(n)
    loss[500_000] = 7.0
    frame = pd.DataFrame({"step": np.arange(n), "loss": loss,
                          "grad_norm": 1.0 + 0.1 * rng.standard_normal(n)})
    run = build_run(RawLog(frame=frame), tmp_path / "big.csv", "csv")
    ev = Event("spike", "loss", 500_000, 500_000, 500_001, True, Size(50.0, 3.5))
    rr = RunReport("big.csv", "csv", "spiky", StepInfo(0, n - 1, n, 1), dict(run.roles),
                   (Finding(ev),), ())
    html = render(Report(runs=(rr,)), [run], "html")
    assert len(html.encode("utf-8")) <= 10_000_000
    script = """
var root = document.documentElement, gd = document.getElementById("plot-0");
root.setAttribute("data-note0", document.getElementById("note-plot-0").textContent);
root.setAttribute("data-n0", String(gd.data[0].x.length));
Plotly.relayout(gd, {"xaxis.range": [300000, 301000]}).then(function () {
  setTimeout(function () {
    var x = gd.data[0].x;
    root.setAttribute("data-n1", String(x.length));
    root.setAttribute("data-first", String(x[0]) + "," + String(x[x.length - 1]));
    root.setAttribute("data-note1", document.getElementById("note-plot-0").textContent);
    root.setAttribute("data-full-ready", gd.getAttribute("data-full-ready"));
  }, 800);
});
"""
    page = write(tmp_path, "big.html", probe(html, script, wait_ms=3000))
    dom, console = browse(page, tmp_path)
    assert console == []
    assert body_attr(dom, "data-traces-drawn") == "2"
    # the page says it shows an envelope ...
    note = root_attr(dom, "data-note0") or ""
    assert note.startswith("Long series are drawn as a min/max envelope, which keeps every "
                           "spike: loss ")
    assert int(root_attr(dom, "data-n0") or 0) < 9000
    # ... and a 1,000-step window shows every one of its points (plus one either side, so
    # the line runs to the edges), decoded from the page's compressed full series
    assert root_attr(dom, "data-full-ready") == "1"  # the loss; grad norm: near events
    assert root_attr(dom, "data-n1") == "1003"
    assert root_attr(dom, "data-first") == "299999,301001"
    assert "loss: all 1,001 points in view" in (root_attr(dom, "data-note1") or "")


def test_without_javascript_the_cards_read_and_a_note_says_why_no_plots(
    tmp_path: Path,
) -> None:
    run = long_run()
    html = render(long_report(run), [run], "html")
    # a policy that runs no script of the page (Chromium's --dump-dom itself needs
    # scripting on, so the switch cannot be turned off for the whole browser)
    html = html.replace("<head>", "<head><meta http-equiv=\"Content-Security-Policy\" "
                        "content=\"script-src 'none'\">", 1)
    dom, _ = browse(write(tmp_path, "nojs.html", html), tmp_path)
    assert "<noscript><p class=\"noscript\">The plots need JavaScript, which is off" in dom
    assert dom.count('class="card kind-') == 4
    assert "Use bf16, or start GradScaler at 2**14 with growth_interval 2000." in dom
    # the plot box takes no room: no blank hole
    assert re.search(r'<div class="plot" id="plot-0" data-height="\d+"></div>', dom)
    assert body_attr(dom, "data-plots-ready") is None


def test_real_sample_page(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[1] / "sample_logs" / "jsonl" / \
        "r18_bad_batch_lr_metrics.jsonl"
    if not sample.exists():
        pytest.skip(f"{sample.name} is not in sample_logs/")
    root = Path(__file__).resolve().parents[1]
    if not (root / "spikelens" / "detect" / "__init__.py").exists():
        pytest.skip("the detector is not installed yet")
    from spikelens.analyze import analyze
    from spikelens.readers import read_runs

    runs = read_runs(sample)
    report = analyze(runs)
    dom, console = browse(write(tmp_path, "r18.html", render(report, runs, "html")), tmp_path)
    assert console == []
    # loss, LR and grad norm; one card per event the analysis found
    assert drawn_traces(dom) == 3
    assert dom.count('class="card kind-') == len(report.runs[0].findings) > 0


def test_zoomed_full_resolution_breaks_at_gaps_and_non_finite_values(tmp_path: Path) -> None:
    # 30,000 logged steps (so the envelope is used), a hole 10000-10499, NaN 20000-20039
    steps = np.concatenate([np.arange(0, 10_000), np.arange(10_500, 30_500)])
    rng = np.random.default_rng(2)
    loss = 2.0 + 0.05 * rng.standard_normal(len(steps))
    loss[(steps >= 20_000) & (steps < 20_040)] = np.nan
    frame = pd.DataFrame({"step": steps, "loss": loss})
    run = build_run(RawLog(frame=frame, nan_mask={"loss": np.isnan(loss)}),
                    tmp_path / "holes.csv", "csv")
    rr = RunReport("holes.csv", "csv", "healthy", StepInfo(0, 30_499, len(steps), 1),
                   dict(run.roles), (), ())
    html = render(Report(runs=(rr,)), [run], "html")
    script = """
var root = document.documentElement, gd = document.getElementById("plot-0");
function around(x0, x1, name) {
  return Plotly.relayout(gd, {"xaxis.range": [x0, x1]}).then(function () {
    return new Promise(function (done) { setTimeout(done, 300); });
  }).then(function () {
    var t = gd.data[0], cut = [];
    for (var k = 0; k < t.y.length; k++) { if (t.y[k] === null) { cut.push(t.x[k]); } }
    root.setAttribute("data-" + name, String(t.x.length) + ":" + cut.join(","));
  });
}
around(9900, 10600, "gap").then(function () { return around(19950, 20100, "nan"); });
"""
    dom, console = browse(write(tmp_path, "holes.html", probe(html, script, wait_ms=2000)),
                          tmp_path)
    assert console == []
    # 100 + 101 logged points (and one beyond each edge), cut once: after step 9999
    assert root_attr(dom, "data-gap") == "204:9999"
    # 50 + 61 finite points (and the edges), cut once where the NaN stretch starts
    assert root_attr(dom, "data-nan") == "114:19999"


def test_injected_run_names_on_a_multi_run_page_run_no_script(tmp_path: Path) -> None:
    # hostile paths reach the summary table (text, title and sort keys), the recurrence
    # table, the overlay's legend and hover text, and the folded sections
    evil = ["runs/<img src=x onerror=alert(1)>/a.csv", "runs/<svg onload=alert(2)>/a.csv"]
    runs, reports = [], []
    for source in evil:
        run = xss_run(tmp_path)
        rr = xss_report(run).runs[0]
        runs.append(run)
        reports.append(RunReport(source, rr.format, rr.verdict, rr.steps, rr.metrics,
                                 rr.findings, rr.warnings))
    rec = Recurrence("step", 100.0, ((evil[0], 100), (evil[1], 100)))
    report = Report(runs=tuple(reports), recurrences=(rec,))
    cdn = render(report, runs, "html", plotlyjs="cdn")  # plotly.js itself has "<svg"
    assert "<img" not in cdn and "<svg" not in cdn
    html = render(report, runs, "html")
    trapped = html.replace("<head>", "<head>" + TRAP, 1)
    script = """
document.querySelectorAll("details.run").forEach(function (d) { d.open = true; });
document.querySelectorAll("#runs-table th")[0].click();
"""
    dom, console = browse(write(tmp_path, "multi-xss.html", probe(trapped, script)), tmp_path)
    assert console == []
    assert root_attr(dom, "data-alert") is None
    assert root_attr(dom, "data-js-error") is None
    assert "<img" not in dom and "<svg onload" not in dom and "onerror=alert(1)>" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
