"""GitHub Actions workflow annotations: one `::error` per divergence or non-finite event, one
`::warning` per spike, a `::notice` per oscillation, per informational event on another
metric and per reader warning, and a closing `::notice` with each run's verdict so a healthy
run still says it was checked. Each annotation names the log (`file=`) and carries the top
cause's summary and remedy. Values are escaped the way the Actions runner unescapes them
(`%`, CR and LF in the message; also `:` and `,` in properties), so a log line can neither
end an annotation early nor smuggle in a second command."""

from __future__ import annotations

from collections.abc import Sequence

from spikelens.model import Finding, Report, Run, RunReport
from spikelens.report._common import (
    RENDERERS,
    RenderOptions,
    event_label,
    fmt_num,
    fmt_recovered,
    fmt_size,
    fmt_steps,
    is_incident,
    overall_line,
    run_title,
    top_cause,
    verdict_line,
)

LEVEL = {"divergence": "error", "nonfinite": "error", "spike": "warning"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(level: str, message: str, **props: str) -> str:
    """`::level k=v,k=v::message` with every part escaped."""
    args = ",".join(f"{k}={escape_property(v)}" for k, v in props.items())
    return f"::{level}{(' ' + args) if args else ''}::{escape_data(message)}"


def _event(run: RunReport, finding: Finding) -> str:
    ev = finding.event
    level = LEVEL.get(ev.kind, "notice") if is_incident(ev) else "notice"
    title = f"spikelens: {event_label(ev)} at step {ev.peak_step}"
    parts = [f"{ev.kind} on {ev.metric}, steps {fmt_steps(ev)}, size {fmt_size(ev)}, "
             f"recovered: {fmt_recovered(ev)}."]
    tc = top_cause(finding)
    if tc is not None:
        parts.append(f"Likely cause: {tc.cause} (score {fmt_num(tc.score, 2)}): {tc.summary}")
        if tc.remedy:
            parts.append(f"Remedy: {tc.remedy}")
    return command(level, "\n".join(parts), file=run.source, title=title)


@RENDERERS.register("github")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    lines: list[str] = []
    for run in report.runs:
        lines += [_event(run, f) for f in run.findings]
        lines += [command("notice", w, file=run.source, title="spikelens: reader warning")
                  for w in run.warnings]
        lines.append(command("notice", verdict_line(run), file=run.source,
                             title=f"spikelens: {run.verdict}"))
    if report.recurrences:
        for rec in report.recurrences:
            members = ", ".join(f"{src} (step {step})" for src, step in rec.members)
            lines.append(command("notice", f"incident at {rec.axis} {fmt_num(rec.position)} "
                                 f"recurs in: {members}", title="spikelens: recurring incident"))
    if len(report.runs) != 1:
        titles = ", ".join(run_title(r) for r in report.runs) or "none"
        lines.append(command("notice", f"{overall_line(report)}. Runs: {titles}",
                             title="spikelens: verdict"))
    return "\n".join(lines) + "\n"
