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
start, with the standard error of a `K`-point median as that stretch shows it (`_median_se`:
white noise from the step-to-step differences, or the wander of the stretch's own medians
where the noise is autocorrelated). The drift is an incident when a `K`-point median
(K = 20) after the LR passed 1.2x its earlier maximum stands `lr_jump_min_ratio` (x1.05,
the seventh pass's floor where the LR is past anything the run trained at) above that level
at z >= `shift_z_threshold`, and the last `K` points of the excursion still do (a drift
that went away is not one), the excursion lasting to the end of the log. Every climb of the
LR is examined and the first drift reported. A warmup has no earlier stretch to compare with
(the climb starts in the first `window` points) and a cyclic or restarted schedule returns
to its earlier peak, not 1.2x past it, so neither is judged here."""

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
    end: int  # index of the last point (the excursion lasts to the end of the log)
    level: float  # the loss level before the climb (log units)
    lr_before: float  # the highest LR logged before the climb
    lr_at: int  # index where the LR passed PAST x lr_before
    z: float  # z of the first window over the bar


def _rolling_median(x: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Median of each run of k consecutive points (len(x) - k + 1 values)."""
    from numpy.lib.stride_tricks import sliding_window_view

    return np.asarray(np.median(sliding_window_view(x, k), axis=1), dtype=np.float64)


def diff_sigma(ref: NDArray[np.float64]) -> float:
    """The noise of a stretch's points, not its trend: the robust standard deviation of the
    step-to-step differences (1.4826 x their MAD), over sqrt(2)."""
    d = np.diff(ref)
    return 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)


def _median_se(ref: NDArray[np.float64]) -> float:
    """The standard error of a K-point median of the loss as the reference stretch shows it:
    the larger of the white-noise figure (1.2533 sigma / sqrt(K), sigma from the
    step-to-step differences, which a slow trend does not inflate: `diff_sigma`) and the
    spread of the stretch's own K-point medians (which an autocorrelated wander does
    inflate: with AR(1) noise the differences understate how far a 20-point median
    strays)."""
    white = 1.2533 * diff_sigma(ref) / math.sqrt(K)
    meds = _rolling_median(ref, K)
    q75, q25 = np.percentile(meds, [75, 25])
    return max(white, float(q75 - q25) / 1.349)


def _first_over(x: NDArray[np.float64], bar: float, block: int = 4096) -> int | None:
    """The first i whose K-point median x[i:i + K] is at or above `bar`, found block by block
    (a million-point excursion is not medianed whole to find an early crossing)."""
    n = len(x)
    for lo in range(0, n - K + 1, block):
        hi = min(n, lo + block + K - 1)
        hit = np.flatnonzero(_rolling_median(x[lo:hi], K) >= bar)
        if len(hit):
            return lo + int(hit[0])
    return None


def _climbs(lr: NDArray[np.float64], window: int) -> tuple[
        NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """(the LR with non-finite values as NaN, the highest LR logged up to each point, the
    index where the climb reaching each point began: the point before its first rise).

    A climb is a run of rises that no fall and no `window` points without a rise interrupt:
    a value equal to the one before it, or not finite, neither ends nor starts one. An LR
    logged every few rows and carried forward, or printed with few digits, repeats itself
    inside a steady climb; taken as steps of a stair, each repeat would start a climb of
    its own, whose stretch before it was itself rising (real run v6gx00 with its LR on every
    second row was two incidents again). A point in no climb (the LR fell, or has not risen
    for `window` points) is its own foot."""
    n = len(lr)
    lr = np.where(np.isfinite(lr), lr, np.nan)  # an inf LR logged is no level the run trained at
    prior = np.fmax.accumulate(np.nan_to_num(lr, nan=0.0))
    idx = np.arange(n)
    # each point compared with the last finite value before it: a gap is no change
    last = np.maximum.accumulate(np.where(np.isfinite(lr), idx, -1))
    held = np.where(last >= 0, lr[np.maximum(last, 0)], np.nan)
    up = np.zeros(n, dtype=bool)
    down = np.zeros(n, dtype=bool)
    with np.errstate(invalid="ignore"):
        up[1:] = held[1:] > held[:-1]
        down[1:] = held[1:] < held[:-1]
    foot_of = idx.copy()
    ups = np.flatnonzero(up)
    if not len(ups):
        return lr, prior, foot_of
    last_down = np.maximum.accumulate(np.where(down, idx, -1))
    # a rise starts a climb unless the rise before it is within `window` points, no fall between
    starts = np.ones(len(ups), dtype=bool)
    starts[1:] = (last_down[ups[1:]] > ups[:-1]) | (np.diff(ups) > window)
    first_up = ups[np.flatnonzero(starts)][np.cumsum(starts) - 1]  # per rise: its climb's
    last_up = np.maximum.accumulate(np.where(up, idx, -1))
    k = np.searchsorted(ups, last_up)  # the last rise at or before each point, as an index
    inside = (last_up >= 0) & (last_down < last_up) & (idx - last_up < window)
    foot_of[inside] = first_up[k[inside]] - 1
    return lr, prior, foot_of


def _settled_before(lr: NDArray[np.float64], foot: int, window: int) -> bool:
    """Whether the LR held still (did not rise) over the `window` points before `foot`: its
    finite values there, at least half of them (a few non-finite LRs logged do not hide a
    settled stretch)."""
    if foot < window:
        return False
    before = lr[foot - window:foot]
    before = before[np.isfinite(before)]
    return 2 * len(before) >= window and float(before.max()) <= float(before[0]) * (1 + 1e-9)


def _candidates(lr: NDArray[np.float64], prior: NDArray[np.float64],
                foot_of: NDArray[np.int64], window: int) -> NDArray[np.int64]:
    """Points whose LR stands PAST x above a positive highest LR logged before their climb,
    the climb starting after the first `window` points. The positive maximum is tested here,
    not per climb: an LR of zero throughout (a 1e-5 LR printed with four decimals) makes
    every point a climb of its own (0.6-0.8 s on 1M points, tested one by one)."""
    before = prior[np.maximum(foot_of - 1, 0)]
    return np.flatnonzero((lr >= PAST * before) & (before > 0) & (foot_of >= window))


def past_climb(lr: NDArray[np.float64], window: int) -> NDArray[np.int64]:
    """For each point, the foot (index) of the LR climb it stands in when the LR there is at
    least PAST x the highest LR logged before that climb, the climb having started after a
    settled stretch of `window` points (not a warmup, nor a cyclic schedule, which returns
    to its earlier peak); -1 elsewhere. Two points with the same foot are in one climb past
    anything the run had trained at."""
    n = len(lr)
    out = np.full(n, -1, dtype=np.int64)
    if n < window + 2:
        return out
    lr, prior, foot_of = _climbs(lr, window)
    cand = _candidates(lr, prior, foot_of, window)
    feet = [f for f in np.unique(foot_of[cand]).tolist() if _settled_before(lr, f, window)]
    # one pass over the candidates, however many climbs there are (a jittery LR has many)
    cand = cand[np.isin(foot_of[cand], feet)]
    out[cand] = foot_of[cand]
    return out


def find_drift(x: NDArray[np.float64], lr: NDArray[np.float64], window: int,
               log_ratio: float, z_bar: float) -> Drift | None:
    """The first drift of the loss x (log units, finite points) above its level before a climb
    of the LR past PAST x its earlier maximum; `lr` is the LR at each point of x (the last
    value logged at or before it, as the detector's `_Loss.lr` gives it)."""
    n = len(x)
    ok = np.isfinite(lr)
    if n < 2 * window + K or lr.shape != x.shape or ok.sum() < 2 * window:
        return None
    # where each climb began: the foot of the run of rises that reaches each point
    lr, prior, foot_of = _climbs(lr, window)
    # points past PAST x the highest LR logged before their climb, the climb starting after
    # a settled stretch of `window` points (not a warmup, not a rise that had been going on)
    cand = _candidates(lr, prior, foot_of, window)
    # one look per climb (its first point past the mark): a long climb is many candidates
    _, first = np.unique(foot_of[cand], return_index=True)
    for i in np.sort(cand[first]).tolist():
        foot = int(foot_of[i])
        if not _settled_before(lr, foot, window):
            continue  # the LR was rising before this climb too: no settled level to compare
        lr_before = float(prior[foot - 1])  # positive: `_candidates` asks for it
        at = i
        below = np.flatnonzero(lr[at:] < PAST * lr_before)
        if len(below) or n - at < K:
            continue  # only an excursion that lasts to the end of the log, K points or more
        stop = n - 1
        ref = x[foot - window:foot]
        level = float(np.median(ref))
        se = _median_se(ref)
        if not se > 0:
            continue
        tail = x[stop + 1 - K:stop + 1]
        if float(np.median(tail)) - level < max(log_ratio, z_bar * se):
            continue  # the drift did not hold to the end of the excursion
        j = _first_over(x[at:stop + 1], level + max(log_ratio, z_bar * se))
        if j is None:
            continue
        z = (float(np.median(x[at + j:at + j + K])) - level) / se
        return Drift(foot=foot, start=at + j, end=stop, level=level, lr_before=lr_before,
                     lr_at=at, z=z)
    return None
