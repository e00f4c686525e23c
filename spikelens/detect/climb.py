"""Divergence that needs no history: a climb at the end of a short log.

The z tests need a baseline of `min_window` points and the divergence rule needs a rise that
has lasted; an excerpt of five Megatron lines (one every 10 iterations) whose loss rises at
every line, 1.6x in all, while the grad norm triples, has neither, yet it is the picture of a
run that is blowing up (its operators stopped it). The mechanism is a run of *consecutive*
rises that ends with the log: noise goes up and down, a divergence only goes up. Three rises
in a row from noise alone have probability 1/24 at a given place (all orderings of four
exchangeable points equally likely), so the climb must also add up to `short_ratio` (1.5x,
the ratio the short-log rule already asks of one point) and the grad norm must climb with
it by the same factor, when the log has one; without a grad norm the loss alone must reach
`start_ratio` (2x). The rule only judges climbs with fewer than `window` points before them:
on a long log the trailing tests see any sustained rise, with a calibrated bar."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Climb:
    start: int  # index of the last point before the first rise (the climb's foot)
    end: int  # the last point of the log
    log_rise: float  # total rise, log units
    grad_ratio: float | None  # grad norm at the end / at the foot, when logged


def tail_climb(x: NDArray[np.float64], steps: NDArray[np.int64], min_rises: int,
               log_short: float, log_start: float, window: int,
               gn_steps: NDArray[np.int64] | None,
               gn_vals: NDArray[np.float64] | None) -> Climb | None:
    """The climb that ends the series x (log units, finite points), or None."""
    n = len(x)
    if n < min_rises + 1:
        return None
    rises = np.diff(x) > 0
    k = 0
    while k < len(rises) and rises[-1 - k]:
        k += 1
    if k < min_rises:
        return None
    foot = n - 1 - k
    if foot >= window:
        return None
    total = float(x[-1] - x[foot])
    grad_ratio = None
    if gn_steps is not None and gn_vals is not None:
        ok = np.isfinite(gn_vals) & (gn_vals > 0)
        if ok.sum() >= 2:
            gs, gv = gn_steps[ok], gn_vals[ok]
            a = int(np.searchsorted(gs, steps[foot]))
            b = int(np.searchsorted(gs, steps[-1], side="right")) - 1
            if 0 <= a < b < len(gv):
                grad_ratio = float(gv[b] / gv[a])
    if grad_ratio is not None:
        if total >= log_short and math.log(grad_ratio) >= log_short:
            return Climb(foot, n - 1, total, grad_ratio)
        return None
    if total >= log_start:
        return Climb(foot, n - 1, total, None)
    return None
