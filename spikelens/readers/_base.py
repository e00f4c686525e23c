"""What every reader shares. A reader only parses: it turns bytes into one or more `RawLog`
tables in file order. `build_run` then does, once for every format, the work that makes logs
comparable: finding the step column, coercing values (`"16.475"`, `nan`, `Infinity` in any
spelling), dropping repeated header rows, detecting restarts (a step counter that goes
backwards), keeping the last write of each step, keeping eval rows apart, inferring the
logging interval, assigning metric roles and checking that something analysable is there."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError, MissingMetricError
from spikelens.metrics import assign_roles, find_step_column
from spikelens.model import LogMessage, Restart, Run, Superseded

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


def lines_note(lines: Sequence[int], limit: int = 3) -> str:
    """`line 7` / `lines 7, 9, 12, ...` for a warning."""
    shown = ", ".join(str(n) for n in lines[:limit])
    more = ", ..." if len(lines) > limit else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def skip_warning(path: Path | str, count: int, what: str, lines: Sequence[int]) -> str:
    return f"{path}: skipped {count} {what} ({lines_note(lines)})"


def coerce_numeric(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strings to float64. Returns (values, logged_nan_mask, unparseable_mask).

    Missing cells (None, empty) become NaN and are *not* in the logged-NaN mask; the words
    NaN/Infinity in any spelling are kept as NaN/inf and the NaN ones are flagged.
    """
    n = len(values)
    if values.dtype.kind in "fiub":
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return arr, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    # In an object column (built by a JSON decoder) a float NaN was written in the log; in a
    # pandas string column NaN only marks a missing cell.
    decoded = values.dtype == object
    obj = np.asarray(values.to_numpy(dtype=object), dtype=object)
    present = np.array(
        [v is not None and v is not pd.NA and v != "" and (decoded or v == v) for v in obj],
        dtype=bool,
    ) if n else np.zeros(0, bool)
    # vectorised first pass; only cells it cannot parse (or parses to NaN) go through Python
    out = np.array(pd.to_numeric(values, errors="coerce"), dtype=np.float64)
    logged_nan = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(np.isnan(out) & present):
        v = obj[i]
        if isinstance(v, float):  # a real NaN written by a JSON/arrow decoder
            logged_nan[i] = True
            continue
        s = str(v).strip().strip('"').strip()
        if not s:
            continue
        low = s.lower()
        if low in _NAN_WORDS:
            logged_nan[i] = True
        elif low in _POS_INF:
            out[i] = np.inf
        elif low in _NEG_INF:
            out[i] = -np.inf
        elif low in ("true", "false"):
            out[i] = 1.0 if low == "true" else 0.0
        else:
            try:
                f = float(s)
            except ValueError:
                bad[i] = True
                continue
            out[i] = f
            logged_nan[i] = f != f
    return out, logged_nan, bad


def _numeric_frame(
    raw_frame: pd.DataFrame, nan_mask: Mapping[str, np.ndarray]
) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray, list[str]]:
    """Coerce every column; report rows that are repeated headers and columns that are text."""
    cols: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {k: v for k, v in nan_mask.items() if v.any()}
    n = len(raw_frame)
    header_rows = np.zeros(n, dtype=bool)
    text_cols: list[str] = []
    for name in raw_frame.columns:
        s = raw_frame[name]
        if s.dtype.kind in "fiub":
            cols[str(name)] = s.to_numpy(dtype=np.float64, na_value=np.nan)
            continue
        # a repeated header line carries the column's own name as its value
        is_header = (s.astype(object) == name).to_numpy(dtype=bool)
        header_rows |= is_header
        arr, logged, bad = coerce_numeric(s)
        bad &= ~is_header
        if bad.sum() > max(3, 0.5 * (~np.isnan(arr)).sum()):
            text_cols.append(str(name))  # a text column (run name, tags): not a metric
            continue
        arr[bad] = np.nan
        cols[str(name)] = arr
        if logged.any():
            prev = masks.get(str(name))
            masks[str(name)] = logged if prev is None else (prev | logged)
    frame = pd.DataFrame(cols, index=pd.RangeIndex(n), copy=False)
    return frame, masks, header_rows, text_cols


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


def mode_spacing(steps: np.ndarray | Sequence[float]) -> int | None:
    """The most common positive gap between consecutive steps (the logging interval), or
    None with fewer than two steps. NaN steps are ignored."""
    arr = np.asarray(steps, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if len(arr) < 2:
        return None
    d = np.diff(arr)
    if d[0] > 0 and bool((d == d[0]).all()):  # the usual case: a fixed interval
        return int(d[0])
    d = d[d > 0]
    if len(d) == 0:
        return None
    vals, counts = np.unique(d, return_counts=True)
    return int(vals[np.argmax(counts)])


def _interval(frame: pd.DataFrame, loss_col: str | None) -> int:
    idx = frame.index.to_numpy()
    if loss_col is not None and loss_col in frame.columns:
        idx = idx[frame[loss_col].notna().to_numpy()]
    return mode_spacing(idx) or 1


def _steps_of(
    path: Path, frame: pd.DataFrame, step_col: str | None, what: str
) -> tuple[str, np.ndarray]:
    col = step_col or find_step_column(frame.columns)
    if col is None or col not in frame.columns:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise MissingMetricError(f"{path}: no step column in the {what} (found: {found})")
    return col, frame[col].to_numpy()


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
    frame, masks, header_rows, text_cols = _numeric_frame(raw.frame, raw.nan_mask)

    def lines_of(rows: np.ndarray) -> list[int]:
        # 1-based source lines of the given rows (row number + 1 for a header by default)
        idx = np.flatnonzero(rows)
        src = raw.row_lines[idx] if raw.row_lines is not None else idx + 2
        return [int(x) for x in src]

    step_col, steps_f = _steps_of(path, frame, raw.step_column, "log")
    # a step beyond 2^53 is not an integer a float can hold, nor a training step
    keep = ~header_rows & np.isfinite(steps_f) & (np.abs(steps_f) <= _MAX_STEP)
    if header_rows.any():
        hl = lines_of(header_rows)
        warnings.append(skip_warning(path, len(hl), "repeated header line(s)", hl))
    orphan = ~header_rows & ~keep
    if orphan.any():
        ol = lines_of(orphan)
        warnings.append(skip_warning(path, len(ol), "row(s) without a step", ol))
    if not keep.all():
        frame = frame[keep].reset_index(drop=True)
        masks = {c: m[keep] for c, m in masks.items()}
        steps_f = steps_f[keep]
    if not len(steps_f):
        raise LogFormatError(f"{path}: no data rows (a header, or nothing with a valid step)")
    steps = steps_f.astype(np.int64)
    if len(steps) and not np.array_equal(steps, steps_f):
        warnings.append(f"{path}: non-integer steps in {step_col!r} were truncated")
    metric_frame = frame.drop(columns=[step_col])
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
    superseded = _superseded(metric_frame, masks, steps, segment_of_row, restarts)

    eval_frame = pd.DataFrame(index=pd.Index([], dtype=np.int64, name="step"))
    if raw.eval_frame is not None and len(raw.eval_frame):
        ef, emasks, _, _ = _numeric_frame(raw.eval_frame, {})
        ecol, esteps = _steps_of(path, ef, raw.eval_step_column or raw.step_column, "eval rows")
        ok = ~np.isnan(esteps)
        ef = ef[ok].drop(columns=[ecol])
        renames = {c: f"eval/{c}" for c in ef.columns if c in collapsed.columns}
        ef = ef.rename(columns=renames)
        ef.index = pd.Index(esteps[ok].astype(np.int64), name="step")
        eval_frame = ef.groupby(level=0, sort=True).last()
        for c, m in emasks.items():
            nan_steps[renames.get(c, c)] = esteps[ok][m[ok]].astype(np.int64)

    columns = list(collapsed.columns) + list(eval_frame.columns)
    roles = assign_roles(columns, overrides, eval_columns=eval_frame.columns)
    if not any(r in roles for r in ANALYSABLE):
        found = ", ".join(columns) or "none"
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


_CTRL = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")


def looks_binary(head: bytes) -> bool:
    """Control bytes (other than tab, newline, CR, ESC) in the first KiB mean not text."""
    sample = head[:1024]
    if not sample:
        return False
    return len(_CTRL.findall(sample)) > max(1, len(sample) // 100)
