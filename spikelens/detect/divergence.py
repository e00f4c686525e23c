"""Spike or divergence: what a rise that has not come back by the end of the log is.

A rise that returns inside its pre-event band is a spike, however long it took. One that has
not returned when the log ends is judged by where the loss sits at the end, measured as the
fraction of the peak's excess over the baseline (in log space) that the last `recover_run`
points still hold:

* it is a **divergence** when the loss still holds at least half of its excess and either
  the rise has lasted `divergence_steps` (long enough to call it a new level) or it is still
  at its peak (at least 90 % of the excess, over at least `recover_run` points: a run that
  climbs until the log stops);
* otherwise it is a **spike that has not recovered yet**: the loss is on its way back down
  (the tr1-13B excerpt ends 40 iterations after its peak, still high but falling), or there
  is nothing after the peak to judge by (a 3-line excerpt 3.1 -> 7.7).

The peak's level is the highest median of three consecutive points from the rise's start
up to its highest point, not the highest point itself: a loss that climbed to a new level
and sits there in heavy noise has one-point outliers far above it (a diverged MLP at 2.6
with one batch at 10.2, real run v4gx00), and measured to such a point the level it holds
looked like half a recovery. A peak two or more points wide is kept whole and a ramp is
followed to within one point of its top (bench r37: ln-loss -31 to -4.9 in 18 points, then
falling, stays a spike); a wider median would lag down a steep ramp. Only points up to the
highest one count: a spike at the start of a rise (fewer than three points up to its top)
is its own peak, so a lower level after it that is still coming down is a spike on its way
back, however steady it looks (a review of a first version that took the whole rise found
32 of 60 such shapes turned into divergences)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: Fraction of the peak excess still held at the end for a long rise to be a new level.
HELD_LONG = 0.5
#: Fraction still held for a short rise to count as a climb that never turned.
HELD_CLIMB = 0.9


def held_top(x: NDArray[np.float64], start: int, peak: int) -> float:
    """The highest median of three consecutive points from `start` up to `peak` (the point at
    `peak` where there are fewer than three): a one-point outlier does not make the top."""
    rise = x[start:peak + 1]
    if len(rise) < 3:
        return float(x[peak])
    a, b, c = rise[:-2], rise[1:-1], rise[2:]
    # the median of three, elementwise: max(min(a, b), min(max(a, b), c))
    return float(np.max(np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))))


def held_fraction(x: NDArray[np.float64], peak: int, level: float, recover_run: int,
                  start: int) -> float:
    """Share of the rise's excess over `level` kept by the median of the last points after
    the peak (1.0 when the peak is the last point: nothing says it is coming down). The
    excess is to the highest median of three points from `start` up to `peak` (`held_top`;
    the point at `peak` itself when `start` is `peak`)."""
    excess = held_top(x, start, peak) - level
    if excess <= 0:
        return 0.0
    tail = x[max(peak + 1, len(x) - recover_run):]
    if not len(tail):
        return 1.0
    return float((np.median(tail) - level) / excess)


def kind_of(recovered: bool, x: NDArray[np.float64], steps: NDArray[np.int64], start: int,
            peak: int, level: float, recover_run: int, divergence_steps: int) -> str:
    """"spike" or "divergence" for an event on the loss (indices into x and steps)."""
    if recovered:
        return "spike"
    held = held_fraction(x, peak, level, recover_run, start)
    lasted = int(steps[-1] - steps[start])
    points = len(x) - start
    if held >= HELD_LONG and lasted >= divergence_steps:
        return "divergence"
    if held >= HELD_CLIMB and points >= recover_run:
        return "divergence"
    return "spike"
