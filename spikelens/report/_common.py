"""What every renderer shares: the renderer registry and its options, the severity order of
verdicts and events (so "the worst run" and "the worst event" mean the same thing in the
terminal, the Markdown summary and the HTML page), number formatting for people and for
diff-friendly JSON, and the min/max envelope that shrinks a long series for plotting while
keeping every spike. Nothing here imports rich or plotly, so listing the renderers stays cheap
(the CLI builds its `--format` choices from the registry at `--help` time)."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from spikelens.model import Event, Evidence, Finding, Report, Run, RunReport, Skipped
from spikelens.registry import Registry

#: How `render(..., plotlyjs=...)` may load plotly.js in the HTML page.
PLOTLYJS_MODES = ("inline", "cdn")

#: Verdicts from worst to best: a combined report's verdict is its worst run's.
VERDICT_ORDER = ("nonfinite", "diverged", "spiky", "oscillating", "insufficient_data",
                 "healthy")
#: Event kinds from worst to best (the informational kinds last).
KIND_ORDER = ("nonfinite", "divergence", "spike", "oscillation", "stall", "overfitting")
#: Kinds that are loss incidents (the others are conditions or information).
INCIDENT_KINDS = ("nonfinite", "divergence", "spike")

#: Significant digits of `round_sig` (plot data in the HTML page: the plot cannot show more).
#: Machine output (JSON) is never rounded: a loss scale of 1048576 is written as 1048576.
SIG_DIGITS = 6


@dataclass(frozen=True)
class RenderOptions:
    """The switches a renderer may honour; each ignores those it has no use for."""

    verbose: bool = False
    color: bool = False
    plotlyjs: str = "inline"
    width: int = 100
    top: int | None = None  # several runs: the summary table shows the `top` worst, counts the rest


class Renderer(Protocol):
    def __call__(
        self, report: Report, runs: Sequence[Run | None], options: RenderOptions
    ) -> str: ...


RENDERERS: Registry[Renderer] = Registry("report format")


# --- severity ---------------------------------------------------------------------------

def verdict_rank(verdict: str) -> int:
    """0 for the worst verdict; unknown verdicts sort just before `healthy`."""
    try:
        return VERDICT_ORDER.index(verdict)
    except ValueError:
        return len(VERDICT_ORDER) - 1


def worst_verdict(runs: Iterable[RunReport]) -> str | None:
    verdicts = [r.verdict for r in runs]
    if not verdicts:
        return None
    return min(verdicts, key=verdict_rank)


def is_incident(event: Event) -> bool:
    """A loss incident, as opposed to a condition (oscillation), an informational kind (stall,
    overfitting) or an informational event on another metric (a grad-norm surge that left
    the loss alone)."""
    return event.metric == "loss" and event.kind in INCIDENT_KINDS


def is_condition(event: Event) -> bool:
    """An oscillation of the loss: not an incident, but ranked causes and a remedy like one."""
    return event.metric == "loss" and event.kind == "oscillation"


def superseded_at(event: Event) -> int | None:
    """The step a run was rolled back at, when the event lies in a segment that a later
    restart replayed (the detection model may or may not carry such a field)."""
    for name in ("superseded_at", "rolled_back_at", "superseded_by_restart_at", "rollback_step"):
        value = getattr(event, name, None)
        if value is not None and not isinstance(value, bool):
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
    if getattr(event, "superseded", False) is True:
        return -1  # superseded, step unknown
    return None


def finding_key(finding: Finding) -> tuple[int, int, float, float]:
    """Sort key, smallest = worst: loss incidents, then loss conditions (oscillation), then
    informational events on other metrics; within a group by kind, then by size."""
    ev = finding.event
    group = 0 if is_incident(ev) else (1 if is_condition(ev) else 2)
    kind = KIND_ORDER.index(ev.kind) if ev.kind in KIND_ORDER else len(KIND_ORDER)
    # an infinite z (a non-finite peak) outranks every finite one; NaN ranks last
    z = ev.size.z if not math.isnan(ev.size.z) else -math.inf
    ratio = ev.size.ratio if not math.isnan(ev.size.ratio) else -math.inf
    return (group, kind, -z, -ratio)


def worst_finding(findings: Sequence[Finding]) -> Finding | None:
    if not findings:
        return None
    return min(findings, key=finding_key)


def top_cause(finding: Finding) -> Evidence | None:
    """The best-scored cause (rules hand them over sorted, but do not rely on it)."""
    if not finding.causes:
        return None
    return max(finding.causes, key=lambda e: e.score)


def ranked_causes(finding: Finding) -> list[Evidence]:
    return sorted(finding.causes, key=lambda e: -e.score)


# --- words and numbers for people --------------------------------------------------------

def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def event_label(event: Event) -> str:
    """`spike`, or `grad_norm spike` for an informational event on another metric."""
    return event.kind if event.metric == "loss" else f"{event.metric} {event.kind}"


def event_counts(findings: Sequence[Finding]) -> str:
    """`2 spikes, 1 divergence`, in severity order; `no events` when there are none."""
    counts: dict[str, int] = {}
    for f in sorted(findings, key=finding_key):
        label = event_label(f.event)
        counts[label] = counts.get(label, 0) + 1
    if not counts:
        return "no events"
    plurals = {"divergence": "divergences", "oscillation": "oscillations"}
    parts = []
    for label, n in counts.items():
        head, _, last = label.rpartition(" ")
        word = plurals.get(last, last + "s") if n != 1 else last
        parts.append(f"{n} {(head + ' ') if head else ''}{word}")
    return ", ".join(parts)


def fmt_num(x: float | int | None, digits: int = 3) -> str:
    """A compact human number: 2.2, 0.000123 -> 1.23e-04, 65536, inf, n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    xf = float(x)
    if math.isnan(xf):
        return "nan"
    if math.isinf(xf):
        return "inf" if xf > 0 else "-inf"
    if xf == int(xf) and abs(xf) < 1e15:
        return str(int(xf))
    ax = abs(xf)
    if 10**digits <= ax < 1e5:
        return str(round(xf))  # 3968, not 3.97e+03
    if ax >= 1e5 or ax < 1e-3:
        return f"{xf:.{max(digits - 1, 0)}e}"
    return f"{xf:.{digits}g}"


#: Kinds that are a stretch of the run rather than a peak.
SPAN_KINDS = ("oscillation", "stall", "overfitting")


def fmt_steps(event: Event) -> str:
    """`31219`, `31216–31230 (peak 31219)`, or `200–400` for an oscillation (no peak)."""
    if event.start_step == event.end_step == event.peak_step:
        return str(event.peak_step)
    if event.kind in SPAN_KINDS:
        return f"{event.start_step}–{event.end_step}"
    return f"{event.start_step}–{event.end_step} (peak {event.peak_step})"


def cause_summary(finding: Finding) -> str:
    """The top cause's one-line summary, or why there is none."""
    tc = top_cause(finding)
    if tc is not None:
        return tc.summary
    if is_incident(finding.event) or is_condition(finding.event):
        return "no cause scored above the floor"
    return "-"


def fmt_size(event: Event) -> str:
    """`×2.32, z 14.2`; oscillations give their period and amplitude instead."""
    if event.kind == "oscillation":
        parts = []
        if event.period is not None:
            parts.append(f"period {fmt_num(event.period)}")
        if event.amplitude is not None:
            parts.append(f"amplitude {fmt_num(100 * event.amplitude)}%")
        return ", ".join(parts) or "-"
    ratio = event.size.ratio
    if event.kind == "hang":  # the log stopped: there is no size, the warning says after what
        return "log ends here"
    if event.kind == "slowdown":  # the kind column names the metric; its ratio is the news
        return f"×{fmt_num(ratio)}" if math.isfinite(ratio) else "-"
    if event.kind in SPAN_KINDS:  # stall, overfitting: a level, not a peak; no NaN shown
        return f"×{fmt_num(ratio)}" if math.isfinite(ratio) else "-"
    r = "non-finite" if not math.isfinite(ratio) else f"×{fmt_num(ratio)}"
    return f"{r}, z {fmt_num(event.size.z, 3)}"


def fmt_recovered(event: Event) -> str:
    if event.kind == "oscillation":
        return "-"
    if not event.recovered:
        return "no"
    if event.recovery_steps is None:
        return "yes"
    return f"yes, {plural(event.recovery_steps, 'step')}"


@functools.lru_cache(maxsize=1)
def _evidence_labels() -> Mapping[str, str]:
    try:  # the causes package names its evidence keys in plain words (when it has the table)
        from spikelens.causes.labels import EVIDENCE_LABELS
    except ImportError:
        return {}
    return dict(EVIDENCE_LABELS)


#: Words for parts of evidence keys, for keys the causes package has no label for.
_KEY_WORDS = {
    "lr": "LR", "grad": "grad", "norm": "norm", "nan": "NaN", "amp": "AMP", "z": "z",
    "pct": "%", "eps": "epsilon", "acf": "autocorrelation", "mad": "MAD", "ewma": "EWMA",
}


def evidence_label(key: str) -> str:
    """A plain-words name for an evidence key: the causes package's label when it has one,
    else the key humanised (`grad_norm_before` -> `grad norm before`)."""
    label = _evidence_labels().get(key)
    if label:
        return label
    words = [w for w in str(key).replace("-", "_").split("_") if w]
    if not words:
        return str(key)
    text = " ".join(_KEY_WORDS.get(w.lower(), w) for w in words)
    if words[0].lower() in _KEY_WORDS:  # a term as written: z, LR, NaN
        return text
    return text[0].upper() + text[1:]


def is_not_applicable(value: Any) -> bool:
    """None, NaN and the string "n/a" mean "does not apply": such evidence rows are hidden."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("n/a", "na", "")
    if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
        return math.isnan(float(value))
    return False


def evidence_rows(evidence: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(plain-words label, value for people) for each evidence fact that applies."""
    return [(evidence_label(k), fmt_evidence_value(v))
            for k, v in evidence.items() if not is_not_applicable(v)]


def fmt_evidence_value(value: Any) -> str:
    """One evidence value for people: numbers compact, lists bracketed, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return fmt_num(int(value))
    if isinstance(value, (float, np.floating)):
        return fmt_num(float(value))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {fmt_evidence_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(fmt_evidence_value(v) for v in value) + "]"
    return str(value)


def run_title(run: RunReport) -> str:
    """What to call a run: `file.csv`, or `export.csv [run-7]` inside a multi-run file."""
    return f"{run.source} [{run.name}]" if run.name else run.source


def short_names(sources: Sequence[str]) -> list[str]:
    """Short, unique names for runs from their paths (or URLs): the path components that all
    share at the start and at the end are removed, then a file extension they all share
    (`/x/logs/a/train.log`, `/x/logs/b/train.log` -> `a`, `b`). A name that would come out
    empty or twice keeps more of its path; as a last resort a `#k` suffix keeps it unique."""
    if not sources:
        return []
    if len(sources) == 1:
        return [sources[0].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or sources[0]]
    parts = [[p for p in s.replace("\\", "/").split("/") if p] or [s] for s in sources]
    shortest = min(len(p) for p in parts)
    head = 0
    while head < shortest - 1 and all(p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while (tail < shortest - head - 1
           and all(p[-1 - tail] == parts[0][-1 - tail] for p in parts)):
        tail += 1
    names = ["/".join(p[head:len(p) - tail]) for p in parts]
    exts = {n.rsplit(".", 1)[-1] if "." in n.rsplit("/", 1)[-1] else None for n in names}
    if len(exts) == 1 and None not in exts:
        ext = "." + exts.pop()  # type: ignore[operator]
        trimmed = [n[: -len(ext)] for n in names]
        if all(trimmed) and len(set(trimmed)) == len(trimmed):
            names = trimmed
    seen: dict[str, int] = {}
    out: list[str] = []
    for src, name in zip(sources, names, strict=True):
        name = name or src
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


@dataclass(frozen=True)
class SummaryRow:
    """One run of a multi-run summary table, in words (each renderer escapes and lays out)."""

    index: int  # position of the run in `report.runs`
    name: str  # short unique name (`short_names`)
    title: str  # full path (and run name), for a hover or a footnote
    verdict: str
    counts: Mapping[str, int]  # incidents (and conditions) by kind label, worst kind first
    incidents: str  # the counts in words: `2 spikes, 1 oscillation`, or `none`
    worst: str  # `spike at step 31219`, `oscillation at steps 200–400`, or `-`
    top_cause: str  # top cause of the worst event, or `-`


@dataclass(frozen=True)
class SummaryTable:
    rows: tuple[SummaryRow, ...]
    left_out: int  # runs cut by `top` (the table says how many)
    total: int


def run_sort_key(run: RunReport) -> tuple[int, tuple[int, int, float, float], str]:
    """Worst run first: by verdict, then by its worst event."""
    worst = worst_finding(run.findings)
    key = finding_key(worst) if worst is not None else (9, 9, math.inf, math.inf)
    return (verdict_rank(run.verdict), key, run_title(run))


def run_summary_rows(
    report: Report, top: int | None = None, names: Sequence[str] | None = None
) -> SummaryTable:
    """The multi-run summary: one row per run (short name, verdict, incidents by kind, worst
    incident, top cause), worst run first, cut to the `top` worst when `top` is given (the
    table's `left_out` says how many were cut). `names` overrides the short names."""
    titles = [run_title(r) for r in report.runs]
    shorts = list(names) if names is not None else short_names(titles)
    order = sorted(range(len(report.runs)), key=lambda i: run_sort_key(report.runs[i]))
    rows: list[SummaryRow] = []
    for i in order:
        run = report.runs[i]
        shown = [f for f in run.findings if is_incident(f.event) or is_condition(f.event)]
        counts: dict[str, int] = {}
        for f in sorted(shown, key=finding_key):
            counts[f.event.kind] = counts.get(f.event.kind, 0) + 1
        worst = worst_finding(run.findings)
        if worst is not None and (is_incident(worst.event) or is_condition(worst.event)):
            ev = worst.event
            where = (f"at steps {ev.start_step}–{ev.end_step}" if ev.kind in SPAN_KINDS
                     else f"at step {ev.peak_step}")
            worst_text = f"{ev.kind} {where}"
            tc = top_cause(worst)
            cause = tc.cause if tc is not None else "-"
        else:
            worst_text, cause = "-", "-"
        rows.append(SummaryRow(
            index=i, name=shorts[i], title=titles[i], verdict=run.verdict, counts=counts,
            incidents=event_counts(shown) if shown else "none", worst=worst_text,
            top_cause=cause,
        ))
    total = len(rows)
    if top is not None and top >= 0:
        rows = rows[:top]
    return SummaryTable(rows=tuple(rows), left_out=total - len(rows), total=total)


def member_names(report: Report, names: Sequence[str]) -> dict[str, str]:
    """Recurrence member key (a source, or `source#name`) -> the run's short name."""
    out: dict[str, str] = {}
    for run, name in zip(report.runs, names, strict=True):
        out[run.source if run.name is None else f"{run.source}#{run.name}"] = name
        out.setdefault(run.source, name)
    return out


def repeated_notes(report: Report) -> list[tuple[str, str]]:
    """Remedies and "not judged" reasons that appear in more than one run, in first-seen
    order, as (text, line for people): a multi-run report says each of them once and the
    run sections refer to it by its number. The line says what it is and how many runs."""
    seen: dict[str, tuple[str, set[int]]] = {}
    for i, run in enumerate(report.runs):
        for f in run.findings:
            for c in f.causes:
                if c.remedy:
                    seen.setdefault(c.remedy, ("Remedy", set()))[1].add(i)
            for sk in f.skipped:
                seen.setdefault(skipped_text(sk.cause, sk.reason), ("Not judged", set()))[1].add(i)
    return [(t, f"{what} ({plural(len(runs), 'run')}): {t}")
            for t, (what, runs) in seen.items() if len(runs) > 1]


def repeated_texts(report: Report) -> list[str]:
    """The texts of `repeated_notes`."""
    return [t for t, _ in repeated_notes(report)]


def skipped_text(cause: str, reason: str) -> str:
    return f"{cause} ({reason})"


def split_skipped(
    skipped: Sequence[Skipped], shared: Mapping[str, int]
) -> tuple[list[Skipped], str]:
    """The causes not judged that are this run's own, and a reference to those said once
    for all runs (`shared note 3 above`, `shared notes 2, 3 and 5 above`, or "")."""
    own = [s for s in skipped if skipped_text(s.cause, s.reason) not in shared]
    refs = sorted({shared[skipped_text(s.cause, s.reason)] for s in skipped
                   if skipped_text(s.cause, s.reason) in shared})
    if not refs:
        return own, ""
    if len(refs) == 1:
        return own, f"shared note {refs[0]} above"
    return own, (f"shared notes {', '.join(map(str, refs[:-1]))} and {refs[-1]} above")


def fmt_step_range(run: RunReport) -> str:
    s = run.steps
    if s.count == 0:
        return "no steps"
    every = f", every {s.interval}" if s.interval != 1 else ""
    return f"steps {s.first}–{s.last} ({plural(s.count, 'logged step')}{every})"


def verdict_line(run: RunReport) -> str:
    """The one line that says what happened to a run."""
    incidents = [f for f in run.findings if is_incident(f.event)]
    worst = worst_finding(run.findings)
    where = ""
    if worst is not None and is_incident(worst.event):
        where = f"; worst: {event_label(worst.event)} at step {worst.event.peak_step}"
        tc = top_cause(worst)
        if tc is not None:
            where += f", likely {tc.cause}"
    what = event_counts(run.findings) if run.findings else "no events"
    if not incidents and run.findings:
        what += " (no loss incidents)"
    return f"{run.verdict}: {run_title(run)} — {what}{where}"


def overall_line(report: Report) -> str:
    """The first line of a combined report."""
    if not report.runs:
        return "no runs analysed"
    if len(report.runs) == 1:
        return verdict_line(report.runs[0])
    worst = worst_verdict(report.runs)
    tally: dict[str, int] = {}
    for r in sorted(report.runs, key=lambda r: verdict_rank(r.verdict)):
        tally[r.verdict] = tally.get(r.verdict, 0) + 1
    parts = ", ".join(f"{n} {v}" for v, n in tally.items())
    return f"{worst}: worst of {len(report.runs)} runs ({parts})"


# --- numbers for machines ----------------------------------------------------------------

def round_sig(x: float, digits: int = SIG_DIGITS) -> float | None:
    """Round to `digits` significant digits; None for NaN and ±inf (JSON has neither)."""
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def full_float(x: float | None) -> float | None:
    """A float for JSON at full precision (Python writes the shortest repr that reads back
    to the same double: 1048576.0 stays 1048576.0); None for NaN and ±inf."""
    if x is None:
        return None
    xf = float(x)
    return xf if math.isfinite(xf) else None


def jsonable(value: Any) -> Any:
    """Evidence values as plain JSON: numpy scalars unwrapped, floats at full precision,
    non-finite floats as null, tuples and arrays as lists, mapping order kept."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        # a float32 written as its shortest decimal (0.1), not as the double it widens to
        # (0.10000000149011612): the same value, at its own full precision
        return full_float(float(str(value))) if np.isfinite(value) else None
    if isinstance(value, (float, np.floating)):
        return full_float(float(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    return str(value)


# --- series for plots --------------------------------------------------------------------

def envelope_indices(values: np.ndarray, buckets: int) -> np.ndarray:
    """Indices that keep the shape of `values` in at most 2 * buckets + 2 points.

    The series is cut into `buckets` consecutive slices and each slice keeps the index of its
    minimum and of its maximum (plus the first and last point), in order. A one-step spike
    is the maximum of its slice, so it always survives, which LTTB does not promise. NaN
    is ignored within a slice; an all-NaN slice contributes nothing.
    """
    n = len(values)
    if n <= 2 * buckets + 2:
        return np.arange(n, dtype=np.int64)
    size = -(-n // buckets)  # ceil
    padded = np.full(size * buckets, np.nan)
    padded[:n] = values
    grid = padded.reshape(buckets, size)
    ok = ~np.isnan(grid)
    rows = np.flatnonzero(ok.any(axis=1))
    lo = np.where(ok, grid, np.inf)[rows].argmin(axis=1)
    hi = np.where(ok, grid, -np.inf)[rows].argmax(axis=1)
    base = rows * size
    keep = np.concatenate(([0, n - 1], base + lo, base + hi)).astype(np.int64)
    out: np.ndarray = np.unique(keep)
    return out


def downsample(
    x: np.ndarray, y: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) shrunk to about `max_points` by the min/max envelope; short series unchanged."""
    idx = envelope_indices(y, max(1, max_points // 2 - 1))
    return x[idx], y[idx]


def sample_steps(steps: np.ndarray, max_points: int) -> np.ndarray:
    """At most `max_points` of the sorted `steps`, keeping the ends of every contiguous run
    (so a stretch of NaN losses shows where it starts and stops), thinned evenly if need be."""
    if len(steps) <= max_points:
        return steps
    d = np.diff(steps)
    step = int(np.min(d[d > 0])) if np.any(d > 0) else 1
    breaks = np.flatnonzero(d != step)
    ends = np.unique(np.concatenate(([0, len(steps) - 1], breaks, breaks + 1)))
    if len(ends) > max_points:
        pick = np.linspace(0, len(ends) - 1, max_points).round().astype(np.int64)
        ends = ends[np.unique(pick)]
    out: np.ndarray = steps[ends]
    return out
