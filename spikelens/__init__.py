"""spikelens: post-hoc forensics of ML training logs. Read any training log into a canonical
`Run` (`read_log`), find and classify its loss incidents and rank their likely causes
(`analyze`), and render the result for a terminal, a CI job or a browser (`render`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spikelens.errors import (
    ConfigError,
    LogFormatError,
    MissingMetricError,
    SpikelensError,
    UnknownFormatError,
)
from spikelens.model import (
    Config,
    Event,
    Evidence,
    Finding,
    Report,
    Restart,
    Run,
    RunReport,
    Skipped,
)
from spikelens.readers import read_log, read_runs

if TYPE_CHECKING:
    from spikelens.analyze import analyze as analyze
    from spikelens.report import render as render

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # analysis and rendering pull in scipy/plotly; load them only when asked for
    if name == "analyze":
        from spikelens.analyze import analyze

        return analyze
    if name == "render":
        from spikelens.report import render

        return render
    raise AttributeError(name)


__all__ = [
    "Config",
    "ConfigError",
    "Event",
    "Evidence",
    "Finding",
    "LogFormatError",
    "MissingMetricError",
    "Report",
    "Restart",
    "Run",
    "RunReport",
    "Skipped",
    "SpikelensError",
    "UnknownFormatError",
    "analyze",
    "read_log",
    "read_runs",
    "render",
]
