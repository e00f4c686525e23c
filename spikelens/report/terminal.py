"""The terminal report, the default: what someone reads right after a run dies. The first
line is the verdict; then a table of the events (kind, steps, size, recovery, top cause and
its one-line summary); then the remedy for the worst event and the reader's warnings.
`verbose` adds, per event, every cause with its evidence (in plain words, facts that do not
apply left out) and remedy, and the causes that could not be judged. Several runs: the
summary table first (one row per run, worst first, under short names), the incidents that
recur across runs, the remedies shared by several runs said once, then a section per run.
Built with rich; with `color=False` (NO_COLOR, or output that is not a
terminal) it is plain text with no escape codes. Text from the log is passed to rich as
`Text`, never as markup, so a metric called `[bold]` prints as written. On a narrow
terminal the summaries go under the table, numbered, rather than into a column squeezed to
a few characters."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.control import strip_control_codes
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
    skipped_text,
    split_skipped,
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
    "insufficient_data": "bold",
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
    if console.color_system is None \
            and _write_plain(console, text.plain, console.options.max_width, indent):
        return
    console.print(Padding(text, (0, 0, 0, indent), expand=False))


def _write_plain(console: Console, plain: str, max_width: int, indent: int) -> bool:
    """Write `plain` indented by `indent` (wrapped lines too) as `_indented` prints it
    without colour, and say so; False where it must be printed with rich (`_plain_indented`
    gives no lines)."""
    lines = _or_rich(_plain_indented, plain, max_width, indent)
    if lines is None:
        return False
    console.file.write("".join(" " * indent + line + "\n" for line in lines))
    return True


def _paragraph(console: Console, max_width: int, indent: int, *parts: tuple[str, str]) -> None:
    """`_indented(console, Text(t0, style=s0) + Text(t1, style=s1) + ..., indent)` for the
    (text, style) `parts`, with the console's `options.max_width` given (it is worked out
    anew at each call: environment look-ups) and, without colour, no `Text` built (its
    control-code strip is a `str.translate`, done here only where a control character is
    there to strip); `indent` 0 writes the lines `console.print` of that text writes (its
    wrap width is the console's, and a text narrower than that is one line either way).
    The verbose report prints several per event."""
    if console.color_system is None:
        plain = "".join(t for t, _ in parts)
        if not plain.isprintable():  # a control code (all unprintable): as `Text` strips it
            plain = strip_control_codes(plain)
        if _write_plain(console, plain, max_width, indent):
            return
    _rich_paragraph(console, indent, *parts)


def _rich_paragraph(console: Console, indent: int, *parts: tuple[str, str]) -> None:
    """The paragraph of `_paragraph` printed by rich: the text of the styled parts, under
    `Padding` where it is indented."""
    text = Text(parts[0][0], style=parts[0][1])
    for t, style in parts[1:]:
        text = text + Text(t, style=style)
    if indent:
        console.print(Padding(text, (0, 0, 0, indent), expand=False))
    else:
        console.print(text)


def _blank(console: Console) -> None:
    """`console.print()`: without colour, the newline it writes, without its rendering."""
    if console.color_system is None:
        console.file.write("\n")
    else:
        console.print()


def _plain_indented(text: str, max_width: int, indent: int) -> list[str] | None:
    """The lines (trailing blanks left out: `render` strips them without colour) that
    `console.print(Padding(Text(text), (0, 0, 0, indent), expand=False))` writes after the
    indent, without rich's rendering (about 0.2 ms a line: a 700-event report prints one
    per event). Padding measures the text (its widest line, at most the console's width)
    and wraps it to min(that, max_width - indent) cells with rich's own word breaks,
    folding words too long for a line. None (print with rich) where a piece would still be
    too wide (its crop), or for tabs and newlines."""
    measure = len if _is_narrow(text) else cell_len  # the same count for one-cell characters
    width = min(measure(text), max_width - indent)
    if width <= 0:
        return None
    pieces = _pieces(text, width, fold=True)
    if pieces is None:
        return None
    out = []
    for piece in pieces:
        piece = piece.rstrip()
        if measure(piece) > width:
            return None
        out.append(piece)
    return out


def _pieces(text: str, width: int | None, fold: bool) -> list[str] | None:
    """A plain one-line text cut where rich wraps it to `width` cells (its own word breaks,
    `rich._wrap.divide_line`: private, hence `_or_rich`), whole when `width` is None (a
    column that does not wrap); None for tabs and newlines, which rich lays out otherwise."""
    if "\n" in text or "\t" in text or "\r" in text:
        return None
    # imported first even where `_narrow_breaks` cuts the text: a rich without it may wrap
    # otherwise, and the plain layouts then give way to rich's own
    from rich._wrap import divide_line

    if width is None:
        return [text]
    breaks = _narrow_breaks(text, width, fold) if _is_narrow(text) else None
    if breaks is None:
        breaks = divide_line(text, width, fold=fold)
    bounds = [0, *breaks, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


#: Characters measured so far: one cell wide and not a blank other than " " (`_NARROW`), or
#: not (`_NOT_NARROW`); a few hundred at most, those the reports use.
_NARROW: set[str] = set()
_NOT_NARROW: set[str] = set()


def _is_narrow(text: str) -> bool:
    """Whether every character of `text` is one cell wide by rich's measure (`cell_len`)
    and the only blank is the space: then any slice is as many cells as characters (rich
    adds character widths but for the zero-width joiner and variation selector, both zero
    cells), and rich's word pattern (`\\s`) splits at spaces only."""
    if _NARROW.issuperset(text):
        return True
    for ch in set(text).difference(_NARROW):
        if ch in _NOT_NARROW:
            return False
        if ch == " " or (not ch.isspace() and cell_len(ch) == 1):
            _NARROW.add(ch)
        else:
            _NOT_NARROW.add(ch)
            return False
    return True


def _cells(text: str) -> int:
    """`cell_len(text)`, counted as characters where they are all one cell wide."""
    return len(text) if _is_narrow(text) else cell_len(text)


def _widest_word(text: str) -> int:
    """The cells of the widest word of `text` (blank-separated), 0 for none."""
    if _is_narrow(text):
        return max(map(len, text.split()), default=0)
    return max(map(cell_len, text.split()), default=0)


_SPACES = re.compile(" *")


def _narrow_breaks(text: str, width: int, fold: bool) -> list[int] | None:
    """`rich._wrap.divide_line(text, width, fold)` for a text of one-cell characters whose
    only blank is the space (`_is_narrow`), found a line at a time rather than a word at a
    time (its loop measures every word: most of a long report's rendering). rich's rule: a
    word (with the blanks after it) joins the line while its end, blanks left out, is within
    `width` cells of the line's start; a word that does not fit starts the next line, and
    one longer than a line is folded into `width`-cell chunks (`fold`) or left whole, the
    word after it starting a line. `tests/test_terminal_speed6.py` checks the breaks are
    rich's over random texts and widths. None (ask rich) for a width below one cell."""
    if width < 1:
        return None
    n = len(text)
    end = len(text.rstrip(" "))
    if end == 0:
        return []  # no word at all
    lead = n - len(text.lstrip(" "))  # the first word holds the blanks before it
    breaks: list[int] = []
    line = 0  # where the current line starts
    pending = -1  # the start of a word known not to fit on the current line, else -1
    while True:
        if pending < 0:
            p = line + width
            if end <= p:
                return breaks  # the rest of the text fits
            if text[p] == " ":  # the word before p fits; the one after it does not
                start = 0 if p < lead else _SPACES.match(text, p).end()  # type: ignore[union-attr]
            else:  # p is inside the first word that does not fit
                q = text.rfind(" ", line, p)
                if q < lead:
                    if line:
                        return None  # not reached: a line after the first starts a word
                    start = 0
                else:
                    start = q + 1
        else:
            start, pending = pending, -1
        stop = text.find(" ", max(start, lead))  # the word's end, blanks left out
        if stop < 0:
            stop = n
        if stop - start > width:  # longer than a line
            after = _SPACES.match(text, stop).end()  # type: ignore[union-attr]
            if fold:  # chunks of `width` cells from the word's start, blanks after it too
                last = start + (after - start - 1) // width * width
                breaks.extend(range(start or width, last + 1, width))
                line = last
                continue
            if start:
                breaks.append(start)
            line = start
            if after >= n:
                return breaks
            pending = after  # the word after a cropped one never fits on its line
            continue
        breaks.append(start)
        line = start


_L = TypeVar("_L")


def _or_rich(fn: Callable[..., _L | None], *args: Any) -> _L | None:
    """`fn(*args)`, or None (rich prints it) where the rich installed lacks a private piece
    the plain layouts use (`rich._wrap.divide_line`, `Table._calculate_column_widths`):
    `rich>=13` is not pinned, and a report must not fail because rich moved an internal."""
    try:
        return fn(*args)
    except (ImportError, AttributeError, TypeError):
        return None


def _verdict(console: Console, run: RunReport) -> None:
    head, sep, rest = verdict_line(run).partition(":")
    # one logical line whatever the width, so `head -1` and grep see the whole verdict
    console.print(Text(head, style=VERDICT_STYLE.get(run.verdict, "bold")) + Text(sep + rest),
                  soft_wrap=True)


def _summary(console: Console, run: RunReport) -> None:
    metrics = ", ".join(f"{role}={name}" for role, name in run.metrics.items()) or "none"
    console.print(Text(f"{run.format} log, {fmt_step_range(run)}; metrics: {metrics}",
                       style="dim"))


def _event_table(wide: bool) -> Table:
    """The event table's columns, no rows (the equivalence tests of `_plain_table` build
    their tables with it)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("steps")
    table.add_column("size")
    table.add_column("recovered")
    table.add_column("top cause", no_wrap=True)
    if wide:
        table.add_column("summary", ratio=1)
    return table


def _table(console: Console, findings: Sequence[Finding], wide: bool) -> None:
    table = _event_table(wide)
    for i, f in enumerate(findings, start=1):
        ev = f.event
        tc = top_cause(f)
        shown = is_incident(ev) or is_condition(ev)
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
    lines = None if console.color_system is not None else _or_rich(_plain_table, console, table)
    if lines is None:
        console.print(table)
    else:
        console.file.write("".join(line + "\n" for line in lines))
    if not wide:
        width = console.options.max_width
        for i, f in enumerate(findings, start=1):
            summary = cause_summary(f)
            if summary != "-":
                _paragraph(console, width, 1, (f"{i}. {summary}", ""))


def _cell_lines(text: str, width: int, justify: str, no_wrap: bool) -> list[str] | None:
    """A plain cell's lines as rich lays them out in a column `width` cells wide (its
    padding excluded): rich's own word breaks (`divide_line`), left-justified lines padded
    to the width, right-justified ones stripped and padded on the left, a line of one-cell
    characters still too long cut to `width - 1` cells and an ellipsis (the column's
    overflow, `Text.truncate`). None where rich would do more than that (such a line with
    wider characters; tabs, newlines)."""
    pieces = _pieces(text, None if no_wrap else width, fold=False)
    if pieces is None:
        return None
    if width <= 0:  # a column squeezed to no cell (its padding aside): rich renders nothing
        return []
    narrow = _is_narrow(text)
    measure = len if narrow else cell_len  # the same count for one-cell characters
    out = []
    for piece in pieces:
        if justify == "right":
            piece = piece.rstrip()
        elif len(piece) > width and piece[-1:].isspace():  # rstrip_end: blanks past the width
            if no_wrap:
                return None  # rich 15 keeps them there (and cuts an ellipsis), rich 13 not
            blanks = len(piece) - len(piece.rstrip())
            piece = piece[:len(piece) - min(blanks, len(piece) - width)]
        n = measure(piece)
        if n > width:
            if not narrow or width < 1 or cell_len(_ELLIPSIS) != 1:
                return None
            piece, n = piece[:width - 1] + _ELLIPSIS, width
        out.append(" " * (width - n) + piece if justify == "right"
                   else piece + " " * (width - n))
    return out


#: What rich ends a line cut by the "ellipsis" overflow with (`Text.truncate`).
_ELLIPSIS = "…"


def _plain_table(console: Console, table: Table) -> list[str] | None:
    """The lines `console.print(table)` writes for the event table without colour, laid out
    without rich's per-row rendering (about 1 ms a row: 0.55 s of a 700-event report).
    The column widths are rich's own, computed on a table holding, per column, the header
    and the cells of largest minimum and maximum width (a column's width depends on its
    cells only through those two maxima); every cell is then wrapped with rich's word
    breaks, and cut with an ellipsis where a line of one-cell characters is still too long
    (narrow consoles). None (print with rich) where a cell would need more than that: an
    ellipsis amid wider characters, a tab, a newline. `tests/test_speed_equivalence.py` and
    `tests/test_terminal_speed6.py` check the text is rich's own over many tables and
    widths."""
    columns = table.columns
    if not columns or table.box is None \
            or not all(isinstance(c, Text) for col in columns for c in col._cells):
        return None
    texts = [[c.plain for c in col._cells if isinstance(c, Text)] for col in columns]
    if any(c.vertical != "top" or c.overflow != "ellipsis" or c.justify not in ("left", "right")
           for c in columns):
        return None
    if any(t.justify or t.overflow or t.no_wrap is not None or t.tab_size is not None
           for col in columns for t in col._cells if isinstance(t, Text)):
        return None
    proxy = Table(box=table.box, show_edge=table.show_edge, pad_edge=table.pad_edge,
                  padding=table.padding, expand=table.expand, width=table.width)
    extremes: list[list[Text]] = [[], []]
    for col, col_texts in zip(columns, texts, strict=True):
        proxy.add_column(col.header, justify=col.justify, no_wrap=col.no_wrap, ratio=col.ratio,
                         width=col.width, min_width=col.min_width, max_width=col.max_width)
        if not col_texts:
            return None
        widest = max(range(len(col_texts)), key=lambda i: _cells(col_texts[i]))
        longest = max(range(len(col_texts)), key=lambda i: _widest_word(col_texts[i]))
        extremes[0].append(col._cells[widest])  # type: ignore[arg-type]
        extremes[1].append(col._cells[longest])  # type: ignore[arg-type]
    for row in extremes:
        proxy.add_row(*row)
    options = console.options
    max_width = options.max_width if table.width is None else table.width
    widths = proxy._calculate_column_widths(
        console, options.update_width(max_width - proxy._extra_width))
    box_ = table.box.substitute(options, safe=console.safe_box if table.safe_box is None
                                else table.safe_box)
    if table.show_edge or table.show_lines or table.leading or table.show_footer \
            or any(r.end_section for r in table.rows):
        return None
    top, right_pad, _, left_pad = table.padding
    if top or table.padding[2]:
        return None
    last = len(columns) - 1
    pads = [(0 if (i == 0 and not table.pad_edge) else left_pad,
             0 if (i == last and not table.pad_edge) else right_pad) for i in range(len(columns))]

    def row_lines(cells: list[str], divider: str, bottom: bool) -> list[str] | None:
        laid = []
        for i, text in enumerate(cells):
            left, right = pads[i]
            col = columns[i]
            got = _cell_lines(text, widths[i] - left - right, col.justify, col.no_wrap)
            if got is None:
                return None
            laid.append([" " * left + g + " " * right for g in got])
        height = max(len(c) for c in laid)
        for i, c in enumerate(laid):
            blank = [" " * widths[i]] * (height - len(c))
            laid[i] = blank + c if bottom else c + blank
        return [divider.join(parts) for parts in zip(*laid, strict=True)]

    out: list[str] = []
    n_rows = len(table.rows)
    if table.show_header:
        head = row_lines([c.header.plain if isinstance(c.header, Text) else str(c.header)
                          for c in columns], box_.head_vertical, True)
        if head is None:
            return None
        out += head
        out.append(box_.get_row(widths, "head", edge=False))
    for r in range(n_rows):
        first = r == 0 and not table.show_header
        divider = box_.head_vertical if first else \
            (box_.foot_vertical if r == n_rows - 1 else box_.mid_vertical)
        got = row_lines([col_texts[r] for col_texts in texts], divider, False)
        if got is None:
            return None
        out += got
    return out


def _once(text: str, shared: Mapping[str, int]) -> str:
    k = shared.get(text)
    return text if k is None else f"see shared note {k} above"


def _remedy(console: Console, findings: Sequence[Finding], shared: Mapping[str, int]) -> None:
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
    console.print(head + Text(_once(tc.remedy, shared)))


def _details(console: Console, findings: Sequence[Finding], shared: Mapping[str, int]) -> None:
    width = console.options.max_width
    for i, f in enumerate(findings, start=1):
        ev = f.event
        _blank(console)
        _paragraph(console, width, 0, (f"Event {i}: {event_label(ev)}, steps {fmt_steps(ev)}",
                                       "bold"))
        causes = ranked_causes(f)
        if not causes:
            _paragraph(console, width, 2, (cause_summary(f) if is_incident(ev) or is_condition(ev)
                                           else ev.detail
                                           or "no causes ranked (not a loss incident)", ""))
        for j, c in enumerate(causes, start=1):
            _paragraph(console, width, 2, (f"{j}. ", ""), (c.cause, "bold"),
                       (f" (score {fmt_num(c.score, 2)}): {c.summary}", ""))
            rows = evidence_rows(c.evidence)
            if rows:
                facts = "; ".join(f"{k}: {v}" for k, v in rows)
                _paragraph(console, width, 5, (f"evidence: {facts}", "dim"))
            if c.remedy:
                _paragraph(console, width, 5, (f"remedy: {_once(c.remedy, shared)}", ""))
        own, refs = split_skipped(f.skipped, shared)
        for s in own:
            _paragraph(console, width, 2, (f"not judged: {skipped_text(s.cause, s.reason)}",
                                           "dim"))
        if refs:
            _paragraph(console, width, 2, (f"not judged: see {refs}", "dim"))


def _warnings(console: Console, run: RunReport) -> None:
    if not run.warnings:
        return
    console.print()
    console.print(Text(f"Warnings ({len(run.warnings)}):", style="yellow"))
    for w in run.warnings:
        _indented(console, Text(f"- {w}"), 2)


def _section(console: Console, run: RunReport, options: RenderOptions,
             shared: Mapping[str, int]) -> None:
    _verdict(console, run)
    _summary(console, run)
    if run.findings:
        _table(console, run.findings, wide=options.width >= WIDE)
        _remedy(console, run.findings, shared)
        if options.verbose:
            _details(console, run.findings, shared)
    else:
        console.print(Text("No events."))
    _warnings(console, run)


def _runs_table(console: Console, report: Report, names: Sequence[str],
               top: int | None = None) -> None:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("run", "verdict", "incidents", "worst incident", "top cause"):
        table.add_column(col, overflow="fold")
    summary = run_summary_rows(report, names=names, top=top)
    for r in summary.rows:
        table.add_row(Text(r.name), Text(r.verdict, style=VERDICT_STYLE.get(r.verdict, "")),
                      Text(r.incidents), Text(r.worst), Text(r.top_cause, style="bold"))
    console.print(table)
    if summary.left_out:
        console.print(Text(f"... and {summary.left_out} more runs not shown "
                           f"({summary.total} in all; --top N shows more)"))


def _recurrences(console: Console, report: Report, names: Sequence[str]) -> None:
    if not report.recurrences:
        return
    keys = member_names(report, names) if names else {}
    console.print()
    console.print(Text(f"Incidents that recur across runs ({len(report.recurrences)}):",
                       style="bold"))
    for k, rec in enumerate(report.recurrences, start=1):
        members = ", ".join(f"{keys.get(src, src)} (step {step})" for src, step in rec.members)
        _indented(console, Text(f"R{k} at {rec.axis} {fmt_num(rec.position, 12)}: "
                                f"{plural(len(rec.members), 'run')}: {members}"), 2)


def _shared(console: Console, notes: Sequence[tuple[str, str]]) -> None:
    if not notes:
        return
    console.print()
    console.print(Text("Said once for all runs (remedies and causes not judged that recur):",
                       style="bold"))
    for k, (_, t) in enumerate(notes, start=1):
        _indented(console, Text(f"{k}. {t}"), 2)


@RENDERERS.register("terminal")
def render(report: Report, runs: Sequence[Run | None], options: RenderOptions) -> str:
    console = _console(options)
    if len(report.runs) == 1:
        _section(console, report.runs[0], options, {})
        _recurrences(console, report, [])
    else:
        # the combined verdict, the summary table and what the runs share first; then one
        # section per run, worst first
        style = VERDICT_STYLE.get(worst_verdict(report.runs) or "", "bold")
        console.print(Text(overall_line(report), style=style), soft_wrap=True)
        names = short_names([run_title(r) for r in report.runs])
        notes = repeated_notes(report) if report.runs else []
        shared = {t: k for k, (t, _) in enumerate(notes, start=1)}
        if report.runs:
            console.print()
            _runs_table(console, report, names, options.top)
        _recurrences(console, report, names)
        _shared(console, notes)
        order = [r.index for r in run_summary_rows(report, names=names).rows]
        for n, i in enumerate(order, start=1):
            run = report.runs[i]
            console.print()
            console.print(Rule(Text(f"run {n}/{len(report.runs)}: {names[i]}"),
                               align="left", characters="─"))
            if names[i] != run_title(run):
                console.print(Text(run_title(run), style="dim"), soft_wrap=True)
            _section(console, run, options, shared)
    out = str(console.file.getvalue())  # type: ignore[attr-defined]
    if not options.color:
        # rich pads table cells to the column width; trailing blanks only clutter files
        out = "\n".join(line.rstrip() for line in out.split("\n"))
    return out
