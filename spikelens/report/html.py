"""The HTML report: one self-contained page per analysis, to look at an incident and show it
to a colleague. Per run: the loss on top with every event window shaded and labelled with
its top cause, then LR, grad norm, loss scale and skipped steps (whichever the log has) on
the same step axis; a log-scale toggle; a card per event with its evidence and remedy, which
zooms the plots to the event when clicked; the run summary and the reader's warnings.

plotly.js is embedded by default so the page works offline (`plotlyjs="cdn"` links it
instead, for a small file). Long runs are cut down with a min/max envelope, which keeps
every spike (a slice's maximum is always kept), plus the full-resolution points around each
event, so a 1M-step run gives a page of a few MB that stays responsive.

Everything that comes from the log is untrusted: text in the page goes through
`html.escape`; text handed to plotly (which renders a subset of HTML in trace names and
labels) is escaped too; the figure data travels as JSON in a `<script type="application/
json">` block with `<`, `>` and `&` written as `\\u003c` etc., so no value can close the
block. A metric named `<img src=x onerror=alert(1)>` shows up as that text and runs nothing."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spikelens.errors import ConfigError
from spikelens.model import Finding, Report, Run, RunReport
from spikelens.report._common import (
    PLOTLYJS_MODES,
    RENDERERS,
    RenderOptions,
    envelope_indices,
    event_label,
    finding_key,
    fmt_evidence_value,
    fmt_num,
    fmt_recovered,
    fmt_size,
    fmt_step_range,
    fmt_steps,
    is_incident,
    overall_line,
    ranked_causes,
    run_title,
    sample_steps,
    top_cause,
    verdict_line,
)

#: Points per trace before the envelope kicks in (the envelope keeps about this many).
MAX_POINTS = 8000
#: Markers for non-finite values, per series.
MAX_NONFINITE_MARKERS = 2000
#: Full-resolution points kept around events, in total per series.
MAX_EVENT_POINTS = 40000
#: Labels drawn on the loss plot (the worst events); every event is still shaded.
MAX_LABELS = 30

#: (role, axis title) for the panels under the loss, in display order.
PANELS = (
    ("lr", "learning rate"),
    ("grad_norm", "grad norm"),
    ("loss_scale", "loss scale"),
    ("skipped", "skipped"),
)
#: Panels the log-scale toggle switches (a 0/1 skip flag has no log scale).
LOG_ROLES = ("loss", "lr", "grad_norm", "loss_scale")

COLORS = {
    "loss": "#1f77b4",
    "eval_loss": "#17becf",
    "lr": "#2ca02c",
    "grad_norm": "#9467bd",
    "loss_scale": "#8c564b",
    "skipped": "#7f7f7f",
    "nonfinite": "#d62728",
}
KIND_COLORS = {
    "spike": "#ff7f0e",
    "divergence": "#d62728",
    "nonfinite": "#a01a7d",
    "oscillation": "#17becf",
    "info": "#999999",
}


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _plotly_text(text: object) -> str:
    """Text for plotly labels: its pseudo-HTML parser must see no tag, and it decodes
    `&lt;` back to `<` for display."""
    return html.escape(str(text), quote=False)


def _floats(values: np.ndarray) -> list[float | None]:
    # 6 significant digits: the plot cannot show more, and the page gets smaller
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in values.tolist()]


def _kind_color(finding: Finding) -> str:
    ev = finding.event
    if not is_incident(ev) and ev.kind != "oscillation":
        return KIND_COLORS["info"]
    return KIND_COLORS.get(ev.kind, KIND_COLORS["info"])


# --- figure ------------------------------------------------------------------------------

def _event_windows(x: np.ndarray, findings: Sequence[Finding], interval: int) -> np.ndarray:
    """Positions in `x` within a margin around short events, for full-resolution zooming."""
    picks: list[np.ndarray] = []
    total = 0
    for f in sorted(findings, key=finding_key):
        ev = f.event
        pad = max(ev.end_step - ev.start_step, 25 * interval)
        lo = int(np.searchsorted(x, ev.start_step - pad, side="left"))
        hi = int(np.searchsorted(x, ev.end_step + pad, side="right"))
        if hi - lo > MAX_EVENT_POINTS // 4:  # a long condition: the envelope shows it
            continue
        if total + hi - lo > MAX_EVENT_POINTS:
            break
        picks.append(np.arange(lo, hi))
        total += hi - lo
    return np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)


def _series_traces(
    run: Run, role: str, label: str, axis: int, findings: Sequence[Finding], mode: str = "lines"
) -> list[dict[str, Any]]:
    s = run.series(role)
    if s is None or len(s) == 0:
        return []
    x = s.index.to_numpy(dtype=np.int64)
    y = s.to_numpy(dtype=np.float64)
    finite = np.isfinite(y)
    yf = np.where(finite, y, np.nan)
    keep = envelope_indices(yf, max(1, MAX_POINTS // 2 - 1))
    if len(keep) < len(x):
        keep = np.union1d(keep, _event_windows(x, findings, run.interval))
    keep = keep[finite[keep]]
    source = run.roles.get(role, role)
    name = label if source == label else f"{label} ({source})"
    ref = "" if axis == 1 else str(axis)
    trace: dict[str, Any] = {
        "type": "scatter",
        "mode": mode,
        "name": _plotly_text(name),
        "x": x[keep].tolist(),
        "y": _floats(y[keep]),
        "xaxis": f"x{ref}",
        "yaxis": f"y{ref}",
        "line": {"color": COLORS.get(role, "#444"), "width": 1.3,
                 "shape": "hv" if role in ("skipped", "loss_scale") else "linear"},
    }
    if mode != "lines":
        trace["marker"] = {"size": 5, "color": COLORS.get(role, "#444")}
    traces = [trace]
    if not finite.all():
        bad = sample_steps(x[~finite], MAX_NONFINITE_MARKERS)
        # each marker sits at the last finite value before it: on the curve, where the
        # series broke, so zooming to the event keeps it in view
        xf, yv = x[finite], y[finite]
        if len(xf):
            before = np.clip(np.searchsorted(xf, bad, side="right") - 1, 0, len(xf) - 1)
            level = _floats(yv[before])
        else:
            level = [1.0] * len(bad)
        traces.append({
            "type": "scatter",
            "mode": "markers",
            "name": _plotly_text(f"{label}: NaN/inf"),
            "x": bad.tolist(),
            "y": level,
            "xaxis": f"x{ref}",
            "yaxis": f"y{ref}",
            "marker": {"symbol": "x", "size": 8, "color": COLORS["nonfinite"]},
            "hovertemplate": "step %{x}: non-finite<extra></extra>",
        })
    return traces


def _domains(weights: Sequence[float], gap: float) -> list[tuple[float, float]]:
    usable = 1.0 - gap * (len(weights) - 1)
    total = sum(weights)
    out: list[tuple[float, float]] = []
    top = 1.0
    for w in weights:
        h = usable * w / total
        out.append((max(0.0, top - h), top))
        top -= h + gap
    return out


def _wide_range(run: Run) -> bool:
    """Start on a log scale when the loss spans more than three decades."""
    s = run.series("loss")
    if s is None:
        return False
    y = s.to_numpy(dtype=np.float64)
    y = y[np.isfinite(y) & (y > 0)]
    return len(y) > 1 and float(y.max()) / float(y.min()) > 1e3


def _figure(run: Run, rr: RunReport) -> dict[str, Any] | None:
    """The plotly figure (data + layout) of one run, and what the page script needs."""
    rows: list[tuple[str, str, list[dict[str, Any]]]] = []
    findings = rr.findings
    axis = 1
    loss = _series_traces(run, "loss", "loss", axis, findings)
    loss += _series_traces(run, "eval_loss", "eval loss", axis, findings, mode="lines+markers")
    if loss:
        rows.append(("loss", "loss", loss))
        axis += 1
    for role, title in PANELS:
        traces = _series_traces(run, role, title, axis, findings)
        if traces:
            rows.append((role, title, traces))
            axis += 1
    if not rows:
        return None
    log = _wide_range(run)
    weights = [3.0 if role == "loss" else 1.0 for role, _, _ in rows]
    domains = _domains(weights, gap=0.035)
    layout: dict[str, Any] = {
        "height": int(80 + sum(110 * w for w in weights)),
        "margin": {"l": 70, "r": 20, "t": 30, "b": 45},
        "hovermode": "x",
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
        "font": {"size": 12},
    }
    data: list[dict[str, Any]] = []
    log_axes: list[str] = []
    y_axes: list[str] = []
    n = len(rows)
    for k, ((role, title, traces), dom) in enumerate(zip(rows, domains, strict=True), start=1):
        ref = "" if k == 1 else str(k)
        xa: dict[str, Any] = {
            "domain": [0, 1],
            "anchor": f"y{ref}",
            "showticklabels": k == n,
            "showgrid": True,
            "gridcolor": "#eeeeee",
            "showspikes": True,
            "spikemode": "across",
            "spikethickness": 1,
            "spikecolor": "#999999",
            "zeroline": False,
        }
        if k > 1:
            xa["matches"] = "x"
        if k == n:
            xa["title"] = {"text": "step"}
        ya: dict[str, Any] = {
            "domain": [round(dom[0], 4), round(dom[1], 4)],
            "anchor": f"x{ref}",
            "title": {"text": _plotly_text(title), "font": {"size": 11}},
            "gridcolor": "#eeeeee",
            "zeroline": False,
            "exponentformat": "power",
            "type": "log" if log and role in LOG_ROLES else "linear",
        }
        if role != "loss":
            # LR, grad norm, loss scale and skip counts are non-negative: showing zero
            # keeps a constant loss scale from being drawn as noise around 65536
            ya["rangemode"] = "tozero"
        layout[f"xaxis{ref}"] = xa
        layout[f"yaxis{ref}"] = ya
        y_axes.append(f"yaxis{ref}")
        if role in LOG_ROLES:
            log_axes.append(f"yaxis{ref}")
        data += traces

    shapes: list[dict[str, Any]] = []
    for f in findings:
        ev = f.event
        color = _kind_color(f)
        shapes.append({
            "type": "rect", "xref": "x", "yref": "paper", "layer": "below",
            "x0": int(ev.start_step), "x1": int(ev.end_step), "y0": 0, "y1": 1,
            "fillcolor": color, "opacity": 0.10 if ev.kind == "oscillation" else 0.18,
            "line": {"width": 0},
        })
        if ev.kind != "oscillation":
            shapes.append({
                "type": "line", "xref": "x", "yref": "paper", "layer": "below",
                "x0": int(ev.peak_step), "x1": int(ev.peak_step), "y0": 0, "y1": 1,
                "line": {"color": color, "width": 1, "dash": "dot"},
            })
    for r in run.restarts:
        shapes.append({
            "type": "line", "xref": "x", "yref": "paper", "layer": "below",
            "x0": int(r.resumed_at), "x1": int(r.resumed_at), "y0": 0, "y1": 1,
            "line": {"color": "#555555", "width": 1, "dash": "dash"},
        })
    annotations: list[dict[str, Any]] = []
    order = sorted(range(len(findings)), key=lambda i: finding_key(findings[i]))[:MAX_LABELS]
    for slot, i in enumerate(sorted(order, key=lambda i: findings[i].event.peak_step)):
        f = findings[i]
        tc = top_cause(f)
        text = f"{i + 1}. {event_label(f.event)}" + (f": {tc.cause}" if tc else "")
        annotations.append({
            "xref": "x", "yref": "y domain", "x": int(f.event.peak_step),
            "y": 0.98 - 0.08 * (slot % 3),
            "yanchor": "top", "xanchor": "left", "showarrow": False,
            "text": _plotly_text(text), "font": {"size": 11, "color": _kind_color(f)},
            "bgcolor": "rgba(255,255,255,0.85)",
        })
    for r in run.restarts:
        annotations.append({
            "xref": "x", "yref": "y domain", "x": int(r.resumed_at), "y": 0.02,
            "yanchor": "bottom",
            "xanchor": "left", "showarrow": False, "text": "resume",
            "font": {"size": 10, "color": "#555555"},
        })
    layout["shapes"] = shapes
    layout["annotations"] = annotations
    return {
        "figure": {"data": data, "layout": layout},
        "logAxes": log_axes,
        "yAxes": y_axes,
        "log": log,
        "traces": len(data),
    }


# --- page --------------------------------------------------------------------------------

def _cause_html(finding: Finding) -> str:
    parts: list[str] = []
    for j, c in enumerate(ranked_causes(finding)):
        facts = "".join(
            f"<tr><th>{_esc(k)}</th><td>{_esc(fmt_evidence_value(v))}</td></tr>"
            for k, v in c.evidence.items()
        )
        # what to do comes before the raw facts: it is what most readers came for
        body = (
            f"<p class=\"summary\">{_esc(c.summary)}</p>"
            + (f"<p class=\"remedy\"><b>Remedy:</b> {_esc(c.remedy)}</p>" if c.remedy else "")
            + (f"<table class=\"evidence\">{facts}</table>" if facts else "")
        )
        head = (f"<span class=\"cause\">{_esc(c.cause)}</span> "
                f"<span class=\"score\" title=\"score\">{_esc(fmt_num(c.score, 2))}</span>")
        open_ = " open" if j == 0 else ""
        parts.append(f"<details class=\"cause-item\"{open_}><summary>{head}</summary>"
                     f"{body}</details>")
    if not parts:
        ev = finding.event
        if is_incident(ev):
            why = "No cause scored above the floor."
        elif ev.metric == "loss":
            why = "No causes ranked: an oscillation is a condition, not an incident."
        else:
            why = (f"No causes ranked: an informational event on {ev.metric}; "
                   "the loss was not affected.")
        parts.append(f"<p class=\"muted\">{_esc(why)}</p>")
    if finding.skipped:
        skipped = "; ".join(f"{_esc(s.cause)} ({_esc(s.reason)})" for s in finding.skipped)
        parts.append(f"<p class=\"skipped\">Not judged: {skipped}</p>")
    return "".join(parts)


def _card(run_index: int, i: int, finding: Finding) -> str:
    ev = finding.event
    kind = ev.kind if (is_incident(ev) or ev.kind == "oscillation") else "info"
    tc = top_cause(finding)
    if ev.kind == "oscillation":
        title = f"{i + 1}. {event_label(ev)}, steps {fmt_steps(ev)}"
        facts = fmt_size(ev)
    else:
        title = f"{i + 1}. {event_label(ev)} at step {ev.peak_step}"
        facts = f"steps {fmt_steps(ev)} · size {fmt_size(ev)} · recovered: {fmt_recovered(ev)}"
    if ev.first_nonfinite:
        facts += f" · first non-finite: {ev.first_nonfinite}"
    if ev.segment:
        facts += f" · segment {ev.segment}"
    return (
        f"<article class=\"card kind-{_esc(kind)}\" role=\"button\" tabindex=\"0\" "
        f"data-run=\"{run_index}\" data-event=\"{i}\" "
        f"title=\"Click to zoom the plots to this event\">"
        f"<h4>{_esc(title)}"
        + (f" <span class=\"top\">{_esc(tc.cause)}</span>" if tc else "")
        + f"</h4><p class=\"facts\">{_esc(facts)}</p>"
        f"{_cause_html(finding)}</article>"
    )


def _summary_html(rr: RunReport, run: Run | None) -> str:
    rows = [
        ("source", run_title(rr)),
        ("format", rr.format),
        ("steps", fmt_step_range(rr)),
    ]
    if run is not None and run.averaged:
        rows.append(("values", f"averages over each logging interval ({run.interval} steps)"))
    if run is not None and run.restarts:
        rows.append(("restarts", "; ".join(
            f"resumed at step {r.resumed_at} after {r.previous_last}"
            + (f" (steps {r.replayed[0]}–{r.replayed[1]} logged again)" if r.replayed else "")
            for r in run.restarts)))
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    metrics = "".join(f"<tr><th>{_esc(role)}</th><td><code>{_esc(name)}</code></td></tr>"
                      for role, name in rr.metrics.items())
    table = (f"<table class=\"metrics\"><caption>metrics</caption>{metrics}</table>"
             if metrics else "")
    return f"<div class=\"summary-box\"><dl>{dl}</dl>{table}</div>"


def _run_section(i: int, rr: RunReport, run: Run | None, fig: dict[str, Any] | None) -> str:
    out = [f"<section class=\"run\" id=\"run-{i}\">",
           f"<h2><span class=\"badge v-{_esc(rr.verdict)}\">{_esc(rr.verdict)}</span> "
           f"{_esc(run_title(rr))}</h2>",
           f"<p class=\"verdict-line\">{_esc(verdict_line(rr))}</p>",
           _summary_html(rr, run)]
    if fig is not None:
        checked = " checked" if fig["log"] else ""
        out.append(
            "<div class=\"controls\">"
            f"<label><input type=\"checkbox\" class=\"logscale\" data-run=\"{i}\"{checked}> "
            "log scale</label> "
            f"<button type=\"button\" class=\"reset\" data-run=\"{i}\">Reset zoom</button>"
            "<span class=\"hint\">Click an event card to zoom to it; drag on a plot to zoom; "
            "double-click to reset.</span></div>"
            f"<div class=\"plot\" id=\"plot-{i}\" "
            f"style=\"height:{fig['figure']['layout']['height']}px\"></div>"
        )
    elif run is None:
        out.append("<p class=\"muted\">The series of this run were not given to the renderer; "
                   "no plot.</p>")
    else:
        out.append("<p class=\"muted\">No series to plot.</p>")
    out.append(f"<h3>Events ({len(rr.findings)})</h3>")
    if rr.findings:
        out.append("<div class=\"cards\">"
                   + "".join(_card(i, k, f) for k, f in enumerate(rr.findings)) + "</div>")
    else:
        out.append("<p class=\"muted\">No events.</p>")
    if rr.warnings:
        out.append(f"<h3>Warnings ({len(rr.warnings)})</h3><ul class=\"warnings\">"
                   + "".join(f"<li>{_esc(w)}</li>" for w in rr.warnings) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def _json_for_script(payload: Any) -> str:
    """JSON that is safe inside a <script> block whatever strings it holds."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _plotly_tag(mode: str) -> str:
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    js = str(get_plotlyjs())
    if mode == "cdn":
        digest = base64.b64encode(hashlib.sha384(js.encode("utf-8")).digest()).decode("ascii")
        url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
        return (f"<script src=\"{_esc(url)}\" integrity=\"sha384-{digest}\" "
                "crossorigin=\"anonymous\" charset=\"utf-8\"></script>")
    # the bundle is minified JS; make sure it cannot end our script element early
    return "<script>" + js.replace("</script", "<\\/script") + "</script>"


@RENDERERS.register("html")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    if options.plotlyjs not in PLOTLYJS_MODES:
        raise ConfigError(
            f"unknown plotlyjs mode {options.plotlyjs!r} (known: {', '.join(PLOTLYJS_MODES)})"
        )
    from spikelens import __version__

    sections: list[str] = []
    payload_runs: list[dict[str, Any]] = []
    for i, rr in enumerate(report.runs):
        run = runs[i] if i < len(runs) else None
        fig = _figure(run, rr) if run is not None else None
        sections.append(_run_section(i, rr, run, fig))
        payload_runs.append({
            "figure": fig["figure"] if fig else None,
            "logAxes": fig["logAxes"] if fig else [],
            "yAxes": fig["yAxes"] if fig else [],
            "traces": fig["traces"] if fig else 0,
            "interval": int(run.interval) if run is not None else 1,
            # the detector may hand over numpy integers; JSON wants plain ones
            "events": [[int(f.event.start_step), int(f.event.end_step), int(f.event.peak_step)]
                       for f in rr.findings],
        })
    recurrences = ""
    if report.recurrences:
        items = "".join(
            f"<li>at {_esc(rec.axis)} {_esc(fmt_num(rec.position))}: "
            + ", ".join(f"{_esc(src)} (step {int(step)})" for src, step in rec.members)
            + "</li>"
            for rec in report.recurrences
        )
        recurrences = (f"<section class=\"run\"><h2>Incidents that recur across runs</h2>"
                       f"<ul>{items}</ul></section>")
    title = report.runs[0].source if len(report.runs) == 1 else f"{len(report.runs)} runs"
    body = "\n".join(sections) if sections else "<p class=\"muted\">No runs analysed.</p>"
    return _PAGE.format(
        title=_esc(f"spikelens: {title}"),
        style=_STYLE,
        plotly=_plotly_tag(options.plotlyjs),
        # a single run's verdict line heads its own section
        overall="" if len(report.runs) == 1 else
        f"<p class=\"overall\">{_esc(overall_line(report))}</p>",
        body=body,
        recurrences=recurrences,
        version=_esc(__version__),
        payload=_json_for_script({"runs": payload_runs}),
        script=_SCRIPT,
    )


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
{plotly}
</head>
<body>
<header><h1>spikelens report</h1>{overall}</header>
<main>
{body}
{recurrences}
</main>
<footer>Made by spikelens {version}.</footer>
<script type="application/json" id="spikelens-data">{payload}</script>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
:root { --fg: #1d2329; --muted: #6a737d; --line: #e1e4e8; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: #fff; }
header, main, footer { max-width: 1280px; margin: 0 auto; padding: 0 20px; }
header h1 { font-size: 20px; margin: 18px 0 2px; }
.overall { margin: 0 0 10px; color: var(--muted); }
footer { color: var(--muted); font-size: 12px; padding: 20px; }
section.run { border-top: 1px solid var(--line); padding: 8px 0 16px; }
h2 { font-size: 17px; margin: 10px 0 4px; word-break: break-all; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px;
  color: #fff; background: #6a737d; vertical-align: 2px; }
.v-healthy { background: #2da44e; } .v-oscillating { background: #bf8700; }
.v-spiky { background: #e36209; } .v-diverged { background: #cf222e; }
.v-nonfinite { background: #8250df; }
.verdict-line { margin: 2px 0 8px; }
.summary-box { display: flex; flex-wrap: wrap; gap: 8px 40px; background: var(--bg);
  border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.summary-box dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px;
  margin: 0; }
.summary-box dt { color: var(--muted); } .summary-box dd { margin: 0; word-break: break-all; }
table.metrics { border-collapse: collapse; }
table.metrics caption { text-align: left; color: var(--muted); }
table.metrics th { text-align: left; font-weight: normal; color: var(--muted);
  padding-right: 12px; }
.controls { margin: 10px 0 0; display: flex; gap: 14px; align-items: center; flex-wrap: wrap; }
.controls .hint { color: var(--muted); font-size: 12px; }
.plot { width: 100%; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 10px; }
.card { border: 1px solid var(--line); border-left: 5px solid #999; border-radius: 6px;
  padding: 8px 12px; cursor: pointer; background: #fff; }
.card:hover, .card:focus { box-shadow: 0 1px 6px rgba(0,0,0,.15); outline: none; }
.card.selected { background: #fffbe6; }
.kind-spike { border-left-color: #ff7f0e; } .kind-divergence { border-left-color: #d62728; }
.kind-nonfinite { border-left-color: #a01a7d; } .kind-oscillation { border-left-color: #17becf; }
.card h4 { margin: 0 0 4px; font-size: 14px; }
.card h4 .top { font-weight: normal; color: var(--muted); margin-left: 6px; }
.card .facts { margin: 0 0 6px; color: var(--muted); font-size: 13px; }
.cause-item summary { cursor: pointer; }
.cause { font-weight: 600; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.score { color: var(--muted); }
.summary { margin: 4px 0; }
table.evidence { border-collapse: collapse; font-size: 12px; margin: 2px 0 4px; }
table.evidence th { text-align: left; font-weight: normal; color: var(--muted);
  padding-right: 10px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.remedy { margin: 4px 0; padding: 4px 8px; background: #eef6ee; border-radius: 4px; }
.skipped, .muted { color: var(--muted); font-size: 13px; }
ul.warnings li { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px;
  word-break: break-all; }
"""

# No value from the log is ever interpolated into this script: it reads the JSON block.
_SCRIPT = r"""
(function () {
  "use strict";
  var payload = JSON.parse(document.getElementById("spikelens-data").textContent);
  var zoomed = {};
  function plot(i) { return document.getElementById("plot-" + i); }

  function fitY(gd, run, x0, x1) {
    var out = {};
    run.yAxes.forEach(function (ax) {
      var ref = "y" + ax.slice(5);
      var isLog = gd.layout[ax].type === "log";
      var lo = Infinity, hi = -Infinity;
      gd.data.forEach(function (t) {
        if ((t.yaxis || "y") !== ref) { return; }
        for (var j = 0; j < t.x.length; j++) {
          var x = t.x[j], y = t.y[j];
          if (x < x0 || x > x1 || y === null || !isFinite(y) || (isLog && y <= 0)) { continue; }
          if (y < lo) { lo = y; }
          if (y > hi) { hi = y; }
        }
      });
      if (lo > hi) { out[ax + ".autorange"] = true; return; }
      if (isLog) { lo = Math.log10(lo); hi = Math.log10(hi); }
      var m = (hi - lo) * 0.08 || (isLog ? 0.1 : (Math.abs(hi) * 0.05 || 1));
      out[ax + ".range"] = [lo - m, hi + m];
    });
    return out;
  }

  function zoomTo(i, k) {
    var run = payload.runs[i], gd = plot(i);
    if (!run || !gd || !gd.data || !run.events[k]) { return; }
    var ev = run.events[k];
    var pad = Math.max(ev[1] - ev[0], 25 * run.interval);
    var x0 = ev[0] - pad, x1 = ev[1] + pad;
    zoomed[i] = [x0, x1];
    var upd = fitY(gd, run, x0, x1);
    upd["xaxis.range"] = [x0, x1];
    Plotly.relayout(gd, upd);
    document.querySelectorAll('.card[data-run="' + i + '"]').forEach(function (c) {
      c.classList.toggle("selected", c.getAttribute("data-event") === String(k));
    });
    gd.scrollIntoView({behavior: "smooth", block: "start"});
  }

  function reset(i) {
    var run = payload.runs[i], gd = plot(i);
    if (!run || !gd || !gd.data) { return; }
    delete zoomed[i];
    var upd = {"xaxis.autorange": true};
    run.yAxes.forEach(function (ax) { upd[ax + ".autorange"] = true; });
    Plotly.relayout(gd, upd);
    document.querySelectorAll('.card[data-run="' + i + '"]').forEach(function (c) {
      c.classList.remove("selected");
    });
  }

  function setLog(i, on) {
    var run = payload.runs[i], gd = plot(i);
    if (!run || !gd || !gd.data) { return; }
    var upd = {};
    run.logAxes.forEach(function (ax) {
      upd[ax + ".type"] = on ? "log" : "linear";
      upd[ax + ".autorange"] = true;
    });
    Plotly.relayout(gd, upd).then(function () {
      var z = zoomed[i];
      if (z) { Plotly.relayout(gd, fitY(gd, run, z[0], z[1])); }
    });
  }

  document.querySelectorAll(".card").forEach(function (card) {
    var i = Number(card.getAttribute("data-run")), k = Number(card.getAttribute("data-event"));
    card.addEventListener("click", function (e) {
      if (e.target.closest("summary")) { return; }
      zoomTo(i, k);
    });
    card.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); zoomTo(i, k); }
    });
  });
  document.querySelectorAll("button.reset").forEach(function (b) {
    b.addEventListener("click", function () { reset(Number(b.getAttribute("data-run"))); });
  });
  document.querySelectorAll("input.logscale").forEach(function (box) {
    box.addEventListener("change", function () {
      setLog(Number(box.getAttribute("data-run")), box.checked);
    });
  });

  var body = document.body;
  if (typeof Plotly === "undefined") {
    document.querySelectorAll(".plot").forEach(function (div) {
      div.textContent = "plotly.js could not be loaded (offline with a CDN link?): no plots.";
      div.style.height = "auto";
    });
    body.setAttribute("data-plot-error", "plotly.js not loaded");
    return;
  }
  var pending = [];
  payload.runs.forEach(function (run, i) {
    var gd = plot(i);
    if (!gd || !run.figure) { return; }
    pending.push(Plotly.newPlot(gd, run.figure.data, run.figure.layout, {
      responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"]
    }));
  });
  Promise.all(pending).then(function () {
    body.setAttribute("data-plots-ready", String(pending.length));
    body.setAttribute("data-traces-drawn",
                      String(document.querySelectorAll(".plot g.trace").length));
  }, function (err) {
    body.setAttribute("data-plot-error", String(err));
    throw err;
  });
})();
"""
