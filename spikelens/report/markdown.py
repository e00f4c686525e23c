"""The Markdown report, for a pull-request comment or `$GITHUB_STEP_SUMMARY`: the verdict, the
event table, each event's ranked causes with their remedies, and the warnings folded away.
`verbose` adds every cause's evidence and the causes that could not be judged. Everything
that comes from the log is escaped: Markdown punctuation is backslash-escaped and `<`, `>`,
`&` become entities, because GitHub renders inline HTML and a metric name must not become a
tag; names go in code spans whose fence is longer than any backtick run inside them."""

from __future__ import annotations

import re
from collections.abc import Sequence

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
    overall_line,
    ranked_causes,
    run_title,
    top_cause,
    verdict_line,
    worst_finding,
)

# Inline syntax only (emphasis, code, links, tables, strikethrough, @mentions, #refs):
# escaping every punctuation mark would make the raw text unreadable for no gain.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~@#])")
_LINE_START = re.compile(r"^(\d*)([-+.)])(?=\s|$)")


def esc(text: str) -> str:
    """Plain text that renders as written (one line: newlines become spaces)."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def esc_item(text: str) -> str:
    """`esc` for text that starts a list item, where `- x` or `1. x` would nest a list."""
    return _LINE_START.sub(r"\1\\\2", esc(text))


def code(text: str, in_table: bool = False) -> str:
    """An inline code span that holds any text, backticks included."""
    text = " ".join(str(text).split())
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    if in_table:
        # a pipe ends a table cell even inside a code span; GFM reads \| there as a pipe
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(findings: Sequence[Finding]) -> list[str]:
    lines = [
        "| # | kind | steps | size | recovered | top cause | summary |",
        "|---:|---|---|---|---|---|---|",
    ]
    for i, f in enumerate(findings, start=1):
        ev = f.event
        tc = top_cause(f)
        cause = f"{code(tc.cause, in_table=True)} ({fmt_num(tc.score, 2)})" if tc else "-"
        summary = esc(cause_summary(f))
        lines.append(
            f"| {i} | {esc(event_label(ev))} | {esc(fmt_steps(ev))} | {esc(fmt_size(ev))} | "
            f"{esc(fmt_recovered(ev))} | {cause} | {summary} |"
        )
    return lines


def _causes(findings: Sequence[Finding], verbose: bool, level: str) -> list[str]:
    out: list[str] = []
    for i, f in enumerate(findings, start=1):
        ev = f.event
        out += ["", f"{level} Event {i}: {esc(event_label(ev))} at step {ev.peak_step}", ""]
        causes = ranked_causes(f)
        if not causes:
            out.append("No cause scored above the floor.")
        for j, c in enumerate(causes, start=1):
            out.append(f"{j}. {code(c.cause)} (score {fmt_num(c.score, 2)}): {esc(c.summary)}")
            if c.remedy:
                out.append(f"   - **Remedy:** {esc(c.remedy)}")
            if verbose and c.evidence:
                facts = ", ".join(f"{code(k)} = {esc(fmt_evidence_value(v))}"
                                  for k, v in c.evidence.items())
                out.append(f"   - Evidence: {facts}")
        if verbose and f.skipped:
            out.append("")
            out.append("Not judged: " + "; ".join(
                f"{code(s.cause)} ({esc(s.reason)})" for s in f.skipped))
    return out


def _section(run: RunReport, verbose: bool, heading: str) -> list[str]:
    metrics = ", ".join(f"{esc(role)} = {code(name)}" for role, name in run.metrics.items())
    out = [
        f"{heading} {esc(verdict_line(run))}",
        "",
        f"{esc(run.format)} log {code(run_title(run))}, {esc(fmt_step_range(run))}. "
        f"Metrics: {metrics or 'none'}.",
        "",
    ]
    if run.findings:
        out += _table(run.findings)
        worst = worst_finding(run.findings)
        tc = top_cause(worst) if worst else None
        if worst is not None and tc is not None and tc.remedy:
            ev = worst.event
            out += ["", f"**Remedy for the worst event** ({esc(event_label(ev))} at step "
                        f"{ev.peak_step}, {code(tc.cause)}): {esc(tc.remedy)}"]
        out += _causes(run.findings, verbose, heading + "#")
    else:
        out.append("No events.")
    if run.warnings:
        out += ["", f"<details><summary>Warnings ({len(run.warnings)})</summary>", ""]
        out += [f"- {esc_item(w)}" for w in run.warnings]
        out += ["", "</details>"]
    return out


@RENDERERS.register("markdown")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    lines: list[str] = []
    if len(report.runs) == 1:
        lines += _section(report.runs[0], options.verbose, "##")
    else:
        lines += [f"## spikelens — {esc(overall_line(report))}"]
        for run in report.runs:
            lines += [""] + _section(run, options.verbose, "###")
    if report.recurrences:
        lines += ["", "#### Incidents that recur across runs", ""]
        for rec in report.recurrences:
            members = ", ".join(f"{code(src)} (step {step})" for src, step in rec.members)
            lines.append(f"- at {esc(rec.axis)} {esc(fmt_num(rec.position))}: {members}")
    return "\n".join(lines) + "\n"
