"""Robust trailing baseline of a series, the yardstick every detector measures against.

For each point i the baseline is taken from the `window` points *before* it (the point under
test is never part of its own baseline): the median is the level and the interquartile range
divided by 1.349 is the scale (the IQR of a normal law is 1.349 sigma). Quantiles, unlike the
mean and standard deviation, are not dragged up by the very spikes we are looking for. The
scale is measured on the residuals around a robust local line of the window when the window
descends, so that a loss still falling within one window (early training, or one point every
10 steps) does not count its descent as noise. All the quantiles of a window come from a few
sorts of that window; the windows are sorted in chunks of a strided view (no copy of the
series per window), refreshed every `stride` points, so one million points with a window of
100 cost about 0.15 s. The first `window` points, which have fewer predecessors, use an
expanding window.

The module also holds the two transforms that make the detectors scale-free: the log of a
positive loss (a loss falling from 1e1 to 1e-13 is a straight line in log space, and a rise
is judged as a ratio) and the inference of the rounding step ("quantum") of a log, because a
value printed with 4 decimals cannot move by less than 0.0001, so the scale must never be
estimated below the rounding error."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from scipy import ndimage

FloatArray = NDArray[np.float64]

#: Scale of a normal law from its interquartile range.
IQR_TO_SIGMA = 1.349
#: Floor of the log-space scale: 0.1 %. A perfectly flat synthetic loss would otherwise have
#: a scale of zero and turn the smallest float wobble into an infinite z.
REL_SCALE_FLOOR = 1e-3
#: Decimals tried when looking for the rounding step: the quantum must be coarser than
#: this many significant digits of the typical value to matter (float32 carries ~7).
_MAX_SIG_DIGITS = 6
#: Values needed before a rounding grid is believed.
_MIN_VALUES = 8


def infer_quantum(values: FloatArray) -> float:
    """The rounding step of `values` (0.0 when they are not visibly rounded).

    A log that prints 4 decimals has every value on a 1e-4 grid. We look for the coarsest
    power of ten on whose grid every finite value lies, and keep it only when it is coarser
    than `_MAX_SIG_DIGITS` significant digits of the median magnitude: a float32 written in
    full sits on no grid, and a value printed as `4.250593E+00` has a grid so fine relative
    to its size that it cannot fake a rise. Scale-free: multiplying the values by 1e-10
    moves the grid by the same factor.
    """
    fin = values[np.isfinite(values)]
    v = fin[fin != 0]
    # a grid is only evidenced by many values spread over it: three numbers typed into a
    # CSV, or a constant, would otherwise "round" to their own last digit. A printed 0 is a
    # point of the grid too (0.0000, 0.0001, 0.0002 on a 4-decimal log)
    distinct = len(np.unique(fin[:4096]))
    if len(v) < _MIN_VALUES or distinct < 2:
        return 0.0
    if distinct == 2:
        # two levels are a grid only when they are neighbours on it (0.0001 and 0.0002)
        lo, hi = np.unique(fin[:4096])
        step = hi - lo
        if step <= 0 or not (lo == 0 or np.isclose(lo / step, round(lo / step), atol=1e-6)):
            return 0.0
        k = np.floor(np.log10(step))
        q = 10.0**k
        return q if np.isclose(step / q, round(step / q), atol=1e-6) else 0.0
    mag = float(np.median(np.abs(v)))
    top = int(np.floor(np.log10(mag)))
    for k in range(-top, -top + _MAX_SIG_DIGITS):
        q = 10.0 ** (-k)
        # a cheap look at the first values rules most grids out before the full check
        if _on_grid(v[:256], q) and _on_grid(v, q):
            return q
    return 0.0


def _on_grid(v: FloatArray, q: float) -> bool:
    scaled = v / q
    return bool(np.all(np.abs(scaled - np.round(scaled)) < 1e-6 * np.maximum(1.0, np.abs(scaled))))


def to_log(values: FloatArray, quantum: float) -> tuple[FloatArray, bool]:
    """Log of a loss that is positive, with zeros lifted to half a quantum.

    Returns (transformed, is_log). Zeros appear when a rounded loss falls below its last
    printed digit (HF prints 0.0 for a loss under 5e-5): such a value is "below q/2", so it
    is placed at q/2 (or at half the smallest positive value when the log is not rounded).
    A loss that goes negative (a log-likelihood, an RL objective) cannot be judged in ratios:
    the series is returned unchanged and `is_log` is False.
    """
    finite = values[np.isfinite(values)]
    if len(finite) and float(finite.min()) < 0:
        return values.astype(np.float64, copy=True), False
    pos = finite[finite > 0]
    floor = quantum / 2 if quantum > 0 else (float(pos.min()) / 2 if len(pos) else 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.where(values > 0, values, np.where(values == 0, floor, values)))
    return out, True


def rank_index(n: int, prob: float) -> int:
    """Index of the `prob` quantile in n sorted values: element int(n * prob), the order
    statistic that `scipy.ndimage` filters take, so every quantile here is a data value."""
    return min(n - 1, int(n * prob))


def trailing_quantiles(x: FloatArray, window: int, probs: tuple[float, ...],
                       stride: int = 1, reuse: dict[str, Any] | None = None) -> FloatArray:
    """Quantiles of the `window` points before each point: shape (len(x), len(probs)).

    Row i holds the quantiles of x[i - window:i]; row 0 is NaN and rows below `window` use
    the shorter expanding window. With stride s > 1 the window is refreshed every s points
    (point i uses the window that ends at the last multiple of s above `window`, so it still
    never contains i): one sort per s points instead of per point. Windows are sorted in
    chunks, which numpy does with SIMD sorting networks: 1M windows of 100 in ~0.15 s.
    `reuse`: see `trailing_detrended`.
    """
    n = len(x)
    # rows from `window` on are all written by `_spread`: only the head starts as NaN (a
    # 1M-point fill less)
    out = np.empty((n, len(probs)))
    out[:window] = np.nan
    key = ("quantiles", n, window, probs, stride)
    prev = _reusable(reuse, key, x)
    head_from = 1 if prev is None else max(1, prev.first_change + 1)
    if prev is not None:
        h = min(head_from, len(prev.head))
        out[:h] = prev.head[:h]
    head_rows = _head_rows(x, head_from, min(n, window))
    if head_rows is not None:
        srt = np.sort(head_rows, axis=1)
        for j, q in enumerate(probs):
            out[head_from:head_from + len(srt), j] = _at_ranks(srt, head_from, q)
    else:
        for i in range(head_from, min(n, window)):
            srt = np.sort(x[:i])
            out[i] = [srt[rank_index(i, q)] for q in probs]
    if n <= window:
        _remember(reuse, key, x, out[:window], None)
        return out
    ranks = [rank_index(window, q) for q in probs]
    # window [t, t + window) serves the points from t + window on, t = 0, stride, 2 stride...
    views = sliding_window_view(x[: n - 1], window)[::stride]
    chunk = max(1, 1_000_000 // window)  # sorted copies of about 8 MB
    if prev is not None:
        vals = prev.rows.copy()
        redo = prev.redo(len(views), window, stride)
        for c in range(0, len(redo), chunk):
            rows = redo[c:c + chunk]
            vals[rows] = np.sort(views[rows], axis=1)[:, ranks]
    else:
        vals = np.empty((len(views), len(probs)))
        for c in range(0, len(views), chunk):
            srt = np.sort(views[c:c + chunk], axis=1)
            vals[c:c + chunk] = srt[:, ranks]
    _remember(reuse, key, x, out[:window], vals)
    # each point i >= window takes the latest window that ends at or before it
    _spread(out, vals, window, stride)
    return out


def _head_rows(x: FloatArray, lo: int, hi: int) -> FloatArray | None:
    """The expanding windows x[:i] of the points i = lo .. hi - 1 as the rows of one
    matrix, padded with +inf (which sorts after every value, so each row's ranks below i
    are those of x[:i]): the first `window` points of a series are then one sort of a
    100 x 100 matrix, not 99 sorts and Python loops (a fixed cost of every run, a tenth of
    the analysis of a 20k-step log). None when there are fewer than two rows, or when x[:hi]
    holds a zero or a non-finite value: a sort may order -0.0 and 0.0 (or a NaN against the
    padding) otherwise than the sort of the row alone, so those take the loop."""
    if hi - lo < 2:
        return None
    head = x[:hi - 1]
    if not np.isfinite(head).all() or (head == 0).any():
        return None
    i = np.arange(lo, hi)
    return np.where(np.arange(hi - 1)[None, :] < i[:, None], head[None, :], np.inf)


def _ranks(n: NDArray[np.int64], prob: float) -> NDArray[np.int64]:
    """`rank_index` of each count in `n`: int(n * prob) truncates the same float product
    that the array's cast truncates (both non-negative)."""
    return np.minimum(n - 1, (n * prob).astype(np.int64))


def _at_ranks(srt: FloatArray, lo: int, q: float) -> FloatArray:
    """Row r of `srt` (the sorted window of point lo + r) at its `q` rank."""
    return srt[np.arange(len(srt)), _ranks(np.arange(lo, lo + len(srt)), q)]


def _detrended_head(rows: FloatArray, lo: int, probs: tuple[float, ...]
                    ) -> tuple[FloatArray, FloatArray]:
    """`detrended_quantiles` of each expanding window x[:i], i = lo + r, given as the
    padded `rows` of `_head_rows`: the same operations, row by row, as for one window."""
    m, width = rows.shape
    i = np.arange(lo, lo + m)
    srt = np.sort(rows, axis=1)
    level = _at_ranks(srt, lo, 0.5)
    quant = np.column_stack([_at_ranks(srt, lo, q) for q in probs])
    trend = np.flatnonzero(i >= MIN_TREND_POINTS)
    if len(trend):
        w, n = rows[trend], i[trend]
        h = n // 2
        col = np.arange(width)[None, :]
        first = np.sort(np.where(col < h[:, None], w, np.inf), axis=1)
        # the second half x[h:n], moved to the front of its row
        idx = np.minimum(col + h[:, None], width - 1)
        second = np.sort(np.where(col < (n - h)[:, None], np.take_along_axis(w, idx, 1),
                                  np.inf), axis=1)
        r = np.arange(len(trend))
        f = first[r, _ranks(h, 0.5)]
        s = second[r, _ranks(n - h, 0.5)]
        slope = np.minimum((s - f) / (n / 2), 0.0)
        res = np.where(col < n[:, None],
                       w - slope[:, None] * (col - ((n - 1) / 2)[:, None]), np.inf)
        rs = np.sort(res, axis=1)
        quant[trend] = np.column_stack([rs[r, _ranks(n, q)] for q in probs])
    return level, quant


#: Points per chunk when `_spread` copies the windows' rows out to the points.
_SPREAD_CHUNK = 1 << 16


def _spread(dst: FloatArray, rows: FloatArray, window: int, stride: int) -> None:
    """dst[i] = rows[(i - window) // stride] for every i >= window: each point takes the
    latest refreshed window that ends at or before it. In chunks, so that the index and the
    repeated copy are never a whole series (40 MB at 1M points and four quantiles)."""
    n = len(dst)
    # chunks of whole strides: within one, point a + j takes row (a - window) / stride +
    # j // stride, so each row is repeated `stride` times (a copy 20x faster than a gather)
    step = stride * max(1, _SPREAD_CHUNK // stride)
    for a in range(window, n, step):
        b = min(n, a + step)
        r0 = (a - window) // stride
        # the whole strides are written through a (rows, stride, ...) view of dst with the
        # rows broadcast along the stride: no repeated copy to build and copy again (dst is
        # a fresh C-contiguous array at every call site, so the reshape is a view)
        m = (b - a) // stride
        view = dst[a:a + m * stride].reshape((m, stride) + dst.shape[1:])
        if not np.may_share_memory(view, dst):  # a copy would take the writes: repeat instead
            dst[a:b] = np.repeat(rows[r0:r0 + (b - a + stride - 1) // stride], stride,
                                 axis=0)[:b - a]
            continue
        view[:] = rows[r0:r0 + m, None]
        if a + m * stride < b:  # the last, partial stride
            dst[a + m * stride:b] = rows[r0 + m]


#: Fewer points than this give no usable local slope: the two half-medians of a 3-point
#: window are single points, whose difference is noise, not trend.
MIN_TREND_POINTS = 8


def detrended_quantiles(w: FloatArray, probs: tuple[float, ...],
                        halves: tuple[FloatArray, FloatArray] | None = None
                        ) -> tuple[FloatArray, FloatArray]:
    """Median and residual quantiles of each row of `w` (shape (m, n): m windows of n points).

    The residuals are taken around a robust local line whose slope is the difference of the
    medians of the window's two halves divided by half the window length (a two-group
    Theil-Sen slope: a spike in one half moves that half's median by one rank at most), and
    are w - slope * (t - centre). A loss that still falls within one window, early in
    training or in a log with one point every 10 steps, then no longer counts its own
    descent as spread. Only a falling line is removed: a rise is what the detectors look
    for, so a rising window keeps its raw spread and no slow climb is made to look sharper
    than it is (on the bench, removing rising lines too cost calibration margin). The level
    stays the median of the raw window: the median of its last quarter lags less but, with a
    quarter of the points, is noisy enough to put events on clean runs. Returns
    (median (m,), residual quantiles (m, len(probs))).

    `halves`: the medians of the rows' two halves, when the caller has them (the trailing
    windows of `trailing_detrended` share their halves). A row whose line does not fall
    (slope 0) has its raw values as residuals, so its quantiles are read from the sort that
    gives the level rather than from a second sort (unless one of them is a zero: w - 0 * t
    turns a -0.0 into 0.0, and the sort may leave either at the rank)."""
    n = w.shape[1]
    srt = np.sort(w, axis=1)
    level = srt[:, rank_index(n, 0.5)]
    cols = [rank_index(n, q) for q in probs]
    quant = srt[:, cols]
    if n >= MIN_TREND_POINTS:
        h = n // 2
        if halves is None:
            first = np.sort(w[:, :h], axis=1)[:, rank_index(h, 0.5)]
            second = np.sort(w[:, h:], axis=1)[:, rank_index(n - h, 0.5)]
        else:
            first, second = halves
        slope = np.minimum((second - first) / (n / 2), 0.0)
        tilt = (np.arange(n) - (n - 1) / 2)[None, :]
        redo = np.flatnonzero(~((slope == 0) & (quant != 0).all(axis=1)))
        # the residuals w - slope * tilt, the same two operations, made in the product's
        # own array and sorted there: two window-sized copies fewer than w[redo], the
        # difference and np.sort's copy
        if len(redo) == len(w):
            res = slope[:, None] * tilt
            np.subtract(w, res, out=res)
            res.sort(axis=1)
            quant = res[:, cols]
        elif len(redo):
            res = slope[redo, None] * tilt
            np.subtract(w[redo], res, out=res)
            res.sort(axis=1)
            quant[redo] = res[:, cols]
    return level, quant


def trailing_detrended(x: FloatArray, window: int, probs: tuple[float, ...], stride: int = 1,
                       reuse: dict[str, Any] | None = None) -> tuple[FloatArray, FloatArray]:
    """`detrended_quantiles` of the `window` points before each point, refreshed every
    `stride` points exactly as `trailing_quantiles` refreshes its windows (row 0 is NaN, rows
    below `window` use the expanding window). Returns (level (n,), quantiles (n, len(probs)));
    1M points with a window of 100 and a stride of 5 cost about 0.15 s.

    `reuse`: a dict shared by calls on versions of one series (the detector's second pass,
    which clips its events): each call leaves its windows' results there, and a later call
    with the same arguments recomputes only the windows that hold a changed value. A window
    is a pure function of its values, so the result is the one a full computation gives."""
    n = len(x)
    # rows from `window` on are all written by `_spread`: only the head starts as NaN (a
    # 1M-point fill less)
    level = np.empty(n)
    out = np.empty((n, len(probs)))
    level[:window] = np.nan
    out[:window] = np.nan
    key = ("detrended", n, window, probs, stride)
    prev = _reusable(reuse, key, x)
    head_from = 1 if prev is None else max(1, prev.first_change + 1)
    if prev is not None:
        h = min(head_from, len(prev.head))
        level[:h], out[:h] = prev.head[:h, 0], prev.head[:h, 1:]
    head_rows = _head_rows(x, head_from, min(n, window))
    if head_rows is not None:
        lo, hi = head_from, head_from + len(head_rows)
        level[lo:hi], out[lo:hi] = _detrended_head(head_rows, lo, probs)
    else:
        for i in range(head_from, min(n, window)):
            lv, qs = detrended_quantiles(x[None, :i], probs)
            level[i], out[i] = lv[0], qs[0]
    head = np.column_stack([level[:window], out[:window]])
    if n <= window:
        _remember(reuse, key, x, head, None)
        return level, out
    views = sliding_window_view(x[: n - 1], window)[::stride]
    # three sorts per refreshed window (two halves, the window, the residuals), in chunks
    # that keep the temporary copies near 8 MB
    chunk = max(1, 1_000_000 // window)
    if prev is not None:
        rows_all = prev.rows.copy()
        redo = prev.redo(len(views), window, stride)
        for c in range(0, len(redo), chunk):
            rows = redo[c:c + chunk]
            lv, qs = detrended_quantiles(views[rows], probs)
            rows_all[rows] = np.column_stack([lv, qs])
        lv_all, q_all = rows_all[:, 0], rows_all[:, 1:]
    else:
        lv_all = np.empty(len(views))
        q_all = np.empty((len(views), len(probs)))
        # the second half of window r is the first half of window r + h / stride: each half
        # is sorted once, not twice
        h = window // 2
        shared = window % 2 == 0 and window >= MIN_TREND_POINTS and h % stride == 0
        blocks = sliding_window_view(x[: n - 1], h)[::stride] if shared else None
        for c in range(0, len(views), chunk):
            win = views[c:c + chunk]
            halves = None
            if blocks is not None:
                bm = np.sort(blocks[c:c + len(win) + h // stride], axis=1)[:, rank_index(h, 0.5)]
                halves = (bm[:len(win)], bm[h // stride:h // stride + len(win)])
            lv_all[c:c + chunk], q_all[c:c + chunk] = detrended_quantiles(win, probs, halves)
    if _keeps(reuse):
        _remember(reuse, key, x, head, np.column_stack([lv_all, q_all]))
    # each point i >= window takes the latest window that ends at or before it
    _spread(level, lv_all, window, stride)
    _spread(out, q_all, window, stride)
    return level, out

@dataclass(frozen=True)
class _Previous:
    """The windows' results of an earlier call, and where the series has changed since."""

    changed: NDArray[np.int64]  # sorted positions whose value differs
    head: FloatArray  # rows 0 .. window - 1 (the expanding windows)
    rows: FloatArray  # one row per refreshed window

    @property
    def first_change(self) -> int:
        return int(self.changed[0]) if len(self.changed) else 1 << 62

    def redo(self, n_rows: int, window: int, stride: int) -> NDArray[np.int64]:
        """The refreshed windows [r * stride, r * stride + window) that hold a changed
        position."""
        return windows_holding(self.changed, n_rows, window, stride)


def windows_holding(changed: NDArray[np.int64], n_rows: int, size: int, step: int
                    ) -> NDArray[np.int64]:
    """The windows [j * step, j * step + size) (j < n_rows) that hold a position of the
    sorted `changed`: what a second pass over a partly changed series must compute again."""
    if not len(changed):
        return np.empty(0, np.int64)
    lo = np.maximum(-(-(changed - size + 1) // step), 0)  # ceil((c - size + 1) / step)
    hi = np.minimum(changed // step, n_rows - 1)
    ok = lo <= hi
    mark = np.zeros(n_rows + 1, np.int64)
    np.add.at(mark, lo[ok], 1)
    np.add.at(mark, hi[ok] + 1, -1)
    return np.flatnonzero(np.cumsum(mark[:n_rows]) > 0).astype(np.int64)


def _reusable(reuse: dict[str, Any] | None, key: tuple[Any, ...], x: FloatArray
              ) -> _Previous | None:
    if reuse is None or reuse.get("key") != key or reuse.get("head") is None:
        return None
    old: FloatArray = reuse["x"]
    new = np.ascontiguousarray(x, dtype=np.float64)
    # bitwise comparison: NaN against NaN is unchanged, 0.0 against -0.0 changed
    changed = np.flatnonzero(old.view(np.int64) != new.view(np.int64))
    return _Previous(changed=changed, head=reuse["head"], rows=reuse["rows"])


#: Keys of a `reuse` dict set by its owner. FINAL: no later call will read it (the
#: detector's second pass is its last), so nothing is left there: the copy of the series
#: and of its windows' results would be thrown away. BORROW: the series handed in stays
#: unchanged while the dict lives (the first pass's loss, or a fresh difference), so it is
#: kept as it is rather than copied (8 MB at a million points).
FINAL, BORROW = "final", "borrow"


def _keeps(reuse: dict[str, Any] | None) -> bool:
    """Whether a call leaves its results in `reuse`."""
    return reuse is not None and not reuse.get(FINAL)


def _remember(reuse: dict[str, Any] | None, key: tuple[Any, ...], x: FloatArray,
              head: FloatArray, rows: FloatArray | None) -> None:
    if reuse is not None and _keeps(reuse):
        kept = np.ascontiguousarray(x, dtype=np.float64) if reuse.get(BORROW) \
            else np.array(x, dtype=np.float64)
        reuse.update(key=key, x=kept, head=head.copy(), rows=rows)


def forward_median(x: FloatArray, k: int) -> FloatArray:
    """Upper median of x[i:i+k] for every i (shorter at the end of the series)."""
    n = len(x)
    out = np.empty(n)
    if n == 0:
        return out
    if n > k:
        # central window of size k at j covers [j - k//2, j - k//2 + k - 1]; we want [i, i+k-1]
        f = ndimage.median_filter(x, size=k, mode="nearest")
        lo = k // 2
        out[: n - k + 1] = f[lo:n - k + 1 + lo]
        start = n - k + 1
    else:
        start = 0
    for i in range(start, n):  # the last k-1 points: upper median, as median_filter takes it
        tail = np.sort(x[i:])
        out[i] = tail[len(tail) // 2]
    return out


#: Below this many values `fast_median` is `np.median` itself (its sample would be a good
#: part of the array, and the bracketing passes would cost about what they save).
_FAST_MEDIAN_MIN = 100_000


def fast_median(a: FloatArray) -> float:
    """`float(np.median(a))`, bit for bit, for a 1-D float `a`, about five times faster on
    long arrays (the stall search takes the medians of 80 stretches of up to a million
    points). The median is one order statistic (two for an even length): a strided sample of
    16,384 values brackets it between two sample quantiles with a margin of six sampling
    standard deviations, comparisons count the values below and inside the bracket, and
    only the values inside it (a few thousand) are partitioned. When the bracket misses the
    rank (the counts say so), or the median is a zero (whose sign the partition's path
    decides), it falls back to `np.median`; an even length averages the two
    middle values as `np.median` does, (a + b) / 2."""
    n = len(a)
    if n < _FAST_MEDIAN_MIN:
        return float(np.median(a))
    k2 = n // 2
    k1 = k2 if n % 2 else k2 - 1
    sample = a[:: max(1, n // 16384)]
    m = len(sample)
    r = k2 * m / n
    # six standard deviations of the sample rank, sqrt(m p (1 - p)) at p = 1/2
    margin = 3.0 * math.sqrt(m) + 2.0
    i_lo, i_hi = int(r - margin), int(r + margin) + 1
    if i_lo > 0 and i_hi < m:
        part = np.partition(sample, [i_lo, i_hi])
        lo, hi = float(part[i_lo]), float(part[i_hi])
    else:
        return float(np.median(a))
    below = int(np.count_nonzero(a < lo))
    inside = a[(a >= lo) & (a <= hi)]
    above = int(np.count_nonzero(a > hi))
    # a NaN is in none of the three counts: np.median then gives NaN, and so does this
    if not (below <= k1 and k2 < below + len(inside)) or below + len(inside) + above != n:
        return float(np.median(a))
    part = np.partition(inside, [k1 - below, k2 - below])
    out = part[k2 - below] if k1 == k2 else (part[k1 - below] + part[k2 - below]) / 2.0
    # which of -0.0 and 0.0 a partition leaves at the rank depends on its path: np.median's
    return float(out) if out != 0 else float(np.median(a))
