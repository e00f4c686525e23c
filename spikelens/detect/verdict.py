"""The run's verdict from its events: the worst thing that happened to the loss.

Precedence, most severe first: `nonfinite` (the loss went NaN/Inf: the run computed
garbage) > `diverged` (the loss left its level and did not come back) > `spiky` (it rose and
came back, or is still on its way back) > `oscillating` (a sustained periodic or erratic
swing: a condition, not an incident) > `healthy`. Grad-norm surges that left the loss
untouched are informational and never change the verdict."""

from __future__ import annotations

from collections.abc import Iterable

from spikelens.model import Event

_BY_KIND = {"nonfinite": "nonfinite", "divergence": "diverged", "spike": "spiky",
            "oscillation": "oscillating"}
_ORDER = ("nonfinite", "diverged", "spiky", "oscillating", "healthy")


def verdict_of(events: Iterable[Event]) -> str:
    """One of `spikelens.model.VERDICTS`."""
    found = {_BY_KIND[e.kind] for e in events if e.metric == "loss" and e.kind in _BY_KIND}
    return next(v for v in _ORDER if v in found or v == "healthy")
