"""What every reader shares. A reader only parses: it turns bytes into one or more `RawLog`
tables in file order. `build_run` then does, once for every format, the work that makes logs
comparable: finding the step column, coercing values (`"16.475"`, `nan`, `Infinity` in any
spelling), dropping repeated header rows, detecting restarts (a step counter that goes
backwards), keeping the last write of each step, keeping eval rows apart, inferring the
logging interval, assigning metric roles and checking that something analysable is there."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from spikelens.errors import ConfigError, LogFormatError, MissingMetricError, SpikelensError
from spikelens.metrics import assign_roles, find_step_column, normalise, role_of
from spikelens.model import LogMessage, Restart, Run, Superseded

if TYPE_CHECKING:
    import pyarrow as pa

#: Largest step accepted: every integer up to 2^53 is exact in a float64.
_MAX_STEP = float(2**53)

#: Roles any one of which makes a log worth analysing.
ANALYSABLE = ("loss", "eval_loss", "grad_norm", "loss_scale", "skipped", "lr")

_NAN_WORDS = {"nan", "-nan", "+nan", "nan(ind)", "-nan(ind)", "null", "none", "na", "n/a"}
_POS_INF = {"inf", "+inf", "infinity", "+infinity", "1.#inf", "inf.0"}
_NEG_INF = {"-inf", "-infinity", "-1.#inf"}


@dataclass
class RawLog:
    """A reader's output: rows in file order, values as written."""

    frame: pd.DataFrame  # train (or mixed) rows, file order; includes the step column
    step_column: str | None = None  # None: find it by name
    eval_frame: pd.DataFrame | None = None  # rows the reader knows are evaluation rows
    nan_mask: dict[str, np.ndarray] = field(default_factory=dict)  # rows with a logged NaN
    row_lines: np.ndarray | None = None  # 1-based source line (or record) of each row
    row_unit: str = "line"  # what row_lines count: "line", or "record" for binary formats
    warnings: list[str] = field(default_factory=list)
    interval: int | None = None  # logging interval, when the format states it
    averaged: bool = False  # values are averages over the interval
    name: str | None = None  # run name, for files holding several runs
    eval_step_column: str | None = None
    messages: list[LogMessage] = field(default_factory=list)  # non-metric lines kept
    params: dict[str, Any] = field(default_factory=dict)  # run configuration, if stated


class Reader(Protocol):
    """One log format. `sniff` scores how sure it is that `path` is its format, in [0, 1]."""

    name: str
    description: str

    def sniff(self, path: Path, head: bytes) -> float: ...

    def read(self, path: Path) -> list[RawLog]: ...


def env_flag(name: str) -> bool:
    """Whether an opt-in switch in the environment is on ("1", "true", "yes", "on")."""
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def lines_note(lines: Sequence[int], limit: int = 3) -> str:
    """`line 7` / `lines 7, 9, 12, ...` for a warning."""
    shown = ", ".join(str(n) for n in lines[:limit])
    more = ", ..." if len(lines) > limit else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def skip_warning(path: Path | str, count: int, what: str, lines: Sequence[int]) -> str:
    return f"{path}: skipped {count} {what} ({lines_note(lines)})"


#: What a number looks like: the cells the vectorised cast takes. Anything else that is not a
#: NaN/Inf/true/false word goes through Python's `float` one by one (`1_000`, full-width
#: digits), which only ever sees the few odd cells of a numeric column.
_NUMBER_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
#: Above this many rows, a column whose first cells hold few distinct values (a run name, a
#: phase) is dictionary-encoded, and only its distinct values are parsed.
_DICT_MIN_ROWS = 4096


def _text_verdict(bad: int, numbers: int) -> bool:
    """A column is text when more of its present cells fail to parse than the few a torn
    line leaves behind (3) and than half of the cells that do parse."""
    return bad > max(3, 0.5 * numbers)


def _parse_strings(
    sa: pa.Array, decided: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Parse a pyarrow string array. Returns (values, logged NaN, unparseable, is_text).

    Vectorised: trimming, the number pattern and the NaN/Inf/boolean words are pyarrow
    kernels. Only the cells none of them takes go through Python, and those stop as soon as
    the column is sure to be text (`decided` is False while it could still be a metric)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(sa)
    out = np.full(n, np.nan)
    logged = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    if n == 0:
        return out, logged, bad, False
    # strip whitespace, then quotes, then whitespace again (`" 1.5 "` is 1.5)
    t = pc.utf8_trim_whitespace(pc.utf8_trim(pc.utf8_trim_whitespace(sa), '"'))

    def mask(arr: pa.Array) -> np.ndarray:
        m: np.ndarray = pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
        return m

    present = mask(pc.greater(pc.utf8_length(t), 0))
    number = mask(pc.match_substring_regex(t, _NUMBER_RE)) & present
    if number.any():
        out[number] = pc.cast(pc.filter(t, pa.array(number)), pa.float64()).to_numpy(
            zero_copy_only=False)
    rest = present & ~number
    if rest.any():
        low = pc.utf8_lower(t)
        for words, value in ((_NAN_WORDS, np.nan), (_POS_INF, np.inf), (_NEG_INF, -np.inf),
                             ({"true"}, 1.0), ({"false"}, 0.0)):
            hit = mask(pc.is_in(low, value_set=pa.array(sorted(words), pa.string()))) & rest
            if hit.any():
                out[hit] = value
                if value != value:
                    logged |= hit
                rest &= ~hit
    odd = np.flatnonzero(rest)
    if len(odd) == 0:
        return out, logged, bad, False
    numbers = int(np.count_nonzero(~np.isnan(out)))
    nbad = 0
    for lo in range(0, len(odd), 256):  # fetched in blocks: a text column stops early
        block = odd[lo:lo + 256]
        for i, s in zip(block.tolist(), t.take(pa.array(block)).to_pylist(), strict=True):
            try:
                f = float(s)
            except (ValueError, TypeError):
                bad[i] = True
                nbad += 1
                # even if every cell not yet seen parsed, this column would be text
                if not decided and _text_verdict(nbad, numbers + len(odd) - nbad):
                    bad[odd] |= np.isnan(out[odd])
                    return out, logged, bad, True
                continue
            out[i] = f
            logged[i] = f != f
    return out, logged, bad, _text_verdict(nbad, int(np.count_nonzero(~np.isnan(out))))


def _arrow_strings(values: pd.Series) -> pa.Array | pa.ChunkedArray | None:
    """The column as pyarrow strings, or None when it mixes decoded floats with strings (a
    JSON column that is a number on some lines and text on others). A column read in blocks
    comes as the chunks it was read in (`_one_array` joins them when needed)."""
    import pyarrow as pa

    arr = values.array
    try:
        if values.dtype == object:
            obj = np.asarray(arr, dtype=object)
            try:
                sa = pa.array(obj, type=pa.string())
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                sa = pa.array(obj)  # dates, times: text to be parsed like any other
                if not pa.types.is_temporal(sa.type):
                    return None
        else:
            sa = pa.array(arr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    if not (pa.types.is_string(sa.type) or pa.types.is_large_string(sa.type)):
        sa = sa.cast(pa.string())
    return sa


def _one_array(sa: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The chunks joined into one array (a copy of every string: 4-17 ms for a million)."""
    import pyarrow as pa

    return sa.combine_chunks() if isinstance(sa, pa.ChunkedArray) else sa


def coerce_numeric(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strings to float64. Returns (values, logged_nan_mask, unparseable_mask).

    Missing cells (None, empty) become NaN and are *not* in the logged-NaN mask; the words
    NaN/Infinity in any spelling are kept as NaN/inf and the NaN ones are flagged.
    """
    arr, logged, bad, _ = _coerce(values, decided=True)
    return arr, logged, bad


def _coerce(
    values: pd.Series, decided: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """`coerce_numeric`, plus whether the column is text (then the unparsed rest of it is
    marked bad without being parsed, unless `decided`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    if values.dtype.kind in "fiub":
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return arr, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), False
    sa = _arrow_strings(values)
    if sa is None:
        # an object column built by a JSON decoder: its floats were written as numbers (a
        # float NaN there was written in the log), its strings are parsed as text cells
        obj = np.asarray(values.to_numpy(dtype=object), dtype=object)
        is_str = np.fromiter((type(v) is str for v in obj), bool, n)
        is_float = np.fromiter((type(v) is float for v in obj), bool, n)
        out = np.full(n, np.nan)
        logged = np.zeros(n, dtype=bool)
        # anything else that is there (a date object, a list) is not a number
        bad = ~(is_str | is_float) & np.fromiter((v is not None for v in obj), bool, n)
        num = np.flatnonzero(is_float)
        out[num] = obj[num].astype(np.float64)
        logged[num] = np.isnan(out[num])
        idx = np.flatnonzero(is_str)
        o, lg, b, _ = _parse_strings(pa.array(obj[idx].tolist(), type=pa.string()), True)
        out[idx], logged[idx], bad[idx] = o, lg, b
        return out, logged, bad, _text_verdict(int(bad.sum()), int((~np.isnan(out)).sum()))
    first = set(sa.slice(0, 1024).to_pylist())
    if n > _DICT_MIN_ROWS and len(first) <= 16:
        if not decided and _label_is_text(sa, first):
            # text for sure: like `_parse_strings` when it stops early, the cells are
            # marked bad without being parsed. The caller drops a text column's values:
            # they are a read-only view of one NaN, not 8 MB written for a million rows.
            bad = pc.is_valid(sa).to_numpy(zero_copy_only=False)
            return np.broadcast_to(np.nan, n), np.zeros(n, dtype=bool), bad, True
        # a label column (run name, phase): parse its few distinct values only
        sa = _one_array(sa)
        enc = sa.dictionary_encode()
        dictionary, indices = enc.dictionary, enc.indices
        if len(dictionary) <= n // 16:
            o, lg, b, _ = _parse_strings(dictionary, True)
            valid = pc.is_valid(indices).to_numpy(zero_copy_only=False)
            if not len(o):  # nothing but missing cells
                return np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool), False
            idx = pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
            out = np.where(valid, o[idx], np.nan)
            logged = valid & lg[idx]
            bad = valid & b[idx]
            text = _text_verdict(int(bad.sum()), int((~np.isnan(out)).sum()))
            return out, logged, bad, text
    return _parse_strings(_one_array(sa), decided)


def _label_is_text(sa: pa.Array | pa.ChunkedArray, first: set[Any]) -> bool:
    """Whether a column whose first cells hold a few words is text, known without encoding
    it: the cells equal to those of its first words that do not parse are bad cells, every
    other present cell at most a number, and `_text_verdict` grows with the one and falls
    with the other. One string comparison per word (2-3 ms on a million cells) instead of
    a dictionary encoding (25-30 ms) and the gathers after it; the verdict is the one the
    dictionary path gives (a False here sends the column down that path)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    words = sorted(w for w in first if w is not None)
    if not words:
        return False
    _, _, unparsed, _ = _parse_strings(pa.array(words, pa.string()), True)
    bad = 0
    for word, odd in zip(words, unparsed.tolist(), strict=True):
        if odd:
            bad += int(pc.sum(pc.equal(sa, word)).as_py() or 0)
    return _text_verdict(bad, len(sa) - sa.null_count - bad)


def _header_rows(raw_frame: pd.DataFrame) -> np.ndarray:
    """Rows that repeat the whole header (a resumed job that wrote its header again): every
    cell is its own column's name or empty, and at least two cells (the only one, in a
    one-column table) are names. A data row where one cell happens to equal its column name
    (a `phase` column holding "phase") is data."""
    n = len(raw_frame)
    cand = np.ones(n, dtype=bool)
    named = np.zeros(n, dtype=np.int64)
    for name in raw_frame.columns:
        s = raw_frame[name]
        if s.dtype.kind in "fiub":
            missing = s.isna().to_numpy(dtype=bool)
            if not missing.any():
                return np.zeros(n, dtype=bool)  # a number in every row: no header row
            cand &= missing
            continue
        eq = (s == name).to_numpy(dtype=bool, na_value=False)
        named += eq
        cand &= eq | s.isna().to_numpy(dtype=bool)
        if not cand.any():
            return cand
    result: np.ndarray = cand & (named >= min(2, len(raw_frame.columns)))
    return result


def _numeric_frame(
    raw_frame: pd.DataFrame, nan_mask: Mapping[str, np.ndarray]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray, list[str], dict[str, np.ndarray]]:
    """Coerce every column; report rows that are repeated headers, columns that are text,
    and, per numeric column, the cells that held something other than a number (they are
    read as missing, and the caller says so)."""
    cols: dict[str, np.ndarray] = {}
    unparsed: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {k: v for k, v in nan_mask.items() if v.any()}
    n = len(raw_frame)
    header_rows = _header_rows(raw_frame) if n else np.zeros(0, dtype=bool)
    text_cols: list[str] = []
    for name in raw_frame.columns:
        s = raw_frame[name]
        if s.dtype.kind in "fiub":
            cols[str(name)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        if header_rows.any():
            s = s.mask(pd.Series(header_rows, index=s.index))  # header cells are not values
        arr, logged, bad, text = _coerce(s)
        if text:
            text_cols.append(str(name))  # a text column (run name, tags): not a metric
            continue
        if bad.any():
            arr[bad] = np.nan
            unparsed[str(name)] = bad
        cols[str(name)] = arr
        if logged.any():
            prev = masks.get(str(name))
            masks[str(name)] = logged if prev is None else (prev | logged)
    frame = pd.DataFrame(cols, index=pd.RangeIndex(n), copy=False)
    return frame, masks, header_rows, text_cols, unparsed


def _odd_cell_warnings(path: Path | str, frame: pd.DataFrame,
                       unparsed: Mapping[str, np.ndarray], keep: np.ndarray,
                       step_col: str | None, where: Callable[[np.ndarray], str],
                       what: str = "column") -> list[str]:
    """One warning per metric column with cells that are not numbers (`abc`, `-`, `1.2.3`):
    their rows are kept and the cells read as missing, which a user must hear about. Rows
    not kept and the step column's cells (rows without a step) are warned about elsewhere.
    `where(rows)` says where the rows are (their source lines, or the eval rows' steps)."""
    out = []
    for col, bad in unparsed.items():
        rows = bad & keep
        if col == step_col or not rows.any():
            continue
        idx = np.flatnonzero(rows)
        first = _cell_text(frame[col].iloc[int(idx[0])])
        out.append(f"{path}: {len(idx)} value(s) of {what} {col!r} are not numbers "
                   f"(first {first}), read as missing ({where(idx)})")
    return out


def _source_lines(raw: RawLog, idx: np.ndarray) -> list[int]:
    """1-based source lines of the rows `idx`: the reader's, or row + 2 (a header line
    first) when it gave none."""
    src = raw.row_lines[idx] if raw.row_lines is not None else idx + 2
    return [int(x) for x in src]


def _lines_where(raw: RawLog) -> Callable[[np.ndarray], str]:
    """`lines 4, 11, ...` of the given rows."""
    return lambda idx: lines_note(_source_lines(raw, idx))


def _steps_where(steps: np.ndarray) -> Callable[[np.ndarray], str]:
    """`steps 50, 100, ...` of the given rows (eval rows keep no source line)."""
    def where(idx: np.ndarray) -> str:
        at = steps[idx]
        return "steps " + ", ".join(str(int(x)) for x in at[:3]) + \
            (", ..." if len(at) > 3 else "")
    return where


def odd_cell_warnings(raw: RawLog, path: Path | str,
                      numeric: Collection[str] = ()) -> list[str]:
    """The warnings `build_run` gives about cells that are not numbers, for a piece of a log
    read on its own (`spikelens watch` reads what was appended, then builds its runs from
    a tail that no longer knows the source lines). `numeric`: columns known to be metrics
    from the rows before, whose odd cells are said even where the piece alone would take
    the column for text."""
    if all(raw.frame[c].dtype.kind in "fiub" for c in raw.frame.columns):
        return []  # only a column of strings can hold such a cell
    frame, _, header_rows, text_cols, unparsed = _numeric_frame(raw.frame, {})
    for col in text_cols:
        if col in numeric:
            s = raw.frame[col]
            _, _, bad = coerce_numeric(s.mask(pd.Series(header_rows, index=s.index)))
            if bad.any():
                unparsed[col] = bad
    if not unparsed:
        return []
    try:
        step_col, steps, _ = _steps_of(Path(path), frame, raw.step_column, "log", raw.frame)
    except SpikelensError:
        return []  # no step column: build_run says so
    keep = ~header_rows & np.isfinite(steps)
    return _odd_cell_warnings(path, raw.frame, unparsed, keep, step_col, _lines_where(raw))


def _empty(col: pd.Series) -> bool:
    """Whether a column holds no value (a look at its first cells settles most columns)."""
    arr = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.isnan(arr[:1024]).all() and np.isnan(arr).all())


def _all_empty(frame: pd.DataFrame, eval_frame: pd.DataFrame,
               nan_steps: Mapping[str, np.ndarray]) -> set[str]:
    """The columns of either frame with no value and no logged NaN."""
    return {str(c) for f in (frame, eval_frame) for c in f.columns
            if c not in nan_steps and _empty(f[c])}


def _cell_text(value: Any, limit: int = 20) -> str:
    """A cell as a warning quotes it: its repr, the text cut after `limit` characters."""
    if isinstance(value, str):
        value = value.strip()
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _last_per_step(
    steps: np.ndarray, values: np.ndarray, logged_nan: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last present value of each step (present = finite, inf, or a logged NaN).

    Returns (unique steps, values, logged-NaN flag) for the steps where the column is present.
    """
    present = ~np.isnan(values)
    if logged_nan is not None:
        present |= logged_nan
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return np.empty(0, np.int64), np.empty(0), np.empty(0, bool)
    st = steps[idx]
    # stable sort by step keeps file order inside a step: the last one is the last write
    order = np.argsort(st, kind="stable")
    st_sorted = st[order]
    last = np.ones(len(st_sorted), dtype=bool)
    last[:-1] = st_sorted[1:] != st_sorted[:-1]
    pick = idx[order[last]]
    flags = logged_nan[pick] if logged_nan is not None else np.zeros(len(pick), bool)
    return steps[pick], values[pick], flags


def _collapse(
    frame: pd.DataFrame, steps: np.ndarray, masks: Mapping[str, np.ndarray]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """One row per step, last write wins per column. Returns also the winning row per step
    of the first column that is present everywhere it is logged (used for segments)."""
    monotonic = len(steps) < 2 or bool(np.all(steps[1:] > steps[:-1]))
    if monotonic:
        out = frame.set_axis(pd.Index(steps, name="step"), axis=0)
        return out, {c: steps[m] for c, m in masks.items() if m.any()}, np.arange(len(steps))
    uniq = np.unique(steps)
    data: dict[str, np.ndarray] = {}
    nan_steps: dict[str, np.ndarray] = {}
    for c in frame.columns:
        st, vals, flags = _last_per_step(steps, frame[c].to_numpy(), masks.get(c))
        col = np.full(len(uniq), np.nan)
        col[np.searchsorted(uniq, st)] = vals
        data[c] = col
        if flags.any():
            nan_steps[c] = st[flags]
    # the row that wrote each step last (any column), for segment bookkeeping
    order = np.argsort(steps, kind="stable")
    ss = steps[order]
    last = np.ones(len(ss), dtype=bool)
    last[:-1] = ss[1:] != ss[:-1]
    winner = order[last]
    return pd.DataFrame(data, index=pd.Index(uniq, name="step")), nan_steps, winner


def _conflict_warning(path: Path, frame: pd.DataFrame, steps: np.ndarray,
                      masks: Mapping[str, np.ndarray], segment_of_row: np.ndarray) -> list[str]:
    """A warning when one pass of the log wrote two different values of a metric at one
    step (a table of many runs at one step, two engines printing the same key): the last
    is kept, as for a resume, but unlike a resume nothing else says so. Only the metrics
    the analysis reads are compared (`ANALYSABLE` roles by name: a W&B `_timestamp` that
    differs between a train row and an eval row of one step is bookkeeping). Rows of
    different passes (a replay after a restart) and rows that fill different columns
    (Lightning's train and val rows) are not conflicts."""
    order = np.argsort(steps, kind="stable")
    ss = steps[order]
    eq = ss[1:] == ss[:-1]
    dup = np.zeros(len(ss), dtype=bool)
    dup[1:] |= eq
    dup[:-1] |= eq
    rows = order[dup]  # step-sorted, file order inside a step
    st, seg = steps[rows], segment_of_row[rows]
    cols: list[str] = []
    hit: set[int] = set()
    for c in frame.columns:
        role = role_of(str(c))
        if role is None or role[0] not in ANALYSABLE:
            continue
        v = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)[rows]
        m = masks.get(c)
        present = ~np.isnan(v) if m is None else (~np.isnan(v) | m[rows])
        r = np.flatnonzero(present)
        a, b = r[:-1], r[1:]
        with np.errstate(invalid="ignore"):
            same = (v[a] == v[b]) | (np.isnan(v[a]) & np.isnan(v[b]))
        bad = (st[a] == st[b]) & (seg[a] == seg[b]) & ~same
        if bad.any():
            cols.append(str(c))
            hit.update(int(x) for x in st[b[bad]])
    if not cols:
        return []
    first = sorted(hit)
    shown = ", ".join(map(str, first[:3])) + (", ..." if len(first) > 3 else "")
    names = ", ".join(cols[:3]) + (", ..." if len(cols) > 3 else "")
    return [f"{path}: {len(first)} step(s) hold two or more different values of the same "
            f"metric ({names}; steps {shown}): the last written is kept (several runs or "
            "writers in one table?)"]


def _restarts(steps: np.ndarray) -> tuple[Restart, ...]:
    back = np.flatnonzero(steps[1:] < steps[:-1]) + 1
    return tuple(
        Restart(row=int(i), resumed_at=int(steps[i]), previous_last=int(steps[i - 1]),
                segment=k + 1)
        for k, i in enumerate(back)
    )


def _superseded(frame: pd.DataFrame, masks: Mapping[str, np.ndarray], steps: np.ndarray,
                segment_of_row: np.ndarray, restarts: Sequence[Restart]
                ) -> tuple[Superseded, ...]:
    """The rows a rollback replaced: for each restart that went back (steps logged again),
    the rows of the segment before it at the steps from the resume on. They are what the
    run logged before its operators rolled it back, often the very incident that made them
    do it, so the detector looks at them too (one entry per superseded segment)."""
    out = []
    for r in restarts:
        if r.replayed is None:
            continue
        rows = np.flatnonzero((segment_of_row == r.segment - 1) & (steps >= r.resumed_at))
        if not len(rows):
            continue
        sub = frame.iloc[rows].set_axis(pd.Index(steps[rows], name="step"), axis=0)
        sub = sub[~sub.index.duplicated(keep="last")].sort_index()
        # logged NaNs in those rows are evidence too
        nan_at = {c: np.unique(steps[rows][m[rows]]) for c, m in masks.items()
                  if len(m) == len(steps) and m[rows].any()}
        out.append(Superseded(segment=r.segment - 1, resumed_at=r.resumed_at,
                              last_step=r.previous_last, frame=sub, nan_steps=nan_at))
    return tuple(out)


def series_order(steps: np.ndarray, present: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """Row order that reads each series by its own step order, or None to keep file order.

    A log can interleave series that count steps differently (a TensorBoard tag logged per
    epoch next to one logged per iteration; DeepSpeed's optimizer `step=` lines next to
    DeepSpeed-Chat's `step:` lines). Read in file order, every switch from one to the other
    looks like a step counter going backwards, a false restart. A restart is where some
    series' *own* steps go back (`present[name]` marks its rows); restarts of several
    series with no row of theirs in between are one restart. Between restarts the rows are
    sorted by step (stable: equal steps keep file order, so the last write still wins), so
    that the shared restart bookkeeping sees backward steps only where a series went back."""
    n = len(steps)
    if n < 2 or bool(np.all(steps[1:] >= steps[:-1])):
        return None
    cands: list[tuple[int, int]] = []  # (row of the restart, previous row of that series)
    for mask in present.values():
        idx = np.flatnonzero(mask)
        if len(idx) < 2:
            continue
        st = steps[idx]
        back = np.flatnonzero(st[1:] < st[:-1])
        cands.extend(zip(idx[back + 1].tolist(), idx[back].tolist(), strict=True))
    bounds: list[int] = []
    for row, prev in sorted(cands):
        if bounds and prev < bounds[-1]:
            continue  # this series' first row since the last restart: the same restart
        bounds.append(row)
    edges = [0, *bounds, n]
    parts = [lo + np.argsort(steps[lo:hi], kind="stable")
             for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
    order: np.ndarray = np.concatenate(parts)
    return None if bool(np.all(order == np.arange(n))) else order


def mode_spacing(steps: np.ndarray | Sequence[float]) -> int | None:
    """The most common positive gap between consecutive steps (the logging interval), or
    None with fewer than three steps. NaN steps are ignored. One gap is not an interval:
    two points 749 steps apart are an excerpt or a skip, not a log written every 749 steps
    (and not "an average over 749 steps")."""
    arr = np.asarray(steps)
    if arr.dtype.kind != "i":  # a signed step counter has no NaN and its gaps are whole
        arr = np.asarray(arr, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
    if len(arr) < 3:
        return None
    d = np.diff(arr)
    if d[0] > 0 and bool((d == d[0]).all()):  # the usual case: a fixed interval
        return int(d[0])
    d = d[d > 0]
    if len(d) == 0:
        return None
    top = float(d.max())
    if top <= 4 * len(d) + 1024:
        whole = d.astype(np.int64, copy=False)
        if d.dtype.kind == "i" or bool(np.all(whole == d)):
            # whole-number gaps (steps are counters): counted in one pass instead of a sort
            # of every gap (0.03 s on a million steps with a few missing); the first
            # largest count is the smallest such gap, as `np.unique`'s sorted values give
            return int(np.argmax(np.bincount(whole)))
    vals, counts = np.unique(d, return_counts=True)
    return int(vals[np.argmax(counts)])


def _interval(frame: pd.DataFrame, loss_col: str | None) -> int:
    idx = frame.index.to_numpy()
    if loss_col is not None and loss_col in frame.columns:
        idx = idx[frame[loss_col].notna().to_numpy()]
    return mode_spacing(idx) or 1


#: Column names that can serve as the step axis when a log has no step counter (a daily
#: logbook by date, a monitor that stamps each line with the time).
TIME_AXIS_NAMES = ("date", "day", "datetime", "timestamp", "_timestamp", "time", "wall_time")


def _time_steps(values: pd.Series) -> tuple[np.ndarray, str] | None:
    """Dates or timestamps as integer steps: days since the first date when every value is
    a whole day, else seconds since the first timestamp; None when most cells are not times.
    Returns (float steps, NaN where a cell is not a time; what a step counts)."""
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("ignore")  # "could not infer format": the fallback below handles it
        ts = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
        if ts.notna().sum() * 2 <= values.notna().sum():
            ts = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)
    ok = ts.notna().to_numpy()
    if not ok.any() or ok.sum() * 2 <= values.notna().sum():
        return None
    ns = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    day = 86_400 * 10**9
    first = int(ns[ok].min())
    if bool(np.all(ns[ok] % day == 0)):
        steps = (ns - first) // day
        unit = f"days since {pd.Timestamp(first, tz='UTC').date()}"
    else:
        steps = (ns - first) // 10**9
        unit = f"seconds since {pd.Timestamp(first, tz='UTC').isoformat()}"
    out = steps.astype(np.float64)
    out[~ok] = np.nan
    return out, unit


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _epoch_axis(frame: pd.DataFrame) -> str | None:
    """An `epoch` column that can stand for the step in a log with no step counter: numeric,
    whole numbers wherever it is written, at least two rows. A fractional epoch (HF's
    0.22, 0.43) is a metric, not a counter."""
    for name in frame.columns:
        if normalise(str(name)) != "epoch" or frame[name].dtype.kind not in "fiu":
            continue
        v = frame[name].to_numpy(dtype=np.float64)
        ok = np.isfinite(v)
        if ok.sum() >= 2 and np.array_equal(v[ok], np.round(v[ok])):
            return str(name)
    return None


def _steps_of(
    path: Path, frame: pd.DataFrame, step_col: str | None, what: str,
    raw_frame: pd.DataFrame | None = None,
) -> tuple[str, np.ndarray, str | None]:
    """(step column, steps as floats, note when the steps were made from dates or times).

    A numeric column is the step counter as written. A column of dates or timestamps (named
    by `--metric step=COL`, or found by name when the log has no step counter) counts days
    or seconds from its first value."""
    col = step_col or find_step_column(frame.columns)
    if col is None and raw_frame is not None:
        for name in raw_frame.columns:
            if normalise(str(name)) in TIME_AXIS_NAMES and str(name) not in frame.columns:
                col = str(name)  # a text column of dates (a numeric one is a metric)
                break
    if col is None:
        epoch = _epoch_axis(frame)
        if epoch is not None:
            return epoch, frame[epoch].to_numpy(), (
                f"{path}: no step column: the {epoch!r} column, whole numbers, is the step "
                "(one row per epoch)")
    if col is not None and raw_frame is not None and col in raw_frame.columns \
            and raw_frame[col].dtype.kind not in "fiub" and raw_frame[col].notna().any() \
            and (col not in frame.columns or not frame[col].notna().any()):
        timed = _time_steps(raw_frame[col])
        if timed is None:
            raise LogFormatError(f"{path}: step column {col!r} holds neither numbers nor "
                                 "dates or timestamps")
        steps, unit = timed
        return col, steps, f"{path}: steps are {unit} (from the {col!r} column)"
    if col is None or col not in frame.columns:
        found = ", ".join(map(str, frame.columns)) or "none"
        if len(frame.columns) and all(_is_number(str(c)) for c in frame.columns):
            # a headerless table: its first row was taken for column names
            raise MissingMetricError(
                f"{path}: no header line: the first line ({found}) is data; add a line "
                "naming the columns (step, loss, ...)")
        raise MissingMetricError(f"{path}: no step column in the {what} (found: {found})")
    return col, frame[col].to_numpy(), None


def build_run(
    raw: RawLog,
    path: Path,
    fmt: str,
    overrides: Mapping[str, str] | None = None,
) -> Run:
    """The shared half of reading: RawLog (as written) -> canonical Run."""
    warnings = list(raw.warnings)
    raw_frame = raw.frame
    if raw_frame.columns.has_duplicates:
        # two columns with one name (a header written twice, names equal once stripped):
        # keep both, apart, rather than let one shadow the other
        seen: dict[str, int] = {}
        names = []
        for c in map(str, raw_frame.columns):
            k = seen.get(c, 0)
            seen[c] = k + 1
            names.append(c if k == 0 else f"{c}.{k}")
        dup = sorted({c for c, k in seen.items() if k > 1})
        warnings.append(f"{path}: repeated column name(s) {', '.join(dup)}: later ones "
                        "renamed with a .1, .2 suffix")
        # a NaN mask keyed by the shared name cannot say which column it was: keep the
        # masks of names that were unique only
        masks_kept = {c: m for c, m in raw.nan_mask.items() if c not in dup}
        raw = dataclasses.replace(raw, frame=raw_frame.set_axis(names, axis=1),
                                  nan_mask=masks_kept)
    frame, masks, header_rows, text_cols, unparsed = _numeric_frame(raw.frame, raw.nan_mask)

    def lines_of(rows: np.ndarray) -> list[int]:
        return _source_lines(raw, np.flatnonzero(rows))

    overrides = dict(overrides or {})
    step_override = overrides.pop("step", None)
    if step_override is not None and step_override not in raw.frame.columns:
        found = ", ".join(map(str, raw.frame.columns)) or "none"
        raise ConfigError(f"--metric step={step_override}: no such column (found: {found})")
    step_col, steps_f, step_note = _steps_of(path, frame, step_override or raw.step_column,
                                             "log", raw.frame)
    if step_note is not None:
        warnings.append(step_note)
        text_cols = [c for c in text_cols if c != step_col]
    # a step beyond 2^53 is not an integer a float can hold, nor a training step
    keep = ~header_rows & np.isfinite(steps_f) & (np.abs(steps_f) <= _MAX_STEP)
    if header_rows.any():
        hl = lines_of(header_rows)
        warnings.append(skip_warning(path, len(hl), "repeated header line(s)", hl))
    orphan = ~header_rows & ~keep
    if orphan.any():
        ol = lines_of(orphan)
        warnings.append(skip_warning(path, len(ol), "row(s) without a step", ol))
    warnings += _odd_cell_warnings(path, raw.frame, unparsed, keep, step_col,
                                   _lines_where(raw))
    if not keep.all():
        frame = frame[keep].reset_index(drop=True)
        masks = {c: m[keep] for c, m in masks.items()}
        steps_f = steps_f[keep]
    if not len(steps_f):
        raise LogFormatError(f"{path}: no data rows (a header, or nothing with a valid step)")
    steps = steps_f.astype(np.int64)
    if len(steps) and not np.array_equal(steps, steps_f):
        warnings.append(f"{path}: non-integer steps in {step_col!r} were truncated")
    metric_frame = frame.drop(columns=[step_col]) if step_col in frame.columns else frame
    masks.pop(step_col, None)
    restarts = _restarts(steps)
    kept_rows = np.flatnonzero(keep)
    for r in restarts:
        if r.replayed:
            row = int(kept_rows[r.row])
            line = int(raw.row_lines[row]) if raw.row_lines is not None else row + 2
            warnings.append(
                f"{path}: restart at {raw.row_unit} {line}: steps {r.replayed[0]}-"
                f"{r.replayed[1]} were logged again; the later values win"
            )
    collapsed, nan_steps, winner = _collapse(metric_frame, steps, masks)
    segment_of_row = np.zeros(len(steps), dtype=np.int64)
    for r in restarts:
        segment_of_row[r.row:] = r.segment
    segment_of_step = segment_of_row[winner] if restarts else None
    if len(winner) < len(steps):  # some step was written more than once
        warnings += _conflict_warning(path, metric_frame, steps, masks, segment_of_row)
    superseded = _superseded(metric_frame, masks, steps, segment_of_row, restarts)

    eval_frame = pd.DataFrame(index=pd.Index([], dtype=np.int64, name="step"))
    if raw.eval_frame is not None and len(raw.eval_frame):
        ef, emasks, _, _, eunparsed = _numeric_frame(raw.eval_frame, {})
        ecol, esteps, _ = _steps_of(path, ef, raw.eval_step_column or raw.step_column,
                                    "eval rows")
        ok = ~np.isnan(esteps)
        warnings += _odd_cell_warnings(path, raw.eval_frame, eunparsed, ok, ecol,
                                       _steps_where(esteps), "eval column")
        ef = ef[ok].drop(columns=[ecol])
        renames = {c: f"eval/{c}" for c in ef.columns if c in collapsed.columns}
        ef = ef.rename(columns=renames)
        ef.index = pd.Index(esteps[ok].astype(np.int64), name="step")
        eval_frame = ef.groupby(level=0, sort=True).last()
        for c, m in emasks.items():
            nan_steps[renames.get(c, c)] = esteps[ok][m[ok]].astype(np.int64)

    columns = list(collapsed.columns) + list(eval_frame.columns)
    roles = assign_roles(columns, overrides, eval_columns=eval_frame.columns)
    # a column with no value at all (a config line's `lr` that only the stepless first
    # row held, next to the steps' own `train/lr`) takes no role: the role goes to a
    # column that has values, and the empty one stays an extra
    empty = {c for r, c in roles.items() if (overrides or {}).get(r) != c
             and _empty(collapsed[c] if c in collapsed.columns else eval_frame[c])
             and c not in nan_steps}
    lost: list[str] = []  # loss-like columns that lost their role for having no value
    if empty:
        lost = sorted({c for r, c in roles.items() if r in ANALYSABLE and c in empty})
        roles = assign_roles(columns, overrides, eval_columns=eval_frame.columns,
                             empty=_all_empty(collapsed, eval_frame, nan_steps))
    roles = _durations_are_step_times(roles, collapsed, overrides)
    if not any(r in roles for r in ANALYSABLE):
        found = ", ".join(columns) or "none"
        if lost:
            # the column is there but every cell is blank: say so, not "no loss"
            raise MissingMetricError(f"{path}: no value in the loss-like column(s) "
                                     f"{', '.join(lost)} (every row is empty; found: {found})")
        raise MissingMetricError(f"{path}: no loss-like metric (found: {found})")
    if text_cols:
        warnings.append(f"{path}: ignored non-numeric column(s): {', '.join(text_cols)}")
    interval = raw.interval or _interval(collapsed, roles.get("loss"))
    return Run(
        source=str(path),
        format=fmt,
        frame=collapsed,
        roles=roles,
        eval_frame=eval_frame,
        nan_steps=nan_steps,
        restarts=restarts,
        interval=max(1, int(interval)),
        averaged=raw.averaged,
        segment_of_step=segment_of_step,
        warnings=tuple(warnings),
        name=raw.name,
        params=dict(raw.params),
        messages=tuple(raw.messages),
        superseded=superseded,
    )


#: A `wall_time` column whose value falls from one logged step to the next at least this
#: often holds per-step durations, not a clock: a clock goes back only where a job restarts,
#: a duration half the time (noise around a constant).
_DURATION_FALLS = 0.2


def _durations_are_step_times(roles: dict[str, str], frame: pd.DataFrame,
                              overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The `wall_time` role moved to `step_time` when its column holds per-step durations.
    `time` is a clock in some logs (a W&B export's seconds since the start) and the time an
    iteration took in others (nanoGPT's `iter 10: loss 3.9, time 250.13ms`, mmengine's
    `time: 0.2345`): read as a clock, a per-iteration time was never looked at for
    slowdowns. Its values say which: positive, and falling at `_DURATION_FALLS` or more of
    the steps, or never changing (a clock moves). A role the user gave (`--metric
    wall_time=...`) or a run with a step time of its own keeps its roles."""
    col = roles.get("wall_time")
    if col is None or "step_time" in roles or col not in frame.columns or \
            (overrides or {}).get("wall_time") == col:
        return roles
    v = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if len(v) < 3 or bool((v <= 0).any()):
        return roles
    d = np.diff(v)
    if float(np.mean(d < 0)) < _DURATION_FALLS and bool((d != 0).any()):
        return roles
    return {("step_time" if r == "wall_time" else r): c for r, c in roles.items()}


_CTRL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")


def looks_binary(head: bytes) -> bool:
    """Control bytes (other than tab, newline, CR, ESC) in the first KiB mean not text."""
    sample = head[:1024]
    if not sample:
        return False
    return len(_CTRL.findall(sample)) > max(1, len(sample) // 100)
