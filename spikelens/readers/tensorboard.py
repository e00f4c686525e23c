"""TensorBoard event files (`events.out.tfevents.*`), read without tensorflow, tensorboard or
protobuf. A path is one event file or a run directory. The event files of a directory (and
of its immediate subdirectories) are grouped by the directory they sit in; each group is
one stream whose files are read in the order they were written: by the timestamp in the
file name (`events.out.tfevents.<unix_ts>.<host>.<pid>.<n>`), then by the wall time of
their first event. Rows keep that write order across files, so a resumed job that logs
steps again shows up as a restart. Tags of files in the top directory keep their names; tags
of files in a subdirectory are prefixed with it (`train/epoch_loss`). A subdirectory whose
name reads as evaluation (`eval`, `val`, `valid`, `validation`, `test`, `dev`, alone or as a
word of the name like `loss_val`) holds evaluation rows, kept apart from the training rows
(unless there is nothing else); the other streams are merged into one table by wall time.
Deeper subdirectories are not read. Scalars come as PyTorch/tensorboardX `simple_value`s or
TF2 one-element float tensors; histograms, images, audio, text and other tensors are skipped
and counted in a warning. A torn or damaged record is skipped with a warning; a file whose
first record is not a TFRecord is an error (in a directory with other readable event files
it is skipped with a warning). Set `SPIKELENS_TB_CHECK_CRC=1` (or construct
`TensorBoardReader(check_crc=True)`) to verify every record's data checksum as well; record
lengths are always verified. The table has one row per run of consecutive events with the
same step (PyTorch writes one event per scalar), a `step` column, a `wall_time` column (the
last event's) and one column per tag; `row_lines` are record numbers within their file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError, MissingMetricError
from spikelens.paths import _is_dir, _is_file
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, env_flag, series_order
from spikelens.readers._tfrecord import (
    HEADER,
    DecodeState,
    Framing,
    frame_records,
    iter_scalars,
    masked_crc32c,
    read_file,
)

CRC_ENV = "SPIKELENS_TB_CHECK_CRC"
_EVAL_WORDS = {"eval", "evaluation", "val", "valid", "validation", "test", "dev"}
_RESERVED = ("step", "wall_time")
#: a row is emitted early once it holds this many scalars (one step logged a huge number of
#: times would otherwise be carried from chunk to chunk); equal steps collapse later anyway
_MAX_CARRY = 1 << 20


def _is_event_file(p: Path) -> bool:
    return "tfevents" in p.name


def _event_files(directory: Path) -> list[tuple[str, Path]]:
    """(subdirectory name or "", file) of every event file in `directory` and one level
    below it."""
    found: list[tuple[str, Path]] = []
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if _is_file(e) and "tfevents" in e.name:
            found.append(("", Path(e.path)))
        elif _is_dir(e):
            try:
                with os.scandir(e.path) as sub:
                    inner = sorted(sub, key=lambda x: x.name)
            except OSError:
                continue
            found.extend((e.name, Path(x.path)) for x in inner
                         if _is_file(x) and "tfevents" in x.name)
    return found


def _valid_header(head: bytes) -> bool:
    """The first 12 bytes are a TFRecord header: a plausible length whose masked crc32c
    follows it."""
    if len(head) < HEADER:
        return False
    ln = int.from_bytes(head[:8], "little")
    return ln < (1 << 40) and masked_crc32c(head[:8]) == int.from_bytes(head[8:12], "little")


def _name_timestamp(p: Path) -> float:
    m = re.search(r"tfevents\.(\d+)", p.name)
    return float(m.group(1)) if m else float("inf")


def _first_wall_time(p: Path) -> float:
    """Wall time of the first event (the file_version event), read from its first bytes."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(HEADER + 9)
    except OSError:
        return float("inf")
    if len(head) == HEADER + 9 and head[HEADER] == 0x09:
        return float(np.frombuffer(head[HEADER + 1:], dtype="<f8")[0])
    return float("inf")


def _is_eval_dir(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return any(w in _EVAL_WORDS for w in words)


@dataclass
class _Rows:
    """The wide table built from one stream: one row per run of equal steps."""

    steps: list[np.ndarray] = field(default_factory=list)
    walls: list[np.ndarray] = field(default_factory=list)
    lines: list[np.ndarray] = field(default_factory=list)
    # per block: values (columns known then, rows) and logged NaNs (or None if none)
    blocks: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    col_index: dict[str, int] = field(default_factory=dict)

    def col(self, name: str) -> int:
        cid = self.col_index.get(name)
        if cid is None:
            cid = self.col_index[name] = len(self.columns)
            self.columns.append(name)
        return cid

    @property
    def nrows(self) -> int:
        return sum(len(s) for s in self.steps)

    def add(self, steps: np.ndarray, values: np.ndarray, cols: np.ndarray, lines: np.ndarray,
            walls: np.ndarray) -> None:
        """Complete rows: runs of equal steps (the caller has cut them)."""
        n = len(steps)
        if n == 0:
            return
        new = np.empty(n, dtype=bool)
        new[0] = True
        np.not_equal(steps[1:], steps[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        nr = len(starts)
        row = np.cumsum(new) - 1
        ends = np.append(starts[1:], n) - 1
        nc = len(self.columns)
        flat = cols * nr + row
        # numpy gives no order guarantee for repeated indices: find the last write of each
        # cell explicitly when a step logged one tag twice
        stamp = np.full(nc * nr, -1, dtype=np.int64)
        order = np.arange(n, dtype=np.int64)
        stamp[flat] = order
        if not np.array_equal(stamp[flat], order):
            stamp[:] = -1
            np.maximum.at(stamp, flat, order)
            last = stamp[flat] == order
            flat, values = flat[last], values[last]
        mat = np.full(nc * nr, np.nan)
        mat[flat] = values
        isnan = np.isnan(values)
        nanmat: np.ndarray | None = None
        if isnan.any():
            nanflat = np.zeros(nc * nr, dtype=bool)
            nanflat[flat[isnan]] = True
            nanmat = nanflat.reshape(nc, nr)
        self.blocks.append((mat.reshape(nc, nr), nanmat))
        self.steps.append(steps[starts])
        self.walls.append(walls[ends])
        self.lines.append(lines[starts])

    def table(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray,
                             np.ndarray, np.ndarray]:
        """(columns, logged-NaN masks, steps, walls, lines) over all rows."""
        nr = self.nrows
        cols: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        data = [np.full(nr, np.nan) for _ in self.columns]
        nans: dict[int, np.ndarray] = {}
        at = 0
        for (mat, nanmat), st in zip(self.blocks, self.steps, strict=True):
            r = len(st)
            for cid in range(mat.shape[0]):
                data[cid][at:at + r] = mat[cid]
                if nanmat is not None and nanmat[cid].any():
                    if cid not in nans:
                        nans[cid] = np.zeros(nr, dtype=bool)
                    nans[cid][at:at + r] = nanmat[cid]
            at += r
        for cid, name in enumerate(self.columns):
            cols[name] = data[cid]
            if cid in nans:
                masks[name] = nans[cid]
        return (cols, masks, _cat(self.steps, np.int64), _cat(self.walls, np.float64),
                _cat(self.lines, np.int64))


def _cat(parts: list[np.ndarray], dtype: type[np.generic]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


class _Pivot:
    """Turns scalars in write order into rows, chunk by chunk: the run of equal steps at
    the end of a chunk may continue in the next one, so it is carried over."""

    def __init__(self, rows: _Rows) -> None:
        self.rows = rows
        self.carry: tuple[np.ndarray, ...] | None = None

    def feed(self, steps: np.ndarray, values: np.ndarray, cols: np.ndarray, lines: np.ndarray,
             walls: np.ndarray) -> None:
        parts: tuple[np.ndarray, ...] = (steps, values, cols, lines, walls)
        n = len(steps)
        if n == 0:
            return
        carry, self.carry = self.carry, None
        c = len(carry[0]) if carry is not None else 0
        # the rows of carry + chunk up to the last change of step, found in the chunk alone
        # (the carry is one run of equal steps), so the chunk is never copied to join them
        change = np.flatnonzero(steps[1:] != steps[:-1])
        if len(change):
            cut = c + int(change[-1]) + 1
        elif carry is not None and steps[0] != carry[0][-1]:
            cut = c
        else:
            cut = 0
        if c + n - cut > _MAX_CARRY:
            cut = c + n
        k = cut - c  # scalars of this chunk in complete rows
        if k < 0:  # no change at all: the carried run goes on
            assert carry is not None
            self.carry = tuple(np.concatenate([a, b]) for a, b in zip(carry, parts,
                                                                    strict=True))
            return
        if carry is not None:
            # the carried row, with the scalars of its step that open this chunk
            head = 0 if steps[0] != carry[0][-1] else \
                (int(change[0]) + 1 if len(change) else n)
            head = min(head, k)
            self.rows.add(*(np.concatenate([a, b[:head]]) for a, b in zip(carry, parts,
                                                                          strict=True)))
        else:
            head = 0
        if k > head:
            self.rows.add(*(p[head:k] for p in parts))
        if k < n:
            self.carry = tuple(p[k:] for p in parts)

    def flush(self) -> None:
        """End of a file: its last row is complete (a new file starts a new row)."""
        if self.carry is not None:
            carry, self.carry = self.carry, None
            self.rows.add(*carry)


@dataclass
class _FileReport:
    path: Path
    records: int = 0
    first_step: int | None = None
    last_step: int | None = None
    warnings: list[str] = field(default_factory=list)


def _record_note(numbers: Iterable[int], limit: int = 3) -> str:
    nums = list(numbers)
    shown = ", ".join(str(x) for x in nums[:limit])
    more = ", ..." if len(nums) > limit else ""
    return f"record{'s' if len(nums) > 1 else ''} {shown}{more}"


def _framing_warnings(path: Path, fr: Framing) -> list[str]:
    out: list[str] = []
    for d in fr.damage:
        if d.reason == "torn":
            out.append(f"{path}: skipped a torn last record (record {d.record}, "
                       f"{d.size} bytes at byte {d.offset})")
        elif d.reason == "garbage":
            out.append(f"{path}: skipped {d.size} trailing bytes at byte {d.offset} "
                       f"(record {d.record}) that are not a valid record")
        else:
            out.append(f"{path}: skipped {d.size} damaged bytes at byte {d.offset} "
                       f"(record {d.record}: bad length checksum)")
    if fr.bad_data:
        out.append(f"{path}: skipped {len(fr.bad_data)} record(s) with a bad data checksum "
                   f"({_record_note(fr.bad_data)})")
    return out


class TensorBoardReader:
    """TensorBoard event files: a file, or a run directory of them."""

    name = "tensorboard"
    description = "TensorBoard event files (PyTorch, tensorboardX, TF1/TF2), file or directory"

    def __init__(self, check_crc: bool | None = None) -> None:
        self.check_crc = check_crc

    def sniff(self, path: Path, head: bytes) -> float:
        try:
            if path.is_dir():
                return 0.95 if _event_files(path) else 0.0
            if _valid_header(head):
                return 1.0 if _is_event_file(path) else 0.9
            return 0.6 if _is_event_file(path) else 0.0
        except OSError:
            return 0.0

    def _crc(self) -> bool:
        if self.check_crc is not None:
            return self.check_crc
        return env_flag(CRC_ENV)

    def read(self, path: Path) -> list[RawLog]:
        if path.is_dir():
            files = _event_files(path)
            if not files:
                raise LogFormatError(f"{path}: no TensorBoard event files in this directory")
        else:
            files = [("", path)]
        streams: dict[str, list[Path]] = {}
        for sub, f in files:
            streams.setdefault(sub, []).append(f)
        for sub in streams:
            streams[sub].sort(key=lambda p: (_name_timestamp(p), _first_wall_time(p), p.name))
        evalish = {s for s in streams if s and _is_eval_dir(s)}
        if len(evalish) == len(streams):
            evalish = set()  # nothing but evaluation streams: they are the table
        check = self._crc()
        warnings: list[str] = []
        skipped: dict[str, int] = {}
        main: list[_Rows] = []
        evals: list[_Rows] = []
        errors: list[LogFormatError] = []
        nfiles = 0
        for sub, paths in streams.items():
            rows = _Rows()
            reports: list[_FileReport] = []
            for p in paths:
                try:
                    rep = self._read_file(p, sub, rows, check, skipped)
                except LogFormatError as exc:
                    if len(files) == 1:
                        raise
                    errors.append(exc)
                    warnings.append(f"{p}: skipped this file: "
                                    f"{str(exc).removeprefix(f'{p}: ')}")
                    reports.append(_FileReport(p))
                    continue
                nfiles += 1
                reports.append(rep)
                warnings.extend(rep.warnings)
            if len(paths) > 1:
                warnings.append(_merge_note(path / sub if sub else path, reports))
            (evals if sub in evalish else main).append(rows)
        if nfiles == 0:
            raise errors[0]
        if not any(r.nrows for r in main) and any(r.nrows for r in evals):
            main, evals = evals, []  # only the evaluation streams hold scalars
        if skipped:
            what = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items()))
            warnings.append(f"{path}: read scalars only; ignored {what}")
        frame, masks, lines = _main_table(main)
        if frame is None:
            found = ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())) or "nothing"
            raise MissingMetricError(
                f"{path}: no scalar summaries in the event file(s) (found: {found})")
        eval_frame = _eval_table(evals)
        return [RawLog(frame=frame, step_column="step", eval_frame=eval_frame,
                       nan_mask=masks, row_lines=lines, row_unit="record", warnings=warnings)]

    def _read_file(self, p: Path, sub: str, rows: _Rows, check: bool,
                   skipped: dict[str, int]) -> _FileReport:
        rep = _FileReport(p)
        try:
            buf = read_file(p)
        except OSError as exc:
            raise LogFormatError(f"{p}: cannot read ({exc.strerror or exc})") from None
        fr = frame_records(buf, str(p), check_crc=check)
        rep.warnings.extend(_framing_warnings(p, fr))
        st = DecodeState()
        pivot = _Pivot(rows)
        to_col = np.empty(0, dtype=np.int64)
        for chunk in iter_scalars(buf, fr, st):
            if len(chunk.steps) == 0:
                continue
            if len(st.tags) > len(to_col):
                to_col = np.asarray([rows.col(_column(sub, t)) for t in st.tags], dtype=np.int64)
            pivot.feed(chunk.steps, chunk.values, to_col[chunk.tag_ids],
                       fr.numbers(chunk.rec), chunk.walls)
            if rep.first_step is None:
                rep.first_step = int(chunk.steps[0])
            rep.last_step = int(chunk.steps[-1])
        pivot.flush()
        if st.malformed:
            rep.warnings.append(f"{p}: skipped {len(st.malformed)} malformed record(s) "
                                f"({_record_note(st.malformed)})")
        for k, v in st.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        return rep


def _merge_note(where: Path, reports: list[_FileReport]) -> str:
    parts = [f"steps {r.first_step}-{r.last_step} in {r.path.name}" if r.first_step is not None
             else f"no scalars in {r.path.name}" for r in reports]
    return f"{where}: read {len(reports)} event files in write order ({', '.join(parts)})"


def _column(sub: str, tag: str) -> str:
    name = f"{sub}/{tag}" if sub else tag
    # the table's own columns keep their names; a tag that collides is renamed
    return f"{name} (tag)" if name in _RESERVED else name


def _merged(streams: list[_Rows]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                           np.ndarray, np.ndarray, np.ndarray]:
    """One table from several streams, rows interleaved by wall time (each stream's own
    order kept: its running maximum wall time is the sort key)."""
    tables = [s.table() for s in streams if s.nrows]
    if len(tables) == 1:
        return tables[0]
    keys = np.concatenate([np.fmax.accumulate(np.nan_to_num(t[3], nan=-np.inf))
                           for t in tables])
    order = np.argsort(keys, kind="stable")
    sizes = [len(t[2]) for t in tables]
    total = sum(sizes)
    cols: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    at = 0
    for (tc, tm, _, _, _), size in zip(tables, sizes, strict=True):
        for name, arr in tc.items():
            if name not in cols:
                cols[name] = np.full(total, np.nan)
            cols[name][at:at + size] = arr
        for name, m in tm.items():
            if name not in masks:
                masks[name] = np.zeros(total, dtype=bool)
            masks[name][at:at + size] = m
        at += size
    steps = np.concatenate([t[2] for t in tables])[order]
    walls = np.concatenate([t[3] for t in tables])[order]
    lines = np.concatenate([t[4] for t in tables])[order]
    return ({k: v[order] for k, v in cols.items()}, {k: v[order] for k, v in masks.items()},
            steps, walls, lines)


def _main_table(
    streams: list[_Rows],
) -> tuple[pd.DataFrame | None, dict[str, np.ndarray], np.ndarray | None]:
    if not any(s.nrows for s in streams):
        return None, {}, None
    cols, masks, steps, walls, lines = _merged(streams)
    # tags that count steps differently (per epoch, per token, per iteration) interleave;
    # restarts are where a tag's own steps go back
    order = None
    if len(steps) > 1 and not bool(np.all(steps[1:] >= steps[:-1])):
        order = series_order(steps, {k: ~np.isnan(v) | masks[k] if k in masks
                                     else ~np.isnan(v) for k, v in cols.items()})
    if order is not None:
        steps, walls, lines = steps[order], walls[order], lines[order]
        cols = {k: v[order] for k, v in cols.items()}
        masks = {k: v[order] for k, v in masks.items()}
    data: dict[str, np.ndarray] = {"step": steps, "wall_time": walls}
    data.update(cols)
    frame = pd.DataFrame(data, copy=False)
    return frame, masks, lines


def _eval_table(streams: list[_Rows]) -> pd.DataFrame | None:
    if not any(s.nrows for s in streams):
        return None
    cols, masks, steps, _, _ = _merged(streams)
    data: dict[str, np.ndarray] = {"step": steps}
    for name, arr in cols.items():
        m = masks.get(name)
        if m is not None:
            # RawLog has no NaN mask for eval rows: a logged NaN is spelled out, which the
            # shared coercion reads as a logged NaN rather than a missing cell
            obj = arr.astype(object)
            obj[m] = "NaN"
            data[name] = obj
        else:
            data[name] = arr
    return pd.DataFrame(data, copy=False)


READERS.add("tensorboard", TensorBoardReader())

__all__ = ["CRC_ENV", "TensorBoardReader"]
