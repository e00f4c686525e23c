"""The per-event shortcuts of the cause profiles (issue 10, seventh round) give exactly what
the plain numpy computations they replace give: stale copies flagged in Python, the grad
profile's precursor window and rise onset in Python floats. Exact equality (repr of every
number, so 0.0 and -0.0 differ), on seeded data with NaN, infinities, zeros and empty or
short windows."""

from __future__ import annotations

import math

import numpy as np

from spikelens.causes._window import (
    PRECURSOR_POINTS,
    Series,
    onset_peak,
    precursor_scan,
    stale_flags,
    stale_mask,
)


def _values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Grad-norm-like values with verbatim copies, NaN, infinities, zeros and -0.0."""
    v = rng.choice([0.5, 1.0, 2.0, 40.0], n) * rng.integers(1, 4, n)
    v = v.astype(np.float64)
    for _ in range(int(rng.integers(0, 4))):  # runs of copies
        a = int(rng.integers(0, max(1, n)))
        v[a:a + int(rng.integers(1, 5))] = v[a] if a < n else 0.0
    for special in (np.nan, np.inf, -np.inf, 0.0, -0.0):
        m = rng.random(n) < 0.06
        v[m] = special
    return v


def test_stale_flags_are_the_stale_mask() -> None:
    rng = np.random.default_rng(60)
    for _ in range(3000):
        v = _values(rng, int(rng.integers(0, 16)))
        assert stale_flags(v.tolist()) == stale_mask(v).tolist()


def _plain_precursor(pre_all: Series, base: float, thr: float
                     ) -> tuple[list[float], list[int], float, int | None, list[int]]:
    """The numpy code of `_grad_profile` before the precursor window went to Python."""
    steps = pre_all.steps[-PRECURSOR_POINTS:]
    pv = pre_all.values[-PRECURSOR_POINTS:]
    if len(pv):
        stale = stale_mask(pre_all.values[-(PRECURSOR_POINTS + 2):])[-len(pv):]
        pv = np.where(stale, np.nan, pv)
    ratios = pv / base if base > 0 else np.full(len(pv), np.nan)
    fr = np.where(np.isfinite(ratios), ratios, 0.0)
    pre_ratio = float(np.max(fr)) if len(fr) else 1.0
    pre_step = int(steps[int(np.argmax(fr))]) if len(fr) else None
    above = np.flatnonzero(fr >= thr)
    return pv.tolist(), steps.tolist(), pre_ratio, pre_step, above.tolist()


def _plain_onset(on: Series, base: float) -> tuple[float, int | None]:
    on = Series(on.steps[:3], on.values[:3])
    onv = on.values[np.isfinite(on.values)]
    ratio = float(np.max(onv) / base) if len(onv) and base > 0 else 1.0
    step = int(on.steps[np.isfinite(on.values)][int(np.argmax(onv))]) if len(onv) else None
    return ratio, step


def test_precursor_window_and_onset_in_python_are_the_numpy_ones() -> None:
    rng = np.random.default_rng(61)
    bases = [2.0, 0.7, 0.0, -1.0, math.nan, math.inf, 1e-300]
    for trial in range(4000):
        # from an empty history (a rise at the start of the run) to a long one
        n = int(rng.choice([0, 1, 2, 3, 5, 11, 12, 13, 40]))
        v = _values(rng, n)
        s = Series(np.arange(n, dtype=np.int64) * 3 + 1, v)
        base = bases[trial % len(bases)]
        thr = float(rng.choice([3.0, 4.5, 20.0]))
        got, want = precursor_scan(s, base, thr), _plain_precursor(s, base, thr)
        assert repr(got) == repr(want)
        assert repr(onset_peak(s, base)) == repr(_plain_onset(s, base))
