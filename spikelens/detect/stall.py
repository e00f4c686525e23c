"""Stall: a loss that makes no progress for a long stretch (informational).

A run that never learned (a loss that sits at 7.6 for 11k steps) or whose gradients vanished
is not oscillating: it is stuck. A stretch that runs to the end of the log (at least
`stall_blocks` baseline windows long) makes progress when the median of its second half is
below the median of its first half by more than the noise explains: three standard errors
of that difference, 3 * sqrt(2) * 1.2533 * sigma * sqrt(infl / half), sigma the IQR scale of
the residuals around the stretch's line and infl = (1 + rho) / (1 - rho) their
autocorrelation inflation (the estimates the shift test uses). Halves of a long stretch
resolve a slow descent that block-to-block comparisons would call flat. The earliest such
stretch without progress is a stall when one of the two mechanisms the seed names holds:

* the run never learned: the stall starts within the first fifth of the log and its level is
  within 10 % of the loss's median over its first points (a quarter of its first tenth, at
  most a quarter window, at least 8 points) (a run that learned and then converged has left its
  starting level far behind, so its plateau is not reported), or
* vanishing gradients: over the stall the grad norm's median is `stall_grad_drop` (10x) below
  its median before it.

A stall never changes the verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spikelens.detect.baseline import IQR_TO_SIGMA, REL_SCALE_FLOOR
from spikelens.detect.spikes import MEDIAN_SE


@dataclass(frozen=True)
class Stall:
    start: int  # first point of the first block without progress
    end: int  # last point of the stall
    level: float  # median over the stall (test units)
    progress_bar: float  # the decrease a block needed to count as progress (test units)
    why: str  # "never learned" or "grad norm collapsed"
    grad_drop: float | None


def _noise_se(seg: NDArray[np.float64]) -> float:
    """Standard error of the median of half of `seg`: 1.2533 * sigma * sqrt(infl / half),
    sigma the IQR scale of the residuals around the segment's least-squares line and infl
    the AR(1) inflation (1 + rho) / (1 - rho), rho from the first differences."""
    t = np.arange(len(seg)) - (len(seg) - 1) / 2
    slope = float(np.polyfit(t, seg, 1)[0])
    r = seg - slope * t
    q25, q75 = np.percentile(r, [25, 75])
    sigma = max(float(q75 - q25) / IQR_TO_SIGMA, REL_SCALE_FLOOR)
    dq25, dq75 = np.percentile(np.diff(r), [25, 75])
    sd = float(dq75 - dq25) / IQR_TO_SIGMA
    rho = min(max(1.0 - sd * sd / (2 * sigma * sigma), 0.0), 0.9)
    return MEDIAN_SE * sigma * math.sqrt((1 + rho) / (1 - rho) / (len(seg) / 2))


#: A run that never learned is still within 10 % (the `min_ratio` of an incident, in log
#: units) of the loss it started from.
NEVER_LEARNED = math.log(1.10)

#: Candidate starts tried for a stall (evenly spaced over the log after its first tenth).
_STARTS = 40


def find_stall(x: NDArray[np.float64], block: int, min_blocks: int, grad_drop: float,
               gn: NDArray[np.float64] | None) -> Stall | None:
    """The longest stretch that runs to the end of x (finite points, log units) without
    progress, or None. `gn` is the grad norm aligned with x (NaN where not logged)."""
    n = len(x)
    head = n // 10
    if n - head < min_blocks * block:
        return None
    found: tuple[int, float] | None = None
    for s0 in np.linspace(head, n - min_blocks * block, _STARTS).astype(int):
        seg = x[s0:]
        h = len(seg) // 2
        drop = float(np.median(seg[:h]) - np.median(seg[h:]))
        bar = 3 * math.sqrt(2) * _noise_se(seg)
        if drop <= bar:
            found = (int(s0), bar)
            break
    if found is None:
        return None
    s0, bar = found
    # the grid of starts is coarse: the stall begins where the loss has come down to the
    # plateau, i.e. once a block's median is no longer above the plateau's level by more
    # than three standard errors of a block median
    plateau = float(np.median(x[(s0 + n) // 2:]))
    step = max(1, block // 5)
    while s0 + block < n - min_blocks * block:
        blk = x[s0:s0 + block]
        if float(np.median(blk)) - plateau <= 3 * math.sqrt(2) * _noise_se(blk) * math.sqrt(0.5):
            break
        s0 += step
    s1 = n - 1
    drop_gn = None
    if gn is not None:
        before = gn[:s0][np.isfinite(gn[:s0]) & (gn[:s0] > 0)]
        during = gn[s0:][np.isfinite(gn[s0:])]
        if len(before) >= 8 and len(during) >= 8:
            d = float(np.median(during))
            drop_gn = float(np.median(before)) / d if d > 0 else math.inf
    start_level = float(np.median(x[:max(8, min(block, n // 10) // 4)]))
    level = float(np.median(x[s0:]))
    if s0 <= n // 5 and level >= start_level - NEVER_LEARNED:
        why = "never learned"
    elif drop_gn is not None and drop_gn >= grad_drop:
        why = "grad norm collapsed"
    else:
        return None
    return Stall(start=s0, end=s1, level=level, progress_bar=bar,
                 why=why, grad_drop=drop_gn)
