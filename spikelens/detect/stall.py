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

from spikelens.detect.baseline import IQR_TO_SIGMA, REL_SCALE_FLOOR, fast_median
from spikelens.detect.spikes import MEDIAN_SE


@dataclass(frozen=True)
class Stall:
    start: int  # first point of the first block without progress
    end: int  # last point of the stall
    level: float  # median over the stall (test units)
    progress_bar: float  # the decrease a block needed to count as progress (test units)
    why: str  # "never learned" or "grad norm collapsed"
    grad_drop: float | None


def _block_noise(x: NDArray[np.float64], block: int) -> tuple[NDArray[np.float64],
                                                                 NDArray[np.float64]]:
    """Per block of `block` points: sigma (the IQR scale of the residuals around the block's
    least-squares line) and the AR(1) inflation (1 + rho) / (1 - rho), rho from the IQR
    scale of the first differences (as the shift test estimates it). Vectorised."""
    nb = len(x) // block
    w = x[: nb * block].reshape(nb, block)
    t = np.arange(block) - (block - 1) / 2
    slope = (w @ t) / float(t @ t)
    r = w - slope[:, None] * t[None, :]
    q = np.percentile(r, [25, 75], axis=1)
    sigma = np.maximum((q[1] - q[0]) / IQR_TO_SIGMA, REL_SCALE_FLOOR)
    dq = np.percentile(np.diff(r, axis=1), [25, 75], axis=1)
    sd = (dq[1] - dq[0]) / IQR_TO_SIGMA
    rho = np.clip(1.0 - sd * sd / (2 * sigma * sigma), 0.0, 0.9)
    return sigma, (1 + rho) / (1 - rho)


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
    sig, infl = _block_noise(x[head:], block)
    found: tuple[int, float] | None = None
    for s0 in np.linspace(head, n - min_blocks * block, _STARTS).astype(int):
        seg = x[s0:]
        h = len(seg) // 2
        drop = fast_median(seg[:h]) - fast_median(seg[h:])  # np.median's, bit for bit
        b0 = (s0 - head) // block
        se = MEDIAN_SE * float(np.median(sig[b0:])) * math.sqrt(
            float(np.median(infl[b0:])) / max(1, h))
        bar = 3 * math.sqrt(2) * se
        if drop <= bar:
            found = (int(s0), bar)
            break
    if found is None:
        return None
    s0, bar = found
    # the grid of starts is coarse: the stall begins where the loss has come down to the
    # plateau, i.e. once a block's median is no longer above the plateau's level by more
    # than three standard errors of a block median
    plateau = fast_median(x[(s0 + n) // 2:])
    step = max(1, block // 5)
    while s0 + block < n - min_blocks * block:
        b = min(len(sig) - 1, max(0, (s0 - head) // block))
        se_blk = MEDIAN_SE * float(sig[b]) * math.sqrt(float(infl[b]) / block)
        if float(np.median(x[s0:s0 + block])) - plateau <= 3 * se_blk:
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
    level = fast_median(x[s0:])
    if s0 <= n // 5 and level >= start_level - NEVER_LEARNED:
        why = "never learned"
    elif drop_gn is not None and drop_gn >= grad_drop:
        why = "grad norm collapsed"
    else:
        return None
    return Stall(start=s0, end=s1, level=level, progress_bar=bar,
                 why=why, grad_drop=drop_gn)
