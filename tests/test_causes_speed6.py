"""The per-event and per-run shortcuts of the cause profiles (issue 10, seventh round) give
exactly what the plain numpy computations they replace give: stale copies flagged in Python,
the grad profile's precursor window and rise onset in Python floats, running extremes from
block extremes, the loss-scale routine counts without running sums, the scale window's first
point without concatenate + dedupe, frozen dataclasses built at once, evidence facts by exact
type, block medians from a row sort. Exact equality (repr or bytes, so 0.0 and -0.0 differ),
on seeded data with NaN, infinities, zeros and empty, short or block-edge windows."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from spikelens.causes._window import (
    _BLOCK,
    PRECURSOR_POINTS,
    GradProfile,
    LossShape,
    PrefixExtreme,
    Series,
    _dedupe,
    _make,
    _with_point_before,
    evidence,
    num,
    onset_peak,
    precursor_scan,
    row_medians,
    stale_flags,
    stale_mask,
)
from spikelens.model import Evidence


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
    with np.errstate(invalid="ignore"):  # inf / inf for the infinite base: NaN, as wanted
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


def test_prefix_extremes_from_blocks_are_the_accumulate() -> None:
    rng = np.random.default_rng(62)
    for trial in range(60):
        n = int(rng.choice([1, 2, _BLOCK - 1, _BLOCK, _BLOCK + 1, 3 * _BLOCK + 17]))
        v = rng.choice([-2.0, -0.0, 0.0, 1e-4, 3.0, 65536.0], n) * rng.random(n).round(1)
        if trial % 3 == 0:
            v = np.cumsum(rng.standard_normal(n))  # a drifting series
        for how, op in (("max", np.maximum), ("min", np.minimum)):
            want = op.accumulate(v)
            p = PrefixExtreme(v, how)
            idx = {0, n - 1, *rng.integers(0, n, 50).tolist()}
            for i in sorted(idx):
                assert repr(p.at(i)) == repr(float(want[i])), (how, n, i)


def test_scale_cut_counts_and_spans_without_running_sums() -> None:
    """The routine rate's counts in `_scale_profile`: cuts and steps outside a window, from
    the cut positions and the window's ends, as the running sums gave them."""
    rng = np.random.default_rng(63)
    for _ in range(300):
        n = int(rng.integers(0, 80))
        v = 2.0 ** rng.integers(0, 17, n).astype(np.float64)
        steps = np.cumsum(rng.integers(1, 30, n)).astype(np.int64)
        d = np.diff(v)
        cut_cum = np.concatenate([[0], np.cumsum(d < 0)])
        gap_cum = np.concatenate([[0], np.cumsum(np.diff(steps))])
        cut_at = (d < 0).nonzero()[0]
        st = steps[1:]
        for _ in range(5):
            lo = int(rng.integers(-5, int(steps[-1]) + 5 if n else 5))
            hi = lo + int(rng.integers(0, 200))
            a_ = int(st.searchsorted(lo, side="left"))
            b_ = int(st.searchsorted(hi, side="right"))
            plain = (int(cut_cum[-1] - (cut_cum[b_] - cut_cum[a_])),
                     int(gap_cum[-1] - (gap_cum[b_] - gap_cum[a_])))
            cuts_in = int(cut_at.searchsorted(b_, "left") - cut_at.searchsorted(a_, "left"))
            span = int(steps[-1] - steps[0]) - int(steps[b_] - steps[a_]) if n else 0
            assert (len(cut_at) - cuts_in, span) == plain


def test_point_before_the_scale_window_is_the_concatenation_deduped() -> None:
    rng = np.random.default_rng(64)
    for _ in range(2000):
        n = int(rng.integers(0, 12))
        ws = np.sort(rng.integers(0, 15, n)).astype(np.int64)  # repeated steps too
        wv = rng.choice([0.0, -0.0, 1.0, 2.0, 4.0], n)
        bstep = int(ws[0]) if n and rng.random() < 0.8 else int(rng.integers(-3, 15))
        before = Series(np.array([bstep - 2, bstep], dtype=np.int64),
                        np.array([8.0, float(rng.choice([-0.0, 0.0, 2.0, 16.0]))]))
        want = _dedupe(np.concatenate([before.steps[-1:], ws]),
                       np.concatenate([before.values[-1:], wv]))
        got = _with_point_before(before, Series(ws, wv))
        assert got.steps.tobytes() == want[0].tobytes()
        assert got.values.tobytes() == want[1].tobytes()


def test_frozen_profiles_built_at_once_are_the_constructors() -> None:
    for cls in (LossShape, GradProfile, Evidence):
        kw = {f.name: (i if i % 2 else f"v{i}") for i, f in
              enumerate(dataclasses.fields(cls))}
        made = _make(cls, **kw)
        assert made == cls(**kw) and repr(made) == repr(cls(**kw))
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.cause = "x"  # type: ignore[attr-defined]
        extra = dict(kw, bogus=1)
        with pytest.raises(TypeError):
            _make(cls, **extra)
        del kw[next(iter(kw))]
        with pytest.raises(TypeError):
            _make(cls, **kw)


def test_evidence_facts_by_exact_type_are_the_general_ones() -> None:
    class _F(float):
        pass

    facts = {"a": 1.5, "b": math.inf, "c": math.nan, "d": -0.0, "e": 3, "f": True,
             "g": None, "h": "x", "i": np.float64(2.5), "j": np.int64(4), "k": np.bool_(True),
             "l": _F(0.25), "m": np.float32(np.inf), "n": -7, "o": False}
    plain: dict[str, object] = {}
    for k, v in facts.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            plain[k] = v
        elif isinstance(v, (int, np.integer)):
            plain[k] = int(v)
        else:
            plain[k] = num(float(v))
    got = evidence("c", 0.5, "s", facts, "r").evidence
    assert repr(got) == repr(plain)
    assert [type(x) for x in got.values()] == [type(x) for x in plain.values()]


def test_row_medians_from_a_sort_are_numpys_medians() -> None:
    rng = np.random.default_rng(65)
    for trial in range(300):
        k = int(rng.choice([1, 2, 5, 6, 99, 100]))
        rows = int(rng.integers(1, 40))
        x = rng.choice([-1.0, -0.0, 0.0, 0.5, 2.0, 1e300], (rows, k))
        if trial % 2:
            x = rng.standard_normal((rows, k)) * 10.0 ** rng.integers(-5, 5)
        got, want = row_medians(x), np.median(x, axis=1)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_make_leaves_a_class_with_post_init_to_its_init() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Checked:
        score: float

        def __post_init__(self) -> None:
            if not 0 <= self.score <= 1:
                raise ValueError(f"score {self.score} out of [0, 1]")

    assert _make(Checked, score=0.5) == Checked(0.5)
    with pytest.raises(ValueError, match="out of"):
        _make(Checked, score=2.0)
