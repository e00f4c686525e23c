"""The loss's answer to an upward jump of the LR, looked for over the time it takes to build.

The shift test judges a level that starts where it opens: at an upward LR jump it is given a
lower bar (`lr_jump_shift_z`) within two logged points of the jump, where a level the LR set
begins. But the loss does not always answer at once. After a warm restart (a cosine
schedule back at its peak) or an LR multiplied, the optimizer moves to a noisier
equilibrium over a relaxation time of tens of steps: the loss rises over 5-60 steps, peaks,
and often comes back as the schedule decays again (shared bench r42 peaks 20 steps after its
restart; the labelled generator's restarts rise with a time constant of 5-20 steps). A
20-point median that starts at the jump averages the flat start with the rise, and a window
opened where the rise is complete is no longer at the jump, so it faces the whole-log bar.

Here the test is placed where the log says a change was made: for each upward jump, the
`K`-point running medians of the `window` points after it (up to the next jump) are
compared with the median of the `window` points before it, the largest of them in units of
the standard error of a `K`-point median minus a `window`-point one (`_median_se` of the
stretch before: white noise from the step-to-step differences, or the wander of its own
medians where the noise is autocorrelated). The jump is one place chosen by the log, not by
the loss; its bar (`lr_lift_z`) is the 99.5th percentile of the same statistic at every
25th point of the labelled negative runs (benchmarks/calibrate_lr_lift.py), so a run that
jumps its LR and does not answer it is reported at most once in 200 jumps. The lift must
also be a real ratio (`min_ratio`, or `lr_jump_min_ratio` where the LR passes anything the
run had trained at, as at the jump itself). A schedule that jumps `MAX_JUMPS` times or more
is cyclic: its lifts are the swings of the oscillation, judged there."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spikelens.detect.lr_drift import K, _median_se, _rolling_median, diff_sigma

#: A logged LR that jumps up this many times is a cyclic schedule (warm restarts every
#: cycle): the loss's answers to it are an oscillation's swings (`_MIN_CYCLES` cycles).
MAX_JUMPS = 3


@dataclass(frozen=True)
class Lift:
    jump: int  # index of the first point at the new LR
    at: int  # index of the first point of the highest K-point median after the jump
    stop: int  # index one past the last point looked at
    level: float  # the loss level before the jump (log units)
    lift: float  # the highest K-point median after the jump minus `level` (log units)
    z: float  # `lift` in standard errors
    sigma: float  # the noise of a point before the jump (`lr_drift.diff_sigma`)


def find_lift(x: NDArray[np.float64], jump: int, stop: int, window: int,
              floor: int = 0) -> Lift | None:
    """The largest `K`-point median of x[jump:stop] against the median of the `window` points
    before `jump` (none before `floor`, the previous jump), with its z; None where there is
    too little to compare (fewer than `window` points before, `K` after) or no noise scale
    (of the K-point medians, or of the points)."""
    lo = max(floor, jump - window)
    # a whole window before the jump, as the bar was placed with: a shorter reference makes
    # `_median_se` noisier (with AR(0.5) noise and 50 points, z >= 5.8 at 1.8 % of quiet
    # places instead of 0.5 %)
    if jump - lo < window or stop - jump < K:
        return None
    ref = x[lo:jump]
    level = float(np.median(ref))
    se_k = _median_se(ref)
    # a K-point median against a len(ref)-point one: the reference's own error adds in
    # quadrature, at the same inflation for autocorrelation
    se = se_k * math.sqrt(1.0 + K / len(ref))
    sigma = diff_sigma(ref)
    if not (se > 0 and sigma > 0):
        return None
    meds = _rolling_median(x[jump:stop], K)
    i = int(np.argmax(meds))
    lift = float(meds[i]) - level
    return Lift(jump=jump, at=jump + i, stop=stop, level=level, lift=lift, z=lift / se,
                sigma=sigma)


def back_at(x: NDArray[np.float64], frm: int, bar: float, width: int) -> int | None:
    """Where the loss is back at or under `bar`: the middle of the first `width`-point
    window from `frm` on (in steps of `K`) whose median is there, the place a level change
    seen by such a median sits (the last window may be shorter, down to width // 2 points);
    None when the loss never comes back. A median of `width` points, not of `K`: a level
    raised by 2-3 noise scales a point has 20-point medians that dip under a halfway mark
    by chance, and one such dip would end an answer that holds to the end of the log.
    Strided, a lift that holds to the end of a million points costs 50,000 medians, not a
    million."""
    from numpy.lib.stride_tricks import sliding_window_view

    n = len(x)
    if n - frm >= width:
        rows = sliding_window_view(x[frm:], width)[::K]
        hit = np.flatnonzero(np.median(rows, axis=1) <= bar)
        if len(hit):
            return frm + int(hit[0]) * K + width // 2
        frm += len(rows) * K
    rest = n - frm
    if rest >= max(K, width // 2) and float(np.median(x[frm:])) <= bar:
        return frm + rest // 2
    return None
