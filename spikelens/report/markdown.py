"""The Markdown report, for a pull-request comment or `$GITHUB_STEP_SUMMARY`: the verdict, the
event table, each event's ranked causes with their remedies, and the warnings folded away.
`verbose` adds every cause's evidence (in plain words, facts that do not apply left out) and
the causes that could not be judged. Several runs: the summary table first (one row per run,
worst first, short names), the incidents that recur across runs, the remedies shared by
several runs said once, then one folded section per run. Everything
that comes from the log is escaped: Markdown punctuation is backslash-escaped and `<`, `>`,
`&` become entities, because GitHub renders inline HTML and a metric name must not become a
tag; names go in code spans whose fence is longer than any backtick run inside them."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

from spikelens.model import Finding, Report, Run, RunReport
from spikelens.report._common import (
    RENDERERS,
    RenderOptions,
    cause_summary,
    event_label,
    evidence_rows,
    fmt_num,
    fmt_recovered,
    fmt_size,
    fmt_step_range,
    fmt_steps,
    is_condition,
    is_incident,
    member_names,
    overall_line,
    plural,
    ranked_causes,
    repeated_notes,
    run_summary_rows,
    run_title,
    short_names,
    split_skipped,
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


def _once(text: str, shared: Mapping[str, int]) -> str:
    k = shared.get(text)
    return esc(text) if k is None else f"see shared note {k} above"


def _causes(findings: Sequence[Finding], verbose: bool, level: str,
            shared: Mapping[str, int]) -> list[str]:
    out: list[str] = []
    for i, f in enumerate(findings, start=1):
        ev = f.event
        out += ["", f"{level} Event {i}: {esc(event_label(ev))} at step {ev.peak_step}", ""]
        causes = ranked_causes(f)
        if not causes:
            out.append("No cause scored above the floor." if is_incident(ev) or
                       is_condition(ev) else esc(ev.detail) if ev.detail
                       else "No causes ranked (not a loss incident).")
        for j, c in enumerate(causes, start=1):
            out.append(f"{j}. {code(c.cause)} (score {fmt_num(c.score, 2)}): {esc(c.summary)}")
            if c.remedy:
                out.append(f"   - **Remedy:** {_once(c.remedy, shared)}")
            rows = evidence_rows(c.evidence) if verbose else []
            if rows:
                facts = "; ".join(f"{esc(k)}: {esc(v)}" for k, v in rows)
                out.append(f"   - Evidence: {facts}")
        if verbose and f.skipped:
            out.append("")
            own, refs = split_skipped(f.skipped, shared)
            items = [f"{code(s.cause)} ({esc(s.reason)})" for s in own]
            out.append("Not judged: " + "; ".join(items + ([f"see {refs}"] if refs else [])))
    return out


def _section(run: RunReport, verbose: bool, heading: str,
             shared: Mapping[str, int] | None = None) -> list[str]:
    shared = shared or {}
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
                        f"{ev.peak_step}, {code(tc.cause)}): {_once(tc.remedy, shared)}"]
        out += _causes(run.findings, verbose, heading + "#", shared)
    else:
        out.append("No events.")
    if run.warnings:
        out += ["", f"<details><summary>Warnings ({len(run.warnings)})</summary>", ""]
        out += [f"- {esc_item(w)}" for w in run.warnings]
        out += ["", "</details>"]
    return out


def summary_table(report: Report, names: Sequence[str] | None = None,
                  top: int | None = None) -> list[str]:
    """The multi-run summary as a Markdown table (worst run first; `top` cuts it, and a
    line says how many runs were left out)."""
    names = list(names) if names is not None else short_names([run_title(r)
                                                               for r in report.runs])
    table = run_summary_rows(report, top=top, names=names)
    lines = ["| run | verdict | incidents | worst incident | top cause |",
             "|---|---|---|---|---|"]
    for r in table.rows:
        cause = code(r.top_cause, in_table=True) if r.top_cause != "-" else "-"
        lines.append(f"| {code(r.name, in_table=True)} | {esc(r.verdict)} | {esc(r.incidents)} "
                     f"| {esc(r.worst)} | {cause} |")
    if table.left_out:
        lines += ["", f"… and {plural(table.left_out, 'more run')} not shown "
                      f"({table.total} in all)."]
    return lines


def _recurrences(report: Report, names: Sequence[str], heading: str) -> list[str]:
    if not report.recurrences:
        return []
    keys = member_names(report, names) if names else {}
    out = ["", f"{heading} Incidents that recur across runs ({len(report.recurrences)})", ""]
    for k, rec in enumerate(report.recurrences, start=1):
        members = ", ".join(f"{code(keys.get(src, src))} (step {step})"
                            for src, step in rec.members)
        out.append(f"- R{k} at {esc(rec.axis)} {esc(fmt_num(rec.position, 12))}: "
                   f"{plural(len(rec.members), 'run')}: {members}")
    return out


@RENDERERS.register("markdown")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    lines: list[str] = []
    if len(report.runs) == 1:
        lines += _section(report.runs[0], options.verbose, "##")
        lines += _recurrences(report, [], "####")
    else:
        lines += [f"## spikelens — {esc(overall_line(report))}"]
        if report.runs:
            names = short_names([run_title(r) for r in report.runs])
            notes = repeated_notes(report)
            shared = {t: k for k, (t, _) in enumerate(notes, start=1)}
            lines += ["", "### Runs", ""] + summary_table(report, names, top=options.top)
            lines += _recurrences(report, names, "###")
            if notes:
                lines += ["", "### Said once for all runs", ""]
                lines += [f"{k}. {esc(line)}" for k, (_, line) in enumerate(notes, start=1)]
            lines += ["", "### Each run"]
            for r in run_summary_rows(report, names=names).rows:
                run = report.runs[r.index]
                # folded: the summary table above is what most readers need
                # inside an HTML element Markdown is not parsed: HTML escaping only
                what = html.escape(f"{r.verdict}: {r.name} — {r.incidents}", quote=False)
                lines += ["", f"<details><summary>{what}</summary>", ""]
                lines += _section(run, options.verbose, "####", shared)
                lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
