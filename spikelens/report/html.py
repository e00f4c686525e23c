"""The HTML report: one self-contained page per analysis, to look at an incident and show it
to a colleague. Per run: the loss on top with every event window shaded and labelled with
its top cause, then LR, grad norm, loss scale and the skip/NaN counters (whichever the log
has and that carry something) on the same step axis; a card per event with its ranked
causes, evidence in plain words and remedy, which zooms the plots to the event when clicked;
the run summary and the reader's warnings. Several runs: a sortable summary table first,
the incidents that recur across runs, an overlay of the runs' loss curves on the axis the
recurrences were aligned on, the remedies shared by several runs said once, and one folded
section per run.

The curves do not lie: a line breaks where the log has a gap (two logged points further
apart than 1.5 logging intervals) and at every non-finite value, which is drawn as a marker
on the axis; a sparse series gets markers; the loss scale is on a log axis; the loss axis is
fitted to the training after warmup (a step-0 loss of 10.8 does not squash the incident; a
switch widens it); steps print exactly (31219, not 31.2k). Long series are drawn as a
min/max envelope that keeps every spike, and the page says so; the full-resolution series
travel in the page compressed (float32, byte-shuffled, zlib, base64; about 3.7 MB for a
million noisy float32 values, a few kB for a smooth LR), within a size budget, loss first.
On zoom the page script inflates them (the browser's `DecompressionStream`) and draws every
point of the visible range, or the envelope of that range when it holds too many.

plotly.js is embedded by default so the page works offline (`plotlyjs="cdn"` links it
instead, for a small file). Without JavaScript the cards, tables and a `<noscript>` note
still read; the plot boxes take no room.

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
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spikelens.cores import default_jobs
from spikelens.errors import ConfigError
from spikelens.model import Finding, Report, Run, RunReport
from spikelens.report._common import (
    PLOTLYJS_MODES,
    RENDERERS,
    RenderOptions,
    envelope_indices,
    event_label,
    evidence_rows,
    finding_key,
    fmt_num,
    fmt_recovered,
    fmt_size,
    fmt_step_range,
    fmt_steps,
    is_condition,
    is_incident,
    member_names,
    overall_line,
    ranked_causes,
    repeated_notes,
    run_summary_rows,
    run_title,
    sample_steps,
    short_names,
    skipped_text,
    split_skipped,
    superseded_at,
    top_cause,
    verdict_line,
    verdict_rank,
)

#: Points per trace before the envelope kicks in (the envelope keeps about this many). The
#: page script uses the same number for the visible range on zoom.
MAX_POINTS = 8000
#: Points per run on the multi-run overlay, and the most runs it draws (the worst ones).
OVERLAY_POINTS = 3000
OVERLAY_MAX_RUNS = 20
#: At or below this many points a series is drawn with markers, so a sparse log shows where
#: it was actually logged.
SPARSE_POINTS = 300
#: Markers for non-finite values, per series.
MAX_NONFINITE_MARKERS = 2000
#: Full-resolution points kept around events, in total per series (for series whose full
#: data did not fit the page budget).
MAX_EVENT_POINTS = 40000
#: Base64 characters of compressed full-resolution series per page. With plotly.js inline
#: (4.8 MB) this keeps a million-step page under 10 MB: the loss always fits (3.7 MB for a
#: million noisy float32 values); smooth series (LR, loss scale, counters) cost kilobytes.
FULL_BUDGET = 4_200_000
#: Labels drawn on the loss plot (the worst events); every event is still shaded.
MAX_LABELS = 30
#: A gap breaks the line when two logged points are this many logging intervals apart.
GAP_FACTOR = 1.5

#: (role, axis title) for the panels under the loss, in display order.
PANELS = (
    ("lr", "learning rate"),
    ("grad_norm", "grad norm"),
    ("loss_scale", "loss scale"),
    ("skipped", "skipped"),
    ("nan_count", "NaN steps"),
)
#: Counters: a panel of all zeros says nothing and is left out (with a note).
COUNTER_ROLES = ("skipped", "nan_count")
#: Panels the log-scale switch toggles (a 0/1 skip flag has no log scale; the loss scale is
#: always on a log axis: a collapse from 262144 to 2.4e-7 is invisible on a linear one).
LOG_ROLES = ("loss", "lr", "grad_norm")
#: Order in which full-resolution series get the page budget.
FULL_PRIORITY = ("loss", "eval_loss", "grad_norm", "loss_scale", "lr", "skipped", "nan_count")

COLORS = {
    "loss": "#1f77b4",
    "eval_loss": "#e6007e",
    "lr": "#2ca02c",
    "grad_norm": "#9467bd",
    "loss_scale": "#8c564b",
    "skipped": "#7f7f7f",
    "nan_count": "#7f7f7f",
    "nonfinite": "#d62728",
}
KIND_COLORS = {
    "spike": "#ff7f0e",
    "divergence": "#d62728",
    "nonfinite": "#a01a7d",
    "oscillation": "#17becf",
    "info": "#999999",
}
#: Colours of the runs on the overlay (plotly's D3 palette, loss blue first).
RUN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
              "#7f7f7f", "#bcbd22", "#17becf")


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _plotly_text(text: object) -> str:
    """Text for plotly labels: its pseudo-HTML parser must see no tag, and it decodes
    `&lt;` back to `<` for display."""
    return html.escape(str(text), quote=False)


def _floats(values: np.ndarray) -> list[float | None]:
    # float32 precision (7 significant digits), the same as the full-resolution data
    return [float(f"{v:.7g}") if math.isfinite(v) else None for v in values.tolist()]


def _kind_color(finding: Finding) -> str:
    ev = finding.event
    if not is_incident(ev) and not is_condition(ev):
        return KIND_COLORS["info"]
    return KIND_COLORS.get(ev.kind, KIND_COLORS["info"])


def _n(x: int) -> str:
    return f"{x:,}"


# --- series ------------------------------------------------------------------------------

def gap_threshold(x: np.ndarray) -> float:
    """Step distance above which two logged points are a gap: 1.5 times the most common
    distance (the logging interval). Infinite for fewer than two points."""
    d = np.diff(x)
    d = d[d > 0]
    if not len(d):
        return math.inf
    vals, counts = np.unique(d, return_counts=True)
    return GAP_FACTOR * float(vals[int(np.argmax(counts))])


def with_breaks(
    x: np.ndarray, y: np.ndarray, keep: np.ndarray, threshold: float
) -> tuple[list[int], list[float | None]]:
    """The points `keep` of (x, y), finite ones only, with a null (a break in the line)
    between two kept points wherever the full series has a gap or a non-finite value
    between them. The ends of every gap and of every non-finite stretch are kept too, so
    each piece of line runs exactly up to where the log stops."""
    n = len(x)
    finite = np.isfinite(y)
    gap_after = np.diff(x) > threshold  # gap between i and i + 1
    nf = ~finite
    extra: list[np.ndarray] = []
    g = np.flatnonzero(gap_after)
    if len(g):
        extra += [g, g + 1]
    if nf.any():
        edges = np.flatnonzero(np.diff(np.concatenate(([0], nf.astype(np.int8), [0]))))
        starts, ends = edges[::2], edges[1::2]  # non-finite stretches [start, end)
        extra += [starts - 1, ends]
    if extra:
        more = np.concatenate(extra)
        keep = np.union1d(keep, more[(more >= 0) & (more < n)])
    keep = keep[finite[keep]]
    if not len(keep):
        return [], []
    cum_gap = np.concatenate(([0], np.cumsum(gap_after)))  # gaps among pairs before i
    cum_nf = np.concatenate(([0], np.cumsum(nf)))  # non-finite among indices before i
    a, b = keep[:-1], keep[1:]
    broken = ((cum_gap[b] - cum_gap[a]) > 0) | ((cum_nf[b] - cum_nf[a + 1]) > 0)
    xs = x[keep]
    ys = _floats(y[keep])
    if not broken.any():
        return xs.tolist(), ys
    out_x: list[int] = []
    out_y: list[float | None] = []
    xl = xs.tolist()
    cut = set(np.flatnonzero(broken).tolist())
    for k in range(len(xl)):
        out_x.append(xl[k])
        out_y.append(ys[k])
        if k in cut:
            out_x.append(xl[k])
            out_y.append(None)
    return out_x, out_y


def _b64z(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


#: Bytes fed to zlib at a time by `_deflate`: the point where a series that cannot fit the
#: page's budget is given up is known to within this much input.
_DEFLATE_CHUNK = 1 << 20


def _deflate(raw: bytes, cap: int | None) -> bytes | None:
    """`zlib.compress(raw, 6)`, or None as soon as the output is known to exceed `cap`
    bytes. Fed in chunks with no flush, deflate writes the same stream as one call (the
    chunking only decides when output is returned, not what it is)."""
    if cap is None:
        return zlib.compress(raw, 6)
    c = zlib.compressobj(6)
    out: list[bytes] = []
    size = 0
    view = memoryview(raw)
    for a in range(0, len(raw), _DEFLATE_CHUNK):
        part = c.compress(view[a:a + _DEFLATE_CHUNK])
        out.append(part)
        size += len(part)
        if size > cap:
            return None
    out.append(c.flush())
    size += len(out[-1])
    return b"".join(out) if size <= cap else None


def pack_series(x: np.ndarray, y: np.ndarray, room: int | None = None,
                pool: Any = None) -> dict[str, Any] | None:
    """The full series, compact: steps as int32 deltas, values as float32 (byte-shuffled
    when that compresses better, as for noisy values; printed decimals often do better
    unshuffled), each zlib-compressed and base64-encoded. None if steps do not fit, or if
    the packed series would be more than `room` base64 characters: its compression is then
    abandoned as soon as that is certain (on a 1M-step page the noisy grad norm never fits
    once the loss is in, and compressing it in full was a third of the page's time).
    `pool`: an executor that compresses the two layouts of the values side by side (zlib
    releases the GIL)."""
    d = np.diff(x)
    if len(d) and (d.min() < 0 or d.max() > 2**31 - 1):
        return None
    dx = _b64z(d.astype("<i4").tobytes())
    cap = None
    if room is not None:
        if len(dx) > room:
            return None
        cap = 3 * ((room - len(dx)) // 4)  # the most bytes whose base64 fits what is left
    f = y.astype("<f4")
    layouts = (f.tobytes(), f.view(np.uint8).reshape(-1, 4).T.tobytes())
    if pool is not None:
        plain, shuffled = pool.map(lambda raw: _deflate(raw, cap), layouts)
    else:
        plain, shuffled = (_deflate(raw, cap) for raw in layouts)
    if plain is None and shuffled is None:
        return None
    # one given up is longer than `cap`, so longer than the other: the same choice
    use_shuffle = plain is None or (shuffled is not None and len(shuffled) < len(plain))
    values = shuffled if use_shuffle else plain
    assert values is not None
    return {
        "n": int(len(x)),
        "x0": int(x[0]),
        "dx": dx,
        "y": base64.b64encode(values).decode("ascii"),
        "shuffle": use_shuffle,
    }


def _event_windows(x: np.ndarray, findings: Sequence[Finding], interval: int) -> np.ndarray:
    """Positions in `x` within a margin around short events, for full-resolution zooming
    of a series whose full data did not fit the page."""
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


@dataclass
class _Series:
    """One plotted series: its traces and what the page script and the note need."""

    role: str
    label: str
    traces: list[dict[str, Any]]
    n: int  # logged points
    shown: int  # finite points drawn at load
    gap: float
    x: np.ndarray
    y: np.ndarray
    full: dict[str, Any] | None = None
    near_events: bool = False  # full resolution only around events


def _series(
    run: Run, role: str, label: str, axis: int, overlay: int, findings: Sequence[Finding],
    mode: str = "lines",
) -> _Series | None:
    s = run.series(role)
    if s is None or len(s) == 0:
        return None
    x = s.index.to_numpy(dtype=np.int64)
    y = s.to_numpy(dtype=np.float64)
    finite = np.isfinite(y)
    n = len(x)
    keep = envelope_indices(np.where(finite, y, np.nan), max(1, MAX_POINTS // 2 - 1))
    threshold = gap_threshold(x)
    xs, ys = with_breaks(x, y, keep, threshold)
    shown = sum(v is not None for v in ys)
    source = run.roles.get(role, role)
    name = label if source == label else f"{label} ({source})"
    ref = "" if axis == 1 else str(axis)
    if n <= SPARSE_POINTS and mode == "lines":
        mode = "lines+markers"
    color = COLORS.get(role, "#444")
    trace: dict[str, Any] = {
        "type": "scatter",
        "mode": mode,
        "name": _plotly_text(name),
        "x": xs,
        "y": ys,
        "xaxis": f"x{ref}",
        "yaxis": f"y{ref}",
        "connectgaps": False,
        "line": {"color": color, "width": 1.3,
                 "shape": "hv" if role in ("skipped", "nan_count", "loss_scale") else "linear"},
        "marker": {"size": 4 if role != "eval_loss" else 6, "color": color},
    }
    if role == "eval_loss":
        trace["line"]["width"] = 2.0
    traces = [trace]
    if not finite.all():
        bad = sample_steps(x[~finite], MAX_NONFINITE_MARKERS)
        # on the axis (an overlaid 0..1 axis), whatever the value range or scale: the
        # value does not exist, so no height on the value axis would be true
        traces.append({
            "type": "scatter",
            "mode": "markers",
            "name": _plotly_text(f"{label}: NaN/inf"),
            "x": bad.tolist(),
            "y": [0.03] * len(bad),
            "xaxis": f"x{ref}",
            "yaxis": f"y{overlay}",
            "marker": {"symbol": "triangle-up", "size": 9, "color": COLORS["nonfinite"]},
            "hovertemplate": "step %{x}: non-finite (NaN/inf)<extra></extra>",
        })
    return _Series(role, label, traces, n, shown, threshold, x, y)


def _all_zero(run: Run, role: str) -> int | None:
    """The number of logged points when a counter is all zero (nothing to show), else None."""
    s = run.series(role)
    if s is None or len(s) == 0:
        return None
    y = s.to_numpy(dtype=np.float64)
    return len(y) if bool(np.all(y == 0)) else None


# --- axes --------------------------------------------------------------------------------

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


def warmup_end(run: Run) -> int | None:
    """The first step of "the training after warmup": where the LR first reaches 90% of its
    peak (when that is in the first half of the run), and at least 2% of the logged loss
    points in (a constant-LR run still starts from a loss of ln(vocab))."""
    loss = run.series("loss")
    if loss is None or len(loss) < 20:
        return None
    steps = loss.index.to_numpy(dtype=np.int64)
    end = int(steps[max(1, len(steps) // 50)])
    lr = run.series("lr")
    if lr is not None and len(lr) > 2:
        v = lr.to_numpy(dtype=np.float64)
        ok = np.isfinite(v)
        if ok.any():
            peak = float(np.max(v[ok]))
            first = np.flatnonzero(ok & (v >= 0.9 * peak))
            at = int(lr.index[first[0]])
            if at <= steps[0] + (steps[-1] - steps[0]) // 2:
                end = max(end, at)
    return end


def loss_fit(run: Run, findings: Sequence[Finding]) -> tuple[float, float, int] | None:
    """(low, high, from_step) of the loss and eval loss after warmup, stretched to take in
    every event peak; None when the warmup would not squash anything (it lies within that
    range, give or take 10% of it)."""
    start = warmup_end(run)
    if start is None:
        return None
    after: list[np.ndarray] = []
    before: list[np.ndarray] = []
    for role in ("loss", "eval_loss"):
        s = run.series(role)
        if s is None:
            continue
        x = s.index.to_numpy(dtype=np.int64)
        y = s.to_numpy(dtype=np.float64)
        ok = np.isfinite(y)
        after.append(y[ok & (x >= start)])
        before.append(y[ok & (x < start)])
        peaks = [f.event.peak_step for f in findings if f.event.metric in ("loss", role)]
        if peaks:
            at = np.isin(x, np.asarray(peaks, dtype=np.int64)) & ok
            after.append(y[at])
    a = np.concatenate(after) if after else np.empty(0)
    b = np.concatenate(before) if before else np.empty(0)
    if len(a) < 2 or not len(b):
        return None
    lo, hi = float(a.min()), float(a.max())
    span = hi - lo
    if span <= 0 or (float(b.max()) <= hi + 0.1 * span and float(b.min()) >= lo - 0.1 * span):
        return None
    return lo, hi, start


def _fit_range(lo: float, hi: float, log: bool) -> list[float] | None:
    if log:
        if lo <= 0:
            return None
        lo, hi = math.log10(lo), math.log10(hi)
    m = (hi - lo) * 0.06 or 0.1
    return [lo - m, hi + m]


def _x_axis(k: int, n: int, title: str = "step") -> dict[str, Any]:
    xa: dict[str, Any] = {
        "domain": [0, 1],
        "anchor": "y" if k == 1 else f"y{k}",
        "showticklabels": k == n,
        "showgrid": True,
        "gridcolor": "#eeeeee",
        "showspikes": True,
        "spikemode": "across",
        "spikethickness": 1,
        "spikecolor": "#999999",
        "zeroline": False,
        # exact step numbers: 31219, never 31.219k
        "tickformat": "d",
        "hoverformat": "d",
        "automargin": True,
    }
    if k > 1:
        xa["matches"] = "x"
    if k == n:
        xa["title"] = {"text": title, "standoff": 8}
    return xa


def _y_axis(title: str, dom: tuple[float, float], anchor: str, kind: str) -> dict[str, Any]:
    return {
        "domain": [round(dom[0], 4), round(dom[1], 4)],
        "anchor": anchor,
        "title": {"text": _plotly_text(title), "font": {"size": 11}, "standoff": 6},
        "gridcolor": "#eeeeee",
        "zeroline": False,
        "exponentformat": "power",
        "hoverformat": ".7~g",
        # plotly moves the title out of the way of the tick labels, whatever their width,
        # also after a zoom changes them
        "automargin": True,
        "type": kind,
    }


# --- figure ------------------------------------------------------------------------------

@dataclass
class _Figure:
    figure: dict[str, Any]
    series: list[dict[str, Any]]  # per plotted series: trace index, counts, full data
    log_axes: list[str]
    y_axes: list[str]
    log: bool
    fit: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)  # panels left out, and why
    downsampled: list[_Series] = field(default_factory=list)
    all_series: list[_Series] = field(default_factory=list)


def _allot_full(figures: Sequence[tuple[_Figure, Run, RunReport]], lazy: bool) -> None:
    """Give the page's budget of full-resolution data to the series that were cut down, by
    role priority across all runs (the loss of every run before any grad norm), and finish
    each figure: a series without full data keeps full resolution around the events."""
    left = FULL_BUDGET
    pool = None
    # the cores this process may use (a job pinned to one core gains nothing from a thread)
    if default_jobs() >= 2 and any(fig.downsampled for fig, _, _ in figures):
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=2)
    try:
        for role in FULL_PRIORITY:
            for fig, _, _ in figures:
                for s in fig.downsampled:
                    if s.role != role:
                        continue
                    # packed only within what is left of the budget: one that cannot fit is
                    # given up early, and would have been left out all the same
                    packed = pack_series(s.x, s.y, left, pool)
                    cost = 0 if packed is None else len(packed["dx"]) + len(packed["y"])
                    if packed is not None and cost <= left:
                        left -= cost
                        s.full = packed
    finally:
        if pool is not None:
            pool.shutdown()
    for fig, run, rr in figures:
        for meta, s in zip(fig.series, fig.all_series, strict=True):
            meta["full"] = s.full
            if s in fig.downsampled and s.full is None:
                s.near_events = True
            if lazy and s.full is not None:
                # drawn from the full data when its section is opened: no second copy
                meta["lazy"] = True
                s.traces[0]["x"], s.traces[0]["y"] = [], []
            if s.near_events:
                tr = s.traces[0]
                keep = envelope_indices(np.where(np.isfinite(s.y), s.y, np.nan),
                                        max(1, MAX_POINTS // 2 - 1))
                keep = np.union1d(keep, _event_windows(s.x, rr.findings, run.interval))
                tr["x"], tr["y"] = with_breaks(s.x, s.y, keep, s.gap)
                meta["shown"] = sum(v is not None for v in tr["y"])
                meta["nearEvents"] = True


def _figure(run: Run, rr: RunReport) -> _Figure | None:
    """The plotly figure (data + layout) of one run, and what the page script needs."""
    findings = rr.findings
    panels: list[tuple[str, str]] = []
    if run.has("loss") or run.has("eval_loss"):
        panels.append(("loss", "loss"))
    notes: list[str] = []
    for role, title in PANELS:
        if not run.has(role):
            continue
        zeros = _all_zero(run, role) if role in COUNTER_ROLES else None
        if zeros is not None:
            source = run.roles[role]
            named = title if source == title else f"{title} ({source})"
            notes.append(f"{named}: 0 at all {_n(zeros)} logged steps, panel left out")
            continue
        panels.append((role, title))
    overlay_base = len(panels) + 1
    rows: list[tuple[str, str, list[_Series]]] = []
    for role, title in panels:
        axis = len(rows) + 1
        overlay = overlay_base + len(rows)
        if role == "loss":
            group = [s for s in (
                _series(run, "loss", "loss", axis, overlay, findings),
                # drawn after (so above) the train loss, in its own colour, with markers
                _series(run, "eval_loss", "eval loss", axis, overlay, findings,
                        mode="lines+markers"),
            ) if s is not None]
        else:
            one = _series(run, role, title, axis, overlay, findings)
            group = [one] if one is not None else []
        if group:
            rows.append((role, title, group))
    if not rows:
        return None
    log = _wide_range(run)
    weights = [3.0 if role == "loss" else 1.0 for role, _, _ in rows]
    domains = _domains(weights, gap=0.045)
    layout: dict[str, Any] = {
        "height": int(90 + sum(115 * w for w in weights)),
        "margin": {"l": 60, "r": 20, "t": 30, "b": 40},
        "hovermode": "x",
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
        "font": {"size": 12},
    }
    data: list[dict[str, Any]] = []
    series_meta: list[dict[str, Any]] = []
    all_series: list[_Series] = []
    log_axes: list[str] = []
    y_axes: list[str] = []
    n = len(rows)
    fit: dict[str, Any] | None = None
    for k, ((role, title, group), dom) in enumerate(zip(rows, domains, strict=True), start=1):
        ref = "" if k == 1 else str(k)
        layout[f"xaxis{ref}"] = _x_axis(k, n)
        kind = "linear"
        if role == "loss_scale":
            vals = group[0].y[np.isfinite(group[0].y)]
            kind = "log" if len(vals) and float(vals.min()) > 0 else "linear"
        elif log and role in LOG_ROLES:
            kind = "log"
        ya = _y_axis(title, dom, f"x{ref}", kind)
        if role in COUNTER_ROLES or (role != "loss" and kind == "linear"):
            # LR, grad norm and counters are non-negative: showing zero keeps a constant
            # value from being drawn as noise
            ya["rangemode"] = "tozero"
        if role == "loss":
            f = loss_fit(run, findings)
            rng = _fit_range(f[0], f[1], kind == "log") if f else None
            if f is not None and rng is not None:
                ya["range"] = rng
                ya["autorange"] = False
                fit = {"axis": "yaxis", "lo": f[0], "hi": f[1], "from": int(f[2])}
        layout[f"yaxis{ref}"] = ya
        # an invisible 0..1 axis over the panel, for the non-finite markers
        layout[f"yaxis{overlay_base + k - 1}"] = {
            "overlaying": f"y{ref}", "range": [0, 1], "visible": False, "fixedrange": True,
            "anchor": f"x{ref}",
        }
        y_axes.append(f"yaxis{ref}")
        if role in LOG_ROLES:
            log_axes.append(f"yaxis{ref}")
        for s in group:
            series_meta.append({"trace": len(data), "role": s.role, "label": s.label,
                                "n": s.n, "shown": s.shown,
                                "gap": s.gap if math.isfinite(s.gap) else None})
            all_series.append(s)
            data += s.traces

    downsampled = [s for s in all_series if s.shown < int(np.isfinite(s.y).sum())]
    layout["shapes"], layout["annotations"] = _event_marks(run, findings)
    return _Figure(
        figure={"data": data, "layout": layout}, series=series_meta, log_axes=log_axes,
        y_axes=y_axes, log=log, fit=fit, notes=notes, downsampled=downsampled,
        all_series=all_series,
    )


def _event_marks(
    run: Run, findings: Sequence[Finding]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
    return shapes, annotations


def _downsample_note(fig: _Figure) -> str:
    """What the plot shows of each long series, said on the page (and updated on zoom)."""
    if not fig.downsampled:
        return ""
    parts = []
    for s in fig.downsampled:
        meta = next(m for m in fig.series if m["label"] == s.label and m["role"] == s.role)
        where = (" (full resolution only near the events: the page keeps its size down)"
                 if s.near_events else "")
        parts.append(f"{s.label} {_n(meta['shown'])} of {_n(s.n)} points{where}")
    return ("Long series are drawn as a min/max envelope, which keeps every spike: "
            + "; ".join(parts) + f". Zoom in to see every point: the plot draws the full "
            f"resolution once {_n(MAX_POINTS)} or fewer points are in view.")


# --- the multi-run overlay ---------------------------------------------------------------

def _axis_values(run: Run, axis: str, steps: np.ndarray) -> np.ndarray | None:
    """Steps mapped to the recurrence axis (tokens or samples consumed), by the run's own
    counter; None when the run does not log it."""
    if axis == "step":
        return steps.astype(np.float64)
    c = run.series(axis)
    if c is None:
        return None
    cx = c.index.to_numpy(dtype=np.float64)
    cy = c.to_numpy(dtype=np.float64)
    ok = np.isfinite(cy)
    if ok.sum() < 2:
        return None
    out: np.ndarray = np.interp(steps.astype(np.float64), cx[ok], cy[ok])
    return out


def _overlay(
    report: Report, runs: Sequence[Run | None], names: Sequence[str],
) -> dict[str, Any] | None:
    """The runs' loss curves on one axis (the one the recurrences were aligned on), with
    each recurrence marked; each run toggles from the legend."""
    have = [(i, r) for i, r in enumerate(runs) if r is not None and r.has("loss")]
    if len(have) < 2:
        return None
    if len(have) > OVERLAY_MAX_RUNS:
        # a fleet: the worst runs only (the summary table lists them all)
        rank = {row.index: k for k, row in enumerate(run_summary_rows(report).rows)}
        have = sorted(sorted(have, key=lambda p: rank[p[0]])[:OVERLAY_MAX_RUNS])
    axis = report.recurrences[0].axis if report.recurrences else "step"
    if axis != "step" and any(_axis_values(r, axis, r.steps[:2]) is None for _, r in have):
        axis = "step"
    data: list[dict[str, Any]] = []
    fits: list[tuple[float, float]] = []
    wide = False
    for k, (i, run) in enumerate(have):
        s = run.series("loss")
        assert s is not None
        x = s.index.to_numpy(dtype=np.int64)
        y = s.to_numpy(dtype=np.float64)
        pos = _axis_values(run, axis, x)
        assert pos is not None
        keep = envelope_indices(np.where(np.isfinite(y), y, np.nan),
                                max(1, OVERLAY_POINTS // 2 - 1))
        xs, ys = with_breaks(x, y, keep, gap_threshold(x))
        # the envelope picked steps; place them on the axis
        px = np.interp(np.asarray(xs, dtype=np.float64), x.astype(np.float64), pos)
        color = RUN_COLORS[k % len(RUN_COLORS)]
        data.append({
            "type": "scatter", "mode": "lines", "name": _plotly_text(names[i]),
            "x": [int(v) if axis == "step" else float(v) for v in px], "y": ys,
            "connectgaps": False, "line": {"color": color, "width": 1.2},
            "customdata": xs,
            "hovertemplate": _plotly_text(names[i]) + ": %{y} at step %{customdata}"
                             "<extra></extra>",
        })
        f = loss_fit(run, report.runs[i].findings)
        fin = y[np.isfinite(y)]
        if len(fin):
            fits.append((f[0], f[1]) if f else (float(fin.min()), float(fin.max())))
        wide = wide or _wide_range(run)
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    mx: list[float] = []
    my: list[float | None] = []
    mt: list[str] = []
    keys = member_names(report, names)
    by_key: dict[str, Run] = {}
    for _, run in have:
        by_key[run.source if run.name is None else f"{run.source}#{run.name}"] = run
        by_key.setdefault(run.source, run)
    for r, rec in enumerate(report.recurrences, start=1):
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": rec.position,
                       "x1": rec.position, "y0": 0, "y1": 1, "layer": "below",
                       "line": {"color": "#d62728", "width": 1, "dash": "dot"}})
        # staggered, so the labels of recurrences a few steps apart do not overprint
        annotations.append({"xref": "x", "yref": "paper", "x": rec.position,
                            "y": 1.0 - 0.05 * ((r - 1) % 3), "xanchor": "left",
                            "yanchor": "top", "showarrow": False, "text": f"R{r}",
                            "bgcolor": "rgba(255,255,255,0.85)",
                            "font": {"size": 11, "color": "#d62728"}})
        for src, step in rec.members:
            run_ = by_key.get(src)
            if run_ is None:
                continue
            s = run_.series("loss")
            if s is None or int(step) not in s.index:
                continue
            pos = _axis_values(run_, axis, np.asarray([int(step)]))
            if pos is None:
                continue
            v = float(s.loc[int(step)])
            mx.append(float(pos[0]))
            my.append(v if math.isfinite(v) else None)
            mt.append(_plotly_text(f"R{r}: {keys.get(src, src)}, step {int(step)}"))
    if mx:
        data.append({"type": "scatter", "mode": "markers", "name": "recurring incidents",
                     "x": mx, "y": my, "text": mt, "hovertemplate": "%{text}<extra></extra>",
                     "marker": {"symbol": "circle-open", "size": 12, "color": "#d62728",
                                "line": {"width": 2}}})
    ya = _y_axis("loss", (0.0, 1.0), "x", "log" if wide else "linear")
    if fits:
        rng = _fit_range(min(a for a, _ in fits), max(b for _, b in fits), wide)
        if rng is not None:
            ya["range"] = rng
    xa = _x_axis(1, 1, title={"step": "step", "tokens": "tokens consumed",
                              "samples": "samples consumed"}.get(axis, axis))
    if axis != "step":
        xa["tickformat"] = "~s"
        xa["hoverformat"] = "d"
    layout = {
        "height": 460, "margin": {"l": 60, "r": 20, "t": 40, "b": 40}, "hovermode": "closest",
        "showlegend": True, "legend": {"orientation": "v"}, "xaxis": xa, "yaxis": ya,
        "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "font": {"size": 12},
        "shapes": shapes, "annotations": annotations,
    }
    return {"figure": {"data": data, "layout": layout}, "axis": axis, "runs": len(have),
            "of": sum(r is not None and r.has("loss") for r in runs)}


# --- page --------------------------------------------------------------------------------

def _evidence_table(evidence: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                   for k, v in evidence_rows(evidence))
    return f"<table class=\"evidence\">{rows}</table>" if rows else ""


def _said_once(text: str, shared: Mapping[str, int]) -> str:
    k = shared.get(text)
    if k is None:
        return _esc(text)
    return f"<a href=\"#note-{k}\" class=\"shared\">the same as shared note {k} above</a>"


def _cause_html(finding: Finding, shared: Mapping[str, int]) -> str:
    parts: list[str] = []
    for j, c in enumerate(ranked_causes(finding)):
        # what to do comes before the raw facts: it is what most readers came for
        body = (
            f"<p class=\"summary\">{_esc(c.summary)}</p>"
            + (f"<p class=\"remedy\"><b>Remedy:</b> {_said_once(c.remedy, shared)}</p>"
               if c.remedy else "")
            + _evidence_table(c.evidence)
        )
        head = (f"<span class=\"cause\">{_esc(c.cause)}</span> "
                f"<span class=\"score\" title=\"score\">{_esc(fmt_num(c.score, 2))}</span>")
        open_ = " open" if j == 0 else ""
        parts.append(f"<details class=\"cause-item\"{open_}><summary>{head}</summary>"
                     f"{body}</details>")
    if not parts:
        ev = finding.event
        if is_incident(ev) or is_condition(ev):
            why = "No cause scored above the floor."
        elif ev.metric == "loss":
            why = f"No causes ranked: a {ev.kind} is information, not an incident."
        else:
            why = (f"No causes ranked: an informational event on {ev.metric}; "
                   "the loss was not affected.")
        parts.append(f"<p class=\"muted\">{_esc(why)}</p>")
    if finding.skipped:
        own, refs = split_skipped(finding.skipped, shared)
        items = [_esc(skipped_text(s.cause, s.reason)) for s in own]
        if refs:
            k = min(shared[skipped_text(s.cause, s.reason)] for s in finding.skipped
                    if skipped_text(s.cause, s.reason) in shared)
            items.append(f"<a href=\"#note-{k}\" class=\"shared\">{_esc(refs)}</a>")
        parts.append(f"<p class=\"skipped\">Not judged: {'; '.join(items)}</p>")
    return "".join(parts)


def _card(run_index: int, i: int, finding: Finding, shared: Mapping[str, int]) -> str:
    ev = finding.event
    kind = ev.kind if (is_incident(ev) or is_condition(ev)) else "info"
    tc = top_cause(finding)
    if ev.kind in ("oscillation", "stall", "overfitting"):
        title = f"{i + 1}. {event_label(ev)}, steps {fmt_steps(ev)}"
        facts = fmt_size(ev)
        if ev.kind == "oscillation":
            facts = ("the loss swings up and down instead of settling"
                     + (f" ({facts})" if facts != "-" else ""))
    else:
        title = f"{i + 1}. {event_label(ev)} at step {ev.peak_step}"
        facts = f"steps {fmt_steps(ev)} · size {fmt_size(ev)} · recovered: {fmt_recovered(ev)}"
    if ev.first_nonfinite:
        facts += f" · first non-finite: {ev.first_nonfinite}"
    if ev.segment:
        facts += f" · segment {ev.segment}"
    gone = superseded_at(ev)
    if gone is not None:
        facts += (" · in a superseded segment" +
                  (f" (rolled back at step {gone})" if gone >= 0 else ""))
    return (
        f"<article class=\"card kind-{_esc(kind)}\" role=\"button\" tabindex=\"0\" "
        f"data-run=\"{run_index}\" data-event=\"{i}\" "
        f"title=\"Click to zoom the plots to this event\">"
        f"<h4>{_esc(title)}"
        + (f" <span class=\"top\">{_esc(tc.cause)}</span>" if tc else "")
        + f"</h4><p class=\"facts\">{_esc(facts)}</p>"
        f"{_cause_html(finding, shared)}</article>"
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


def _run_body(i: int, rr: RunReport, run: Run | None, fig: _Figure | None,
              shared: Mapping[str, int]) -> list[str]:
    out = [f"<p class=\"verdict-line\">{_esc(verdict_line(rr))}</p>", _summary_html(rr, run)]
    if fig is not None:
        checked = " checked" if fig.log else ""
        fit = ""
        if fig.fit is not None:
            fit = (f"<label title=\"The warmup's high loss would squash the rest\">"
                   f"<input type=\"checkbox\" class=\"fitloss\" data-run=\"{i}\" checked> "
                   f"loss axis fitted to the training after warmup (from step "
                   f"{fig.fit['from']})</label> ")
        out.append(
            "<div class=\"controls\">"
            f"<label><input type=\"checkbox\" class=\"logscale\" data-run=\"{i}\"{checked}> "
            "log scale</label> " + fit +
            f"<button type=\"button\" class=\"reset\" data-run=\"{i}\">Reset zoom</button>"
            "<span class=\"hint\">Click an event card to zoom to it; drag on a plot to zoom; "
            "double-click to reset.</span></div>"
        )
        note = _downsample_note(fig)
        if note:
            out.append(f"<p class=\"plot-note\" id=\"note-plot-{i}\">{_esc(note)}</p>")
        # no height until the script draws: without JavaScript there is no blank hole
        out.append(f"<div class=\"plot\" id=\"plot-{i}\" "
                   f"data-height=\"{fig.figure['layout']['height']}\"></div>")
        for text in fig.notes:
            out.append(f"<p class=\"muted panel-note\">{_esc(text[0].upper() + text[1:])}.</p>")
    elif run is None:
        out.append("<p class=\"muted\">The series of this run were not given to the renderer; "
                   "no plot.</p>")
    else:
        out.append("<p class=\"muted\">No series to plot.</p>")
    out.append(f"<h3>Events ({len(rr.findings)})</h3>")
    if rr.findings:
        out.append("<div class=\"cards\">"
                   + "".join(_card(i, k, f, shared) for k, f in enumerate(rr.findings))
                   + "</div>")
    else:
        out.append("<p class=\"muted\">No events.</p>")
    if rr.warnings:
        out.append(f"<h3>Warnings ({len(rr.warnings)})</h3><ul class=\"warnings\">"
                   + "".join(f"<li>{_esc(w)}</li>" for w in rr.warnings) + "</ul>")
    return out


def _badge(verdict: str) -> str:
    return f"<span class=\"badge v-{_esc(verdict)}\">{_esc(verdict)}</span>"


def _run_section(i: int, rr: RunReport, run: Run | None, fig: _Figure | None,
                 name: str | None, shared: Mapping[str, int]) -> str:
    body = _run_body(i, rr, run, fig, shared)
    if name is None:  # one run: open, under its full title
        return "\n".join([f"<section class=\"run\" id=\"run-{i}\">",
                          f"<h2>{_badge(rr.verdict)} {_esc(run_title(rr))}</h2>",
                          *body, "</section>"])
    # several runs: folded by default, the plot drawn when first opened
    return "\n".join([
        f"<details class=\"run\" id=\"run-{i}\" data-run=\"{i}\">",
        f"<summary><h2>{_badge(rr.verdict)} <span title=\"{_esc(run_title(rr))}\">"
        f"{_esc(name)}</span></h2></summary>",
        *body, "</details>"])


def _summary_table(report: Report, names: Sequence[str]) -> str:
    table = run_summary_rows(report, names=names)
    head = ("<tr><th data-sort=\"text\">run</th><th data-sort=\"num\">verdict</th>"
            "<th data-sort=\"num\">incidents</th><th data-sort=\"text\">worst incident</th>"
            "<th data-sort=\"text\">top cause</th></tr>")
    rows = []
    for r in table.rows:
        n_inc = sum(r.counts.values())
        rows.append(
            f"<tr><td title=\"{_esc(r.title)}\" data-key=\"{_esc(r.name)}\">"
            f"<a href=\"#run-{r.index}\" class=\"open-run\" data-run=\"{r.index}\">"
            f"{_esc(r.name)}</a></td>"
            f"<td data-key=\"{verdict_rank(r.verdict)}\">{_badge(r.verdict)}</td>"
            f"<td data-key=\"{n_inc}\">{_esc(r.incidents)}</td>"
            f"<td data-key=\"{_esc(r.worst)}\">{_esc(r.worst)}</td>"
            f"<td data-key=\"{_esc(r.top_cause)}\">{_esc(r.top_cause)}</td></tr>")
    return ("<section class=\"summary-table\"><h2>Runs</h2>"
            "<p class=\"muted\">Worst first; click a column title to sort, a name to open "
            "its section; hover a name for its full path.</p>"
            f"<table class=\"runs sortable\" id=\"runs-table\"><thead>{head}</thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _recurrence_table(report: Report, names: Sequence[str]) -> str:
    if not report.recurrences:
        return ""
    keys = member_names(report, names)
    idx = {}
    for i, run in enumerate(report.runs):
        idx[run.source if run.name is None else f"{run.source}#{run.name}"] = i
        idx.setdefault(run.source, i)
    rows = []
    for r, rec in enumerate(report.recurrences, start=1):
        pos = int(rec.position) if float(rec.position).is_integer() else rec.position
        members = ", ".join(
            (f"<a href=\"#run-{idx[src]}\" class=\"open-run\" data-run=\"{idx[src]}\" "
             f"title=\"{_esc(src)}\">{_esc(keys[src])}</a>" if src in idx and src in keys
             else f"<span title=\"{_esc(src)}\">{_esc(src)}</span>")
            + f" (step {int(step)})"
            for src, step in rec.members)
        rows.append(f"<tr><td>R{r}</td><td>{_esc(rec.axis)} {_esc(pos)}</td>"
                    f"<td>{len(rec.members)}</td><td>{members}</td></tr>")
    return ("<section class=\"recurrences\"><h2>Incidents that recur across runs ("
            f"{len(report.recurrences)})</h2><table class=\"recurrences\"><thead><tr><th>#</th>"
            "<th>where</th><th>runs</th><th>which (peak step in each)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _shared_notes(notes: Sequence[tuple[str, str]], report: Report) -> str:
    if not notes:
        return ""
    items = "".join(f"<li id=\"note-{k}\">{_esc(line)}</li>"
                    for k, (_, line) in enumerate(notes, start=1))
    return ("<section class=\"shared-notes\"><h2>Said once for all runs</h2><p class=\"muted\">"
            f"Remedies and causes not judged that recur in several of the {len(report.runs)} "
            f"runs; the run sections refer to them by number.</p><ol>{items}</ol></section>")


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

    multi = len(report.runs) > 1
    names = short_names([run_title(r) for r in report.runs])
    shared_notes = repeated_notes(report) if multi else []
    shared = {t: k for k, (t, _) in enumerate(shared_notes, start=1)}
    figures: list[_Figure | None] = []
    drawn: list[tuple[_Figure, Run, RunReport]] = []
    for i, rr in enumerate(report.runs):
        run = runs[i] if i < len(runs) else None
        fig = _figure(run, rr) if run is not None else None
        figures.append(fig)
        if fig is not None and run is not None:
            drawn.append((fig, run, rr))
    _allot_full(drawn, lazy=multi)
    sections: list[str] = []
    payload_runs: list[dict[str, Any]] = []
    for i, rr in enumerate(report.runs):
        run = runs[i] if i < len(runs) else None
        fig = figures[i]
        sections.append(_run_section(i, rr, run, fig, names[i] if multi else None, shared))
        payload_runs.append({
            "figure": fig.figure if fig else None,
            "series": fig.series if fig else [],
            "logAxes": fig.log_axes if fig else [],
            "yAxes": fig.y_axes if fig else [],
            "fit": fig.fit if fig else None,
            "interval": int(run.interval) if run is not None else 1,
            # the detector may hand over numpy integers; JSON wants plain ones
            "events": [[int(f.event.start_step), int(f.event.end_step), int(f.event.peak_step)]
                       for f in rr.findings],
        })
    overlay = _overlay(report, runs, names) if multi else None
    top = ""
    if multi:
        top = _summary_table(report, names) + _recurrence_table(report, names)
        if overlay is not None:
            what = {"step": "the step", "tokens": "tokens consumed",
                    "samples": "samples consumed"}.get(overlay["axis"], overlay["axis"])
            top += ("<section class=\"overlay\"><h2>Loss of every run</h2>"
                    f"<p class=\"muted\">On {_esc(what)}, the axis the recurrences were aligned "
                    "on; recurring incidents marked R1, R2…; click a run in the legend to hide "
                    f"it. Each curve is a min/max envelope of at most {_n(OVERLAY_POINTS)} "
                    "points; open a run's section for its full resolution."
                    + (f" Only the {overlay['runs']} worst of the {overlay['of']} runs are "
                       "drawn." if overlay["runs"] < overlay["of"] else "") + "</p>"
                    "<div class=\"plot\" id=\"plot-overlay\" data-height=\""
                    f"{overlay['figure']['layout']['height']}\"></div></section>")
        top += _shared_notes(shared_notes, report)
    title = report.runs[0].source if len(report.runs) == 1 else f"{len(report.runs)} runs"
    body = "\n".join(sections) if sections else "<p class=\"muted\">No runs analysed.</p>"
    if multi:
        body = f"<h2 class=\"sections\">Each run ({len(report.runs)}, folded)</h2>\n" + body
    return _PAGE.format(
        title=_esc(f"spikelens: {title}"),
        style=_STYLE,
        plotly=_plotly_tag(options.plotlyjs),
        # a single run's verdict line heads its own section
        overall="" if len(report.runs) == 1 else
        f"<p class=\"overall\">{_esc(overall_line(report))}</p>",
        noscript=_NOSCRIPT,
        top=top,
        body=body,
        version=_esc(__version__),
        payload=_json_for_script({
            "runs": payload_runs,
            "overlay": overlay["figure"] if overlay else None,
            "multi": multi,
            "viewPoints": MAX_POINTS,
            "sparsePoints": SPARSE_POINTS,
        }),
        script=_SCRIPT,
    )


_NOSCRIPT = ("<noscript><p class=\"noscript\">The plots need JavaScript, which is off in "
             "this browser: the verdicts, the tables and the event cards below read without "
             "it.</p></noscript>")

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
{noscript}
{top}
{body}
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
header, main, footer { max-width: 1400px; margin: 0 auto; padding: 0 20px; }
header h1 { font-size: 20px; margin: 18px 0 2px; }
.overall { margin: 0 0 10px; color: var(--muted); }
footer { color: var(--muted); font-size: 12px; padding: 20px; }
.noscript { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px;
  padding: 8px 12px; }
section.run, details.run, main > section { border-top: 1px solid var(--line);
  padding: 8px 0 16px; }
details.run > summary { cursor: pointer; list-style-position: outside; margin-left: 16px; }
details.run > summary h2 { display: inline; }
h2 { font-size: 17px; margin: 10px 0 4px; word-break: break-all; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px;
  color: #fff; background: #6a737d; vertical-align: 2px; word-break: normal; }
.v-healthy { background: #2da44e; } .v-oscillating { background: #bf8700; }
.v-spiky { background: #e36209; } .v-diverged { background: #cf222e; }
.v-nonfinite { background: #8250df; } .v-insufficient_data { background: #6a737d; }
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
table.runs, table.recurrences { border-collapse: collapse; width: 100%; }
table.runs th, table.runs td, table.recurrences th, table.recurrences td {
  text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid var(--line);
  vertical-align: top; }
table.runs th[data-sort] { cursor: pointer; user-select: none; }
table.runs th.sorted-asc::after { content: " \\25B2"; }
table.runs th.sorted-desc::after { content: " \\25BC"; }
.controls { margin: 10px 0 0; display: flex; gap: 14px; align-items: center; flex-wrap: wrap; }
.controls .hint { color: var(--muted); font-size: 12px; }
.plot-note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
.plot { width: 100%; }
.cards { display: flex; flex-direction: column; gap: 10px; }
.card { border: 1px solid var(--line); border-left: 5px solid #999; border-radius: 6px;
  padding: 8px 12px; cursor: pointer; background: #fff; width: 100%; }
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
table.evidence { border-collapse: collapse; font-size: 13px; margin: 2px 0 4px; width: 100%; }
/* the facts flow in columns across the card's width instead of one long list */
table.evidence tbody { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  column-gap: 24px; }
table.evidence tr { display: flex; gap: 12px; border-bottom: 1px dotted var(--line); }
table.evidence th { text-align: left; font-weight: normal; color: var(--muted); flex: 0 0 55%; }
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
  var VIEW = payload.viewPoints, SPARSE = payload.sparsePoints;
  var zoomed = {}, drawn = {}, full = {}, lastView = {};
  var body = document.body;
  function plot(i) { return document.getElementById("plot-" + i); }
  function fmt(n) { return Number(n).toLocaleString("en-US"); }

  // --- full-resolution series: inflate once, then slice the visible range -------------
  function bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var k = 0; k < bin.length; k++) { out[k] = bin.charCodeAt(k); }
    return out;
  }
  function inflate(u8) {
    var ds = new DecompressionStream("deflate");
    return new Response(new Blob([u8]).stream().pipeThrough(ds)).arrayBuffer();
  }
  function decode(f) {
    return Promise.all([inflate(bytes(f.dx)), inflate(bytes(f.y))]).then(function (parts) {
      var n = f.n, dx = new Int32Array(parts[0]), xs = new Float64Array(n);
      xs[0] = f.x0;
      for (var k = 1; k < n; k++) { xs[k] = xs[k - 1] + dx[k - 1]; }
      var raw = new Uint8Array(parts[1]), ys;
      if (f.shuffle) {
        var un = new Uint8Array(4 * n);
        for (var b = 0; b < 4; b++) {
          var off = b * n;
          for (var j = 0; j < n; j++) { un[4 * j + b] = raw[off + j]; }
        }
        ys = new Float32Array(un.buffer);
      } else {
        ys = new Float32Array(raw.buffer, raw.byteOffset, n);
      }
      return {xs: xs, ys: ys};
    });
  }
  function prepare(s, d) {
    var n = d.xs.length, gap = s.gap === null ? Infinity : s.gap;
    var cg = new Int32Array(n + 1), cn = new Int32Array(n + 1);
    for (var k = 0; k < n; k++) {
      cg[k + 1] = cg[k] + ((k + 1 < n && d.xs[k + 1] - d.xs[k] > gap) ? 1 : 0);
      cn[k + 1] = cn[k] + (isFinite(d.ys[k]) ? 0 : 1);
    }
    return {xs: d.xs, ys: d.ys, cg: cg, cn: cn, gap: gap, trace: s.trace, label: s.label,
            n: n};
  }
  function lower(xs, v) {
    var lo = 0, hi = xs.length;
    while (lo < hi) { var m = (lo + hi) >> 1; if (xs[m] < v) { lo = m + 1; } else { hi = m; } }
    return lo;
  }
  function isBreak(f, k) {  // a gap after k, or k not finite
    return (k + 1 < f.n && f.xs[k + 1] - f.xs[k] > f.gap) || !isFinite(f.ys[k]);
  }
  function view(f, x0, x1) {
    var lo = Math.max(0, lower(f.xs, x0) - 1), hi = Math.min(f.n, lower(f.xs, x1 + 1e-9) + 1);
    var idx = [], count = hi - lo, k;
    if (count <= VIEW) {
      for (k = lo; k < hi; k++) { idx.push(k); }
    } else {
      var buckets = Math.floor(VIEW / 2) - 1, size = Math.ceil(count / buckets);
      idx.push(lo);
      for (var s = lo; s < hi; s += size) {
        var e = Math.min(hi, s + size), mn = -1, mx = -1, fb = -1, lb = -1;
        for (k = s; k < e; k++) {
          var v = f.ys[k];
          if (isFinite(v)) {
            if (mn < 0 || v < f.ys[mn]) { mn = k; }
            if (mx < 0 || v > f.ys[mx]) { mx = k; }
          }
          if (isBreak(f, k)) { if (fb < 0) { fb = k; } lb = k; }
        }
        var pick = [mn, mx];
        if (fb >= 0) { pick.push(fb - 1, fb, fb + 1, lb - 1, lb, lb + 1); }
        pick.sort(function (a, b) { return a - b; });
        pick.forEach(function (p) { if (p >= s && p < e) { idx.push(p); } });
      }
      idx.push(hi - 1);
    }
    var X = [], Y = [], prev = -1, shown = 0, last = -1;
    for (var q = 0; q < idx.length; q++) {
      k = idx[q];
      if (k === last || !isFinite(f.ys[k])) { continue; }
      last = k;
      if (prev >= 0 && (f.cg[k] - f.cg[prev] > 0 || f.cn[k] - f.cn[prev + 1] > 0)) {
        X.push(f.xs[prev]); Y.push(null);
      }
      X.push(f.xs[k]); Y.push(f.ys[k]); prev = k; shown++;
    }
    var inView = lower(f.xs, x1 + 1e-9) - lower(f.xs, x0);
    return {x: X, y: Y, shown: shown, inView: inView, all: count <= VIEW};
  }

  function refresh(i) {
    var gd = plot(i), fs = full[i];
    if (!gd || !fs || !fs.length || !gd._fullLayout) { return Promise.resolve(); }
    var r = gd._fullLayout.xaxis.range, x0 = Number(r[0]), x1 = Number(r[1]);
    var key = x0 + ":" + x1;
    if (lastView[i] === key) { return Promise.resolve(); }
    lastView[i] = key;
    var xs = [], ys = [], modes = [], traces = [], notes = [];
    fs.forEach(function (f) {
      var v = view(f, x0, x1);
      xs.push(v.x); ys.push(v.y); traces.push(f.trace);
      modes.push(v.shown <= SPARSE ? "lines+markers" : "lines");
      notes.push(v.all ? f.label + ": all " + fmt(v.inView) + " points in view" :
                 f.label + ": envelope of " + fmt(v.shown) + " of the " + fmt(v.inView) +
                 " points in view (zoom in further for every point)");
    });
    var note = document.getElementById("note-plot-" + i);
    if (note) {
      note.textContent = "Steps " + Math.ceil(x0) + "\u2013" + Math.floor(x1) + ": " +
        notes.join("; ") + ".";
      note.setAttribute("data-full", String(notes.length));
    }
    return Plotly.restyle(gd, {x: xs, y: ys, mode: modes}, traces);
  }

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
  function lossFit(gd, run) {
    var f = run.fit, box = document.querySelector('input.fitloss[data-run="' + run.i + '"]');
    if (!f || !box || !box.checked) { return {"yaxis.autorange": true}; }
    var lo = f.lo, hi = f.hi;
    if (gd.layout.yaxis.type === "log") {
      if (lo <= 0) { return {"yaxis.autorange": true}; }
      lo = Math.log10(lo); hi = Math.log10(hi);
    }
    var m = (hi - lo) * 0.06 || 0.1;
    return {"yaxis.range": [lo - m, hi + m]};
  }

  function zoomTo(i, k) {
    var run = payload.runs[i], gd = plot(i);
    if (!run || !gd || !gd.data || !run.events[k]) { return; }
    var ev = run.events[k];
    var pad = Math.max(ev[1] - ev[0], 25 * run.interval);
    var x0 = ev[0] - pad, x1 = ev[1] + pad;
    zoomed[i] = [x0, x1];
    Plotly.relayout(gd, {"xaxis.range": [x0, x1]}).then(function () {
      return refresh(i);
    }).then(function () {
      return Plotly.relayout(gd, fitY(gd, run, x0, x1));
    });
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
    var fit = lossFit(gd, run);
    Object.keys(fit).forEach(function (key) { upd[key] = fit[key]; });
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
      if (z) { return Plotly.relayout(gd, fitY(gd, run, z[0], z[1])); }
      return Plotly.relayout(gd, lossFit(gd, run));
    });
  }

  function unpack(i) {
    var run = payload.runs[i];
    var packed = run.series.filter(function (s) { return s.full; });
    if (!packed.length || typeof DecompressionStream === "undefined") {
      return Promise.resolve(null);
    }
    return Promise.all(packed.map(function (s) {
      return decode(s.full).then(function (d) { return prepare(s, d); });
    })).then(function (fs) {
      full[i] = fs;
      var gd = plot(i);
      gd.setAttribute("data-full-ready", String(fs.length));
      gd.setAttribute("data-full-ms", String(Math.round(performance.now())));
      return fs;
    });
  }

  function draw(i) {
    var run = payload.runs[i], gd = plot(i);
    if (drawn[i] || !gd || !run || !run.figure) { return null; }
    drawn[i] = true;
    run.i = i;
    gd.style.height = gd.getAttribute("data-height") + "px";
    var lazy = run.series.some(function (s) { return s.lazy; });
    // a series shipped only at full resolution (the folded runs of a multi-run page) is
    // inflated first and drawn as the envelope of its whole range; the others are drawn
    // at once and inflated afterwards, for the zoom
    var before = lazy ? unpack(i).then(function (fs) {
      (fs || []).forEach(function (f) {
        var v = view(f, -Infinity, Infinity), t = run.figure.data[f.trace];
        t.x = v.x; t.y = v.y; t.mode = v.shown <= SPARSE ? "lines+markers" : "lines";
      });
    }) : Promise.resolve(null);
    var p = before.then(function () {
      return Plotly.newPlot(gd, run.figure.data, run.figure.layout, {
        responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"]
      });
    }).then(function () {
      gd.on("plotly_relayout", function () { refresh(i); });
      var count = Number(body.getAttribute("data-plots-drawn") || "0") + 1;
      body.setAttribute("data-plots-drawn", String(count));
      if (!lazy) { unpack(i); }  // not waited for: the plot is ready before it
    });
    return p;
  }

  document.querySelectorAll(".card").forEach(function (card) {
    var i = Number(card.getAttribute("data-run")), k = Number(card.getAttribute("data-event"));
    card.addEventListener("click", function (e) {
      if (e.target.closest("summary") || e.target.closest("a")) { return; }
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
  document.querySelectorAll("input.fitloss").forEach(function (box) {
    box.addEventListener("change", function () {
      var i = Number(box.getAttribute("data-run")), gd = plot(i);
      if (gd && gd.data) { Plotly.relayout(gd, lossFit(gd, payload.runs[i])); }
    });
  });

  // the summary table sorts on a click on a column title (verdicts by severity)
  document.querySelectorAll("table.sortable th[data-sort]").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var table = th.closest("table"), tbody = table.tBodies[0];
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) {
        h.classList.remove("sorted-asc", "sorted-desc");
      });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var num = th.getAttribute("data-sort") === "num";
      var rows = Array.prototype.slice.call(tbody.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-key"), y = b.cells[col].getAttribute("data-key");
        var c = num ? Number(x) - Number(y) : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { tbody.appendChild(r); });
    });
  });

  // per-run sections are folded; a link to one opens it
  document.querySelectorAll("a.open-run").forEach(function (a) {
    a.addEventListener("click", function () {
      var d = document.getElementById("run-" + a.getAttribute("data-run"));
      if (d && d.tagName === "DETAILS") { d.open = true; }
    });
  });

  if (typeof Plotly === "undefined") {
    document.querySelectorAll(".plot").forEach(function (div) {
      div.textContent = "plotly.js could not be loaded (offline with a CDN link?): no plots.";
    });
    body.setAttribute("data-plot-error", "plotly.js not loaded");
    return;
  }
  var pending = [];
  if (payload.overlay) {
    var ov = document.getElementById("plot-overlay");
    ov.style.height = ov.getAttribute("data-height") + "px";
    pending.push(Plotly.newPlot(ov, payload.overlay.data, payload.overlay.layout, {
      responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"]
    }));
  }
  payload.runs.forEach(function (run, i) {
    var section = document.getElementById("run-" + i);
    if (section && section.tagName === "DETAILS" && !section.open) {
      // plotly cannot lay out a hidden plot: draw it when the section is first opened
      section.addEventListener("toggle", function () {
        if (section.open) { draw(i); }
      });
      return;
    }
    var p = draw(i);
    if (p) { pending.push(p); }
  });
  Promise.all(pending).then(function () {
    // milliseconds from navigation start to drawn plots (benchmarks/html_pages.py reads it)
    body.setAttribute("data-ready-ms", String(Math.round(performance.now())));
    body.setAttribute("data-plots-ready", String(pending.length));
    body.setAttribute("data-traces-drawn",
                      String(document.querySelectorAll(".plot g.trace").length));
  }, function (err) {
    body.setAttribute("data-plot-error", String(err));
    throw err;
  });
})();
"""
