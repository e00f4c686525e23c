"""A loss that drifts up while the LR climbs past anything the run had trained at.

The trailing tests measure a rise against the 100 points before it, so a loss that creeps up
a few percent per hundred steps carries its baseline with it and is never out of band, and
`min_ratio` (x1.10) keeps slow wander from being an incident. That is right where nothing
else changed. It is wrong where the log says what changed: an LR that, after a stretch in
which it did not rise, climbs past 1.2x the highest LR logged before that stretch (a ramp
that keeps going, an LR multiplied by a bad config) is a setting the run never had, and a
loss that answers it is the start of a divergence (real run v5gx01: a tiny transformer
under AdamW whose LR grows e-fold every 141 steps; its loss creeps from 1.99 to 2.2 in 400
steps while each 100 of them look like noise). There the loss is measured against the level
it held before the LR began to climb: the median of `window` points before the climb's
start, with the noise of their step-to-step differences (so a slow trend does not count as
noise). The drift is an incident when a `k`-point median (k = 20) after the LR passed
1.2x its earlier maximum stands `lr_jump_min_ratio` (x1.05, the seventh pass's floor where
the LR is past anything the run trained at) above that level at z >= `shift_z_threshold`,
and the last points of the excursion still hold that much (a drift that went away is not
one). A warmup has no earlier stretch to compare with (the climb starts in the first
`window` points) and a cyclic or restarted schedule returns to its earlier peak, not 1.2x
past it, so neither is judged here."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: The LR must pass this multiple of the highest LR logged before its climb.
PAST = 1.2
#: Points of the running median the drift is measured by.
K = 20


@dataclass(frozen=True)
class Drift:
    foot: int  # index of the first point of the LR's climb
    start: int  # index of the first point of the first window over the bar
    end: int  # index of the last point of the LR's excursion past PAST x its earlier max
    level: float  # the loss level before the climb (log units)
    lr_before: float  # the highest LR logged before the climb
    lr_at: int  # index where the LR passed PAST x lr_before
    z: float  # z of the first window over the bar


def _rolling_median(x: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Median of each run of k consecutive points (len(x) - k + 1 values)."""
    from numpy.lib.stride_tricks import sliding_window_view

    return np.asarray(np.median(sliding_window_view(x, k), axis=1), dtype=np.float64)


def lr_drift(x: NDArray[np.float64], lr: NDArray[np.float64], window: int,
             log_ratio: float, z_bar: float) -> Drift | None:
    """The first drift of the loss x (log units, finite points) above its level before a climb
    of the LR (aligned to x, NaN where not logged) past PAST x its earlier maximum."""
    n = len(x)
    if n < 2 * window + K or lr.shape != x.shape:
        return None
    ok = np.isfinite(lr)
    if ok.sum() < 2 * window:
        return None
    # the LR carried forward over points where it was not logged (NaN before the first)
    last = np.maximum.accumulate(np.where(ok, np.arange(n), -1))
    filled = np.where(last >= 0, lr[np.maximum(last, 0)], np.nan)
    prior = np.fmax.accumulate(np.nan_to_num(filled, nan=0.0))
    # where each climb began: the foot of the run of rises that reaches each point
    rising = np.zeros(n, dtype=bool)
    rising[1:] = filled[1:] > filled[:-1]
    foot_of = np.maximum.accumulate(np.where(rising, 0, np.arange(n)))
    # points past PAST x the highest LR logged before their climb, the climb starting after
    # a settled stretch of `window` points (not a warmup, not a rise that had been going on)
    cand = np.flatnonzero(filled >= PAST * prior[np.maximum(foot_of - 1, 0)])
    cand = cand[foot_of[cand] >= window]
    tried: set[int] = set()
    for i in cand.tolist():
        foot = int(foot_of[i])
        if foot in tried:
            continue  # one look per climb: a long unsettled climb is many candidates
        tried.add(foot)
        before = filled[foot - window:foot]
        if np.isnan(before).any() or float(before.max()) > float(before[0]) * (1 + 1e-9):
            continue  # the LR was rising before this climb too: no settled level to compare
        lr_before = float(prior[foot - 1])
        if not lr_before > 0:
            continue
        at = i
        below = np.flatnonzero(filled[at:] < PAST * lr_before)
        stop = at + int(below[0]) - 1 if len(below) else n - 1
        ref = x[foot - window:foot]
        level = float(np.median(ref))
        d = np.diff(ref)
        scale = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
        if not scale > 0 or stop - at + 1 < K:
            return None
        # a median of K points of white noise has a standard error of 1.2533 scale / sqrt(K)
        se = 1.2533 * scale / math.sqrt(K)
        med = _rolling_median(x[at:stop + 1], K)
        over = (med - level >= log_ratio) & ((med - level) / se >= z_bar)
        hit = np.flatnonzero(over)
        if not len(hit):
            return None
        tail = x[max(at, stop + 1 - K):stop + 1]
        if float(np.median(tail)) - level < log_ratio:
            return None  # the drift went away before the excursion ended
        j = int(hit[0])
        return Drift(foot=foot, start=at + j, end=stop, level=level, lr_before=lr_before,
                     lr_at=at, z=float((med[j] - level) / se))
    return None
