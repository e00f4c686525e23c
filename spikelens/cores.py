"""The number of cores this process may run on, in a module of its own: the fleet sizes its
worker pool by it, the CSV and TensorBoard readers and the HTML page their threads. A reader
asks for it on every large file, and importing it from `spikelens.fleet` cost `inspect` that
module's import (3-4 ms) for one function."""

from __future__ import annotations

import os


def default_jobs() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count): the
    fleet's default workers, and the readers' threads (CSV spans, the TensorBoard decode)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)
