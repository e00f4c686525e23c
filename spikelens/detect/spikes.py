"""Rises of a series above its trailing baseline: the spike and divergence candidates.

Two tests run on every point, both one-sided (early training descends steeply; only rises
count) and both in units of the trailing scale, so they are scale-free:

* the *point* test, for one-step spikes (a bad batch): the robust z of the point against the
  median of the `window` points before it. The scale for rises is the larger of IQR/1.349 and
  (q90 - median)/1.2816, both measured on the residuals around the window's robust local
  line when the window descends (`baseline.detrended_quantiles`: the descent of training is
  trend, not noise): a loss whose upper tail is heavier than a normal law (per-microbatch
  noise) earns a wider yardstick from its own recent past;
* the *shift* test, for rises that last (an LR jump, a shard of bad data): the median of the
  next k points against the same baseline, divided by the standard error of that difference
  (1.2533 * sigma * sqrt(1/k + 1/window)). Medians of k points are near-normal even when the
  noise is not, and a lone outlier cannot move them.

A rise must also be a real ratio: at least `min_ratio` above the baseline (diluted by the
logging interval for a one-step spike in averaged logs). With fewer than `min_window` points
before it, a point has no usable scale and is judged by ratio alone (`short_ratio`, or
`start_ratio` while the run is in its first logged points from initialisation).

Each candidate opens an event whose band is frozen at the baseline before it: the event
starts at the first point above the band (walking back over a contiguous climb), peaks at its
highest point and ends at the first point from which `recover_run` points in a row are back
inside the band. A second pass recomputes the baseline with every event clipped to its band,
so one incident does not widen the yardstick for the next."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spikelens.detect._threads import start
from spikelens.detect.baseline import (
    BORROW,
    FINAL,
    IQR_TO_SIGMA,
    REL_SCALE_FLOOR,
    FloatArray,
    _spread,
    detrended_quantiles,
    forward_median,
    rank_index,
    trailing_detrended,
    trailing_quantiles,
    windows_holding,
)

#: Standard normal quantile of 0.9: (q90 - median) / Z90 estimates sigma from the upper tail.
Z90 = 1.2816
#: The baseline window is refreshed every window // STRIDE_DIVISOR points (5 for 100).
STRIDE_DIVISOR = 20
#: Asymptotic efficiency factor of the median: SE(median of k) = 1.2533 * sigma / sqrt(k).
MEDIAN_SE = 1.2533


@dataclass(frozen=True)
class RiseParams:
    """The knobs of the rise tests, in logged points (converted from Config by the caller)."""

    window: int
    min_window: int
    z_point: float
    z_shift: float
    shift_windows: tuple[int, ...]
    log_min_ratio_point: float  # log of the ratio a single point must reach
    log_min_ratio_shift: float  # log of the ratio a sustained level must reach
    log_short_ratio: float  # log ratio for points with fewer than min_window predecessors
    start_points: int  # points at the start of the series judged with log_start_ratio
    log_start_ratio: float
    recover_run: int
    band_z: float
    quantum: float = 0.0  # rounding step of the series (loss units): a rise spans 2 of them
    is_log: bool = True
    # per-point z bar of the point test where it differs from z_point (outliers that recur
    # across runs, see joint.py); None everywhere else
    point_bar: FloatArray | None = None
    # the isolated one-step outlier statistic beside the trailing point test (the loss; the
    # grad norm keeps the trailing test alone)
    isolated: bool = True
    # per-point z bar of the shift tests where it differs from z_shift (at an upward jump of
    # the logged LR, see detect/__init__.py `_lr_jump_bar`); None everywhere else
    shift_bar: FloatArray | None = None
    # per-point log ratio a sustained level must reach where it differs from
    # log_min_ratio_shift (the same places as shift_bar); None everywhere else
    shift_ratio: FloatArray | None = None


@dataclass(frozen=True)
class Rise:
    """One event on the series, as indices into the tested (finite) points."""

    start: int
    peak: int
    end: int  # first index back in band; len(x) - 1 when not recovered
    recovered: bool
    level: float  # baseline level (same units as x)
    scale: float  # baseline scale for rises
    band_hi: float


@dataclass(frozen=True)
class Stats:
    """Per-point trailing statistics used by the tests."""

    level: FloatArray
    scale: FloatArray  # IQR-based
    up_scale: FloatArray  # max(IQR-based, upper-tail based)
    inflation: FloatArray  # variance inflation of a k-point median from autocorrelation
    window: int  # the trailing window: point i has min(i, window) points before it
    floor: FloatArray | None = None  # resolution floor of the scale (rounding, precision)

    def count(self, a: int, b: int) -> NDArray[np.int64]:
        """How many points the baselines of points a..b-1 hold. Computed, not stored: a
        million-point array of it was 8 MB of every scan's peak."""
        return np.minimum(np.arange(a, b, dtype=np.int64), self.window)


def trailing_stats(x: FloatArray, window: int, abs_floor: float, is_log: bool,
                   reuse: dict[str, dict[str, Any]] | None = None) -> Stats:
    """Level, IQR-scale and upper-tail scale of the `window` points before each point.

    The scales (and the autocorrelation of the inflation factor) are measured on the
    residuals around the window's robust local line (`detrended_quantiles`), so the descent
    of early training, or of a log with one point every 10 steps, is not taken for noise.
    `abs_floor` is the resolution of the loss in its own units (half its rounding step, or
    the float precision floor): the scale never goes below it, expressed in log units at the
    baseline level when the series is a log. `reuse`: a dict shared by the calls on versions
    of one series (the second pass), whose unchanged windows are not computed again
    (`baseline.trailing_detrended`)."""
    n = len(x)
    stride = max(1, window // STRIDE_DIVISOR)
    level, q = trailing_detrended(x, window, (0.25, 0.5, 0.75, 0.9), stride,
                                  None if reuse is None else reuse.setdefault("detrended", {}))
    q25, q50, q75, q90 = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    raw = (q75 - q25) / IQR_TO_SIGMA
    tail = (q90 - q50) / Z90
    # the quantiles (four floats a point) are let go before the inflation's own quantiles
    # are taken: on a 1M-step log that is 32 MB off the peak of the analysis
    del q, q25, q50, q75, q90
    inflation = _inflation(x, window, stride, raw,
                           None if reuse is None else reuse.setdefault("diff", {}),
                           None if reuse is None else reuse.setdefault("long", {}),
                           None if reuse is None else reuse["detrended"].get("x"))
    with np.errstate(over="ignore", invalid="ignore"):
        floor = np.log1p(abs_floor / np.exp(level)) if is_log else np.full(n, abs_floor)
    # NaN and infinities replaced once, in place (`floor` is this function's own array),
    # for both the scale and the floor
    np.nan_to_num(floor, copy=False)
    scale = np.maximum(np.maximum(raw, floor), REL_SCALE_FLOOR)
    up = np.maximum(scale, tail)
    return Stats(level=level, scale=scale, up_scale=up,
                 inflation=inflation,
                 window=window,
                 floor=np.maximum(floor, REL_SCALE_FLOOR))


def window_stats(w: FloatArray, abs_floor: float, is_log: bool) -> tuple[float, float, float]:
    """(level, scale, up_scale) of one window, defined as `trailing_stats` defines them."""
    lv, qs = detrended_quantiles(w[None, :], (0.25, 0.5, 0.75, 0.9))
    level = float(lv[0])
    q25, q50, q75, q90 = (float(v) for v in qs[0])
    floor = float(np.log1p(abs_floor / np.exp(level))) if is_log else abs_floor
    scale = max((q75 - q25) / IQR_TO_SIGMA, floor, REL_SCALE_FLOOR)
    return level, scale, max(scale, (q90 - q50) / Z90)


def _inflation(x: FloatArray, window: int, stride: int, raw_scale: FloatArray,
               reuse: dict[str, Any] | None = None, long_reuse: dict[str, Any] | None = None,
               x_copy: FloatArray | None = None) -> FloatArray:
    """(1 + rho) / (1 - rho) of the trailing window, rho its lag-1 autocorrelation.

    Noise that wanders (rho > 0) moves the median of k points far more than independent
    noise would, so the shift test divides by a standard error inflated by this factor.
    For AR(1) noise Var(x[i] - x[i-1]) = 2 (1 - rho) Var(x), hence rho = 1 - s_d^2 / (2 s^2)
    with s_d the IQR-scale of the first differences: the same trailing quantiles, no loop.
    `raw_scale` is the detrended one: a differenced line only shifts by its slope, which
    leaves the IQR of the differences unchanged, so both scales describe the same residuals
    and a descent is no longer read as autocorrelation.
    """
    n = len(x)
    out = np.ones(n)
    if n < 4:
        return out
    # d[j] = x[j+1] - x[j]; point i uses the differences inside its window, d[i-w .. i-2].
    # The factor moves slowly, so it is refreshed four times less often than the baseline.
    qd = trailing_quantiles(np.diff(x), window - 1, (0.25, 0.75), 4 * stride, reuse)
    sd = np.full(n, np.nan)
    sd[1:] = (qd[:, 1] - qd[:, 0]) / IQR_TO_SIGMA
    del qd
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - sd**2 / (2.0 * raw_scale**2)
    del sd
    # in place: these whole-series arrays sit on the detector's memory peak
    np.nan_to_num(rho, copy=False, nan=0.0)
    np.fmax(rho, _long_rho(x, window, long_reuse, x_copy), out=rho)
    np.clip(rho, 0.0, 0.9, out=rho)
    return np.asarray((1.0 + rho) / (1.0 - rho), dtype=np.float64)


def _strided_iqr(d: FloatArray, m: int, step: int) -> FloatArray:
    """q75 - q25 of the windows d[k * step : k * step + m], k = 0, 1, ... (the long noise
    windows of `_steadied` and `_long_rho`). Sorted in chunks of about a million values
    (numpy's SIMD sort beats a partition at two order statistics)."""
    from numpy.lib.stride_tricks import sliding_window_view

    rows = sliding_window_view(d, m)[::step]
    lo, hi = rank_index(m, 0.25), rank_index(m, 0.75)
    res = np.empty(len(rows))
    chunk = max(1, 1_000_000 // m)
    for a in range(0, len(rows), chunk):
        srt = np.sort(rows[a:a + chunk], axis=1)
        res[a:a + chunk] = srt[:, hi] - srt[:, lo]
    return res


#: Standard error of the long rho estimate times sqrt(points): 0.092 over 1,000 points of
#: white noise (0.12 at rho 0.3, 0.14 at 0.6), simulated.
LONG_RHO_SE = 2.9


def _long_rho(x: FloatArray, window: int, reuse: dict[str, Any] | None = None,
              x_copy: FloatArray | None = None) -> FloatArray:
    """A floor under the trailing window's rho: the lag-1 autocorrelation of the
    `LONG_NOISE_WINDOWS` * `window` points before each point (at least 3 * `window`), from
    differences alone.

    The window's own estimate compares the differences with the scale around the window's
    local line, and that line takes up part of what a wandering (autocorrelated) loss does
    inside 100 points: where the wander happens to run downhill the detrended scale shrinks
    and rho collapses (seed 5000's gamp02, a clean fp16 run: rho 0 at step 467 where the log's
    residual has 0.6, and a x1.18 wander passed the 5-point shift test at z 5.57). For AR(1)
    noise Var(x[t+2] - x[t]) / Var(x[t+1] - x[t]) = 1 + rho, and a line (the descent) shifts
    every difference by a constant, which leaves their IQR unchanged: so rho is read off the
    IQR scales of the lag-2 and lag-1 differences of the long trailing window, with no level
    scale and no line. That estimate is itself noisy (standard error `LONG_RHO_SE` / sqrt(n)
    over n points, 0.09 at 1,000: simulated white and AR(1) noise), so the floor is it less
    two standard errors: on white noise it is 0 at 97 % of the points, and an LR jump's
    shift (tested against 3.0) keeps its sensitivity. The shift test takes the larger of
    the two: its standard error is never below what the log's longer past says about how
    its loss wanders. Both windows
    end before the point, as the baseline does; refreshed every `long // 2` points (a long
    window moves little in half of itself) and sorted in chunks: 0.02 CPU-s per million
    points each. The first `3 * window` points, whose past is too short, take the estimate
    of the log's first `3 * window` points (of all of it, on a log longer than `window` but
    shorter than that): a small batch's AR(1) noise (rho 0.5) read rho 0 from 30 points of
    past and a chance wander passed the shift test at the end of warmup.

    `reuse` (the detector's second pass, which clips its events): a call leaves its windows'
    scales there with `x_copy`, a copy of `x` it may keep; a later call on the same length
    re-sorts only the long windows that hold a changed value (each is a pure function of
    its values), and keeps the head when no value of it changed. 0.06 of the 0.11 CPU-s of
    the second pass's baseline on the 500-spike 1M-step log."""
    n = len(x)
    out = np.zeros(n)
    long = LONG_NOISE_WINDOWS * window
    least = 3 * window
    if n <= window:
        return out
    step = max(1, long // 2)
    # window k covers x[k * step : k * step + long + 1] (its `long` lag-1 differences and
    # the lag-2 ones of the same points); point i takes the last window that ends before
    # it. Before the first full window, the points from `least` on take all the points
    # before them, refreshed every `window` points
    def rho(s1: FloatArray | float, s2: FloatArray | float) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.square(s2) / np.square(s1) - 1.0, dtype=np.float64)

    # one whole-series difference at a time, and no whole-series index or gather: this
    # runs inside the detector's memory peak (a million points: 48 -> 16 MB)
    d1 = np.diff(x)
    head = window
    k = min(n, long + 1)
    prev = reuse if reuse is not None and reuse.get("key") == (n, window) else None
    changed = None
    if prev is not None:
        # bitwise: NaN against NaN is unchanged, 0.0 against -0.0 changed
        changed = np.flatnonzero(prev["x"].view(np.int64) != x.view(np.int64))
    if changed is not None and (not len(changed) or changed[0] >= k):
        out[:k] = prev["head"]  # type: ignore[index]
    else:
        h2 = x[2:k] - x[:k - 2]  # the head's lag-2 differences (at most the first `long`)

        def floor_of_first(m: int) -> FloatArray:
            """The floor read from the log's first m points."""
            a1, a2 = np.sort(d1[:m - 1]), np.sort(h2[:m - 2])
            r = rho(a1[rank_index(m - 1, 0.75)] - a1[rank_index(m - 1, 0.25)],
                    a2[rank_index(m - 2, 0.75)] - a2[rank_index(m - 2, 0.25)])
            return np.asarray(r - 2 * LONG_RHO_SE / np.sqrt(m), dtype=np.float64)

        # the points before `least` have too short a past to read a wander from: they take
        # the estimate of the log's first `least` points (all of it when shorter). The
        # noise's character is the log's; only the level must come from before the point
        out[:least] = floor_of_first(min(n, least))
        for m in range(least, min(n, long + 1), head):  # x[:m], for points m .. m + head - 1
            out[m:m + head] = floor_of_first(m)
    s1 = s2 = None
    if n > long + 1:
        if changed is not None:
            # window j covers x[j * step : j * step + long + 1] (both its difference series)
            s1, s2 = prev["s1"].copy(), prev["s2"].copy()  # type: ignore[index]
            redo = windows_holding(changed, len(s1), long + 1, step)
            chunk = max(1, 1_000_000 // long)
            for a in range(0, len(redo), chunk):
                s1[redo[a:a + chunk]] = _strided_iqr_rows(d1, long, step, redo[a:a + chunk])
            del d1
            if len(redo):
                d2 = x[2:] - x[:-2]
                for a in range(0, len(redo), chunk):
                    s2[redo[a:a + chunk]] = _strided_iqr_rows(d2, long - 1, step,
                                                              redo[a:a + chunk])
                del d2
        else:
            s1 = _strided_iqr(d1, long, step)
            del d1
            s2 = _strided_iqr(x[2:] - x[:-2], long - 1, step)
        r = rho(s1, s2) - 2 * LONG_RHO_SE / np.sqrt(long)
        # point i >= long + 1 takes window (i - long - 1) // step (the last one reaches the end)
        _spread(out, r, long + 1, step)
    if reuse is not None and x_copy is not None and not reuse.get(FINAL):
        reuse.update(key=(n, window), x=x_copy, head=out[:k].copy(), s1=s1, s2=s2)
    return np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0)


def _strided_iqr_rows(d: FloatArray, m: int, step: int, rows: NDArray[np.int64]
                      ) -> FloatArray:
    """`_strided_iqr(d, m, step)` at the windows `rows` only (one sort of those rows)."""
    from numpy.lib.stride_tricks import sliding_window_view

    srt = np.sort(sliding_window_view(d, m)[::step][rows], axis=1)
    return np.asarray(srt[:, rank_index(m, 0.75)] - srt[:, rank_index(m, 0.25)])


#: Points per chunk of `test_statistics`: its two dozen temporaries are a million floats
#: each on a 1M-step log (190 MB above the baseline's arrays, the peak of a whole analysis);
#: in chunks they are 0.5 MB each. Every operation is element by element, so the values do
#: not depend on the chunking.
TEST_CHUNK = 65_536


def test_statistics(x: FloatArray, st: Stats, p: RiseParams,
                    forward: dict[int, FloatArray] | None = None) -> dict[str, FloatArray]:
    """The z of every test at every point, NaN where the test does not apply (too short a
    baseline, an incomplete forward window, or a rise under the ratio bar). Keys: "point"
    and "shift<k>" for each k. The thresholds are applied to these, and the calibration in
    benchmarks/accuracy.py reads them to place the thresholds. `forward` may hold the
    forward medians of x already computed (they do not depend on the baseline)."""
    n = len(x)
    iso: tuple[FloatArray, FloatArray, FloatArray] | None = None
    # the isolated-outlier parts depend on x alone: both passes share them through the
    # `forward` cache (negative keys: forward medians use the positive ones)
    if p.isolated:
        cache = forward if forward is not None else {}
        if _ISO_E not in cache:
            cache[_ISO_E], cache[_ISO_MID], cache[_ISO_SCALE] = _isolated_parts(x, p.window)
        iso = (cache[_ISO_E], cache[_ISO_MID], cache[_ISO_SCALE])
    fms = {k: forward[k] if forward is not None and k in forward else forward_median(x, k)
           for k in p.shift_windows if n >= k}
    out: dict[str, FloatArray] = {"point": np.empty(n)}
    for k in p.shift_windows:
        out[f"shift{k}"] = np.full(n, np.nan)
    for a in range(0, n, TEST_CHUNK):
        b = min(n, a + TEST_CHUNK)
        _test_chunk(x, st, p, a, b, iso, fms, out)
    return out


def _test_chunk(x: FloatArray, st: Stats, p: RiseParams, a: int, b: int,
                iso: tuple[FloatArray, FloatArray, FloatArray] | None,
                fms: dict[int, FloatArray], out: dict[str, FloatArray]) -> None:
    """`test_statistics` of the points a..b-1, written into `out`."""
    n = len(x)
    level, count = st.level[a:b], st.count(a, b)
    excess = x[a:b] - level
    full = count >= p.min_window
    steps_up = _quanta_bar(level, p)
    # the level is the median of `count` points, not of a full window: early in a log (the
    # expanding window) it is itself uncertain, by 1.2533 sigma / sqrt(count). The point
    # test's yardstick grows by that (normalised so a full window is unchanged), and the
    # shift test's standard error uses the real count
    cnt = np.maximum(np.minimum(count, p.window), 1).astype(np.float64)
    lvl_var = MEDIAN_SE ** 2 / cnt
    # ... and the scale estimated from `count` points is uncertain too: both z are divided
    # by the ratio of Student's t quantile (99.9 %) at the degrees of freedom of an IQR from
    # `count` points to the one at a full window, so a short baseline needs a larger rise
    # (1.0 at a full window, 1.22 at 30 points, 1.96 at 13, 3.2 at 9: `_t_factor`)
    small = _t_factor(cnt, p.window)
    widen = np.sqrt((1.0 + lvl_var) / (1.0 + MEDIAN_SE ** 2 / p.window)) * small
    with np.errstate(invalid="ignore", divide="ignore"):
        z1 = excess / (st.up_scale[a:b] * widen)
    bar = np.maximum(p.log_min_ratio_point, steps_up)
    point = np.where(full & (excess >= bar), z1, np.nan)
    if iso is not None:
        floor = st.floor[a:b] if st.floor is not None else None
        zc, ec = _isolated_from(iso[0][a:b], iso[1][a:b], iso[2][a:b], floor)
        if n <= p.window:
            # a log no longer than a window: its noise is the whole log's (`_isolated_parts`)
            # at every point past the first `min_window`, and that scale, from n points, is
            # as uncertain as a trailing one from n points: the same t factor
            judged = count >= p.min_window
            zc = zc / _t_factor(np.array([float(n)]), p.window)[0]
        else:
            # the first `window` points of a longer log: their neighbours' noise is measured
            # as anywhere else, from fewer trailing points, and judged with the trailing
            # test's t factor at that count
            judged = count >= p.min_window
            zc = zc / small
        with np.errstate(invalid="ignore"):
            take = judged & (ec >= bar) & (zc > np.nan_to_num(point, nan=-np.inf))
        # the two rounding steps a rise must span are counted at the level the excess is
        # measured from, the neighbours' median, too: a loss printed to 4 decimals that
        # sits at 0.0002 under a trailing median of 0.0017 (still falling) moves to 0.0003
        # by one rounding step, which at the trailing level would pass for a 12 % rise.
        # Only the few points that pass everything else need that bar
        cand = np.flatnonzero(take)
        if len(cand) and p.quantum > 0:
            local = _quanta_bar(x[a + cand] - iso[0][a + cand], p)
            take[cand[ec[cand] < local]] = False
        point = np.where(take, zc, point)
    out["point"][a:b] = point
    scale, inflation = st.scale[a:b], st.inflation[a:b]
    for k, fm_all in fms.items():
        fm = fm_all[a:b]
        se = MEDIAN_SE * scale * np.sqrt(inflation * (1.0 / k + 1.0 / cnt))
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (fm - level) / (se * small)
        least = p.log_min_ratio_shift if p.shift_ratio is None else p.shift_ratio[a:b]
        ok = full & (fm - level >= np.maximum(least, steps_up))
        ok[max(0, n - k + 1 - a):] = False  # only complete forward windows
        out[f"shift{k}"][a:b] = np.where(ok, z, np.nan)


#: Asymptotic efficiency of the IQR against the standard deviation as an estimate of sigma
#: for normal noise: Var(IQR / 1.349) = 1.36 sigma^2 / n against sigma^2 / 2n for the
#: standard deviation, so a scale from n points is as uncertain as a standard deviation
#: from 0.368 n points (the degrees of freedom of `_t_factor`).
IQR_EFFICIENCY = 0.5 / 1.36


def _t_factor(count: FloatArray, window: int) -> FloatArray:
    """t quantile (99.9 %) at the degrees of freedom of an IQR scale from `count` points,
    IQR_EFFICIENCY * (count - 1), over the one at a full window: 1.0 there, 1.22 at 30
    points, 3.2 at 9. Counting count - 1 degrees of freedom took the IQR for as steady as a
    standard deviation: the nine points that open a noisy log can have an IQR a fifth of
    the noise's, and a level shift of the next twenty then passed the bar at z 7."""
    from scipy.special import stdtrit

    out = np.ones(len(count))
    short = count < window  # only the first `window` points have a short baseline
    if short.any():
        df = np.maximum(IQR_EFFICIENCY * (count[short] - 1.0), 2.0)
        full = float(stdtrit(max(IQR_EFFICIENCY * (window - 1.0), 2.0), 0.999))
        out[short] = stdtrit(df, 0.999) / full
    return out


_ISO_E, _ISO_MID, _ISO_SCALE = -1, -2, -3


#: Points either side of the two-sided neighbourhood of the isolated-outlier test.
NEIGHBOURS = 10


def isolated_z(x: FloatArray, window: int, floor: FloatArray | None = None
               ) -> tuple[FloatArray, FloatArray]:
    """The isolated one-step outlier statistic: (z, excess) of every point.

    A log is read after the fact, so a point can be judged against both of its sides: its
    excess e is its distance to the median of the `NEIGHBOURS` points before it and the
    `NEIGHBOURS` after it (leaving the point itself out). A falling loss no longer lifts the
    trailing level above the point, a rising one no longer lowers it, and the neighbourhood
    is always the current one. The noise is one estimate: the IQR scale of those same
    excesses over the trailing `window`, or over the `window` points centred on it (half
    before, half after) where that is larger, without the upper-tail widening of the
    trailing test: a noise level that rises (a run that starts to learn) is measured where
    the point is, not only where the run was. z = (e - trailing median of the e) / scale.
    On the modded-nanogpt records it puts the outliers that 78 runs replicate (919, 947,
    1760, 3361, 5335, 6127) at 9.4-13.6 where the trailing test gave 8.6-11
    (docs/detection.md)."""
    return _isolated_from(*_isolated_parts(x, window), floor)


def _isolated_parts(x: FloatArray, window: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(excess, trailing median of the excess, IQR scale of the excess: trailing, or
    centred where that is larger). On a log of at most `window` points, the median and
    the scale of all its excesses (docs/detection.md, "Short logs")."""
    n = len(x)
    if n < 2 * NEIGHBOURS + 2:
        nan = np.full(n, np.nan)
        return nan, nan, nan
    foot = np.ones(2 * NEIGHBOURS + 1, dtype=bool)
    foot[NEIGHBOURS] = False
    from scipy import ndimage

    e = x - ndimage.median_filter(x, footprint=foot, mode="reflect")
    if n <= window:
        # a log no longer than one window (an HF fine-tune logged every 10 steps, a W&B
        # panel): the noise around every point is the whole log's, one median and one IQR
        # scale of all its excesses (as the centred estimate would take them)
        q25, q50, q75 = np.percentile(e, (25, 50, 75))
        return (e, np.full(n, q50),
                np.full(n, max((q75 - q25) / IQR_TO_SIGMA, REL_SCALE_FLOOR)))
    q = trailing_quantiles(e, window, (0.25, 0.5, 0.75), max(1, window // STRIDE_DIVISOR))
    scale = (q[:, 2] - q[:, 0]) / IQR_TO_SIGMA
    # ... and the noise around the point: the trailing quantiles `window // 2` points later
    # cover the `window // 2` excesses on either side of it. A trailing estimate cannot see
    # a change of regime coming (a CPU run that sits at ln(10) with 0.5 % noise for 100
    # steps and then starts to learn with 10 % noise: its first noisy points all look like
    # outliers of the calm past); the noise around the point can. The scale is the larger
    # of the two: a point is an outlier only against both the noise before it and the
    # noise around it (a calmer stretch after it does not make it larger). The point's own
    # excess is one of the centred `window` and moves a quartile by one rank at most; the
    # last `window // 2` points have no after and keep the trailing scale.
    h = window // 2
    if 0 < h < n:
        scale[: n - h] = np.fmax(scale[: n - h], scale[h:])
    scale = _steadied(e, scale, window)
    # a copy of the median column, so the three-column quantiles (24 MB at 1M points) are
    # not kept alive by a view for the rest of the detection
    return e, q[:, 1].copy(), np.maximum(scale, REL_SCALE_FLOOR)


#: The long noise estimate of the isolated-outlier test spans this many windows (1000
#: points for a window of 100), centred on the point.
LONG_NOISE_WINDOWS = 10
#: Asymptotic relative standard error of the IQR scale of n normal values: 1.166 / sqrt(n).
IQR_SCALE_SE = 1.166


def _steadied(e: FloatArray, scale: FloatArray, window: int) -> FloatArray:
    """The short noise estimate, replaced by the long one where they agree.

    `scale` (the larger of a trailing and a centred IQR scale over `window` excesses) is a
    100-point estimate: its relative standard error is 1.166 / sqrt(100) = 12 %, and taking
    the larger of two such estimates adds about 6 % on top. On a stationary noise it is
    above the estimate over the `LONG_NOISE_WINDOWS` * `window` excesses centred on the
    point by 20 % at 10 % of the points (simulated white, t4 and AR(1) noise), so a real
    outlier in a patch where the short estimate happens to be high is missed
    (modded-nanogpt 1.5B step 17992: ×1.85 its neighbourhood, short scale 0.078, long
    0.063, z 7.9 against 9.8). Where the short estimate is larger than the long one by
    less than three of its own standard errors (a factor exp(3 · 1.166 / sqrt(window)),
    1.42 for 100 points) nothing says the noise changed there, and the long estimate, with
    ten times the points, is the better one. A larger gap is a real change of regime (a
    run that starts to learn: its noise grows twentyfold) and keeps the short estimate; a
    short estimate below the long one (a calm patch) is kept as it is: this can only lower
    the scale where the two estimates agree. Logs shorter than the long window keep the
    short estimate. The long window is clipped to the log (the first and the last
    `long` points serve the ends)."""
    n = len(e)
    long = LONG_NOISE_WINDOWS * window
    if n <= long:
        return scale
    # the long windows start every `long // 2` points (a 1000-point estimate moves little
    # in 500) and each point takes the one whose centre is nearest: it always holds the
    # 250 points either side of it. The first and the last `long // 2` points take the
    # first and the last window of the log. Sorted in chunks (numpy's SIMD sort beats a
    # partition at two order statistics): 0.02 CPU-s per million points
    step = max(1, long // 2)
    lng = _strided_iqr(e, long, step) / IQR_TO_SIGMA
    agree = float(np.exp(3.0 * IQR_SCALE_SE / np.sqrt(window)))
    # in place and in chunks of 64k points: whole-series temporaries here (the row of
    # every point, its long scale, the choice) sat on the detector's memory peak, 20 MB
    # at a million points
    last = len(lng) - 1
    for a in range(0, n, _STEADY_CHUNK):
        b = min(n, a + _STEADY_CHUNK)
        rows = np.clip(np.rint((np.arange(a, b) - long / 2) / step).astype(np.int64), 0, last)
        c = lng[rows]
        s = scale[a:b]
        with np.errstate(invalid="ignore"):
            use = (c < s) & (s <= agree * c)
        s[use] = c[use]
    return scale


#: Points per chunk of `_steadied`'s choice (its temporaries stay under a few MB).
_STEADY_CHUNK = 1 << 16


def _isolated_from(e: FloatArray, mid: FloatArray, scale: FloatArray,
                   floor: FloatArray | None) -> tuple[FloatArray, FloatArray]:
    if floor is not None:  # never below the resolution of the loss (rounding, precision)
        scale = np.maximum(scale, floor)
    with np.errstate(invalid="ignore"):
        z = (e - mid) / scale
    return z, e


def _quanta_bar(level: FloatArray, p: RiseParams) -> FloatArray:
    """The rise that two rounding steps make at each baseline level (test units): on a log
    that prints 4 decimals, 0.0001 -> 0.0002 is one step of the printer, not a doubling."""
    if p.quantum <= 0:
        return np.zeros(len(level))
    if not p.is_log:
        return np.full(len(level), 2 * p.quantum)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.nan_to_num(np.log1p(2 * p.quantum / np.exp(level)), nan=0.0)


def _candidates(x: FloatArray, st: Stats, p: RiseParams, forward: dict[int, FloatArray],
                z_out: dict[str, FloatArray] | None = None
                ) -> tuple[NDArray[np.int64], NDArray[np.integer[Any]]]:
    """Indices of the points that open an event, and for each point the length of the
    shortest test that fired there (1 for the point test or a short-baseline ratio).
    `z_out` receives the test statistics."""
    n = len(x)
    z = test_statistics(x, st, p, forward)
    if z_out is not None:
        z_out.update(z)
    # the smallest integer that holds the longest test: int8 at the default windows, 7 MB
    # less than int64 at a million points
    fired = np.zeros(n, dtype=np.min_scalar_type(max((1, *p.shift_windows))))
    with np.errstate(invalid="ignore"):
        zbar = p.z_point if p.point_bar is None else p.point_bar
        fired[z["point"] >= zbar] = 1
        # too short a baseline for a scale: the ratio alone decides (the first `min_window`
        # points: the excess and the bar are taken there only, not over the whole series)
        # the points whose count, min(i, window), is in [1, min_window)
        short = np.arange(1, n if st.window < p.min_window else min(n, p.min_window),
                          dtype=np.int64)
        excess = x[short] - st.level[short]
        bar = np.where(short < p.start_points, p.log_start_ratio, p.log_short_ratio)
        for i in short[excess >= bar]:
            if _stands_out_ahead(x, int(i), p):
                fired[i] = 1
        sbar = p.z_shift if p.shift_bar is None else p.shift_bar
        for k in sorted(p.shift_windows):
            fired[(fired == 0) & (z[f"shift{k}"] >= sbar)] = k
    return np.flatnonzero(fired).astype(np.int64), fired


def _stands_out_ahead(x: FloatArray, i: int, p: RiseParams) -> bool:
    """A point judged by ratio alone (too few points before it) must also be an outlier
    against the points that follow it, when the log has enough of them: a log is read after
    the fact, and a loss whose later noise routinely doubles it (a tiny batch) says that
    such a ratio at its start is noise. z against the next `window` points (their median and
    the larger of their IQR and upper-tail scales, around their falling local line) must
    reach the point bar. With fewer than `min_window` points after it (a 3-line excerpt)
    the ratio alone decides, as before."""
    ahead = x[i + 1:i + 1 + p.window]
    if len(ahead) < p.min_window:
        return True
    lv, qs = detrended_quantiles(ahead[None, :], (0.25, 0.5, 0.75, 0.9))
    q25, q50, q75, q90 = (float(v) for v in qs[0])
    scale = max((q75 - q25) / IQR_TO_SIGMA, (q90 - q50) / Z90, REL_SCALE_FLOOR)
    return bool((x[i] - float(lv[0])) / scale >= p.z_point)


def _first_recovery(inband: NDArray[np.bool_], settled: NDArray[np.bool_], run: int) -> int:
    """First index e from which `run` points in a row (or every point to the end, when fewer
    remain) are in band and `settled[e]` holds; -1 if there is none."""
    if not len(inband):
        return -1
    # length of the in-band streak that starts at each index: a cumulative count of ones
    # taken right to left, reset at every zero
    rev = inband[::-1].astype(np.int64)
    c = np.cumsum(rev)
    streak = (c - np.maximum.accumulate(np.where(rev == 0, c, 0)))[::-1]
    remaining = len(inband) - np.arange(len(inband))
    hits = np.flatnonzero((streak >= np.minimum(run, remaining)) & settled)
    return int(hits[0]) if len(hits) else -1


def _recovery(x: FloatArray, band_hi: float, settle_hi: float, frm: int, run: int) -> int:
    """Index of the first point from which the series is back in its band: `run` points in
    a row under `band_hi` whose median is under `settle_hi` (a lucky in-band stretch of a
    level that is still raised does not end a shift). Searched over a horizon that grows
    until it finds the end, so a short event costs a short look-ahead. -1: never."""
    n = len(x)
    horizon = 256
    while frm < n:
        stop = min(n, frm + horizon)
        seg = x[frm:stop]
        settled = forward_median(seg, run) <= settle_hi
        e = _first_recovery(seg <= band_hi, settled, run)
        # a hit whose streak was cut by the horizon is not final: look further
        if e >= 0 and (stop == n or frm + e + run <= stop):
            return frm + e
        if stop == n:
            break
        horizon *= 8
    return -1


def _change_point(x: FloatArray, c: int, horizon: int, level: float, floor: int) -> int:
    """Where a sustained rise detected by a forward window at `c` begins.

    Page's CUSUM estimate: with the reference halfway between the baseline and the raised
    level, the running sum of x - reference falls while x sits
    at the baseline and climbs once it has risen, so its minimum marks the change. The
    search covers the forward window and a quarter of it before `c` (the threshold can be
    crossed a little after the rise began), never before `floor` (the previous event).
    """
    lo = max(floor, c - horizon // 4)
    hi = min(len(x), c + horizon)
    # the raised level: the window's upper quartile. Its median sits right at the boundary
    # when the window is half old level, half new (as when it first crosses the threshold)
    raised = float(np.percentile(x[c:hi], 75)) - level
    if raised <= 0:
        return c
    cusum = np.concatenate(([0.0], np.cumsum(x[lo:hi] - (level + raised / 2))))
    return lo + int(np.argmin(cusum))


def find_rises(x: FloatArray, p: RiseParams, abs_floor: float, is_log: bool,
               second_pass: bool = True, statistics: dict[str, FloatArray] | None = None,
               second_statistics: dict[str, FloatArray] | None = None,
               threaded: bool = True) -> list[Rise]:
    """Events on x (finite values, in test units: the log of the loss where it is positive),
    sorted by start. `abs_floor`: the loss's resolution in its own units. `second_pass`
    re-runs the scan with the events clipped out of the baseline. `statistics`, when given,
    receives the first pass's `test_statistics` (what `rise_statistics` computes), so the
    cross-run point test does not compute them again; `second_statistics` receives the
    second pass's, and stays empty when there is none. `threaded`: a long x may take its
    forward medians on a thread (`X_THREAD_MIN`); the rises are the same either way."""
    n = len(x)
    if n < 2:
        return []
    # the forward medians (and the isolated-outlier parts) depend on x alone: both passes
    # share them, and on a long series they are taken on a thread beside the first pass's
    # trailing statistics
    forward: dict[int, FloatArray] = {}
    ready = _x_parts(x, p, forward, threaded=threaded and len(x) >= X_THREAD_MIN)
    # ... and the second pass recomputes only the baseline windows that hold a clipped point.
    # The first pass's series is x itself, unchanged until both passes are done, and the
    # differences of `_inflation` are a fresh array: both are kept there without a copy
    reuse: dict[str, dict[str, Any]] | None = \
        {"detrended": {BORROW: True}, "diff": {BORROW: True}} if second_pass else None
    rises = _scan(x, x, p, abs_floor, is_log, forward, statistics, reuse, ready)
    # a few-point event barely moves a quartile; only long ones need the second pass
    if not second_pass or not any(r.end - r.start >= p.recover_run for r in rises):
        return rises
    # second pass: the baseline no longer sees the incidents it found. It is the last: it
    # leaves nothing in `reuse` (no copy of the clipped series or of its windows)
    assert reuse is not None
    for d in reuse.values():
        d[FINAL] = True
    clipped = x.copy()
    for r in rises:
        stop = r.end if r.recovered else n
        clipped[r.start:stop] = np.minimum(clipped[r.start:stop], r.band_hi)
    return _scan(x, clipped, p, abs_floor, is_log, forward, second_statistics, reuse)


#: A series of at least this many points takes its forward medians and isolated-outlier
#: parts on a thread beside the first pass's trailing statistics (both let go of the GIL in
#: their sorts): the loss's rise scans of the 1M-step CSV 0.48 -> 0.41 s, `analyze` of it
#: 2.89 -> 2.63 s and of the TensorBoard log 3.65 -> 3.43 s (medians of 5 alternated
#: pairs), peak RSS unchanged within the runs' spread. The grad-norm scan, itself on a
#: thread, takes them in line (`threaded=False`).
X_THREAD_MIN = 200_000


def _x_parts(x: FloatArray, p: RiseParams, into: dict[int, FloatArray],
             threaded: bool) -> Future[None] | None:
    """Fill `into` with the forward medians of x and, for the isolated test, its
    isolated-outlier parts (`test_statistics` reads them there): in line, or on a thread
    whose future is returned."""
    def work() -> None:
        for k in p.shift_windows:
            if len(x) >= k:
                into[k] = forward_median(x, k)
        if p.isolated:
            into[_ISO_E], into[_ISO_MID], into[_ISO_SCALE] = _isolated_parts(x, p.window)

    if not threaded:
        work()
        return None
    return start(work, "spikelens-forward")


def _scan(x: FloatArray, base_x: FloatArray, p: RiseParams, abs_floor: float,
          is_log: bool, forward: dict[int, FloatArray],
          z_out: dict[str, FloatArray] | None = None,
          reuse: dict[str, dict[str, Any]] | None = None,
          ready: Future[None] | None = None) -> list[Rise]:
    n = len(x)
    st = trailing_stats(base_x, p.window, abs_floor, is_log, reuse)
    if ready is not None:
        ready.result()  # `forward` is complete
    idx, fired = _candidates(x, st, p, forward, z_out)
    rises: list[Rise] = []
    pos = 0
    for ci in idx:
        c = int(ci)
        if c < pos:
            continue
        level = float(st.level[c])
        scale = float(st.up_scale[c])
        if not np.isfinite(level):
            continue
        short = min(c, st.window) < p.min_window
        # the band: level + band_z scales; a short baseline also keeps its own max inside
        band_hi = level + p.band_z * scale
        if short:
            band_hi = max(band_hi, float(np.max(base_x[max(0, c - p.window):c])))
        start = c
        k = int(fired[c])
        if k == 1 and not x[c] > band_hi:
            # a one-step outlier against its two-sided neighbourhood that the trailing band
            # (which lags a falling loss) does not frame: the event is the point itself
            start = c
        elif not x[c] > band_hi:
            # a shift candidate. Over a short window the rise is a few points: it starts at
            # the first that leaves the band. Over a long one it is a level that rose with
            # maybe no point leaving the band: it starts at the change point.
            above = np.flatnonzero(x[c:c + k] > band_hi)
            if k <= p.recover_run and len(above):
                start = c + int(above[0])
            else:
                start = _change_point(x, c, k, level, pos)
        # walk back over a contiguous climb above the band
        lo = max(pos, start - p.window)
        back = np.flatnonzero(~(x[lo:start] > band_hi))
        start = lo + int(back[-1]) + 1 if len(back) else lo
        end = _recovery(x, band_hi, level + float(st.scale[c]), start + 1, p.recover_run)
        recovered = end >= 0
        stop = end if recovered else n
        peak = start + int(np.argmax(x[start:stop]))
        rises.append(Rise(start=start, peak=peak, end=end if recovered else n - 1,
                          recovered=recovered, level=level, scale=scale, band_hi=band_hi))
        pos = stop
        if not recovered:
            break
    return rises
