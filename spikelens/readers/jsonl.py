"""JSON-lines reader: one JSON object per line, as written by hand-rolled loggers, W&B offline
runs (`wandb-history.jsonl`) and fairseq/metaseq (`... | INFO | train_inner | {...}`).
Large files take a fast path: the file is memory-mapped, and when most lines share one key
template (`_jsonl_template`) numpy checks them and pyarrow's casts convert their values;
otherwise one regex pass finds the few lines that are not a plain `{...}` object (blank,
torn, prefixed, tracebacks), those are blanked out, and pyarrow's multithreaded JSON parser
reads the rest (it accepts `NaN`/`Infinity` and
keeps them apart from missing cells). The lines set aside go through `json.loads` one by
one, and so does the whole file when pyarrow refuses it (a column that is a number on one
line and a string on another): the slow path is the reference, the fast path must agree with
it. Nested objects are flattened one level with `/` (`{"train": {"loss": 1}}` ->
`train/loss`); W&B media references (objects with a `_type`) are skipped. Eval records are
kept out of the train columns: fairseq `valid`/`test` records (told by the prefix) and
records marked by a `mode`/`split`/`phase`/`stage` field (mmcv writes `"mode": "val"`) go to
the eval frame; records whose keys are all eval-ish (`eval_loss`) stay in the main frame,
where roles keep them apart. fairseq epoch summaries (`| train |`) repeat the per-update
records as epoch means, so they are dropped without a warning. Blank lines are skipped
silently; any other line that is not a JSON object is skipped and reported with its line
number, except in a prefixed log, where lines without a JSON record are ordinary log text."""

from __future__ import annotations

import bisect
import io
import json
import math
import mmap
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError
from spikelens.metrics import STEP_NAMES, normalise
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, lines_note, looks_binary, skip_warning
from spikelens.readers._jsonl_template import _drop_pages, _is_object, template_parse

if TYPE_CHECKING:
    import pyarrow as pa

_BOM = b"\xef\xbb\xbf"
_LBRACE, _RBRACE, _NL = 0x7B, 0x7D, 0x0A

# A newline that does not sit between "}" and "{" borders a line that is not a plain
# one-object line. Starting with a literal newline lets `re` skip from newline to newline at
# memchr speed, which a pattern like `[^}]\n` cannot (it is ten times slower).
_ODD_NEWLINE = re.compile(rb"\n(?:(?<!\}\n)|(?!\{))")
# After a prefix, a JSON object opens with a key or closes at once; `{'a': 1}` (a Python
# repr in a log message) or `{epoch}` is log text, not a torn record.
_JSON_OPEN = re.compile(rb"\{\s*[\"}]")

#: Row kinds.
TRAIN, EVAL, SUMMARY = 0, 1, 2

_EVAL_TAG = re.compile(r"(?:eval|evaluation|val|valid|validation|test|dev)(?:[_\-.\d]\w*)?", re.I)
_FAIRSEQ_TAG = re.compile(rb"\|\s*(?:train_inner|train|valid\w*|test\w*)\s*\|\s*$")
_DISCRIMINATORS = ("mode", "split", "phase", "stage", "subset")
_EVAL_VALUES = {"eval", "evaluation", "val", "valid", "validation", "test", "dev"}
_TRAIN_VALUES = {"train", "training", "train_inner", "fit"}
# W&B's `_step` counts `wandb.log` calls (an eval log bumps it too); the trainer's own step
# is the one to analyse when the run logged it.
_WANDB_STEPS = ("trainer/global_step", "train/global_step")

_BLOCK_SIZE = 1 << 22  # pyarrow block; a single line longer than this falls back to json
_MANY_ODD = 64  # above this many odd lines in a window, map its newlines once
# below this size pyarrow's JSON parser is cheap enough; the template path's fixed costs
# (learning the template, a second parse of the other lines) are not worth it
_TEMPLATE_MIN_BYTES = 1 << 20


# -- records -> columns (shared with the HF trainer_state reader) ----------------------------


def _number(v: int) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer beyond float range is still a (huge) number
        return math.copysign(math.inf, v)


def flatten_record(rec: dict[str, Any], dropped: set[str]) -> dict[str, Any]:
    """Scalar fields of one record, nested objects flattened one level with `/`.

    Values are float or str (numbers written as strings are coerced later, by `build_run`);
    null means "not logged" and is left out. Lists and deeper objects are not metrics: their
    names go to `dropped`. W&B media references (objects with a `_type`) are skipped.
    """
    out: dict[str, Any] = {}
    for key, v in rec.items():
        t = type(v)
        if t is float or t is str:
            out[key] = v
        elif t is int:
            out[key] = _number(v)
        elif v is None:
            continue
        elif t is bool:
            out[key] = 1.0 if v else 0.0
        elif t is dict:
            if "_type" in v:
                continue
            for k2, v2 in v.items():
                t2 = type(v2)
                name = f"{key}/{k2}"
                if t2 is float or t2 is str:
                    out[name] = v2
                elif t2 is int:
                    out[name] = _number(v2)
                elif t2 is bool:
                    out[name] = 1.0 if v2 else 0.0
                elif v2 is not None:
                    dropped.add(name)
        else:
            dropped.add(key)
    return out


def _to_array(col: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Values (None = missing) as float64, or as objects where text appears; and the mask
    of logged NaNs (float NaN, as opposed to None)."""
    n = len(col)
    if any(type(v) is str for v in col):
        arr = np.empty(n, dtype=object)
        arr[:] = col
        return arr, np.fromiter((type(v) is float and v != v for v in col), bool, n)
    farr = np.array(col, dtype=np.float64)
    logged = np.isnan(farr)
    if logged.any():
        logged &= np.fromiter((v is not None for v in col), bool, n)
    return farr, logged


class ColumnBuilder:
    """Accumulates flattened records column by column. Every 64k rows the Python lists are
    turned into arrays, so a million-line fallback holds arrays, not millions of floats."""

    _CHUNK = 1 << 16

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {}  # values of the rows since `base`
        self.chunks: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self.n = 0
        self.base = 0

    def add(self, rec: dict[str, Any]) -> None:
        n = self.n - self.base
        cols = self.cols
        for key, v in rec.items():
            col = cols.get(key)
            if col is None:
                col = cols[key] = [None] * n
            elif len(col) < n:
                col.extend([None] * (n - len(col)))
            col.append(v)
        self.n += 1
        if self.n - self.base >= self._CHUNK:
            self._flush()

    def _flush(self) -> None:
        n = self.n - self.base
        for key, col in self.cols.items():
            col.extend([None] * (n - len(col)))
            arr, logged = _to_array(col)
            self.chunks.setdefault(key, []).append((self.base, arr, logged))
        self.cols = {key: [] for key in self.cols}
        self.base = self.n

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Columns (float64, or object where text appears) and logged-NaN masks."""
        self._flush()
        out: dict[str, np.ndarray] = {}
        nan: dict[str, np.ndarray] = {}
        for key, chunks in self.chunks.items():
            text = any(arr.dtype == object for _, arr, _ in chunks)
            full = np.full(self.n, None, dtype=object) if text else np.full(self.n, np.nan)
            logged = np.zeros(self.n, dtype=bool)
            for start, arr, mask in chunks:
                end = start + len(arr)
                full[start:end] = _as_object(arr, mask) if text else arr
                logged[start:end] = mask
            out[key] = full
            if logged.any():
                nan[key] = logged
        return out, nan


def _is_text(arr: Any) -> bool:
    """Whether a column holds text: an object array (the line-by-line path), or the
    Arrow-backed string array pyarrow's columns are kept as (`_text_column`)."""
    return isinstance(arr, pd.api.extensions.ExtensionArray) or arr.dtype == object


def _present(arr: Any, logged: np.ndarray | None) -> np.ndarray:
    if isinstance(arr, pd.api.extensions.ExtensionArray):
        return ~np.asarray(arr.isna(), dtype=bool)
    if arr.dtype == object:
        return np.fromiter((v is not None for v in arr), bool, len(arr))
    ok: np.ndarray = ~np.isnan(arr)
    if logged is not None:
        ok |= logged
    return ok


def _as_object(arr: Any, logged: np.ndarray | None) -> np.ndarray:
    """A column as objects: None where missing, float NaN where the log wrote NaN (for a
    column that mixes numbers and text)."""
    if isinstance(arr, pd.api.extensions.ExtensionArray):
        none: Any = None
        obj: np.ndarray = arr.to_numpy(dtype=object, na_value=none)
        return obj
    if arr.dtype == object:
        same: np.ndarray = arr
        return same
    out: np.ndarray = arr.astype(object)
    missing = np.isnan(arr)
    if logged is not None:
        missing &= ~logged
    out[missing] = None
    return out


def split_frames(
    cols: dict[str, np.ndarray],
    nan: dict[str, np.ndarray],
    kinds: np.ndarray,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], pd.DataFrame | None, np.ndarray]:
    """Train and eval parts of the rows (SUMMARY rows dropped), each with only the columns it
    has values in. Returns (frame, its nan masks, eval frame or None, train-row selector)."""
    train = kinds == TRAIN
    evals = kinds == EVAL
    if train.all():
        return pd.DataFrame(cols, copy=False), nan, None, train
    frame: dict[str, np.ndarray] = {}
    fmask: dict[str, np.ndarray] = {}
    eframe: dict[str, np.ndarray] = {}
    for key, arr in cols.items():
        logged = nan.get(key)
        present = _present(arr, logged)
        if (present & train).any():
            frame[key] = arr[train]
            if logged is not None and logged[train].any():
                fmask[key] = logged[train]
        if (present & evals).any():
            el = logged[evals] if logged is not None else None
            if el is not None and el.any():
                # RawLog has no NaN mask for eval rows, and the shared coercion reads a float
                # NaN object as missing: the word NaN is what it keeps as a logged NaN
                col = _as_object(arr[evals], el).copy()
                col[el] = "NaN"
                eframe[key] = col
            else:
                eframe[key] = arr[evals]
    # the name build_run would give an eval column that shares a train column's name, given
    # here so that its logged-NaN steps are filed under the eval name too
    # (step counters keep their name: they are the eval frame's index)
    eframe = {
        f"eval/{k}" if k in frame and normalise(k) not in STEP_NAMES else k: v
        for k, v in eframe.items()
    }
    index = pd.RangeIndex(int(train.sum()))
    ev = pd.DataFrame(eframe, index=pd.RangeIndex(int(evals.sum()))) if evals.any() else None
    return pd.DataFrame(frame, index=index), fmask, ev, train


# -- the slow path: one line at a time --------------------------------------------------------


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return repr(text[:40] + "..." if len(text) > 40 else text)


def _prefix_kind(prefix: bytes) -> tuple[int, str]:
    """(kind, tag) from what precedes the JSON: fairseq's `... | INFO | valid | `."""
    text = prefix.decode("utf-8", "replace").strip().rstrip(":|").strip()
    tag = text.rsplit("|", 1)[-1].strip() if "|" in text else text
    if _EVAL_TAG.fullmatch(tag):
        return EVAL, tag
    if tag == "train" and "|" in text:
        return SUMMARY, tag
    return TRAIN, tag


# A `\\ud800`-`\\udfff` escape: JSON text can spell a UTF-16 surrogate that pairs with
# nothing, which no UTF-8 string (pandas, pyarrow) can hold.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _fix_text(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # a lone surrogate: U+FFFD, the replacement character
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _without_lone_surrogates(v: Any) -> Any:
    """The decoded record with every lone surrogate in its keys and strings replaced."""
    if type(v) is str:
        return _fix_text(v)
    if type(v) is dict:
        return {_fix_text(k): _without_lone_surrogates(x) for k, x in v.items()}
    if type(v) is list:
        return [_without_lone_surrogates(x) for x in v]
    return v


class _LineParser:
    """Parses lines one by one with `json.loads`; the reference behaviour."""

    def __init__(self) -> None:
        self.columns = ColumnBuilder()
        self.lines: list[int] = []
        self.kinds: list[int] = []
        self.malformed: list[int] = []
        self.textual: list[int] = []  # no JSON object on the line at all
        self.first_bad: tuple[int, bytes] | None = None
        self.prefixed = 0
        self.fairseq = False
        self.summaries = 0
        self.dropped: set[str] = set()
        self.surrogates: list[int] = []  # lines where a lone surrogate was replaced

    def _bad(self, lineno: int, s: bytes, into: list[int]) -> None:
        into.append(lineno)
        if self.first_bad is None:
            self.first_bad = (lineno, s)

    def feed(self, lineno: int, raw: bytes) -> None:
        s = raw.strip()
        if s.startswith(_BOM):
            s = s[3:].lstrip()
        if not s:
            return
        i = s.find(b"{")
        if i < 0 or (i > 0 and not _JSON_OPEN.match(s, i)):
            self._bad(lineno, s, self.textual)
            return
        try:
            obj = json.loads(s[i:] if i else s)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            self._bad(lineno, s, self.malformed)
            return
        if type(obj) is not dict:
            self._bad(lineno, s, self.malformed)
            return
        if _SURROGATE_ESCAPE.search(s) is not None:
            fixed = _without_lone_surrogates(obj)
            if fixed != obj:
                obj = fixed
                self.surrogates.append(lineno)
        kind, tag = TRAIN, ""
        if i:
            self.prefixed += 1
            prefix = s[:i]
            if _FAIRSEQ_TAG.search(prefix):
                self.fairseq = True
            kind, tag = _prefix_kind(prefix)
            if kind == SUMMARY:
                self.summaries += 1
                return
        rec = flatten_record(obj, self.dropped)
        if kind == EVAL and f"{tag}_num_updates" in rec:
            # fairseq prefixes every key of an eval record with its subset name; one step
            # column name for all subsets lets them share the eval frame
            rec["num_updates"] = rec.pop(f"{tag}_num_updates")
        self.columns.add(rec)
        self.lines.append(lineno)
        self.kinds.append(kind)

    def skipped(self, records: int) -> list[int]:
        """Lines to report: malformed ones, and text lines unless most of the `records` were
        prefixed (a program's log with JSON records in it: the text lines are its ordinary
        output, not damage)."""
        if self.prefixed and 2 * self.prefixed >= records:
            return self.malformed
        return sorted(self.malformed + self.textual)


# -- the fast path: memory map, scan, pyarrow ------------------------------------------------


@dataclass
class _Part:
    cols: dict[str, np.ndarray]
    nan: dict[str, np.ndarray]
    lines: np.ndarray
    kinds: np.ndarray


def _count_newlines(arr: np.ndarray, start: int, end: int,
                    buf: mmap.mmap | bytearray | None = None) -> int:
    total = 0
    step = 1 << 24  # bounded temporaries: never a bool array the size of the file
    for s in range(start, end, step):
        total += int(np.count_nonzero(arr[s:min(s + step, end)] == _NL))
        if buf is not None:
            _drop_pages(buf, s, min(s + step, end))
    return total


_WINDOW = 1 << 24


def _odd_line_starts(
    buf: mmap.mmap | bytearray, arr: np.ndarray
) -> tuple[list[int], dict[int, int], int]:
    """Start offsets of the lines that are not a bare `{...}` between newlines, the line
    number of each, and the number of newlines in the file: all from one pass over the map
    (it used to take three, each faulting the whole file in again: 0.37 to 0.25 CPU-s on a
    358 MB log)."""
    n = len(buf)
    starts: set[int] = set()
    if buf[0] != _LBRACE:
        starts.add(0)
    line_of: dict[int, int] = {}
    before: list[int] = []  # newlines before each window
    newlines = 0
    for lo in range(0, n, _WINDOW):
        hi = min(n, lo + _WINDOW)
        here: set[int] = set()
        # the pattern looks one byte past the newline: the window ends one byte later
        for m in _ODD_NEWLINE.finditer(buf, lo, min(n, hi + 1)):
            p = m.start()
            if p >= hi:
                break
            if p == 0 or buf[p - 1] != _RBRACE:
                here.add(buf.rfind(b"\n", 0, p) + 1)
            if p + 1 < n and buf[p + 1] != _LBRACE:
                here.add(p + 1)
        starts |= here
        before.append(newlines)
        inside = sorted(x for x in here if lo <= x <= hi)
        if len(inside) > _MANY_ODD:  # map the window's newlines once
            nl = np.flatnonzero(arr[lo:hi] == _NL)
            at = np.searchsorted(nl, np.asarray(inside) - lo).tolist()
            line_of.update((s, newlines + k + 1) for s, k in zip(inside, at, strict=True))
            newlines += len(nl)
        else:
            pos = lo
            for s in inside:
                newlines += int(np.count_nonzero(arr[pos:s] == _NL))
                line_of[s] = newlines + 1
                pos = s
            newlines += int(np.count_nonzero(arr[pos:hi] == _NL))
        _drop_pages(buf, lo, hi)
    if buf[n - 1] not in (_NL, _RBRACE):
        starts.add(buf.rfind(b"\n") + 1)
    for s in starts - line_of.keys():
        # a line that began in an earlier window (or the file's first or last line)
        w = s // _WINDOW
        line_of[s] = before[w] + _count_newlines(arr, w * _WINDOW, s, buf) + 1
    return sorted(starts), line_of, newlines


class _Blanked(io.RawIOBase):
    """The file read through its own handle, with the set-aside lines blanked on the fly: the
    parser gets the bytes it would get from a blanked copy, and the file is never held in
    memory (neither copied nor counted as mapped pages)."""

    def __init__(self, path: Path, ranges: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._ranges = sorted(ranges)
        self._starts = [s for s, _ in self._ranges]

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        pos = self._fh.tell()
        n = self._fh.readinto(b)
        if not n:
            return 0
        view = memoryview(b)
        k = max(0, bisect.bisect_right(self._starts, pos) - 1)
        while k < len(self._ranges) and self._ranges[k][0] < pos + n:
            s, e = self._ranges[k]
            lo, hi = max(s, pos), min(e, pos + n)
            if hi > lo:
                view[lo - pos:hi - pos] = b" " * (hi - lo)
            k += 1
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _arrow_part(held: list[pa.Table], lines: np.ndarray, dropped: set[str]) -> _Part:
    """The table pyarrow parsed (taken out of `held`) as numpy columns. Each column's Arrow
    buffers are handed back once it is converted, so the table and the columns are never
    both whole in memory."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = held.pop()
    pool = pa.default_memory_pool()

    cols: dict[str, np.ndarray] = {}
    nan: dict[str, np.ndarray] = {}

    def add(name: str, col: pa.ChunkedArray, top: bool) -> list[tuple[str, Any, bool]]:
        """Converts one column into `cols`; returns a struct column's children, to add
        next (not a recursive call: a closure that calls itself is a reference cycle, and
        the command's process runs without the cyclic collector, `cli._no_cycle_collector`,
        so the cycle would keep `cols` and its arrays until exit)."""
        t = col.type
        if pa.types.is_null(t):
            return []  # null on every line: never logged
        if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
            # an integer beyond 2**53 rounds to the nearest float, as float(int) does in
            # the slow path (a safe cast would raise)
            arr = (col if t == pa.float64() else pc.cast(col, pa.float64(), safe=False)
                   ).to_numpy()
            if pa.types.is_floating(t):
                isnan = np.isnan(arr)
                if isnan.any():
                    if col.null_count:
                        isnan &= ~pc.is_null(col).to_numpy()
                    if isnan.any():
                        nan[name] = isnan
            cols[name] = arr
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            cols[name] = _text_column(col)
        elif pa.types.is_temporal(t):
            # pyarrow reads ISO-looking strings as timestamps; they are text to spikelens
            cols[name] = _text_column(pc.cast(col, pa.string()))
        elif pa.types.is_struct(t) and top:
            names = [t.field(i).name for i in range(t.num_fields)]
            if "_type" in names:
                return []  # a W&B media reference, not a value
            return [(f"{name}/{child}", pc.struct_field(col, [i]), False)
                    for i, child in enumerate(names)]
        else:
            dropped.add(name)
        return []

    for name in list(table.column_names):
        col = table.column(0)
        table = table.remove_column(0)
        for child in add(name, col, True):  # a struct's fields, which have none of their own
            add(*child)
        del col
        pool.release_unused()
    return _Part(cols, nan, lines, np.zeros(len(lines), dtype=np.int8))


def _text_column(col: pa.ChunkedArray) -> Any:
    """A string column as the Arrow-backed array pandas would make of its Python strings
    (dtype `str`, missing cells NA), without making the Python strings: pandas turns an
    object column of strings into this very array when the frame is built, and the shared
    coercion (`_base._coerce`) reads it back as Arrow. On the 1M-line JSONL the two text
    columns went Arrow -> objects -> Arrow for 0.14 s; now 2 ms."""
    return col.to_pandas().array


def _read_arrow(source: Any) -> pa.Table | None:
    """pyarrow's JSON parse of the map (blanked), or of the file through `open_source()`, a
    function that opens a fresh stream of it (`_Blanked`).

    The streaming reader goes first: it holds one block at a time besides the table, half
    the peak memory of `read_json` for the same CPU time. It fixes the column types from the
    first block, so a log whose types change later (an integer column that turns float, a
    key first seen after the first block) is read again by `read_json`, which sees it all."""
    import pyarrow as pa
    import pyarrow.json as pj

    if isinstance(source, (mmap.mmap, bytearray)):
        buf = source

        def source() -> Any:
            return pa.BufferReader(pa.py_buffer(buf))

    opts = pj.ReadOptions(block_size=_BLOCK_SIZE, use_threads=True)
    try:
        with source() as stream:
            reader = pj.open_json(stream, read_options=opts)
            return pa.Table.from_batches(list(reader), schema=reader.schema)
    except (pa.ArrowException, ValueError, OverflowError):
        pass
    try:
        # one thread: on several, the columns of keys first seen in different blocks come
        # in the order the blocks finish, so one file read twice could give two orders
        # (a key only on line 1 first in one read, last in the next); on one, they come in
        # the order of first appearance, as everywhere else
        whole = pj.ReadOptions(block_size=_BLOCK_SIZE, use_threads=False)
        with source() as stream:
            return pj.read_json(stream, read_options=whole)
    except (pa.ArrowException, ValueError, OverflowError):
        # a type that changes between lines, `nan` spelt in lower case, a line longer than a
        # block, duplicate keys: all legal for the slow path, which then reads everything
        return None


def _merge(a: _Part, b: _Part) -> _Part:
    """Rows of two parts interleaved by source line."""
    if not len(b.lines):
        return a
    if not len(a.lines):
        return b
    lines = np.concatenate([a.lines, b.lines])
    order = np.argsort(lines, kind="stable")
    na, nb = len(a.lines), len(b.lines)
    cols: dict[str, np.ndarray] = {}
    nan: dict[str, np.ndarray] = {}
    for key in list(a.cols) + [k for k in b.cols if k not in a.cols]:
        ca, cb = a.cols.get(key), b.cols.get(key)
        ma, mb = a.nan.get(key), b.nan.get(key)
        if (ca is not None and _is_text(ca)) or (cb is not None and _is_text(cb)):
            left = _as_object(ca, ma) if ca is not None else np.full(na, None, dtype=object)
            right = _as_object(cb, mb) if cb is not None else np.full(nb, None, dtype=object)
        else:
            left = ca if ca is not None else np.full(na, np.nan)
            right = cb if cb is not None else np.full(nb, np.nan)
        cols[key] = np.concatenate([left, right])[order]
        if ma is not None or mb is not None:
            m = np.concatenate([
                ma if ma is not None else np.zeros(na, bool),
                mb if mb is not None else np.zeros(nb, bool),
            ])[order]
            nan[key] = m
    return _Part(cols, nan, lines[order], np.concatenate([a.kinds, b.kinds])[order])


def _parser_part(p: _LineParser) -> _Part:
    cols, nan = p.columns.finish()
    return _Part(cols, nan, np.asarray(p.lines, dtype=np.int64),
                 np.asarray(p.kinds, dtype=np.int8))


def _open(path: Path) -> tuple[Any, mmap.mmap | bytearray]:
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller after the map is released
    try:
        # a private copy-on-write map: no read() copy of the whole file, and the few odd
        # lines can be blanked in place without touching the file
        return fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    except (ValueError, OSError):  # empty file, or not mappable (a pipe)
        try:
            return fh, bytearray(fh.read())
        except BaseException:
            fh.close()
            raise


def _release(fh: Any, buf: mmap.mmap | bytearray) -> None:
    if isinstance(buf, mmap.mmap):
        try:
            buf.close()
        except BufferError:  # a view is still alive; the collector unmaps it later
            pass
    fh.close()


def _parse(buf: mmap.mmap | bytearray, path: Path | None = None) -> tuple[_Part, _LineParser]:
    """All records of the buffer, in line order, plus the parser that saw the odd lines.
    With `path`, pyarrow reads the file itself with the odd lines blanked on the fly
    (`_Blanked`) instead of reading a blanked copy of the map."""
    parser = _LineParser()
    arr = np.frombuffer(buf, dtype=np.uint8)
    try:
        # most lines of a flat log share one key template: checked with numpy and converted
        # with pyarrow's casts, without its JSON parser (`_jsonl_template`)
        templated = template_parse(buf, arr) if len(buf) >= _TEMPLATE_MIN_BYTES else None
        if templated is not None:
            odd = [(s, e, bytes(buf[s:e])) for _, s, e in templated.odd]
            numbers = [n for n, _, _ in templated.odd]
            total, table = templated.total, templated.table
            expected = total - len(odd)
            del templated
        else:
            starts, line_of, newlines = _odd_line_starts(buf, arr)
            odd = []  # (start, end, text) of lines set aside
            for s in starts:
                e = buf.find(b"\n", s)
                e = len(buf) if e < 0 else e
                text = bytes(buf[s:e])
                if _is_object(text):
                    continue  # padded or CRLF, but a plain object line: pyarrow takes it
                odd.append((s, e, text))
            numbers = [line_of[s] for s, _, _ in odd]
            total = newlines + (buf[len(buf) - 1] != _NL)
            expected = total - len(odd)
            table = None
        if table is None and expected > 0 and path is not None:
            import pyarrow as pa

            ranges = [(s, e) for s, e, _ in odd]
            file = path

            def blanked() -> Any:
                return pa.PythonFile(_Blanked(file, ranges), mode="r")

            table = _read_arrow(blanked)
        elif table is None and expected > 0:
            for s, e, _ in odd:
                buf[s:e] = b" " * (e - s)
            table = _read_arrow(buf)
            for s, e, text in odd:
                buf[s:e] = text
        if expected > 0 and (table is None or table.num_rows != expected):
            # pyarrow refused the file or saw another number of objects than lines (two
            # objects on one line): read every line with json
            table = None
            parser = _LineParser()
            pos, lineno = 0, 1
            while pos < len(buf):
                e = buf.find(b"\n", pos)
                e = len(buf) if e < 0 else e
                parser.feed(lineno, bytes(buf[pos:e]))
                pos, lineno = e + 1, lineno + 1
            return _parser_part(parser), parser
    finally:
        del arr
    for n, (_, _, text) in zip(numbers, odd, strict=True):
        parser.feed(n, text)
    slow = _parser_part(parser)
    if table is None:
        return slow, parser
    set_aside = np.asarray(numbers, dtype=np.int64) - 1
    fast_lines = np.delete(np.arange(1, total + 1, dtype=np.int64), set_aside)
    held = [table]
    del table  # `_arrow_part` holds the only reference, and frees the table column by column
    fast = _arrow_part(held, fast_lines, parser.dropped)
    return _merge(fast, slow), parser


def _apply_discriminator(part: _Part) -> None:
    """Rows marked `"mode": "val"` (or split/phase/stage/subset) are eval rows; the marker
    column is consumed."""
    for key in list(part.cols):
        col = part.cols[key]
        if key.lower() not in _DISCRIMINATORS or not _is_text(col):
            continue
        # the distinct values decide (a million rows hold two or three of them)
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        vals = [v.strip().lower() if isinstance(v, str) else v for v in uniques]
        known = _EVAL_VALUES | _TRAIN_VALUES
        # an Arrow string column has no logged NaN: its missing cells are all missing
        logged_nan = not isinstance(col, pd.api.extensions.ExtensionArray) and any(
            v is not None for v in col[codes < 0])
        if not all(v in known for v in vals) or logged_nan:
            continue  # other words, or a logged NaN: not a train/eval marker
        evalish = np.array([v in _EVAL_VALUES for v in vals] + [False], dtype=bool)
        is_eval = evalish[codes]  # a missing value (code -1) takes the last entry: not eval
        part.kinds[is_eval & (part.kinds == TRAIN)] = EVAL
        del part.cols[key]
        part.nan.pop(key, None)


def dropped_warning(path: Path, dropped: Iterable[str]) -> str:
    """The warning naming the non-scalar fields that were not read."""
    names = sorted(dropped)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{path}: ignored {len(names)} non-scalar field(s) (lists, nested objects): {shown}"


class JsonlReader:
    name = "jsonl"
    description = "JSON lines: one object per line (W&B wandb-history.jsonl, fairseq json logs)"

    def sniff(self, path: Path, head: bytes) -> float:
        if not head or looks_binary(head):
            return 0.0
        if head.startswith(_BOM):
            head = head[3:]
        ext = path.suffix.lower()
        by_ext = ext in (".jsonl", ".ndjson", ".jsonlines")
        lines = head.split(b"\n")
        if len(lines) > 1 and not head.endswith(b"\n"):
            lines.pop()  # probably cut by the 64 KiB head
        nonblank = [s for s in (ln.strip() for ln in lines[:200]) if s]
        if not nonblank:
            return 0.0
        records = prefixed = tagged = 0
        first_record = False
        for k, s in enumerate(nonblank):
            i = s.find(b"{")
            if i < 0 or (i > 0 and not _JSON_OPEN.match(s, i)):
                continue
            try:
                obj = json.loads(s[i:])
            except (ValueError, RecursionError):
                continue
            if type(obj) is not dict:
                continue
            if "log_history" in obj:
                return 0.0  # a one-line trainer_state.json
            if i == 0:
                records += 1
                first_record = first_record or k == 0
            else:
                prefixed += 1
                tagged += bool(_FAIRSEQ_TAG.search(s[:i]))
        checked = len(nonblank)
        if b'"log_history"' in head and not records:
            return 0.0  # a pretty-printed trainer_state.json
        if first_record and 2 * records >= checked:
            return 0.95 if by_ext else 0.9
        if tagged:
            return 0.85
        if records and 2 * records >= checked:
            return 0.8  # junk first (a traceback), records after
        if nonblank[0].startswith(b'{"') and (by_ext or ext == ".json"):
            return 0.6  # a record longer than the head, or torn
        if prefixed >= 2 and 2 * prefixed >= checked:
            return 0.6
        if first_record:
            return 0.5
        if by_ext:
            return 0.3
        return 0.2 if records or prefixed else 0.0

    def read(self, path: Path) -> list[RawLog]:
        fh, buf = _open(path)
        try:
            if not len(buf):
                raise LogFormatError(f"{path}: empty file")
            part, parser = _parse(buf, path)
        finally:
            _release(fh, buf)
        if not len(part.lines):
            if parser.summaries:
                raise LogFormatError(
                    f"{path}: only fairseq epoch summaries (| train |), no per-update records"
                )
            if parser.first_bad is None:
                raise LogFormatError(f"{path}: empty file")
            n, text = parser.first_bad
            raise LogFormatError(
                f"{path}: no line parses as a JSON object (line {n}: {_snippet(text)})"
            )
        warnings: list[str] = []
        skipped = parser.skipped(len(part.lines) + parser.summaries)
        if skipped:
            warnings.append(skip_warning(path, len(skipped), "malformed line(s)", skipped))
        if parser.dropped:
            warnings.append(dropped_warning(path, parser.dropped))
        if parser.surrogates:
            warnings.append(
                f"{path}: replaced lone UTF-16 surrogate escapes (\\ud800-\\udfff) with U+FFFD "
                f"in {lines_note(parser.surrogates)}")
        _apply_discriminator(part)
        frame, nan, eval_frame, train = split_frames(part.cols, part.nan, part.kinds)
        step_col: str | None = None
        eval_step: str | None = None
        if parser.fairseq and "num_updates" in frame.columns:
            step_col = "num_updates"
        elif "_step" in frame.columns:
            have = frame["_step"].notna().to_numpy()
            for name in _WANDB_STEPS:
                if name in frame.columns and (frame[name].notna().to_numpy() >= have).all():
                    step_col = name
                    break
        if eval_frame is not None and "num_updates" in eval_frame.columns and parser.fairseq:
            eval_step = "num_updates"
        return [RawLog(
            frame=frame,
            step_column=step_col,
            eval_frame=eval_frame,
            nan_mask=nan,
            row_lines=part.lines[train],
            warnings=warnings,
            eval_step_column=eval_step,
        )]


READERS.add("jsonl", JsonlReader())
