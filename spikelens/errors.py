"""Typed errors raised by the library. Every message starts with the file it concerns (and the
line or record where that helps), so the CLI can print it as one line and exit 2 without a
traceback. The hierarchy lets a notebook user catch `SpikelensError` for everything, or one
subclass for a specific failure."""

from __future__ import annotations


class SpikelensError(Exception):
    """Base class: anything spikelens reports to the user as bad input or bad usage."""


class LogFormatError(SpikelensError):
    """The file is not a readable log of the format it was read as (empty, garbage, torn)."""


class UnknownFormatError(SpikelensError):
    """No reader recognises the file, or the user named a format that does not exist."""


class MissingMetricError(SpikelensError):
    """The log has no step column, or no metric that spikelens can analyse."""


class ConfigError(SpikelensError):
    """A user setting is invalid (bad `--metric` override, bad threshold, unknown choice)."""
