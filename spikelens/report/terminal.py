"""The terminal report, the default: what someone reads right after a run dies. The first
line is the verdict; then a table of the events (kind, steps, size, recovery, top cause and
its one-line summary); then the remedy for the worst event and the reader's warnings.
`verbose` adds, per event, every cause with its evidence and remedy, and the causes that
could not be judged. Built with rich; with `color=False` (NO_COLOR, or output that is not a
terminal) it is plain text with no escape codes. Text from the log is passed to rich as
`Text`, never as markup, so a metric called `[bold]` prints as written. On a narrow
terminal the summaries go under the table, numbered, rather than into a column squeezed to
a few characters."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from spikelens.model import Finding, Report, Run, RunReport
from spikelens.report._common import (
    RENDERERS,
    RenderOptions,
    cause_summary,
    event_label,
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
    top_cause,
    verdict_line,
    worst_finding,
    worst_verdict,
)

#: From this width on, the summary is a table column; below, it goes under the table.
WIDE = 120

VERDICT_STYLE = {
    "healthy": "bold green",
    "oscillating": "bold yellow",
    "spiky": "bold dark_orange",
    "diverged": "bold red",
    "nonfinite": "bold magenta",
}
KIND_STYLE = {
    "spike": "dark_orange",
    "divergence": "red",
    "nonfinite": "magenta",
    "oscillation": "yellow",
}


def _console(options: RenderOptions) -> Console:
    return Console(
        file=io.StringIO(),
        width=options.width,
        force_terminal=options.color,
        color_system="auto" if options.color else None,
        no_color=not options.color,
        highlight=False,
        emoji=False,
        markup=False,
        legacy_windows=False,
        force_jupyter=False,
        force_interactive=False,
    )


def _indented(console: Console, text: Text, indent: int) -> None:
    # Padding keeps the indent on wrapped lines too
    console.print(Padding(text, (0, 0, 0, indent), expand=False))


def _verdict(console: Console, run: RunReport) -> None:
    head, sep, rest = verdict_line(run).partition(":")
    # one logical line whatever the width, so `head -1` and grep see the whole verdict
    console.print(Text(head, style=VERDICT_STYLE.get(run.verdict, "bold")) + Text(sep + rest),
                  soft_wrap=True)


def _summary(console: Console, run: RunReport) -> None:
    metrics = ", ".join(f"{role}={name}" for role, name in run.metrics.items()) or "none"
    console.print(Text(f"{run.format} log, {fmt_step_range(run)}; metrics: {metrics}",
                       style="dim"))


def _table(console: Console, findings: Sequence[Finding], wide: bool) -> None:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("steps")
    table.add_column("size")
    table.add_column("recovered")
    table.add_column("top cause", no_wrap=True)
    if wide:
        table.add_column("summary", ratio=1)
    for i, f in enumerate(findings, start=1):
        ev = f.event
        tc = top_cause(f)
        shown = is_incident(ev) or ev.kind == "oscillation"
        cells = [
            Text(str(i)),
            Text(event_label(ev), style=KIND_STYLE.get(ev.kind, "") if shown else "dim"),
            Text(fmt_steps(ev)),
            Text(fmt_size(ev)),
            Text(fmt_recovered(ev)),
            Text(f"{tc.cause} {fmt_num(tc.score, 2)}" if tc else "-", style="bold"),
        ]
        if wide:
            cells.append(Text(cause_summary(f)))
        table.add_row(*cells)
    console.print(table)
    if not wide:
        for i, f in enumerate(findings, start=1):
            summary = cause_summary(f)
            if summary != "-":
                _indented(console, Text(f"{i}. {summary}"), 1)


def _remedy(console: Console, findings: Sequence[Finding]) -> None:
    worst = worst_finding(findings)
    if worst is None:
        return
    tc = top_cause(worst)
    if tc is None or not tc.remedy:
        return
    ev = worst.event
    console.print()
    head = Text(f"Remedy for the worst event ({event_label(ev)} at step {ev.peak_step}, "
                f"{tc.cause}): ", style="bold")
    console.print(head + Text(tc.remedy))


def _details(console: Console, findings: Sequence[Finding]) -> None:
    for i, f in enumerate(findings, start=1):
        ev = f.event
        console.print()
        console.print(Text(f"Event {i}: {event_label(ev)}, steps {fmt_steps(ev)}",
                           style="bold"))
        causes = ranked_causes(f)
        if not causes:
            _indented(console, Text(cause_summary(f) if is_incident(ev) else
                                    "no causes ranked (not a loss incident)"), 2)
        for j, c in enumerate(causes, start=1):
            _indented(console, Text(f"{j}. ") + Text(c.cause, style="bold")
                      + Text(f" (score {fmt_num(c.score, 2)}): {c.summary}"), 2)
            if c.evidence:
                facts = ", ".join(f"{k}={fmt_evidence_value(v)}" for k, v in c.evidence.items())
                _indented(console, Text(f"evidence: {facts}", style="dim"), 5)
            if c.remedy:
                _indented(console, Text(f"remedy: {c.remedy}"), 5)
        for s in f.skipped:
            _indented(console, Text(f"not judged: {s.cause} ({s.reason})", style="dim"), 2)


def _warnings(console: Console, run: RunReport) -> None:
    if not run.warnings:
        return
    console.print()
    console.print(Text(f"Warnings ({len(run.warnings)}):", style="yellow"))
    for w in run.warnings:
        _indented(console, Text(f"- {w}"), 2)


def _section(console: Console, run: RunReport, options: RenderOptions) -> None:
    _verdict(console, run)
    _summary(console, run)
    if run.findings:
        _table(console, run.findings, wide=options.width >= WIDE)
        _remedy(console, run.findings)
        if options.verbose:
            _details(console, run.findings)
    else:
        console.print(Text("No events."))
    _warnings(console, run)


@RENDERERS.register("terminal")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    console = _console(options)
    if len(report.runs) == 1:
        _section(console, report.runs[0], options)
    else:
        # the combined verdict first, then one section per run
        style = VERDICT_STYLE.get(worst_verdict(report.runs) or "", "bold")
        console.print(Text(overall_line(report), style=style), soft_wrap=True)
        for i, run in enumerate(report.runs, start=1):
            console.print()
            console.print(Rule(Text(f"run {i}/{len(report.runs)}: {run_title(run)}"),
                               align="left", characters="─"))
            _section(console, run, options)
    if report.recurrences:
        console.print()
        console.print(Text("Incidents that recur across runs:", style="bold"))
        for rec in report.recurrences:
            members = ", ".join(f"{src} (step {step})" for src, step in rec.members)
            _indented(console, Text(f"- at {rec.axis} {fmt_num(rec.position)}: {members}"), 2)
    out = str(console.file.getvalue())  # type: ignore[attr-defined]
    if not options.color:
        # rich pads table cells to the column width; trailing blanks only clutter files
        out = "\n".join(line.rstrip() for line in out.split("\n"))
    return out
