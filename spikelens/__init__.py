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

if TYPE_CHECKING:
    from spikelens.analyze import analyze as analyze
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
    from spikelens.report import render as render

__version__ = "0.1.0"


_LAZY = {
    "analyze": "spikelens.analyze",
    "render": "spikelens.report",
    "read_log": "spikelens.readers",
    "read_runs": "spikelens.readers",
    **{name: "spikelens.model" for name in (
        "Config", "Event", "Evidence", "Finding", "Report", "Restart", "Run", "RunReport",
        "Skipped",
    )},
}


def __getattr__(name: str) -> Any:
    # pandas, scipy and plotly are loaded on first use, so the CLI starts fast
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spikelens' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
