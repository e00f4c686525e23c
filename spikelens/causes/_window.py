"""Shared measurements of the log around one event, used by every cause rule. A rule asks the
`Context` for a *profile* of one signal (loss shape, LR, grad norm, loss scale, non-finite
values, data position); each profile is computed once per event, lazily, from the `Run` alone,
so the rules stay pure functions of (run, event, context) and never disagree about a number.
All windows are counted in logged points of the series concerned (a Megatron log that prints
every 10 iterations has 10x fewer points than steps), lags are reported in steps. The helpers
`mag`, `fmt` and `fmt_ratio` give every rule the same saturating score scale and the same way
of writing numbers into a sentence."""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from spikelens.model import Config, Event, Evidence, Recurrence, Restart, Run, Skipped

if TYPE_CHECKING:
    from spikelens.causes._oscillation import OscProfile

#: Precursor window: how many logged points before the rise count as "just before".
PRECURSOR_POINTS = 10
#: A grad norm this many times its baseline before the loss rose is a precursor.
GRAD_PRECURSOR = 3.0
#: An LR this many times its earlier level is an LR change worth reporting.
LR_RISE = 1.25
#: A single logged LR step this many times larger than the trend is a discontinuity.
LR_JUMP = 1.5
#: ln(256,000), the uniform-guess loss of the largest vocabularies in common use: an LM's
#: per-token loss above twice this on one whole batch is not data, it is damage.
LARGEST_UNIFORM = math.log(256_000)


_T = TypeVar("_T")
_FIELDS: dict[type, frozenset[str]] = {}


def _make(cls: type[_T], **fields: Any) -> _T:
    """`cls(**fields)` for a frozen dataclass, with every field given: the instance's
    __dict__ filled at once. A frozen dataclass's __init__ sets each field through
    object.__setattr__ (about 0.4 us a field: 10 us for `LossShape`'s 23), for several
    profiles per event; the instance is just as frozen. A missing or unknown field is a
    TypeError, as it is for __init__."""
    names = _FIELDS.get(cls)
    if names is None:
        # a class with a __post_init__ (a check, a derived field) is built by its __init__
        names = _FIELDS[cls] = frozenset() if hasattr(cls, "__post_init__") else \
            frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    if not names:
        return cls(**fields)
    if fields.keys() != names:
        raise TypeError(f"{cls.__name__}: fields {sorted(names ^ fields.keys())} wrong")
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


class CauseRule(Protocol):
    """A cause rule: evidence with a score, a reason it could not judge, or nothing."""

    def __call__(self, run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None: ...


# ---------------------------------------------------------------------------- numbers


def mag(x: float, lo: float, hi: float) -> float:
    """Where `x` sits between `lo` (0) and `hi` (1) on a log scale, clipped to [0, 1].

    Every rule turns a ratio into strength this way, so "10x" means the same everywhere."""
    if not math.isfinite(x):
        return 1.0 if x > 0 else 0.0
    if x <= lo:
        return 0.0
    if x >= hi:
        return 1.0
    return math.log(x / lo) / math.log(hi / lo)


def clip01(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


def fmt(x: float | None) -> str:
    """A number as a person writes it in a sentence: 0.95, 2.77, 960, 65,536, 1.3e5, 3.0e-4."""
    if x is None or not math.isfinite(x):
        return "n/a" if x is None or math.isnan(x) else ("inf" if x > 0 else "-inf")
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e3 and a < 1e12 and float(x).is_integer():
        return f"{int(x):,}"  # loss scales, step and sample counts: exact
    if 1e3 <= a < 1e4:
        return f"{x:.0f}"
    if 1e-2 <= a < 1e3:
        return f"{x:.3g}"
    mant, _, exp = f"{x:.1e}".partition("e")
    return f"{mant}e{int(exp)}"


def fmt_ratio(x: float) -> str:
    if not math.isfinite(x):
        return "inf" if x > 0 else "n/a"
    if x >= 1e6:
        return f"{fmt(x)}x"
    if x >= 100:
        return f"{x:,.0f}x"
    return f"{x:.1f}x"


def fmt_int(x: float) -> str:
    return f"{int(round(x)):,}"


def num(x: float | None) -> float | None:
    """A float for the evidence, at full precision (rounding is for the terminal: a loss
    scale of 1,048,576 stays 1048576), None if not finite (JSON has no inf/NaN)."""
    if x is None:
        return None
    xf = float(x)
    if not math.isfinite(xf):
        return None
    return xf


def lag_words(steps: int, event: str) -> str:
    """A lag as people say it: "2 steps before <event>", "1 step after <event>", "at the
    same step as <event>" (`steps` > 0: before the event)."""
    if steps == 0:
        return f"at the same step as {event}"
    n = abs(steps)
    return f"{n} step{'s' if n != 1 else ''} {'before' if steps > 0 else 'after'} {event}"


def span_words(first: int, last: int) -> str:
    """"step 11448" or "steps 11448-11460"."""
    return f"step {first}" if last <= first else f"steps {first}-{last}"


#: Up to this many values, `median_of` and `percentiles_of` take one numpy sort and do the
#: rest in Python (a short window's `np.median` / `np.percentile` is mostly call overhead:
#: 15-40 us each, several per event).
_SMALL = 4096


def _sorted_small(v: np.ndarray) -> list[float] | None:
    """The values of a short float64 array sorted, or None (use numpy itself): empty, long,
    another dtype, or a NaN or an infinity in it."""
    if v.dtype != np.float64 or v.ndim != 1 or not 0 < len(v) <= _SMALL:
        return None
    s = np.sort(v)
    if not (math.isfinite(s[0]) and math.isfinite(s[-1])):  # NaN sorts last
        return None
    out: list[float] = s.tolist()
    return out


def median_of(v: np.ndarray) -> float:
    """`float(np.median(v))`, bit for bit: the middle value, or the two middle ones added and
    halved as `np.mean` does (a + b then / 2). A zero falls back to numpy (which of -0.0 and
    0.0 a sort leaves at the rank depends on its path)."""
    return _median_sorted(v, _sorted_small(v))


def _median_sorted(v: np.ndarray, s: list[float] | None) -> float:
    """`median_of(v)` given `s = _sorted_small(v)` (one sort shared with `percentiles_of`)."""
    if s is None:
        return float(np.median(v))
    h = len(s) // 2
    out = s[h] if len(s) % 2 else (s[h - 1] + s[h]) / 2
    return out if out != 0 else float(np.median(v))


def percentiles_of(v: np.ndarray, qs: Sequence[float]) -> list[float]:
    """`[float(np.percentile(v, q)) for q in qs]`, bit for bit, from one sort: numpy's
    linear method, virtual index (n - 1) * q / 100, and its two-sided interpolation
    (a + (b - a) * g, or b - (b - a) * (1 - g) from g = 0.5 on). A zero result falls back
    to numpy, as in `median_of`."""
    return _percentiles_sorted(v, _sorted_small(v), qs)


def _percentiles_sorted(v: np.ndarray, s: list[float] | None,
                        qs: Sequence[float]) -> list[float]:
    """`percentiles_of(v, qs)` given `s = _sorted_small(v)`."""
    out: list[float] = []
    for q in qs:
        if s is None:
            out.append(float(np.percentile(v, q)))
            continue
        n = len(s)
        vi = (n - 1) * (q / 100)
        if vi >= n - 1:
            r = s[-1]
        else:
            i = math.floor(vi)
            g = vi - i
            a, b = s[i], s[i + 1]
            d = b - a
            r = b - d * (1 - g) if g >= 0.5 else a + d * g
        out.append(r if r != 0 else float(np.percentile(v, q)))
    return out


def stale_mask(values: np.ndarray) -> np.ndarray:
    """True for values repeated verbatim from the line before, in runs of 3 or more equal
    values: a grad norm copied onto skipped steps (fp16 overflow) is a stale value, not a
    measurement. The first value of the run is the real one and is kept."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n < 3:
        return np.zeros(n, dtype=bool)
    same = np.zeros(n, dtype=bool)
    same[1:] = (v[1:] == v[:-1]) & np.isfinite(v[1:]) & (v[1:] != 0)
    out = np.zeros(n, dtype=bool)
    i = 1
    while i < n:
        if same[i]:
            j = i
            while j < n and same[j]:
                j += 1
            if j - i >= 2:  # the first value plus at least two verbatim copies
                out[i:j] = True
            i = j
        else:
            i += 1
    return out


def stale_flags(v: Sequence[float]) -> list[bool]:
    """`stale_mask` of a short window given as Python floats, as a list: the same tests
    (equal to the value before, finite, not 0) without numpy's per-call cost, which is most
    of the work on the dozen values of a precursor window."""
    n = len(v)
    out = [False] * n
    if n < 3:
        return out
    i = 1
    while i < n:
        j = i
        while j < n and v[j] == v[j - 1] and v[j] != 0 and math.isfinite(v[j]):
            j += 1
        if j - i >= 2:  # the first value plus at least two verbatim copies
            out[i:j] = [True] * (j - i)
        i = j + 1 if j == i else j
    return out


# ---------------------------------------------------------------------------- series


@dataclass(eq=False, slots=True)
class Series:
    """One role's logged values in step order (logged NaN kept as NaN, inf kept). Read-only
    by convention: not frozen, because a frozen dataclass's __init__ (object.__setattr__ per
    field) is most of the cost of the ~20 window slices an event takes."""

    steps: np.ndarray  # int64
    values: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.steps)

    def pos(self, step: int) -> int:
        """Index of the first point at or after `step`."""
        return int(self.steps.searchsorted(step, side="left"))

    def before(self, step: int, n: int | None = None) -> Series:
        """The last `n` points strictly before `step` (all of them when n is None)."""
        hi = self.pos(step)
        lo = 0 if n is None else max(0, hi - n)
        return Series(self.steps[lo:hi], self.values[lo:hi])

    def between(self, lo: int, hi: int) -> Series:
        """Points with lo <= step <= hi."""
        a = self.pos(lo)
        b = int(self.steps.searchsorted(hi, side="right"))
        return Series(self.steps[a:b], self.values[a:b])

    def after(self, step: int, n: int) -> Series:
        """The first `n` points strictly after `step`."""
        a = int(self.steps.searchsorted(step, side="right"))
        return Series(self.steps[a : a + n], self.values[a : a + n])

    def value_at(self, step: int) -> float | None:
        """The value logged at `step`, or at the last logged step before it."""
        i = int(self.steps.searchsorted(step, side="right")) - 1
        if i < 0:
            return None
        return float(self.values[i])

    def finite(self) -> Series:
        m = np.isfinite(self.values)
        if m.all():
            # nothing to drop (a whole run's loss, most windows): the same arrays, not
            # copies of them (1M-point roles are copied once per run otherwise)
            return Series(self.steps, self.values)
        return Series(self.steps[m], self.values[m])

    def median(self) -> float | None:
        v = self.values[np.isfinite(self.values)]
        return float(np.median(v)) if len(v) else None


def _get_series(run: Run, role: str) -> Series | None:
    s = run.series(role)
    if s is None or len(s) == 0:
        return None
    return Series(s.index.to_numpy(dtype=np.int64), s.to_numpy(dtype=np.float64))


def stretch_start(test: Callable[[int, int], np.ndarray], end: int, floor: int = 0) -> int:
    """The first index j >= floor such that `test` holds at every index of j..end-1, scanning
    back from `end` in growing chunks: O(length of the stretch), never the whole series.
    `test(lo, hi)` returns the condition for indices lo..hi-1."""
    j = end
    chunk = 64
    while j > floor:
        lo = max(floor, j - chunk)
        ok = test(lo, j)
        if ok.all():
            j = lo
            chunk *= 4
            continue
        return lo + int(np.flatnonzero(~ok)[-1]) + 1
    return j


def row_medians(x: np.ndarray) -> np.ndarray:
    """`np.median(x, axis=1)` of a 2-D array of finite values, bit for bit: numpy's median
    is the mean of the middle one or two values of a partition of each row, and a sort puts
    the same values there (a row sort is vectorised, several times faster than the
    partition on a whole run's blocks). A zero median goes to numpy itself, as in
    `median_of` (which of 0.0 and -0.0 lands in the middle depends on the algorithm)."""
    k = x.shape[1]
    h = k // 2
    s = np.sort(x, axis=1)
    med: np.ndarray = np.mean(s[:, h - 1:h + 1] if k % 2 == 0 else s[:, h:h + 1], axis=1)
    if not bool((med != 0).all()):
        return np.asarray(np.median(x, axis=1))
    return med


class PrefixExtreme:
    """The running maximum (or minimum) of a finite array at any index, `float(np.maximum.
    accumulate(v)[i])`, from the extremes of blocks of `_BLOCK` values: a per-run
    preparation of one reduceat instead of an accumulate over the whole run (1M values: about
    1 ms against 4), and two numpy calls per question. Max and min are exact, so the value is
    the same double; a zero is asked of the accumulate itself (which of 0.0 and -0.0 it keeps
    depends on its order)."""

    def __init__(self, v: np.ndarray, how: str) -> None:
        self.v = v
        self.op = np.maximum if how == "max" else np.minimum
        self.high = how == "max"
        blocks = self.op.reduceat(v, np.arange(0, len(v), _BLOCK)) if len(v) else v
        self.prefix = self.op.accumulate(blocks) if len(blocks) else blocks
        self._full: np.ndarray | None = None

    def at(self, i: int) -> float:
        """The extreme of v[0..i] (0 <= i < len(v))."""
        b = i // _BLOCK
        part = self.v[b * _BLOCK:i + 1]
        m = float(part.max() if self.high else part.min())
        if b:
            p = float(self.prefix[b - 1])
            m = (p if p > m else m) if self.high else (p if p < m else m)
        if m == 0:
            if self._full is None:
                self._full = self.op.accumulate(self.v)
            return float(self._full[i])
        return m


class RunArrays:
    """Per-run numpy arrays prepared once and shared by every event of the run: each role's
    logged series, its finite part, running maxima/minima and block medians, skip increments,
    the non-finite positions per column. Rules slice these around the event (searchsorted on
    the sorted steps), so explaining an event costs what its window costs, not the log's
    length."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._series: dict[str, Series | None] = {}
        self._finite: dict[str, Series | None] = {}
        self._usable: dict[str, tuple[Series | None, str]] = {}
        self._blocks: dict[tuple[str, int], np.ndarray] = {}
        self._inc: dict[str, Series | None] = {}
        self._cols: dict[str, tuple[np.ndarray, int, np.ndarray]] = {}
        self._colseries: dict[str, Series] = {}
        self.misc: dict[str, Any] = {}
        self.index = run.frame.index.to_numpy()

    def series(self, role: str) -> Series | None:
        if role not in self._series:
            self._series[role] = _get_series(self.run, role)
        return self._series[role]

    def finite(self, role: str) -> Series | None:
        """The role's finite points (None if the role is absent)."""
        if role not in self._finite:
            s = self.series(role)
            self._finite[role] = None if s is None else s.finite()
        return self._finite[role]

    def usable(self, role: str) -> tuple[Series | None, str]:
        if role not in self._usable:
            self._usable[role] = _usable(self, role)
        return self._usable[role]

    def running_at(self, role: str, how: str, i: int) -> float:
        """The running max (`how` "max") or min ("min") of the role's finite values at index
        `i`: `float(np.maximum.accumulate(values)[i])`, from blocks (`PrefixExtreme`)."""
        key = f"prefix:{role}:{how}"
        if key not in self.misc:
            f = self.finite(role)
            self.misc[key] = PrefixExtreme(f.values if f is not None else np.empty(0), how)
        got: PrefixExtreme = self.misc[key]
        return got.at(i)

    def block_levels(self, role: str, k: int) -> np.ndarray:
        """Running max of the medians of consecutive blocks of `k` finite values (from the
        first finite point): entry b is `block_max_median` of the first (b+1)*k values."""
        key = (role, k)
        if key not in self._blocks:
            f = self.finite(role)
            v = f.values if f is not None else np.empty(0)
            n = len(v) // k * k
            med = row_medians(v[:n].reshape(-1, k)) if n else np.empty(0)
            self._blocks[key] = np.maximum.accumulate(med) if len(med) else med
        return self._blocks[key]

    def increments(self, role: str) -> Series | None:
        """Per logged point increments of a counter role (`skip_increments`)."""
        if role not in self._inc:
            s = self.series(role)
            self._inc[role] = None if s is None else skip_increments(s)
        return self._inc[role]

    def column(self, col: str) -> tuple[np.ndarray, int, np.ndarray]:
        """(values over the frame index, first finite row, sorted logged-NaN steps)."""
        if col not in self._cols:
            v = self.run.frame[col].to_numpy(dtype=np.float64)
            if len(v) and math.isfinite(v[0]):
                first = 0  # the usual case, without a pass over the column
            else:
                fin = np.isfinite(v)
                first = int(fin.argmax()) if len(v) and fin.any() else len(v)
            nan_at = np.sort(np.asarray(self.run.nan_steps.get(col, ()), dtype=np.int64))
            self._cols[col] = (v, first, nan_at)
        return self._cols[col]

    def start_at_or_above(self, role: str, end: int, thr: float) -> int:
        """`stretch_start(lambda lo, hi: v[lo:hi] >= thr, end)` over the role's finite values
        v, answered from the minima of blocks of `_BLOCK` values computed once per run: a
        decaying LR stays above a later level all the way back to the warmup, so the
        stretch scan read the whole history once per event."""
        f = self.finite(role)
        assert f is not None
        v = f.values
        key = f"block_min:{role}"
        if key not in self.misc:
            self.misc[key] = np.minimum.reduceat(v, np.arange(0, len(v), _BLOCK)) \
                if len(v) else np.empty(0)
        mins: np.ndarray = self.misc[key]
        b = end // _BLOCK
        lo = b * _BLOCK
        # finite values: a block holds a value under thr exactly when its minimum is under
        # it (and a NaN thr fails every comparison, as in the scan)
        bad = np.flatnonzero(~(v[lo:end] >= thr))
        if not len(bad):
            blocks = np.flatnonzero(~(mins[:b] >= thr))
            if not len(blocks):
                return 0
            lo = int(blocks[-1]) * _BLOCK
            bad = np.flatnonzero(~(v[lo:lo + _BLOCK] >= thr))
        return lo + int(bad[-1]) + 1

    def columns(self) -> list[str]:
        """The frame's column names (iterating a pandas Index costs per name, per event)."""
        if "columns" not in self.misc:
            self.misc["columns"] = list(self.run.frame.columns)
        cols: list[str] = self.misc["columns"]
        return cols

    def frame_extras(self) -> list[str]:
        """`run.extras` that are columns of the frame, in their order (the property walks
        the pandas column Index and the eval frame's, per event: prepared once per run)."""
        if "frame_extras" not in self.misc:
            cols = set(self.columns())
            self.misc["frame_extras"] = [c for c in self.run.extras if c in cols]
        got: list[str] = self.misc["frame_extras"]
        return got

    def bad_rows(self, col: str) -> np.ndarray:
        """The sorted frame rows at which `_nonfinite` finds column `col` non-finite: an
        infinity, a logged NaN (`nan_steps`) and, for the `nan_count` column, an increase of
        the counter. Prepared once per column, so an event's first bad row is one
        searchsorted instead of a mask over its window per column."""
        key = f"bad_rows:{col}"
        if key not in self.misc:
            whole, _, nan_at = self.column(col)
            parts = [np.flatnonzero(np.isinf(whole))]
            if len(nan_at):
                parts.append(self._rows_of(nan_at))
            if col == self.run.column("nan_count"):
                full = self.increments("nan_count")
                if full is not None:
                    parts.append(self._rows_of(full.steps[full.values > 0]))
            rows = parts[0] if len(parts) == 1 else np.unique(np.concatenate(parts))
            self.misc[key] = rows
        got: np.ndarray = self.misc[key]
        return got

    def all_bad_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every column's `bad_rows` merged, prepared once per run: (rows sorted, the
        position in `columns()` of the column each row belongs to, each column's first
        finite row). An event whose window holds no bad row of any column (nearly every
        event) is then two searchsorted calls instead of three calls per column."""
        if "all_bad_rows" not in self.misc:
            cols = self.columns()
            parts = [self.bad_rows(c) for c in cols]
            rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            owner = np.repeat(np.arange(len(cols), dtype=np.int64), [len(p) for p in parts])
            order = np.argsort(rows, kind="stable")
            first = np.array([self.column(c)[1] for c in cols], dtype=np.int64)
            self.misc["all_bad_rows"] = (rows[order].astype(np.int64), owner[order], first)
        got: tuple[np.ndarray, np.ndarray, np.ndarray] = self.misc["all_bad_rows"]
        return got

    def role_of_column(self) -> dict[str, str]:
        """Column name -> role, for the columns that have one (built once per run)."""
        if "role_of_column" not in self.misc:
            self.misc["role_of_column"] = {col: role for role, col in self.run.roles.items()}
        got: dict[str, str] = self.misc["role_of_column"]
        return got

    def _rows_of(self, steps: np.ndarray) -> np.ndarray:
        """The frame rows whose index value is one of `steps` (every row of a repeated
        index value, as `np.isin` marks them)."""
        idx = self.index
        lo = idx.searchsorted(steps, "left")
        hi = idx.searchsorted(steps, "right")
        if not len(lo) or np.all(hi - lo <= 1):
            return np.asarray(lo[hi > lo], dtype=np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in zip(lo, hi, strict=True)
                               if b > a] or [np.empty(0, dtype=np.int64)])

    def column_series(self, col: str) -> Series:
        """A frame column's logged (non-missing) points."""
        if col not in self._colseries:
            s = self.run.frame[col].dropna()
            self._colseries[col] = Series(s.index.to_numpy(dtype=np.int64),
                                          s.to_numpy(dtype=np.float64))
        return self._colseries[col]


#: Values per block of `RunArrays.start_at_or_above`.
_BLOCK = 1024

_ARRAYS: weakref.WeakKeyDictionary[Run, RunArrays] = weakref.WeakKeyDictionary()
#: Runs whose arrays are kept: the pipeline explains one run's events after another, so the
#: last two are enough, and 100 runs analysed in one call do not hold 100 runs' copies.
KEEP_RUNS = 2


def arrays(run: Run) -> RunArrays:
    """The run's prepared arrays, built on first use and kept while the run is among the
    last `KEEP_RUNS` runs explained (and alive)."""
    got = _ARRAYS.get(run)
    if got is None:
        got = RunArrays(run)
        while len(_ARRAYS) >= KEEP_RUNS:
            oldest = next(iter(_ARRAYS.keys()), None)
            if oldest is None:
                break
            del _ARRAYS[oldest]
        _ARRAYS[run] = got
    return got


def get_series(run: Run, role: str) -> Series | None:
    return arrays(run).series(role)


def usable(run: Run, role: str) -> tuple[Series | None, str]:
    """The series of a role if it carries signal, else None and the reason why not.

    A grad norm printed as 0.000 at every step (Megatron with the norm not computed) or a
    series with no finite value is treated as absent: a constant zero is not evidence."""
    return arrays(run).usable(role)


def _usable(a: RunArrays, role: str) -> tuple[Series | None, str]:
    s = a.series(role)
    if s is None:
        return None, f"needs {role}, not in this log"
    f = a.finite(role)
    fin = f.values if f is not None else np.empty(0)
    if len(fin) == 0:
        return None, f"needs {role}, but it is never finite in this log"
    if role in ("grad_norm", "update_norm") and np.all(fin == 0):
        return None, f"{role} is 0 at every logged step (not computed), so it carries no signal"
    return s, ""


def history_level(a: RunArrays, role: str, n_hist: int, window: int) -> float:
    """`block_max_median` of the first `n_hist` finite values of a role, with blocks of
    max(5, min(window, n_hist // 4)): from the prepared block medians when the blocks are a
    full window long, else computed (the history is then short)."""
    f = a.finite(role)
    assert f is not None
    k = max(5, min(window, n_hist // 4))
    if k == window:
        lv = a.block_levels(role, k)
        nb = n_hist // k
        if nb >= 1:
            return float(lv[nb - 1])
    return block_max_median(f.values[:n_hist], k)


# ---------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class LossShape:
    """How the loss rose and came back."""

    base: float  # level before the event
    start_value: float
    peak_value: float
    peak_ratio: float  # peak / base (inf for a non-finite peak)
    onset_points: int  # logged points from the start to the peak
    onset_fraction: float  # share of the peak's (log) excursion already reached at the start
    half_recovery_points: int | None  # points after the peak until half the excursion is gone
    half_recovery_step: int | None  # the step at which that happened
    duration_points: int  # logged points from start to end
    quick: bool  # back below half the excursion within 3 points of the peak
    before_value: float = float("nan")  # the last finite loss logged before the rise
    before_step: int | None = None
    baseline_points: int = 0  # finite points the baseline rests on
    elevated_points: int = 0  # points after the peak still above a quarter of its excursion
    elevated_steps: int = 0  # steps from the peak to the last of them
    decaying: bool = False  # those points decay gradually (weight damage), not a plateau
    later_ratio: float = float("nan")  # loss / baseline at the last elevated point
    gap: tuple[int, int] | None = None  # a gap in the log between the peak and recovery
    uniform_loss: float | None = None  # ln(vocabulary size): the loss of a uniform guess
    at_uniform: bool = False  # the loss of the batches after the peak reached it
    batch_loss_needed: float | None = None  # averaged log: one batch's loss that lifts the mean
    batch_loss_bound: float | None = None  # what one batch of a CE loss can plausibly reach
    compounding_points: int = 0  # rise points of a climb that grew part after part, never back
    points_after: int = 0  # logged points after the peak that the recovery was looked for in

    @property
    def damage(self) -> str | None:
        """Why the rise is weight damage from an oversized update rather than one bad batch
        (which costs one step: the next batches are normal again), or None."""
        return self._damage(compounding=True)

    @property
    def jump_damage(self) -> str | None:
        """`damage` from what one oversized update leaves (a slow decay, the uniform-guess
        loss, an impossible batch), without the compounding climb: in a log with nothing
        but the loss, a climb says the model got worse but not that an update was oversized
        rather than, say, the LR too high all along."""
        return self._damage(compounding=False)

    def _damage(self, compounding: bool) -> str | None:
        if self.at_uniform and self.uniform_loss is not None:
            return (f"the loss of the batches after the peak reached the uniform-guess loss "
                    f"ln(vocab) = {fmt(self.uniform_loss)}")
        if (self.batch_loss_needed is not None and self.batch_loss_bound is not None
                and self.batch_loss_needed > self.batch_loss_bound):
            return (f"each logged loss is a mean over the logging interval: one batch would "
                    f"have needed a loss of about {fmt(self.batch_loss_needed)} to lift it to "
                    f"{fmt(self.peak_value)}, beyond what one batch can reach (about "
                    f"{fmt(self.batch_loss_bound)})")
        if self.decaying:
            return (f"the loss decayed over {self.elevated_points} logged points after the "
                    f"peak and was still {fmt_ratio(self.later_ratio)} its level "
                    f"{self.elevated_steps} steps later")
        if compounding and self.compounding_points:
            return self.climb
        return None

    @property
    def climb(self) -> str | None:
        """The compounding climb in words (`compounding_points`), or None."""
        if not self.compounding_points:
            return None
        back = ("and the log ends on it" if not self.points_after else
                f"and did not come back in the {self.points_after} logged points after it")
        return (f"the loss climbed over {self.compounding_points} logged points, a clear step "
                f"higher in each quarter of the rise, {back}: each stretch of updates left the "
                f"model worse")


@dataclass(frozen=True)
class LrProfile:
    """What the learning rate did before the rise."""

    constant: bool  # the LR never changes in the whole log
    flat: bool  # the LR stayed within 5% over the lookback window
    ref: float  # the LR the model had been trained at before the climb to at_rise
    at_rise: float  # the highest LR of the last few points before the rise
    ratio: float  # at_rise / ref
    reached_step: int  # where the LR last came up to at_rise (within 0.1%)
    lag: int  # steps from reached_step to the start of the rise
    jump: float  # ratio of the logged LR step that most beat its trend (1 = no jump)
    jump_step: int | None
    jump_from: float
    jump_to: float
    jump_lag: int | None
    prev_max: float  # highest LR before the lookback window (nan if none)
    first_peak: bool  # at_rise is the highest LR so far, climbed to from the first logged LR
    ramp_start_step: int | None  # where the climb to at_rise began (None: no rise)
    resume: Restart | None  # a resume inside the lookback window
    lr_before_resume: float  # LR logged just before that resume (nan if none)

    @property
    def warmup_end(self) -> bool:
        """The rise follows the end of the run's first warmup (a climb from its first step)."""
        return bool(self.first_peak and self.ramp_start_step is not None)

    @property
    def above_earlier_max(self) -> bool:
        """The LR went above anything the run had used before (a warmup's ramp excepted)."""
        return bool(math.isfinite(self.prev_max) and self.at_rise >= 1.2 * self.prev_max
                    and not (self.warmup_end and self.jump < LR_JUMP))

    @property
    def strength(self) -> float:
        """How strongly the LR history alone points at the schedule, in [0, 1]."""
        s = 0.0
        if self.jump >= LR_JUMP and self.jump_lag is not None:
            s = 0.6 + 0.35 * mag(self.jump, LR_JUMP, 8.0)
            s *= lag_factor(self.jump_lag)
        if self.ratio >= LR_RISE:
            lvl = 0.35 + 0.45 * mag(self.ratio, LR_RISE, 4.0)
            if self.resume is not None:
                lvl += 0.1
            if self.above_earlier_max:
                lvl += 0.1
            if self.warmup_end:
                # reaching the planned peak is what a schedule does; it is a likely trigger,
                # not a fault, so it never scores like an unplanned jump
                lvl = min(lvl, 0.6)
            s = max(s, min(lvl, 0.95) * lag_factor(self.lag))
        return clip01(s)


def lag_factor(lag_steps: int) -> float:
    """An LR change acts within tens of steps; older changes are weaker evidence."""
    if lag_steps < 0:
        return 0.7  # changed just after the first point of the rise, still before its peak
    return 1.0 / (1.0 + max(0, lag_steps - 20) / 50.0)


@dataclass(frozen=True)
class GradProfile:
    """What the grad norm did before and at the rise."""

    base: float  # grad-norm level before the precursor window
    pre_ratio: float  # highest grad norm / base in the precursor window (before the rise)
    pre_step: int | None  # where that highest precursor value was logged
    ramp_points: int  # precursor points above GRAD_PRECURSOR x base
    first_lead_step: int | None  # first precursor step above GRAD_PRECURSOR x base
    onset_ratio: float  # highest grad norm / base in the first 3 points of the rise
    onset_step: int | None
    history_level: float  # highest trailing median of the grad norm before the event
    collapse: float  # history_level / base: how far the gradients had shrunk
    stretch_steps: int  # how long the grad norm had been below history_level / 100
    p50: float  # pre-spike percentiles, for a clip threshold
    p99: float
    base_points: int  # logged points the baseline and percentiles rest on
    pre_values: tuple[float, ...]  # the precursor values, for the summary
    pre_steps: tuple[int, ...]

    @property
    def precursor_threshold(self) -> float:
        """A precursor must beat 3x the baseline and, where the baseline is long enough to
        know the grad norm's own noise, 1.5x its 99th percentile (one noisy blip is not a
        climb)."""
        if self.base_points >= 20 and self.base > 0 and math.isfinite(self.p99):
            return max(GRAD_PRECURSOR, 1.5 * self.p99 / self.base)
        return GRAD_PRECURSOR

    @property
    def precursor(self) -> bool:
        return self.pre_ratio >= self.precursor_threshold


@dataclass(frozen=True)
class ScaleProfile:
    """Loss-scale cuts and skipped steps around the rise."""

    has_scale: bool
    has_skip: bool
    dynamic: bool  # the scale moves at some point in the run
    calibration_end: int | None  # step at which the fp16 start-up calibration ended
    window: tuple[int, int]
    cuts: int  # scale decreases in the window that end at or below the earlier ceiling
    cut_factor: float  # total decrease over those cuts (e.g. 16 for 65536 -> 4096)
    cut_from: float  # the scale just before the first of those cuts
    scale_before: float  # scale just before the window
    scale_min: float  # lowest scale in the window
    pre_min: float  # lowest scale between calibration and the window
    depth: float  # halvings below pre_min reached in the window
    skips: int  # skipped steps in the window
    expected: float  # skipped steps or cuts expected in the window at the run's routine rate
    routine_rate: float  # per step
    nonfinite_skipped: int  # skipped steps in the window whose loss is non-finite
    first_cut_step: int | None
    #: cuts at which a Megatron iteration line printed no loss: Megatron leaves out a loss
    #: that is not finite, so a halved scale with the loss missing is a non-finite loss there
    missing_loss_cuts: int = 0
    calibration_skips: int = 0  # skipped steps of the start-up calibration near the window


@dataclass(frozen=True)
class Nonfinite:
    """The first non-finite values of the event."""

    step: int  # first non-finite step of any series in the event
    series: tuple[str, ...]  # roles/columns non-finite at that step (the first to go)
    loss_steps: int  # non-finite loss points in the event
    last_finite_loss: float | None  # the loss just before it went non-finite


@dataclass(frozen=True)
class Position:
    """Where in the data stream the rise happened (consumed samples / tokens)."""

    role: str  # "samples" or "tokens"
    first: float  # consumed before the first batch of the rise
    last: float  # consumed after the peak's batch


# ---------------------------------------------------------------------------- context


@dataclass(frozen=True, eq=False)
class Context:
    """Everything a rule may look at besides the run and the event, with lazily computed,
    cached profiles (each profile is a pure function of run + event + config)."""

    run: Run
    event: Event
    events: Sequence[Event]
    config: Config
    recurrence: Recurrence | None = None

    @property
    def lookback(self) -> int:
        """Logged points before the rise in which a change counts as 'shortly before'."""
        return self.config.window

    @cached_property
    def arrays(self) -> RunArrays:
        return arrays(self.run)

    @cached_property
    def loss(self) -> Series | None:
        return self.arrays.series("loss")

    @cached_property
    def shape(self) -> LossShape | None:
        return _loss_shape(self)

    @cached_property
    def lr(self) -> LrProfile | None:
        s, _ = self.arrays.usable("lr")
        return None if s is None else _lr_profile(self)

    @cached_property
    def grad(self) -> GradProfile | None:
        s, _ = self.arrays.usable("grad_norm")
        return None if s is None else _grad_profile(self, s)

    @cached_property
    def scale(self) -> ScaleProfile | None:
        return _scale_profile(self)

    @cached_property
    def nonfinite(self) -> Nonfinite | None:
        return _nonfinite(self)

    @cached_property
    def position(self) -> Position | None:
        return _position(self)

    @cached_property
    def osc(self) -> OscProfile | None:
        from spikelens.causes._oscillation import osc_profile

        return osc_profile(self)

    def steps_word(self, n: int) -> str:
        return f"{n} step{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------- loss shape


def excursion(v: float, base: float) -> float:
    """How far above the baseline a loss value is: log ratio for positive losses."""
    if not math.isfinite(v):
        return math.inf if (math.isnan(v) or v > 0) else -math.inf
    if base > 0 and v > 0:
        return math.log(v / base)
    # a loss at or below 0 (or a baseline of 0) has no ratio: a relative difference, bounded
    # so that exp() of it stays finite
    return max(-50.0, min(50.0, (v - base) / max(abs(base), 1e-6)))


def excursions(v: np.ndarray, base: float) -> np.ndarray:
    """`excursion` of every value, vectorised (the common case: positive loss and base)."""
    if base > 0 and len(v) and bool((np.isfinite(v) & (v > 0)).all()):
        out: np.ndarray = np.log(v / base)
        return out
    return np.array([excursion(float(x), base) for x in v])


def _loss_shape(ctx: Context) -> LossShape | None:
    loss = ctx.loss
    if loss is None or len(loss) == 0:
        return None
    ev = ctx.event
    # the event's points found once by position (the windows below are slices between
    # them: `before`, `between` and `after` would search the same steps again)
    ls, lv = loss.steps, loss.values
    i_start = int(ls.searchsorted(ev.start_step, "left"))
    i_end = int(ls.searchsorted(ev.end_step, "right"))
    i_peak = int(ls.searchsorted(ev.peak_step, "left"))
    i_past = int(ls.searchsorted(ev.peak_step, "right"))  # first point after the peak
    w0 = max(0, i_start - ctx.config.window)
    pre = Series(ls[w0:i_start], lv[w0:i_start]).finite()
    base = ev.baseline if ev.baseline is not None else pre.median()
    if base is None:
        base = float("nan")
    n_ser = max(0, i_end - i_start)
    if n_ser == 0:
        return None
    start_value = float(lv[i_start])
    peak_value = float(lv[i_peak]) if i_past > i_peak else float(np.nanmax(lv[i_start:i_end]))
    peak_exc = excursion(peak_value, base)
    start_exc = excursion(start_value, base)
    if math.isinf(peak_exc):
        onset_fraction = 1.0 if math.isinf(start_exc) else 0.0
    elif peak_exc > 0:
        onset_fraction = clip01(start_exc / peak_exc)
    else:
        onset_fraction = 1.0
    onset_points = max(0, i_past - i_start) - 1
    n_after = max(ctx.config.window, 50)
    after = Series(ls[i_past:i_past + n_after], lv[i_past:i_past + n_after])
    half: int | None = None
    half_step: int | None = None
    # for a non-finite peak, "half way back" means within 2x of the baseline again
    target = peak_exc / 2 if math.isfinite(peak_exc) else math.log(2.0)
    ex_after = excursions(after.values, base)
    hit = (np.isfinite(ex_after) & (ex_after <= target)).nonzero()[0]
    if len(hit):
        half, half_step = int(hit[0]) + 1, int(after.steps[hit[0]])
    interval = max(1, ctx.run.interval)
    # quick = back within 3 logged points *and* 3 logging intervals (a gap in an excerpt
    # between two logged points is not a quick recovery)
    quick = half_step is not None and half is not None and half <= 3 and (
        half_step - ev.peak_step <= 3 * interval)
    ratio = math.inf if not math.isfinite(peak_value) else (
        peak_value / base if base > 0 else ev.size.ratio
    )
    before_value, before_step = float("nan"), None
    if len(pre):
        before_value, before_step = float(pre.values[-1]), int(pre.steps[-1])
    # a bad batch costs one step: the next batches are normal. Count the points after the
    # peak still above a quarter of its excursion, and whether they decay (damage) or hold
    # a plateau and drop at once (a run of bad data)
    elevated = 0
    decaying = False
    later_ratio = float("nan")
    elevated_steps = 0
    gap: tuple[int, int] | None = None
    if math.isfinite(peak_exc) and peak_exc > 0 and base > 0 and len(after):
        exc = ex_after
        ok = np.isfinite(exc)
        low = (ok & (exc <= 0.25 * peak_exc)).nonzero()[0]
        elevated = int(low[0]) if len(low) else len(exc)
        if elevated:
            later_ratio = float(math.exp(min(exc[elevated - 1], 50.0))) if ok[elevated - 1] \
                else float("nan")
            elevated_steps = int(after.steps[elevated - 1] - ev.peak_step)
        if elevated >= 5 and elevated_steps >= 10:
            seg = exc[:elevated][ok[:elevated]]
            h = len(seg) // 2
            # halves of two points at least (a climb into non-finite losses has fewer
            # finite ones: no mean of an empty half, and no warning on the user's stderr)
            decaying = h >= 2 and float(np.mean(seg[:h])) >= \
                1.5 * max(float(np.mean(seg[h:])), 1e-12)
        # a gap in the log between the peak and the point the loss came back at
        span = np.concatenate([[ev.peak_step], after.steps[:max(elevated, 1) + 1]])
        d = span[1:] - span[:-1]  # np.diff's own subtraction, without its call overhead
        big = (d > max(3 * interval, 10)).nonzero()[0]
        if len(big):
            gap = (int(span[big[0]]), int(span[big[0] + 1]))
    # the loss of a uniform guess, when the run says its vocabulary
    uniform: float | None = None
    vocab = ctx.run.params.get("vocab_size") if ctx.run.params else None
    if isinstance(vocab, (int, float)) and not isinstance(vocab, bool) and vocab > 1:
        uniform = math.log(float(vocab))
    at_uniform = False
    if uniform is not None and base < 0.7 * uniform:
        nxt = after.values[:3]
        nxt = nxt[np.isfinite(nxt)]
        at_uniform = bool(len(nxt) >= 1 and nxt.min() >= 0.9 * uniform)
    # an averaged log (Megatron, HF): what one batch would have needed to lift the mean
    needed = bound = None
    k = interval
    if ctx.run.averaged and k > 1 and math.isfinite(peak_value) and base > 0:
        needed = base + k * (peak_value - base)
        if uniform is not None:
            bound = 2 * uniform
        elif ctx.run.format == "megatron" and base < LARGEST_UNIFORM:
            bound = 2 * LARGEST_UNIFORM  # an LM loss, vocabulary not logged
    return _make(
        LossShape,
        compounding_points=_compounding(lv[i_start:i_past], base, peak_exc, onset_fraction,
                                        ev.recovered or half is not None),
        points_after=len(after),
        base=float(base),
        start_value=start_value,
        peak_value=peak_value,
        peak_ratio=float(ratio),
        onset_points=max(0, onset_points),
        onset_fraction=onset_fraction,
        half_recovery_points=half,
        half_recovery_step=half_step,
        duration_points=max(1, n_ser),
        quick=quick,
        before_value=before_value,
        before_step=before_step,
        baseline_points=len(pre),
        elevated_points=elevated,
        elevated_steps=elevated_steps,
        decaying=decaying,
        later_ratio=later_ratio,
        gap=gap,
        uniform_loss=uniform,
        at_uniform=at_uniform,
        batch_loss_needed=needed,
        batch_loss_bound=bound,
    )


#: Fewest logged points of a rise for `_compounding` (four quarters of one point each).
COMPOUNDING_MIN = 4
#: Each quarter of a compounding rise sits at least this share of the peak's excursion above
#: the quarter before: an exponential climb steps by a quarter of it, a plateau by nothing.
COMPOUNDING_STEP = 0.1


def _compounding(rise: np.ndarray, base: float, peak_exc: float, onset_fraction: float,
                 back: bool) -> int:
    """The number of points of a rise that compounds (0 when it does not): at least four
    logged points from the start to the peak, the first holding under half the peak's
    excursion, the mean excursion of each quarter of the rise at least `COMPOUNDING_STEP` of
    the peak's above the quarter before, and no way back in the points the recovery is looked
    for in. A bad batch shows at once and the next batches are normal; a shard of bad data
    lifts the loss to a plateau (in an averaged log, a low first point and then the plateau:
    its later quarters differ by noise, not by a step). A loss that keeps growing from one
    stretch of updates to the next is a model each stretch makes worse (an explosion, an LR
    too high, a broken optimizer state, data that keeps getting worse)."""
    n = len(rise)
    if back or n < COMPOUNDING_MIN or not onset_fraction < 0.5:
        return 0  # most events stop here, before any array work
    if not (math.isfinite(peak_exc) and peak_exc > 0):
        return 0
    exc = excursions(rise, base)
    if not bool(np.isfinite(exc).all()):
        return 0
    # the quarters `np.array_split` would make (the first n % 4 one point longer), by slices
    cut = [0]
    for k in range(4):
        cut.append(cut[-1] + n // 4 + (1 if k < n % 4 else 0))
    quarters = [float(np.mean(exc[cut[k]:cut[k + 1]])) for k in range(4)]
    step = COMPOUNDING_STEP * peak_exc
    rising = all(b >= a + step for a, b in zip(quarters, quarters[1:], strict=False))
    return n if rising else 0


# ---------------------------------------------------------------------------- LR


def lr_jump(full: Series) -> tuple[float, float, int | None, float, float]:
    """(excess, jump, step, from, to) of the logged LR step of `full` (finite values) that
    most beat its trend; excess 1.0 and no step when none rose."""
    nan = float("nan")
    jump, jump_step, jump_from, jump_to = 1.0, None, nan, nan
    best_excess = 1.0
    # Python floats (the same IEEE doubles as numpy's, without its per-scalar cost): the
    # values are finite, so max() of a slice is np.max of it
    fv = full.values
    v = fv.tolist()
    # from the third point: a step is judged against the trend of the one before it, and the
    # first step has none (a warmup's 2e-5 -> 3e-5 is not a 1.5x jump). Only a step up from a
    # positive LR can be a jump: those are found at once (a decaying or constant LR has none,
    # and the scan visits nothing)
    ups: list[int] = (((fv[1:-1] > 0) & (fv[2:] > fv[1:-1])).nonzero()[0] + 2).tolist()
    for i in ups:
        prev, cur = v[i - 1], v[i]
        # a jump must beat both the trend (a warmup rises every step) and the recent level
        # (climbing back after a drop, as a re-warmup does, is not a discontinuity)
        trend = v[i - 1] / v[i - 2] if v[i - 2] > 0 else 1.0
        level = max(v[max(0, i - PRECURSOR_POINTS):i])
        ex = cur / max(prev * max(trend, 1.0), level)
        if ex > best_excess:
            best_excess = float(ex)
            jump, jump_step = float(cur / prev), int(full.steps[i])
            jump_from, jump_to = float(prev), float(cur)
    return best_excess, jump, jump_step, jump_from, jump_to


def _lr_profile(ctx: Context) -> LrProfile:
    ev = ctx.event
    start = ev.start_step
    a = ctx.arrays
    fin = a.finite("lr")
    assert fin is not None
    if "lr_constant" not in a.misc:
        vals = fin.values
        a.misc["lr_constant"] = bool(len(vals) == 0 or np.all(vals == vals[0]))
    constant = bool(a.misc["lr_constant"])
    # the LR up to the first step of the rise, and a couple of points past it when the peak is
    # later (a detector may start an event on a noisy point just before the real rise)
    until = min(ev.peak_step, start + 2 * max(1, ctx.run.interval))
    hist = fin.before(until + 1)
    h = ctx.lookback
    look = Series(hist.steps[-h:], hist.values[-h:])
    older = Series(hist.steps[:-h], hist.values[:-h])
    nan = float("nan")
    if len(look) == 0:
        return LrProfile(constant, True, nan, nan, 1.0, start, 0, 1.0, None, nan, nan, None,
                         nan, False, None, None, nan)
    # the LR at the rise: the highest LR of the last few points (it acts within a few steps)
    recent = Series(look.steps[-PRECURSOR_POINTS:], look.values[-PRECURSOR_POINTS:])
    at_rise = float(recent.values.max())
    hv = hist.values
    # where the LR last came up to that level (the last upward crossing), and where the climb
    # to it began (a jump, a re-warmup after a dip, a cosine restart, the first warmup); both
    # scanned back from the rise only as far as the stretch goes
    thr = 0.999 * at_rise
    hits = (hv[-PRECURSOR_POINTS:] >= thr).nonzero()[0]
    last_hit = len(hv) - min(PRECURSOR_POINTS, len(hv)) + int(hits[-1]) if len(hits) else (
        len(hv) - 1)
    reached_i = a.start_at_or_above("lr", last_hit + 1, thr)  # hv is a prefix of fin
    reached_i = min(reached_i, len(hv) - 1)
    reached_step = int(hist.steps[reached_i])
    k = stretch_start(lambda lo, hi: hv[lo - 1:hi - 1] < hv[lo:hi], reached_i + 1, floor=1) - 1
    k = max(0, min(k, reached_i))
    ramp_start = int(hist.steps[k])
    # the level the model had been trained at before that climb: the highest LR of the few
    # points before it (after a dip, the LR it had before the dip)
    pre_ramp = hv[max(0, k - PRECURSOR_POINTS):k]
    ref = float(pre_ramp.max()) if len(pre_ramp) else float(hv[k])
    if not ref > 0:
        # a warmup from LR 0 (schedulers log 0 at step 0): measure the climb from its first
        # positive value, not "1.0x"
        ramp = hv[k:reached_i + 1]
        ref = float(ramp[ramp > 0].min()) if (ramp > 0).any() else nan
    ratio = at_rise / ref if ref > 0 and math.isfinite(ref) else 1.0
    # discontinuity: a logged step whose ratio beats the trend of the step before it
    full = Series(hist.steps[-(h + 2):], hist.values[-(h + 2):])
    best_excess, jump, jump_step, jump_from, jump_to = lr_jump(full)
    if best_excess < LR_JUMP:
        # not a discontinuity: the biggest step was within the trend
        jump, jump_step, jump_from, jump_to = 1.0, None, nan, nan
    jump_lag = None if jump_step is None else start - jump_step
    prev_max = a.running_at("lr", "max", len(older) - 1) if len(older) else nan
    if 0 < k < len(older):
        # the climb began before the lookback window (a slow ramp): the run's earlier maximum
        # is the highest LR before the climb, not a value the ramp itself reached (realruns
        # v5gx01: "cap the LR at 6.5e-3", an LR from inside its e-fold ramp, for 3.0e-3)
        prev_max = min(prev_max, a.running_at("lr", "max", k - 1))
    # the first warmup: a climb from the first logged LR to the highest LR so far
    first_peak = bool(k == 0 and reached_i >= 1)
    resume: Restart | None = None
    lr_before_resume = nan
    # a resume since the climb began (or within the lookback) explains a lost schedule
    lo_step = min(ramp_start, int(look.steps[0]))
    for r in ctx.run.restarts:
        if lo_step <= r.resumed_at <= start:
            resume = r
            prior = fin.before(r.resumed_at)
            lr_before_resume = float(prior.values[-1]) if len(prior) else nan
    lv = look.values
    flat = bool(lv.min() > 0 and lv.max() <= 1.05 * lv.min()) if len(lv) else True
    return _make(
        LrProfile,
        constant=constant,
        flat=flat,
        ref=float(ref),
        at_rise=at_rise,
        ratio=float(ratio),
        reached_step=reached_step,
        lag=start - reached_step,
        jump=jump,
        jump_step=jump_step,
        jump_from=jump_from,
        jump_to=jump_to,
        jump_lag=jump_lag,
        prev_max=prev_max,
        first_peak=first_peak,
        ramp_start_step=ramp_start if ratio >= LR_RISE else None,
        resume=resume,
        lr_before_resume=lr_before_resume,
    )


# ---------------------------------------------------------------------------- grad norm


def block_max_median(values: np.ndarray, k: int) -> float:
    """The highest median over consecutive blocks of `k` values: the level a series held
    at its highest, robust to single outliers, in O(n) (no sliding window)."""
    n = len(values) // k * k
    if n == 0:
        return float(np.median(values))
    return float(np.max(np.median(values[:n].reshape(-1, k), axis=1)))


def _finite_before(ctx: Context, role: str, step: int) -> np.ndarray:
    f = ctx.arrays.finite(role)
    return f.before(step).values if f is not None else np.empty(0)


def precursor_scan(pre_all: Series, base: float, thr: float
                   ) -> tuple[list[float], list[int], float, int | None, list[int]]:
    """The precursor window of the grad profile: the last PRECURSOR_POINTS values before the
    rise (stale copies as NaN) and their steps, the highest ratio to `base` (non-finite
    ratios as 0, 1.0 for an empty window) with its step, and the positions of the ratios at
    or above `thr`. In Python floats (IEEE doubles: the same quotients and comparisons as
    numpy's, without its per-call cost on ten values)."""
    pv: list[float] = pre_all.values[-PRECURSOR_POINTS:].tolist()
    steps: list[int] = pre_all.steps[-PRECURSOR_POINTS:].tolist()
    if pv:
        # a value copied verbatim onto skipped steps is stale, not a measurement
        stale = stale_flags(pre_all.values[-(PRECURSOR_POINTS + 2):].tolist())[-len(pv):]
        pv = [math.nan if old else x for old, x in zip(stale, pv, strict=True)]
    fr = [0.0] * len(pv)
    if base > 0:
        fr = [r if math.isfinite(r) else 0.0 for r in (x / base for x in pv)]
    ratio, step = 1.0, None
    if fr:
        ratio = max(fr)
        if ratio == 0:
            ratio = float(np.max(fr))  # which zero (0.0 or -0.0) np.max keeps
        step = steps[fr.index(ratio)]  # the first maximum, as np.argmax
    above = [i for i, r in enumerate(fr) if r >= thr]
    return pv, steps, ratio, step, above


def onset_peak(on: Series, base: float) -> tuple[float, int | None]:
    """(highest finite value / `base`, its step) over the first 3 points of `on` (the
    rise): ratio 1.0 when there is none or `base` is not positive, step None when no value is
    finite. In Python floats, as `precursor_scan`."""
    onv = [(x, st) for x, st in zip(on.values[:3].tolist(), on.steps[:3].tolist(), strict=True)
           if math.isfinite(x)]
    if not onv:
        return 1.0, None
    top = max(x for x, _ in onv)
    if top == 0:
        top = float(np.max([x for x, _ in onv]))  # which zero (0.0 or -0.0) np.max keeps
    step = next(st for x, st in onv if x == top)  # the first maximum, as np.argmax
    return (top / base if base > 0 else 1.0), step


def _grad_profile(ctx: Context, g: Series) -> GradProfile:
    ev = ctx.event
    start = ev.start_step
    w = ctx.config.window
    pre_all = g.before(start)
    older = Series(pre_all.steps[:-PRECURSOR_POINTS], pre_all.values[:-PRECURSOR_POINTS])
    base_win = Series(older.steps[-w:], older.values[-w:]).finite()
    ref_vals = base_win.values
    # one sort for the baseline's median and its percentiles
    ref_sorted = _sorted_small(ref_vals) if len(ref_vals) else None
    if len(base_win) >= 3:
        base = _median_sorted(ref_vals, ref_sorted)
    else:
        # a short excerpt: the lowest value before the rise is the pre-ramp level
        fin = _finite_before(ctx, "grad_norm", start)
        base = float(fin.min()) if len(fin) else float("nan")
    if not (base > 0):
        pos = _finite_before(ctx, "grad_norm", start)
        pos = pos[pos > 0]
        base = float(pos.min()) if len(pos) else float("nan")
    p50, p99 = _percentiles_sorted(ref_vals, ref_sorted, (50, 99)) if len(ref_vals) else (
        base, float("nan"))
    thr = GRAD_PRECURSOR
    if len(base_win) >= 20 and base > 0 and math.isfinite(p99):
        thr = max(GRAD_PRECURSOR, 1.5 * p99 / base)
    pv, pre_steps, pre_ratio, pre_step, above = precursor_scan(pre_all, base, thr)
    first_lead = pre_steps[above[0]] if above else None
    onset_ratio, onset_step = onset_peak(g.between(start, ev.end_step), base)
    # the run's own earlier grad level: the highest trailing median before the event
    fg = ctx.arrays.finite("grad_norm")
    assert fg is not None
    n_hist = fg.pos(int(older.steps[-1]) + 1) if len(older) else 0
    history = base
    stretch = 0
    if n_hist >= 8:
        vals = fg.values
        history = history_level(ctx.arrays, "grad_norm", n_hist, w)
        if history > 0 and base > 0 and history / base >= 100:
            low = history / 100
            j = stretch_start(lambda lo, hi: vals[lo:hi] <= low, n_hist)
            if j < n_hist:
                stretch = int(start - fg.steps[j])
    return _make(
        GradProfile,
        base=base,
        pre_ratio=pre_ratio,
        pre_step=pre_step,
        ramp_points=int(len(above)),
        first_lead_step=first_lead,
        onset_ratio=onset_ratio,
        onset_step=onset_step,
        history_level=history,
        collapse=history / base if base > 0 else 1.0,
        stretch_steps=stretch,
        p50=p50,
        p99=p99,
        base_points=len(base_win),
        pre_values=tuple(pv),  # Python floats, as float() of each gives
        pre_steps=tuple(pre_steps),
    )


# ---------------------------------------------------------------------------- loss scale


def skip_increments(s: Series) -> Series:
    """Skipped steps per logged point, whatever the log wrote: a 0/1 flag, a count per
    logging interval (Megatron) or a running total (DeepSpeed's `skipped=K`)."""
    v = np.where(np.isfinite(s.values), s.values, 0.0)
    if len(v) >= 2 and np.all(np.diff(v) >= 0) and v[-1] > 1:
        inc = np.diff(v, prepend=v[0])
        return Series(s.steps, inc)
    return Series(s.steps, np.clip(v, 0, None))


def _calibration_end(scale: Series, run_first_step: int, interval: int) -> int | None:
    """The end of the fp16 start-up calibration: the scale starts high and is halved until
    it fits. Only a log that starts at the beginning of training has one."""
    if len(scale) == 0 or run_first_step > max(10, 2 * interval):
        return None
    v = scale.values
    # calibration = the leading stretch in which the scale keeps falling; it is over once the
    # scale has held for 5 logged points
    last_drop = -1
    for j in range(1, min(len(v), 200)):
        if v[j] < v[j - 1]:
            last_drop = j
        elif last_drop < 0 and j >= 5:
            return None  # stable from the start: no calibration
        elif last_drop >= 0 and j - last_drop >= 5:
            break
    return int(scale.steps[last_drop]) if last_drop >= 0 else None


def _scale_profile(ctx: Context) -> ScaleProfile | None:
    ev = ctx.event
    prep = _scale_run(ctx.arrays)
    if prep is None:
        return None
    scale, skip, inc_all = prep.scale, prep.skip, prep.inc
    dynamic, calib = prep.dynamic, prep.calib
    loss = ctx.loss
    ref = scale if scale is not None else skip
    assert ref is not None
    # window: a few points before the rise to a little after the peak
    pre = ref.before(ev.start_step, PRECURSOR_POINTS)
    lo = int(pre.steps[0]) if len(pre) else ev.start_step
    # ... to the end of the event (an overflow storm lasts as long as the event), capped at a
    # baseline window's worth of points for long events, and at least a few points past the peak
    tail = ref.after(ev.peak_step, PRECURSOR_POINTS)
    hi_peak = int(tail.steps[-1]) if len(tail) else ev.peak_step
    capped = ref.after(ev.start_step, ctx.config.window)
    cap = int(capped.steps[-1]) if len(capped) else ev.end_step
    hi = max(min(hi_peak, ev.end_step), min(ev.end_step, cap), ev.peak_step)
    lo = _storm_start(scale, ctx.arrays.increments("skipped"), lo, ctx.config.window)
    calib_skips = 0
    if calib is not None:
        # skipped steps of the start-up calibration are shown, never weighed
        full = ctx.arrays.increments("skipped")
        if full is not None and lo <= calib:
            calib_skips = int(round(float(np.sum(full.between(lo, calib).values))))
        lo = max(lo, calib + 1)
    window = (lo, max(lo, hi))
    cuts, cut_factor, first_cut = 0, 1.0, None
    cut_from = float("nan")
    scale_before = scale_min = pre_min = float("nan")
    depth = 0.0
    routine_cuts = 0
    span_steps = 0
    missing_cuts = 0
    megatron = ctx.run.format == "megatron"
    if scale is not None:
        after_cal = prep.after_cal
        before = after_cal.before(window[0])
        nb = len(before)
        ceiling = prep.cal_max.at(nb - 1) if nb else float(scale.values[0])
        pre_min = prep.cal_min.at(nb - 1) if nb else float("nan")
        win = scale.between(window[0] - 1 if len(before) == 0 else int(before.steps[-1]),
                            window[1])
        if len(before):
            win = _with_point_before(before, win)
        wv = win.values
        if len(wv):
            scale_before = float(wv[0])
            scale_min = float(wv.min())
        # a cut that still leaves the scale above its earlier ceiling is the scaler
        # re-calibrating after a reset, not an overflow problem of this run (the cuts are
        # found at once; the loop visits them in order, as a scan of the window did)
        for j in scale_cuts(wv, ceiling):
            cuts += 1
            cut_factor *= float(wv[j - 1] / wv[j]) if wv[j] > 0 else math.inf
            if first_cut is None:
                first_cut = int(win.steps[j])
                cut_from = float(wv[j - 1])
            if megatron and loss is not None and not len(
                    loss.between(int(win.steps[j]), int(win.steps[j]))):
                missing_cuts += 1
        # the lowest scale the run needed before: since calibration, or in a short excerpt
        # the level it held before the first cut of the window
        floor = pre_min
        if first_cut is not None:
            held = win.before(first_cut).values
            if len(held):
                floor = float(held.min()) if not math.isfinite(pre_min) else min(
                    pre_min, float(held.min()))
        if math.isfinite(floor) and floor > 0 and math.isfinite(scale_min):
            # a scale of 0 is the deepest collapse there is (OPT's "loss scalar crashing")
            depth = max(0.0, math.log2(floor / scale_min)) if scale_min > 0 else 64.0
        pre_min = floor
        # routine rate: cuts outside the window, after calibration (running sums: the
        # whole run minus the window)
        st = after_cal.steps[1:]
        a_ = int(st.searchsorted(window[0], side="left"))
        b_ = int(st.searchsorted(window[1], side="right"))
        cuts_in = int(prep.cut_at.searchsorted(b_, "left") - prep.cut_at.searchsorted(a_, "left"))
        routine_cuts = len(prep.cut_at) - cuts_in
        # the steps between logged points add up to the distance between their ends
        s_ = after_cal.steps
        span_steps = int(s_[-1] - s_[0]) - int(s_[b_] - s_[a_]) if len(s_) else 0
    skips = 0
    nonfinite_skipped = 0
    routine_skips = 0
    skip_span = 0
    if skip is not None and inc_all is not None:
        inc = inc_all
        w = inc.between(window[0], window[1])
        skips = int(round(float(w.values.sum())))
        # another column of the log may count the same skips its own way (DeepSpeed prints
        # an `OVERFLOW!` line per skipped step and a running `skipped=K` on its step lines):
        # every skipped step the log shows counts, so the larger count wins
        for extra in _other_skip_columns(ctx.arrays):
            ew = extra.between(window[0], window[1])
            if calib is not None:
                ew = ew.between(calib + 1, 2**62)
            skips = max(skips, int(round(float(ew.values.sum()))))
        if loss is not None:
            # only a loss *logged* as inf/NaN counts: Megatron prints no loss at all on a
            # skipped iteration, and a missing value is not a non-finite one
            for st_, n in zip(w.steps, w.values, strict=True):
                if n > 0:
                    at = loss.between(int(st_), int(st_))
                    if len(at) and not math.isfinite(float(at.values[0])):
                        nonfinite_skipped += 1
        routine_skips = int(round(float(prep.inc_total - w.values.sum())))
        skip_span = int(inc.steps[-1] - inc.steps[0]) if len(inc) > 1 else 0
    if scale is not None and span_steps > 0:
        rate = routine_cuts / span_steps
    elif skip_span > 0:
        rate = routine_skips / skip_span
    else:
        rate = 0.0
    wsteps = max(1, window[1] - window[0] + 1)
    return _make(
        ScaleProfile,
        has_scale=scale is not None,
        has_skip=skip is not None,
        dynamic=dynamic,
        calibration_end=calib,
        window=window,
        cuts=cuts,
        cut_factor=cut_factor,
        cut_from=cut_from,
        scale_before=scale_before,
        scale_min=scale_min,
        pre_min=pre_min,
        depth=depth,
        skips=skips,
        expected=rate * wsteps,
        routine_rate=rate,
        nonfinite_skipped=nonfinite_skipped,
        first_cut_step=first_cut,
        missing_loss_cuts=missing_cuts,
        calibration_skips=calib_skips,
    )


def scale_cuts(wv: np.ndarray, ceiling: float) -> list[int]:
    """The positions j >= 1 of `wv` where the scale fell (wv[j] < wv[j - 1]) to at most
    `ceiling`, in order: one vectorised comparison, not a Python scan of the window."""
    out: list[int] = (((wv[1:] < wv[:-1]) & (wv[1:] <= ceiling)).nonzero()[0] + 1).tolist()
    return out


@dataclass(frozen=True, eq=False)
class _ScaleRun:
    """The loss-scale and skip series of a run, prepared once for every event."""

    scale: Series | None  # finite loss scale
    skip: Series | None
    inc: Series | None  # skipped steps per logged point, after calibration
    inc_total: float
    dynamic: bool
    calib: int | None
    after_cal: Series  # the scale after calibration
    cal_max: PrefixExtreme  # running max / min of after_cal
    cal_min: PrefixExtreme
    cut_at: np.ndarray  # the cuts: positions j of after_cal.values[j + 1] < [j], ascending


def _scale_run(a: RunArrays) -> _ScaleRun | None:
    if "scale" in a.misc:
        got: _ScaleRun | None = a.misc["scale"]
        return got
    out: _ScaleRun | None = None
    scale = a.finite("loss_scale")
    skip = a.series("skipped")
    if scale is not None and len(scale) == 0:
        scale = None  # a loss-scale column that is never finite carries nothing
    if scale is not None or skip is not None:
        run = a.run
        dynamic = bool(scale is not None and np.any(scale.values != scale.values[0]))
        first_step = int(run.steps[0]) if len(run.steps) else 0
        calib = _calibration_end(scale, first_step, run.interval) if scale is not None else None
        empty = Series(np.empty(0, dtype=np.int64), np.empty(0))
        after_cal = empty if scale is None else (
            scale if calib is None else scale.between(calib + 1, 2**62))
        v = after_cal.values
        d = np.diff(v)
        inc = a.increments("skipped")
        if inc is not None and calib is not None:
            inc = inc.between(calib + 1, 2**62)
        out = _ScaleRun(
            scale=scale, skip=skip, inc=inc,
            inc_total=float(inc.values.sum()) if inc is not None else 0.0,
            dynamic=dynamic, calib=calib, after_cal=after_cal,
            cal_max=PrefixExtreme(v, "max"),
            cal_min=PrefixExtreme(v, "min"),
            cut_at=(d < 0).nonzero()[0],
        )
    a.misc["scale"] = out
    return out


def _other_skip_columns(a: RunArrays) -> list[Series]:
    """Skip increments of the columns that count overflows or skipped steps but are not the
    run's `skipped` role (prepared once per run)."""
    if "other_skips" not in a.misc:
        used = set(a.run.roles.values())
        out: list[Series] = []
        for col in a.run.frame.columns:
            name = str(col).lower()
            if col in used or not ("overflow" in name or "skipped" in name):
                continue
            cs = a.column_series(str(col))
            if len(cs):
                out.append(skip_increments(cs))
        a.misc["other_skips"] = out
    got: list[Series] = a.misc["other_skips"]
    return got


def _storm_start(scale: Series | None, inc: Series | None, lo: int, limit: int) -> int:
    """Move the window start back over an overflow storm already under way, so that the
    scale it started from (and every cut of it) is inside the window: a storm that began
    40 steps before the loss moved (Megatron prints no loss on skipped steps) is one storm."""
    for _ in range(limit):
        cut = False
        if scale is not None:
            prev = scale.before(lo, 2).values
            cut = len(prev) == 2 and prev[1] < prev[0]
        skipped = False
        if inc is not None:
            pv = inc.before(lo, 1)
            skipped = len(pv) == 1 and pv.values[0] > 0
        if not (cut or skipped):
            break
        ref = scale if scale is not None else inc
        assert ref is not None
        back = ref.before(lo, 1)
        if len(back) == 0:
            break
        lo = int(back.steps[0])
    return lo


def _with_point_before(before: Series, win: Series) -> Series:
    """`win` with the last point of `before` put first, one point per step (the first of
    each step kept, `_dedupe`). `win` starts at that point's step in the usual case and has
    one point per step: the result is then `win` with its first value replaced, one copy
    instead of two concatenations and a dedupe."""
    ws, wv = win.steps, win.values
    if len(ws) and ws[0] == before.steps[-1] and bool((ws[1:] > ws[:-1]).all()):
        out = wv.copy()
        out[0] = before.values[-1]
        return Series(ws, out)
    return Series(*_dedupe(np.concatenate([before.steps[-1:], ws]),
                           np.concatenate([before.values[-1:], wv])))


def _dedupe(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(steps) < 2:
        return steps, values
    new = steps[1:] != steps[:-1]
    if bool((steps[1:] >= steps[:-1]).all()):
        # sorted (the window is): np.unique keeps the first of each run of equal steps
        keep = np.concatenate([[True], new])
        return steps[keep], values[keep]
    _, idx = np.unique(steps, return_index=True)
    return steps[idx], values[idx]


# ---------------------------------------------------------------------------- non-finite


def _nonfinite(ctx: Context) -> Nonfinite | None:
    run, ev = ctx.run, ctx.event
    hi = max(ev.peak_step, min(ev.end_step, ev.start_step + 10 * max(1, run.interval)))
    lo = ev.start_step
    arr = ctx.arrays
    idx_all = arr.index
    a = int(idx_all.searchsorted(lo, side="left"))
    b = int(idx_all.searchsorted(hi, side="right"))
    # the bad rows (an infinity, a logged NaN, a rise of Megatron's NaN-iteration counter) of
    # every column in the event's window a..b-1, from the rows found once per run
    rows, owner, first_finite = arr.all_bad_rows()
    k = int(rows.searchsorted(a, "left"))
    e = int(rows.searchsorted(b, "left"))
    if k == e:
        return None
    cols = arr.columns()
    nan_col = run.column("nan_count")
    first_row: dict[int, int] = {}
    for r, c in zip(rows[k:e].tolist(), owner[k:e].tolist(), strict=True):
        # a series that was never finite before the event (a throughput column logged as
        # NaN throughout) did not *go* non-finite here: it is not evidence
        if c in first_row or (cols[c] != nan_col and first_finite[c] >= a):
            continue
        first_row[c] = r  # rows ascend: the column's first bad row in the window
    if not first_row:
        return None
    # in column order, as the names were written when each column was looked at in turn
    names = arr.role_of_column()
    first: dict[str, int] = {}
    for c in sorted(first_row):
        first[names.get(cols[c], cols[c])] = int(idx_all[first_row[c]])
    loss_col = run.column("loss")
    step = min(first.values())
    series = tuple(sorted(k for k, v in first.items() if v == step))
    loss = ctx.loss
    nl = 0
    last_finite = None
    if loss is not None and loss_col is not None:
        w = loss.between(lo, ev.end_step)
        nl = int((~np.isfinite(w.values)).sum())
        fl = arr.finite("loss")
        prev = fl.before(step) if fl is not None else loss.before(step)
        last_finite = float(prev.values[-1]) if len(prev) else None
    return Nonfinite(step=step, series=series, loss_steps=nl, last_finite_loss=last_finite)


# ---------------------------------------------------------------------------- data position


def _position(ctx: Context) -> Position | None:
    return position(ctx.run, ctx.event.start_step, ctx.event.peak_step)


def position(run: Run, first_step: int, last_step: int) -> Position | None:
    """The consumed tokens (or samples) range of the batches of steps first..last: from the
    counter logged before `first_step` to the one logged at `last_step`."""
    for role in ("tokens", "samples"):
        s = arrays(run).finite(role)
        if s is None:
            continue
        before = s.before(first_step)
        first = float(before.values[-1]) if len(before) else None
        at_last = s.between(last_step, last_step)
        last = float(at_last.values[0]) if len(at_last) else s.value_at(last_step)
        if first is None or last is None or last < first:
            continue
        return Position(role=role, first=first, last=last)
    return None


def evidence(
    cause: str, score: float, summary: str, facts: Mapping[str, Any], remedy: str
) -> Evidence:
    """An Evidence with a clipped, rounded score and JSON-safe facts."""
    clean: dict[str, Any] = {}
    for k, v in facts.items():
        t = type(v)
        # the exact builtin types first (most facts): what the general tests below give them
        if t is float:
            clean[k] = v if math.isfinite(v) else None
        elif t is int or t is str or t is bool or v is None:
            clean[k] = v
        elif isinstance(v, bool) or isinstance(v, str):
            clean[k] = v
        elif isinstance(v, (int, np.integer)):
            clean[k] = int(v)
        else:
            clean[k] = num(float(v))
    return _make(Evidence, cause=cause, score=round(clip01(score), 3), summary=summary,
                 evidence=clean, remedy=remedy)


def restart_advice(ctx: Context) -> tuple[int, int, int]:
    """(restart step, first batch to skip, last batch to skip) following PaLM: restart from a
    checkpoint about 100 steps before the rise and skip the batches up to the end of the
    event (PaLM skipped 200-500 batches)."""
    ev = ctx.event
    restart = max(0, ev.start_step - 100)
    last = max(ev.end_step, ev.peak_step)
    return restart, ev.start_step, last


def sentence(parts: Sequence[str], sep: str = "; ") -> str:
    """Join clauses into one sentence: first letter upper-cased (the rest untouched, so
    "LR" stays "LR"), one final period."""
    text = sep.join([q.rstrip(".") for p in parts if (q := p.strip())])
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."
