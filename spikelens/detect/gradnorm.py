"""Grad-norm surges that leave the loss untouched: informational `spike` events on
`grad_norm`.

The grad norm is tested exactly like the loss (log space, trailing median and IQR, the point
and shift tests of `spikes`), because a surge is the same statistical object. A surge that
overlaps a loss incident, or ends at most `lead` steps before one starts, is part of that
incident's story (BLOOM-176B's grad norm climbs five iterations before its loss) and is left
to the cause rules; only the surges the loss never felt are reported. They never change the
verdict. A grad norm that is constant (Megatron prints 0.000 when it is not computed) or
mostly zero carries no information and is skipped with a note; non-finite grad norms are
the non-finite detector's business and are left out here. Grad norms are far more heavy-tailed
and drifting than losses, so a surge must also at least double the baseline (`min_ratio`)
and come back: a grad norm that climbs out of initialisation and stays up is a drift.
`robust_z` gives the grad norm's one-point jumps on their own scale, which the loss point test
uses as a second witness: a bad batch raises the loss and the gradient of the same step,
while noise in the loss does not make the grad norm jump with it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from spikelens.detect.spikes import Rise, RiseParams, find_rises

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Surge:
    rise: Rise  # its indices are into `steps` and `x`
    steps: NDArray[np.int64]  # steps of (some of) the tested (finite, positive) grad norms
    x: FloatArray  # log grad norm at those steps


def usable(values: FloatArray) -> str | None:
    """None when the grad norm can be analysed, else the reason it cannot."""
    fin = values[np.isfinite(values)]
    if len(fin) < 3:
        return "fewer than 3 finite grad norms"
    if float(np.min(fin)) == float(np.max(fin)):
        return f"grad_norm is constant ({float(fin[0]):g}): not computed by this run"
    if (fin > 0).sum() < 0.5 * len(fin):
        return "grad_norm is mostly zero: not computed by this run"
    return None


@dataclass(frozen=True)
class Scan:
    """The recovered rises of one grad-norm series, before they are checked against the
    loss's incidents: the work of `find_surges` that needs only the grad norm, so that it
    can run on a thread beside the loss's other passes (`detect._start_side_passes`)."""

    rises: tuple[Rise, ...]  # recovered rises; indices into `steps` and `x`
    steps: NDArray[np.int64]  # steps of the tested (finite, positive) grad norms
    x: FloatArray  # log grad norm at those steps


def scan(values: FloatArray, steps: NDArray[np.int64], p: RiseParams) -> Scan:
    """The recovered rises of the log grad norm (finite, positive values only)."""
    keep = np.isfinite(values) & (values > 0)
    st = steps[keep]
    x = np.log(values[keep])
    del keep
    # one pass: these events are informational, the clipped second pass is not worth it
    rises = tuple(r for r in find_rises(x, p, 0.0, True, second_pass=False, threaded=False)
                  if r.recovered)
    return Scan(rises=rises, steps=st, x=x)


def find_surges(sc: Scan, loss_spans: Sequence[tuple[int, int]], lead: int) -> list[Surge]:
    """The surges of a grad-norm scan (`scan`) that stay clear of every loss incident span
    (steps), a surge leading the loss by up to `lead` steps included.

    A surge keeps only what it is read at: the steps and values at the start, peak and end
    of the recovered rises, whose indices are renumbered into those short arrays (a
    whole-series copy of steps and values, 16 MB at a million points, would otherwise be
    held by the surges)."""
    st = sc.steps
    rises = [r for r in sc.rises
             if not any(int(st[r.start]) <= b and a - lead <= int(st[r.end])
                        for a, b in loss_spans)]
    at = np.unique(np.array([i for r in rises for i in (r.start, r.peak, r.end)],
                            dtype=np.int64))
    pos = {int(i): k for k, i in enumerate(at)}
    st, x = st[at], sc.x[at]
    return [Surge(rise=dataclasses.replace(r, start=pos[r.start], peak=pos[r.peak],
                                           end=pos[r.end]), steps=st, x=x) for r in rises]


#: centred window of the grad norm's median and MAD in `robust_z` (points)
ROBUST_WIDTH = 41
#: a MAD below this (log units: a grad norm printed at constant value) is not a scale
_MIN_MAD = 1e-3
#: grad points whose z is computed in one block (memory: 41 x 41 floats each)
_CHUNK = 2048
#: below one needed point in this many, the z is computed around those points only; above,
#: by two median filters over the whole series (the same values, cheaper there)
_LOCAL_SHARE = 200


def _z_at(x: FloatArray, idx: NDArray[np.int64]) -> FloatArray:
    """The robust z of `x` at the indices `idx` only: exactly what centred median filters of
    ROBUST_WIDTH over the whole series (mode "nearest") give there, computed from the 81
    points around each index (clipping an index to the series is the "nearest" extension),
    so a log of a million points pays for its few candidates, not for two full filters."""
    h = ROBUST_WIDTH // 2
    out = np.empty(len(idx))
    offs = np.arange(-2 * h, 2 * h + 1)
    for a in range(0, len(idx), _CHUNK):
        j = idx[a:a + _CHUNK]
        seg = x[np.clip(j[:, None] + offs, 0, len(x) - 1)]  # (k, 81)
        win = np.lib.stride_tricks.sliding_window_view(seg, ROBUST_WIDTH, axis=1)  # (k, 41, 41)
        r = seg[:, h:3 * h + 1] - np.median(win, axis=2)  # residuals at j-20..j+20
        mad = np.median(np.abs(r), axis=1) * 1.4826
        out[a:a + _CHUNK] = r[:, h] / np.maximum(mad, _MIN_MAD)
    return out


def robust_z(values: FloatArray, steps: NDArray[np.int64],
             at: NDArray[np.int64]) -> FloatArray:
    """At each step of `at` (the loss's steps), the larger robust z of the log grad norm at
    that step and at the grad-norm point logged before it (a grad-norm spike can lead the
    loss by one logged point: tr8-104B exp11). The z of a grad-norm point is its log minus
    the median of its centred 41-point neighbourhood, over 1.4826 times the neighbourhood's
    median absolute residual: centred because the log is read after the fact, and local
    because the grad norm drifts by orders of magnitude over a run. NaN where the grad norm
    has fewer than 41 usable points or no point at or before the step."""
    out = np.full(len(at), np.nan)
    keep = np.isfinite(values) & (values > 0)
    v, st = values[keep], steps[keep]
    if len(v) < ROBUST_WIDTH or usable(v) is not None or not len(at):
        return out
    x = np.log(v)
    idx = np.searchsorted(st, at, side="right") - 1  # last grad point at or before the step
    pos = np.clip(idx, 0, None)
    has_same = (idx >= 0) & (st[pos] == at)
    before = np.where(has_same, idx - 1, idx)
    need = np.unique(np.concatenate([idx[has_same], before[before >= 0]]))
    if len(need) * _LOCAL_SHARE > len(x):  # many candidates: two filters over the series
        r = x - ndimage.median_filter(x, size=ROBUST_WIDTH, mode="nearest")
        mad = ndimage.median_filter(np.abs(r), size=ROBUST_WIDTH, mode="nearest") * 1.4826
        z = r / np.maximum(mad, _MIN_MAD)
    else:
        z = np.full(len(x), np.nan)
        z[need] = _z_at(x, need.astype(np.int64))
    same = np.where(has_same, z[pos], np.nan)
    prev = np.where(before >= 0, z[np.clip(before, 0, None)], np.nan)
    with np.errstate(invalid="ignore"):
        return np.fmax(same, prev)


def confirmed(x: FloatArray, at: NDArray[np.int64], values: FloatArray,
              steps: NDArray[np.int64], confirm_z: float, log_ratio: float,
              full_window: int) -> NDArray[np.bool_]:
    """The loss points (`x`: log loss at the steps `at`) whose one-point rise the grad norm
    (`values` at `steps`) confirms: the loss at least `log_ratio` above the median of its
    centred 21-point neighbourhood, at least `full_window` points before it (on a shorter
    trailing window the loss scale is itself uncertain), and the grad norm's `robust_z` at
    least `confirm_z`. The grad norm is read only at the loss points that pass the first two
    (a point under its 21-point minimum + log_ratio cannot be log_ratio above its median)."""
    ok = np.zeros(len(x), dtype=np.bool_)
    if len(x) <= full_window:
        return ok
    with np.errstate(invalid="ignore"):
        cand = np.flatnonzero(x - ndimage.minimum_filter1d(x, 21, mode="nearest") >= log_ratio)
    cand = cand[cand >= full_window]
    if not len(cand):
        return ok
    if len(cand) * 20 > len(x):  # a noisy loss: one filter over the series is cheaper
        mid = ndimage.median_filter(x, size=21, mode="nearest")[cand]
    else:
        mid = np.median(x[np.clip(cand[:, None] + np.arange(-10, 11), 0, len(x) - 1)], axis=1)
    cand = cand[x[cand] - mid >= log_ratio]
    if not len(cand):
        return ok
    with np.errstate(invalid="ignore"):
        ok[cand] = robust_z(values, steps, at[cand]) >= confirm_z
    return ok
