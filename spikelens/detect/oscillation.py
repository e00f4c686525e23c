"""Sustained periodic or erratic swings of the loss: the `oscillation` condition.

An oscillation is not an incident: it is the state of a stretch of training. Three kinds of
evidence, each on the log loss minus its trend (a centred running median over
2 * `max_period` + 1 points, so any swing shorter than `max_period` survives):

* **periodic**: in blocks of `block` points, the autocorrelation of the residual has a peak of
  at least `min_acf` at some lag P >= 2 after having gone negative: the loss repeats every P
  points (a zig-zag between two data sources is P = 2, an epoch-boundary sawtooth is the
  length of the epoch). Consecutive periodic blocks with the same period form one region;
* **LR-locked**: the learning rate itself is periodic (cyclic LR, warm restarts, a scheduler
  stepped per sample) with at least three cycles, and the loss residual correlates with it
  (|r| * sqrt(n) >= `lr_z`): the loss rises and falls with the LR, whatever the noise;
* **erratic**: around its trend, the loss's 10th and 90th percentiles, over a centred window
  of `block` points, are at least a factor `spread` apart, for at least `block` points in a
  row: the loss routinely doubles and halves from step to step (tiny batches).

Overlapping regions merge into one event, which keeps the period when one was found. Its
amplitude is the relative peak-to-trough swing: of the phase-folded residual for a periodic
region, of the central 80 % of the residual for an erratic one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from spikelens.detect.baseline import rank_index

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class OscParams:
    block: int  # points per analysis block (also the erratic window)
    max_period: int  # longest period looked for in the loss itself, in points
    min_acf: float  # autocorrelation at the period
    spread: float  # q90 / q10 ratio of the residual for an erratic swing
    lr_z: float  # |r| * sqrt(n) between loss and a periodic LR
    min_cycles: int  # cycles a periodic region (or LR) must show
    #: samples per optimizer step read from the log, or None when the log cannot tell
    batch: float | None = None
    tiny_batch: float = 5.66  # at or below: batch noise is expected, and is the swing


@dataclass(frozen=True)
class Oscillation:
    """One region, as indices into the tested points."""

    start: int
    end: int  # last index of the region
    period: float | None  # in points
    amplitude: float  # relative peak-to-trough
    log_swing: float  # the same in log units (what a rise must exceed to stand out)
    source: str  # "periodic", "lr" or "erratic"
    lr_corr: float | None = None  # correlation of the loss residual with a cyclic LR
    lr_peaks: tuple[int, ...] = ()  # indices of the cyclic LR's maxima (LR-locked only)


def residual(x: FloatArray, max_period: int) -> FloatArray:
    """x minus its trend: a centred running median over 2 * max_period + 1 points (robust to
    spikes), then a running mean of the same width. The mean matters: on a zig-zag the
    median of an odd window sides with whichever phase holds the majority, so on its own it
    zig-zags too and would eat half of the swing."""
    size = min(len(x), 2 * max_period + 1)
    if size < 3:
        return np.asarray(x - np.median(x), dtype=np.float64)
    # reflected edges: padding with the end value would bend a steep trend at both ends
    trend = ndimage.uniform_filter1d(ndimage.median_filter(x, size=size, mode="reflect"),
                                     size=size, mode="reflect")
    return np.asarray(x - trend, dtype=np.float64)


def cycle_peaks_fence(x: FloatArray, start: int, end: int, period: float, max_period: int,
                      held: NDArray[np.bool_] | None = None
                      ) -> tuple[FloatArray, float] | None:
    """The residual around the trend of x[start:end + 1] (with the trend of the points
    either side that `residual` reaches over the whole log: 2 * `max_period`) and the upper
    fence of its cycles' peaks: the maximum of the residual over each whole cycle of
    `period` points from `start`, their median plus three standard deviations as the lower
    half of them gives it ((median - q25) / 0.6745). A cycle holding a point of `held` (the
    region's rises: what is being judged) gives no peak, so incidents do not raise the
    fence they are held to. When most cycles hold one, the rises are the cycles' own peaks
    if they peak at the oscillation's phase (`_one_phase`), and every cycle counts;
    otherwise there is no fence. A point of a periodic oscillation no higher than that is
    one of its swings: each cycle has a highest point, and the fence is where the cycles'
    own highest points stop. None with fewer than `MIN_CYCLES_FENCE` cycles to take the
    peaks of."""
    per = int(round(period))
    if per < 2:
        return None
    pad = 2 * max_period
    lo, hi = max(0, start - pad), min(len(x), end + 1 + pad)
    r = residual(x[lo:hi], max_period)[start - lo:end + 1 - lo]
    k = len(r) // per
    if k < MIN_CYCLES_FENCE:
        return None
    cycles = r[:k * per].reshape(k, per)
    peaks = cycles.max(axis=1)
    if held is not None:
        busy = held[:k * per].reshape(k, per).any(axis=1)
        # rises in most cycles, at one phase of the cycle, are the oscillation's own peaks
        # (every boundary of a sawtooth that stands far above its noise), not incidents;
        # rises at scattered phases (bad batches in most epochs) are incidents all the same
        if 2 * int(busy.sum()) <= k:
            peaks = peaks[~busy]
        elif not _one_phase(cycles[busy], cycles[~busy]):
            # rises in most cycles at scattered phases: incidents in most epochs, and the
            # few cycles left hold the ones the rise tests missed; no fence to be had
            return None
    if len(peaks) < MIN_CYCLES_FENCE:
        return None
    med, q25 = (float(v) for v in np.percentile(peaks, [50, 25]))
    # the spread of the lower half (a normal law's q25 is 0.6745 sigma under its median):
    # incidents the rise tests did not find can only raise cycle peaks, so the upper half is
    # where they sit, and a MAD taken over both halves widens with them
    return r, med + 3.0 * (med - q25) / 0.6745


def _one_phase(cycles: FloatArray, clean: FloatArray) -> bool:
    """Whether the highest points of the `cycles` (rows) that hold rises fall where the
    oscillation peaks: two in three within a tenth of the period (at least one point), on
    the circle, of the phase where the `clean` cycles peak most often, or, with fewer than
    three clean cycles, of their own commonest phase. Bad batches kept to one stretch of
    every epoch share a phase too, but not the boundary's."""
    per = cycles.shape[1]
    reach = max(1, per // 10)
    ring = np.arange(per)

    def near(rows: FloatArray) -> NDArray[np.int64]:
        """For each phase, how many of the rows peak within `reach` of it on the circle."""
        dist = np.abs(np.argmax(rows, axis=1)[:, None] - ring[None, :])
        return np.asarray((np.minimum(dist, per - dist) <= reach).sum(axis=0))

    counts = near(cycles)
    hits = counts[int(np.argmax(near(clean)))] if len(clean) >= 3 else counts.max()
    return bool(3 * int(hits) >= 2 * len(cycles))


#: Whole cycles a periodic region needs before its cycles' peaks give a fence.
MIN_CYCLES_FENCE = 8


def _acf_rows(rows: FloatArray, max_lag: int) -> FloatArray:
    """Autocorrelation (lags 0..max_lag) of each row, through one batched FFT."""
    from scipy.fft import next_fast_len

    y = rows - rows.mean(axis=1, keepdims=True)
    m = y.shape[1]
    # any length >= 2m avoids circular wrap-around; a 5-smooth one keeps the FFT fast (an
    # awkward 2m such as 2^4 x 124,999 takes pocketfft's slow path: 0.9 s instead of 0.05 s)
    n = next_fast_len(2 * m, real=True)
    f = np.fft.rfft(y, n, axis=1)
    del y
    # not `f *= np.conj(f)`: numpy's in-place multiply takes another loop, whose products
    # differ in the last bit at a million points; the spectrum is let go instead, before
    # the inverse transform (16 MB of a million-point FFT's peak)
    power = f * np.conj(f)
    del f
    a = np.fft.irfft(power, n, axis=1)[:, : max_lag + 1]
    del power
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(a / a[:, :1])


def first_period(acf: FloatArray, min_acf: float, repeat: bool = False,
                 max_lag: int | None = None, points: int | None = None) -> int | None:
    """The first local maximum >= min_acf after the autocorrelation has gone negative.

    With `repeat`, the peak must also come back at twice the lag (at least min_acf / 2
    there): a periodic swing repeats, while slowly wandering noise (a loss smoothed by a
    running mean, a stalled run) has one bump of autocorrelation and no second one.

    With `points` (the number of points the autocorrelation was estimated from), the peak
    must also stand 3 standard errors above zero, the standard error from Bartlett's formula
    with the correlation the series has before it first goes negative: sqrt((1 + 2 sum
    rho_j^2) / points). On white batch noise that is 0.05 for a 400-point block and the bar
    stays min_acf; on a loss logged as a 50-step running mean it is about 0.25, and the
    chance bumps of its autocorrelation at long lags (0.45-0.55) no longer pass."""
    neg = np.flatnonzero(acf[1:] < 0)
    if not len(neg):
        return None
    lo = max(2, int(neg[0]) + 1)
    if points is not None and points > 0:
        se = float(np.sqrt((1.0 + 2.0 * float(np.sum(acf[1:lo] ** 2))) / points))
        min_acf = max(min_acf, 3.0 * se)
    a = acf
    hi = len(a) - 1 if max_lag is None else min(len(a) - 1, max_lag + 1)
    if hi <= lo:
        return None
    # the first lag j in [lo, hi) that passes, tested on all lags at once (a loop over the
    # lags of 2,500 blocks cost 0.1 s on a 1M-step log)
    aj = a[lo:hi]
    ok = (aj >= min_acf) & (aj >= a[lo - 1:hi - 1]) & (aj >= a[lo + 1:hi + 1])
    if repeat:
        twice = np.arange(2 * lo, 2 * hi, 2)
        inside = twice < len(a)
        ok[~inside] = False
        ok[inside] &= a[twice[inside]] >= min_acf / 2
    hit = np.flatnonzero(ok)
    return lo + int(hit[0]) if len(hit) else None


def block_periods(acf: FloatArray, finite: NDArray[np.bool_], min_acf: float, max_lag: int,
                  block: int) -> list[int | None]:
    """`first_period(row, min_acf, repeat=True, max_lag, points=block)` of each row of
    `acf` that is all finite (`finite`), None for the others. first_period only takes a lag
    j >= 2 (below max_lag + 2 and the last lag) whose value reaches a bar of at least
    min_acf: a row with no such value gives None, so only the other rows are handed to it
    (on a 1M-step log 2,500 calls became a few dozen)."""
    periods: list[int | None] = [None] * len(acf)
    hi = min(acf.shape[1] - 1, max_lag + 1)
    if hi <= 2:
        return periods
    maybe = finite & np.any(acf[:, 2:hi] >= min_acf, axis=1)
    for k in np.flatnonzero(maybe).tolist():
        periods[k] = first_period(acf[k], min_acf, repeat=True, max_lag=max_lag, points=block)
    return periods


def _periodic_regions(r: FloatArray, p: OscParams) -> list[tuple[int, int, int]]:
    """(start, end, period) of runs of blocks sharing a period."""
    n = len(r)
    block = min(p.block, n)
    nb = n // block
    max_lag = min(p.max_period, block // p.min_cycles)
    if nb == 0 or max_lag < 3:
        return []
    acf = _acf_rows(r[: nb * block].reshape(nb, block), min(2 * max_lag, block - 1))
    # the usual estimator sums block - k products at lag k over a variance of block points:
    # it shrinks the autocorrelation at lag k by (block - k) / block (7 % at an epoch of 28
    # points). Undone, the estimate at the period is the share of the variance the periodic
    # part carries, the quantity the bar is about
    acf = acf * (block / (block - np.arange(acf.shape[1], dtype=np.float64)))[None, :]
    finite = np.all(np.isfinite(acf), axis=1)
    periods = block_periods(acf, finite, p.min_acf, max_lag, block)
    out: list[tuple[int, int, int]] = []
    b = 0
    while b < nb:
        per = periods[b]
        if per is None:
            b += 1
            continue
        e = b
        found = [per]
        while e + 1 < nb and periods[e + 1] is not None and \
                abs(int(periods[e + 1] or 0) - per) <= max(1, per // 5):
            e += 1
            found.append(int(periods[e] or per))
        # one block of a long log could be a fluke; a run that is a single block is judged
        # on that block alone
        if e > b or nb == 1:
            out.append((b * block, (e + 1) * block - 1 if e + 1 < nb else n - 1,
                        int(np.median(found))))
        b = e + 1
    if not out and nb >= 2:
        # no two blocks in a row cleared the bar on their own: a swing whose share of the
        # variance sits near it (an epoch sawtooth about as large as the step noise) clears
        # it in some blocks and not in others. The blocks' mean autocorrelation estimates
        # the same share with nb times less variance; when it clears the bar (and repeats
        # at twice the lag) the whole run swings with that period
        rows = acf[finite]
        if len(rows) >= 2:
            per = first_period(rows.mean(axis=0), p.min_acf, repeat=True, max_lag=max_lag,
                               points=block * len(rows))
            if per is not None:
                out.append((0, n - 1, per))
    return out


def _erratic_regions(r: FloatArray, p: OscParams) -> list[tuple[int, int]]:
    """Stretches of at least `block` points where the residual's q90/q10 spread reaches
    `spread`. The spread is measured in quarter-block cells (one sort per cell) and steadied
    by a running median over eight cells (two blocks): a per-window quantile range wavers by
    10 % from window to window, more than the margin between a noisy run and an erratic one."""
    n = len(r)
    cell = max(4, p.block // 4)
    nc = n // cell
    if nc < 4:
        return []
    srt = np.sort(r[: nc * cell].reshape(nc, cell), axis=1)
    width = srt[:, rank_index(cell, 0.9)] - srt[:, rank_index(cell, 0.1)]
    steady = ndimage.median_filter(width, size=min(nc, 8), mode="nearest")
    wide = np.zeros(n, dtype=bool)
    # a batch the log says is tiny is the mechanism itself: the bar only has to tell its
    # noise from a quiet loss (the square root of the bar: +-19 % around the trend)
    bar = np.log(p.spread) if p.batch is None else 0.5 * np.log(p.spread)
    wide[: nc * cell] = np.repeat(steady >= bar, cell)
    return [(s, e) for s, e in _runs(wide) if e - s + 1 >= p.block]


def _runs(mask: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last) index of each run of True."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def lr_period(lr: FloatArray, min_cycles: int) -> int | None:
    """Period (in points) of a cyclic learning rate, or None for an ordinary schedule."""
    n = len(lr)
    ok = np.isfinite(lr)
    if n < 12 or ok.sum() < 0.9 * n:
        return None
    # with every value finite the fill is never taken: skip its median over the whole log
    y = lr if ok.all() else np.where(ok, lr, np.nanmedian(lr))
    t = np.arange(n, dtype=np.float64)
    y = y - np.polyval(np.polyfit(t, y, 1), t)
    del t
    if float(np.std(y)) <= 1e-12 * max(1e-300, float(np.max(np.abs(lr[ok])))):
        return None
    acf = _acf_rows(y[None, :], n // min_cycles)[0]
    per = first_period(acf, 0.8)
    if per is None or per < 2 or n < min_cycles * per:
        return None
    return per


def _lr_locked(x: FloatArray, lr: FloatArray, per: int, p: OscParams) -> float:
    """The correlation r between the loss and LR residuals at the LR's period (the test is
    |r| * sqrt(n) >= lr_z)."""
    rx = residual(x, per)
    rl = residual(np.nan_to_num(lr, nan=float(np.nanmedian(lr))), per)
    if float(np.std(rx)) == 0 or float(np.std(rl)) == 0:
        return 0.0
    return float(np.corrcoef(rx, rl)[0, 1])


def _lr_peaks(lr: FloatArray, per: int) -> tuple[int, ...]:
    """Indices of the cyclic LR's maxima: the highest point of each period-long stretch
    that is also the highest within half a period either side."""
    y = np.nan_to_num(lr, nan=float(np.nanmin(lr)))
    size = max(3, per) | 1
    top = ndimage.maximum_filter1d(y, size=size, mode="nearest")
    idx = np.flatnonzero((y >= top) & (y > np.median(y)))
    # a flat top holds several equal points: keep the first of each run
    keep = [int(i) for k, i in enumerate(idx) if k == 0 or i - idx[k - 1] > 1]
    return tuple(keep)


def _fold_swing(r: FloatArray, period: float, size: int) -> float:
    """Peak-to-trough (log units) of the residual averaged by phase over stretches of `size`
    points (a period that is not a whole number of points, or a phase reset at an epoch
    boundary, would blur one fold over the whole region), then the median over stretches."""
    per = max(2, int(round(period)))
    size = max(size, 2 * per)
    swings = [_fold_one(r[i:i + size], per) for i in range(0, max(1, len(r) - per), size)
              if len(r[i:i + size]) >= 2 * per]
    return float(np.median(swings)) if swings else _fold_one(r, per)


def _fold_one(r: FloatArray, per: int) -> float:
    nbins = min(per, 20)
    phase = ((np.arange(len(r)) % per) * nbins) // per
    sums = np.bincount(phase, weights=r, minlength=nbins)
    counts = np.bincount(phase, minlength=nbins)
    means = sums[counts > 0] / counts[counts > 0]
    return float(means.max() - means.min()) if len(means) else 0.0


def find_oscillations(x: FloatArray, lr: FloatArray | None, lr_per: int | None,
                      p: OscParams, skip: NDArray[np.bool_] | None = None
                      ) -> list[Oscillation]:
    """Oscillation regions of the log loss `x` (finite). `lr` is aligned with x, or None,
    and `lr_per` is its `lr_period(lr, p.min_cycles)`, taken by the caller (`detect` takes
    it on a thread, before the grad-norm scan there, so that the two large temporaries are
    never held at once). `skip` marks points inside incidents: they are left out of the
    evidence."""
    n = len(x)
    if n < 2 * p.min_cycles + 2:
        return []
    r = residual(x, p.max_period)
    if skip is not None and skip.any():
        r = np.where(skip, 0.0, r)
    regions = [_Region(s, e, float(per), "periodic") for s, e, per in _periodic_regions(r, p)]
    corr: float | None = None
    peaks: tuple[int, ...] = ()
    if lr is not None and lr_per is not None:
        keep = ~skip if skip is not None else np.ones(n, dtype=bool)
        c = _lr_locked(x[keep], lr[keep], lr_per, p)
        corr = c
        if abs(c) * float(np.sqrt(keep.sum())) >= p.lr_z:
            regions.append(_Region(0, n - 1, float(lr_per), "lr"))
            peaks = _lr_peaks(lr, lr_per)
    # an erratic swing is batch noise: with a known batch above `tiny_batch` samples it is
    # the ordinary noise of a mini-batch, not a condition of the run (periodic and LR-locked
    # swings are judged whatever the batch)
    if p.batch is None or p.batch <= p.tiny_batch:
        regions += [_Region(s, e, None, "erratic") for s, e in _erratic_regions(r, p)]
    out = _merge(regions, x, r, p.block)
    return [Oscillation(o.start, o.end, o.period, o.amplitude, o.log_swing, o.source,
                        lr_corr=corr, lr_peaks=peaks if o.source == "lr" else ())
            for o in out]


@dataclass
class _Region:
    start: int
    end: int
    period: float | None
    source: str


def _merge(regions: list[_Region], x: FloatArray, r: FloatArray,
           block: int) -> list[Oscillation]:
    """Overlapping regions become one; a period found by any source is kept, the cyclic
    LR's over the loss's own."""
    merged: list[_Region] = []
    for reg in sorted(regions, key=lambda g: g.start):
        if merged and reg.start <= merged[-1].end:
            last = merged[-1]
            last.end = max(last.end, reg.end)
            # the LR's period is read off the schedule itself; the loss's is an estimate
            # (on a zig-zag near the bar, a harmonic can clear it first)
            if reg.period is not None and (last.period is None or reg.source == "lr"):
                last.period, last.source = reg.period, reg.source
            continue
        merged.append(_Region(reg.start, reg.end, reg.period, reg.source))
    out = []
    for g in merged:
        seg = r[g.start:g.end + 1]
        if g.period is not None:
            # an LR period can be longer than the loss detrending keeps: detrend at it
            folded = residual(x[g.start:g.end + 1], int(round(g.period))) \
                if g.source == "lr" else seg
            # a short period drifts in phase: fold it over 8 cycles at a time
            size = block if g.source == "lr" else 8 * int(round(g.period))
            swing = _fold_swing(folded, g.period, size)
        else:
            swing = float(np.percentile(seg, 90) - np.percentile(seg, 10))
        out.append(Oscillation(start=g.start, end=g.end, period=g.period,
                               amplitude=float(np.expm1(swing)), log_swing=swing,
                               source=g.source))
    return out
