"""Renderers: turn a `Report` (and the `Run`s it was computed from, for the plots) into text
for a terminal, a JSON file, a Markdown summary, GitHub workflow annotations or an HTML page.
Each format is one module that registers itself in `RENDERERS` under its short name; the
CLI's `--format` choices come from `RENDERERS.names()`. Renderer modules import rich and
plotly only when they render, so importing this package is cheap."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Sequence

from spikelens.errors import ConfigError
from spikelens.model import Report, Run
from spikelens.report._common import PLOTLYJS_MODES, RENDERERS, Renderer, RenderOptions

# Each module registers itself on import; this order is the order `--format` lists them in.
for _module in ("terminal", "json", "markdown", "github", "html"):
    importlib.import_module(f"{__name__}.{_module}")

#: Terminal width used when the output is not a terminal (files, pipes, CI logs).
DEFAULT_WIDTH = 100


def auto_color() -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def _width() -> int:
    if sys.stdout.isatty():
        return max(60, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)
    return DEFAULT_WIDTH


def render(
    report: Report,
    runs: Sequence[Run],
    fmt: str,
    *,
    verbose: bool = False,
    color: bool | None = None,
    plotlyjs: str = "inline",
    top: int | None = None,
) -> str:
    """Render `report` as `fmt` (one of `RENDERERS.names()`).

    `runs[i]` is the Run that `report.runs[i]` was computed from; only the HTML page uses
    them (for its plots), and `runs` may be empty to render without plots. `color=None`
    means colour on a terminal unless NO_COLOR is set; `plotlyjs` is "inline" (offline page)
    or "cdn" (small page that loads plotly.js from its CDN). `top` cuts the multi-run summary
    table of the text outputs to the worst `top` runs and counts the rest (fleets).
    """
    renderer = RENDERERS.get(fmt)
    if runs and len(runs) != len(report.runs):
        raise ConfigError(
            f"render: the report has {len(report.runs)} run(s) but {len(runs)} Run(s) were "
            "given (pass one Run per report run, in order, or none)"
        )
    if plotlyjs not in PLOTLYJS_MODES:
        raise ConfigError(
            f"unknown plotlyjs mode {plotlyjs!r} (known: {', '.join(PLOTLYJS_MODES)})"
        )
    options = RenderOptions(
        verbose=verbose,
        color=auto_color() if color is None else color,
        plotlyjs=plotlyjs,
        width=_width(),
        top=top,
    )
    return renderer(report, list(runs), options)


__all__ = ["PLOTLYJS_MODES", "RENDERERS", "RenderOptions", "Renderer", "auto_color", "render"]
