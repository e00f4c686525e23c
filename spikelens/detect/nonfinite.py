"""NaN and Inf in the loss: the `nonfinite` incidents, and which series went first.

A non-finite loss is always an incident: the optimizer either skipped the step or, worse,
took it. Consecutive non-finite losses (and non-finite losses separated by fewer than
`recover_run` sane ones) form one event. Its band is the loss's trailing baseline before the
first non-finite value; it ends at the first logged step from which `recover_run` finite
losses in a row are back inside that band, like a spike.

`first_nonfinite` says which series broke first: "grad_norm" when the gradient norm was
already non-finite at an earlier logged step (without a finite value in between), "loss"
otherwise. A non-finite grad norm under a finite loss is *not* an incident: that is what a
mixed-precision loss scaler produces on every routine overflow (it skips the step, halves
the scale and carries on), and the loss shows nothing. Those steps are only counted in a
note. Megatron's "number of nan iterations" counter, when present, marks its logged steps as
non-finite losses too: the printed loss is an average that hides the NaN iteration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class NonFinite:
    """One non-finite stretch of the loss, in loss-series positions."""

    start: int  # first non-finite position
    last_bad: int  # last non-finite position of the stretch
    end: int  # first position back in band, or the last position when not recovered
    recovered: bool
    first: str  # "loss" or "grad_norm"
    first_step: int  # the step where the first series went non-finite


def nonfinite_mask(values: FloatArray, steps: IntArray,
                   nan_count_steps: IntArray | None) -> NDArray[np.bool_]:
    """True at loss positions that are NaN/Inf or whose step had NaN iterations counted."""
    bad = ~np.isfinite(values)
    if nan_count_steps is not None and len(nan_count_steps):
        bad |= np.isin(steps, nan_count_steps)
    return bad


def _grad_first(loss_step: int, gn_steps: IntArray | None,
                gn_vals: FloatArray | None) -> int | None:
    """The step where the grad norm went non-finite before `loss_step`, if it did."""
    if gn_steps is None or gn_vals is None or not len(gn_steps):
        return None
    before = gn_steps < loss_step
    if not before.any():
        return None
    s = gn_steps[before]
    ok = np.isfinite(gn_vals[before])
    if ok[-1]:
        return None  # the last grad norm before the loss broke was finite
    finite_at = np.flatnonzero(ok)
    first_bad = int(finite_at[-1]) + 1 if len(finite_at) else 0
    return int(s[first_bad])


def _grad_first_all(gn_steps: IntArray | None, gn_vals: FloatArray | None
                    ) -> Callable[[int], int | None]:
    """`_grad_first` for many loss steps: the grad-norm series is scanned once (the index
    of the last finite value at or before each position), then each event costs a binary
    search instead of a scan of every grad norm before it (200 NaN losses on a 1M-step log:
    0.33 s of scans). Steps out of order (never from a reader) take the scan."""
    if gn_steps is None or gn_vals is None or not len(gn_steps) \
            or bool(np.any(np.diff(gn_steps) < 0)):
        return lambda step: _grad_first(step, gn_steps, gn_vals)
    ok = np.isfinite(gn_vals)
    last_fin = np.maximum.accumulate(np.where(ok, np.arange(len(ok)), -1))

    def first(loss_step: int) -> int | None:
        k = int(np.searchsorted(gn_steps, loss_step, side="left"))  # grad norms before it
        if k == 0 or ok[k - 1]:
            return None  # none before, or the last one before the loss broke was finite
        return int(gn_steps[int(last_fin[k - 1]) + 1])

    return first


def find_nonfinite(
    bad: NDArray[np.bool_],
    x: FloatArray,
    band_at: FloatArray,
    steps: IntArray,
    recover_run: int,
    gn_steps: IntArray | None = None,
    gn_vals: FloatArray | None = None,
) -> list[NonFinite]:
    """Events over the loss positions.

    `bad` marks non-finite positions, `x` is the loss in test units (anything at bad
    positions), `band_at[i]` the upper edge of the band an event starting at i would have
    (its trailing baseline). A recovery run cannot contain a non-finite value, so every
    non-finite position before the end of an event belongs to it.
    """
    out: list[NonFinite] = []
    n = len(bad)
    pos = 0
    grad_first = _grad_first_all(gn_steps, gn_vals)
    for bi in np.flatnonzero(bad):
        b = int(bi)
        if b < pos:
            continue
        band = float(band_at[b])
        e = -1
        horizon = 256
        while b + 1 < n:
            stop = min(n, b + 1 + horizon)
            with np.errstate(invalid="ignore"):
                # no baseline before the first value: any finite value counts as back
                within = x[b + 1:stop] <= band if np.isfinite(band) else \
                    np.isfinite(x[b + 1:stop])
                ok = ~bad[b + 1:stop] & within
            e = _first_run(ok, recover_run)
            if e >= 0 and (stop == n or b + 1 + e + recover_run <= stop):
                break
            e = -1
            if stop == n:
                break
            horizon *= 8
        recovered = e >= 0
        end = b + 1 + e if recovered else n - 1
        stretch = np.flatnonzero(bad[b:end if recovered else n])
        g = grad_first(int(steps[b]))
        out.append(NonFinite(start=b, last_bad=b + int(stretch[-1]), end=end,
                             recovered=recovered,
                             first="grad_norm" if g is not None else "loss",
                             first_step=g if g is not None else int(steps[b])))
        pos = end if recovered else n
    return out


def _first_run(ok: NDArray[np.bool_], run: int) -> int:
    """First index from which `run` Trues in a row start (or all remaining are True, when
    fewer than `run` remain and at least one does); -1 if none."""
    m = len(ok)
    if m == 0:
        return -1
    rev = ok[::-1].astype(np.int64)
    c = np.cumsum(rev)
    streak = (c - np.maximum.accumulate(np.where(rev == 0, c, 0)))[::-1]
    remaining = m - np.arange(m)
    hits = np.flatnonzero((streak >= np.minimum(run, remaining)) & (streak > 0))
    return int(hits[0]) if len(hits) else -1
