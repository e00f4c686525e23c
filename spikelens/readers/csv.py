"""Generic CSV/TSV reader, Lightning `metrics.csv` included (its sparse train and val rows are
just missing cells; roles keep `val_loss` out of the train loss). Parsing is pyarrow's
streaming CSV reader with the column types of the first block stated, a big file cut into
byte spans parsed on several cores, so a 200 MB file loads in well under a second. Before
parsing, the raw bytes are scanned for repeated header lines (a resumed job appends its
header again) so they never turn numeric columns into text; rows with the wrong number of
cells (a line torn by a crash) are skipped and reported with their line numbers.
`load_csv` is shared with the W&B export reader."""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError
from spikelens.metrics import find_step_column, normalise
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, looks_binary, skip_warning


@dataclass
class CsvTable:
    frame: pd.DataFrame
    nan_mask: dict[str, np.ndarray]
    warnings: list[str]
    header: list[str]
    row_lines: np.ndarray | None = None  # set when cut header lines shift the numbering


def _delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


#: The header and malformed-row scans read the map a window at a time and hand each window's
#: pages back (MADV_DONTNEED: they stay in the page cache), so scanning a 200 MB file does not
#: add 200 MB to the process's peak memory.
_WINDOW = 16 << 20


def _release(buf: bytes | mmap.mmap, start: int, end: int) -> None:
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        lo = start - start % mmap.PAGESIZE
        if end > lo:
            buf.madvise(mmap.MADV_DONTNEED, lo, min(end, len(buf)) - lo)


def _find(buf: bytes | mmap.mmap, needle: bytes, start: int) -> int:
    """`buf.find(needle, start)`, window by window."""
    n = len(buf)
    pos = start
    while pos < n:
        end = min(n, pos + _WINDOW + len(needle))
        hit = buf.find(needle, pos, end)
        _release(buf, pos, end)
        if hit >= 0:
            return hit
        pos += _WINDOW
    return -1


#: Newlines are counted this many bytes at a time into one reused mask: a fresh mask per
#: 16 MiB window was 16 MB of new pages to fault in and zero each time.
_COUNT_CHUNK = 1 << 20


def _count_newlines(buf: bytes | mmap.mmap, start: int, end: int, eol: int = 0x0A) -> int:
    """The line ends (`eol`, a byte value) in `buf[start:end]`."""
    total = 0
    mask = np.empty(min(_COUNT_CHUNK, max(0, end - start)), dtype=bool)
    for lo in range(start, end, _WINDOW):
        hi = min(end, lo + _WINDOW)
        for c in range(lo, hi, _COUNT_CHUNK):
            k = min(hi, c + _COUNT_CHUNK) - c
            # compared in place (numpy over the map), not in a copy of the window
            np.equal(np.frombuffer(buf, np.uint8, k, c), eol, out=mask[:k])
            total += int(np.count_nonzero(mask[:k]))
        _release(buf, lo, hi)
    return total


def _line_number(buf: bytes | mmap.mmap, pos: int, eol: bytes = b"\n") -> int:
    return _count_newlines(buf, 0, pos, eol[0]) + 1


def _line_end(buf: bytes | mmap.mmap) -> bytes:
    """What ends a line of this file: LF (and CRLF), or a lone CR in a file that has no LF
    at all (Excel's "CSV (Macintosh)", classic Mac OS). pyarrow reads either; the line
    numbers of warnings have to count the same thing."""
    return b"\r" if buf.find(b"\n") < 0 and buf.find(b"\r") >= 0 else b"\n"


def _invalid_lines(buf: bytes | mmap.mmap, texts: list[str], eol: bytes = b"\n") -> list[int]:
    """Line numbers of the rows pyarrow set aside, sorted. Each is looked up as a whole line
    (a short row is also the start of the row it was cut from), and a text seen several times
    (the same traceback line) is looked up after its previous match.

    One pass over the map, a window at a time, that stops once every text is placed: each
    window's pages are faulted in once, searched for every text still missing and their
    newlines counted, then handed back. Three texts at 5, 15 and 25 % of the 201 MB CSV
    were three searches and a count, 0.030-0.038 s; now 0.016-0.019 s."""
    needles = [t.encode("utf-8", "replace").rstrip(b"\r") for t in texts]
    wanted: dict[bytes, int] = {}  # matches still to find, per distinct text
    for needle in needles:
        if needle:  # an empty text matches everywhere and places nothing
            wanted[needle] = wanted.get(needle, 0) + 1
    after = dict.fromkeys(wanted, 0)  # where the next search for each text starts
    n = len(buf)
    found: list[int] = []
    lines: list[int] = []
    newlines = 0  # before the window, then before the last match placed
    for lo in range(0, n, _WINDOW):
        if not wanted:
            break
        hi = min(n, lo + _WINDOW)
        here: list[int] = []
        for needle in list(wanted):
            # a match may start in this window and end in the next one
            while wanted.get(needle):
                pos = buf.find(needle, max(lo, after[needle]), hi + len(needle))
                if pos < 0 or pos >= hi:
                    break
                end = pos + len(needle)
                after[needle] = pos + 1
                if (pos == 0 or buf[pos - 1:pos] == eol) and (
                        end == n or buf[end:end + 1] in (b"\r", b"\n")):
                    here.append(pos)
                    wanted[needle] -= 1
            if not wanted.get(needle):
                wanted.pop(needle, None)
        at = lo
        for pos in sorted(here):
            newlines += _count_newlines(buf, at, pos, eol[0])
            at = pos
            found.append(pos)
            lines.append(newlines + 1)
        if wanted:
            newlines += _count_newlines(buf, at, hi, eol[0])
        _release(buf, lo, hi)
    return [line for _, line in sorted(zip(found, lines, strict=True))]


def load_csv(path: Path) -> CsvTable:
    """Parse a delimited file into a frame in file order, with warnings for what was skipped."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        # a read-only map, not read_bytes(): the pages are shared with the page cache and the
        # parser below reads the file itself, so the file is not held twice in memory
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    bom = 3 if buf[:3] == b"\xef\xbb\xbf" else 0
    if re.search(rb"\S", buf) is None:
        raise LogFormatError(f"{path}: empty file")
    if looks_binary(buf[bom:bom + 4096]):
        raise LogFormatError(f"{path}: binary data, not a CSV file")
    eol = _line_end(buf)
    nl = buf.find(eol)
    header_line = (buf[bom:] if nl < 0 else buf[bom:nl]).rstrip(b"\r")
    try:
        header_text = header_line.decode("utf-8")
    except UnicodeDecodeError:
        raise LogFormatError(f"{path}: line 1: header is not UTF-8 text") from None
    delim = _delimiter(header_text)
    warnings: list[str] = []
    header_lines: list[int] = []
    body: bytes | None = None  # the file without its repeated header lines, when it has any
    invalid: list[str] = []  # the rows the parse that made the table set aside

    def parse_options(into: list[str]) -> Any:
        # every parse collects into a list of its own: a streaming reader that failed can
        # still call its handler from a read-ahead thread while the next parse runs
        def on_invalid(row: pacsv.InvalidRow) -> str:
            into.append(row.text)
            return "skip"

        return pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid)

    def source() -> Any:
        return pa.BufferReader(body) if body is not None else pa.OSFile(str(path))

    def mapped() -> Any:
        # The probe reads the file through a memory map: the streaming reader reads ahead
        # of the block it parses (32 blocks, 138 MB of a 201 MB file at 4 MiB blocks), and
        # from an OSFile every block read ahead is a fresh buffer, faulted in and zeroed
        # (0.07 s, and 171 MB more resident for the rest of the read). From a map a block
        # read ahead is a view of pages the probe never touches: 2 MB.
        return pa.BufferReader(body) if body is not None else pa.memory_map(str(path))

    # 4 MiB blocks: as fast as 16 MiB here, with a smaller parser working set
    opts = pacsv.ReadOptions(block_size=1 << 22)

    def layout() -> tuple[list[int], Any]:
        """The spans and the first block's column types of what is parsed (`body` or the
        file). A file of one block read by one reader is not probed: the streaming reader
        infers its types from that same block, and the probe would parse the whole file
        twice (a fleet's small logs); spans always need the shared types."""
        data = body if body is not None else buf
        splits = _split_points(data, 0 if nl < 0 else nl + 1, _parts(len(data)))
        probe = bool(splits) or len(data) > opts.block_size
        return splits, _first_block_schema(mapped, delim, opts) if probe else None

    def cut_headers(buf: bytes | mmap.mmap) -> None:
        """A resumed job appends its header again; cut those lines out of the bytes before
        parsing (cheap: one find per occurrence) so numeric columns stay numeric."""
        nonlocal body
        needle = eol + header_line
        body_parts = [buf[bom : nl + 1]]
        start = nl + 1
        pos = _find(buf, needle, nl)
        while pos >= 0:
            end = pos + len(needle)
            if end == len(buf) or buf[end : end + 1] in (b"\n", b"\r"):
                header_lines.append(_line_number(buf, pos + 1, eol))
                body_parts.append(buf[start : pos + 1])
                start = buf.find(eol, end)
                start = len(buf) if start < 0 else start + 1
            pos = _find(buf, needle, end)
        if header_lines:
            body_parts.append(buf[start:])
            body = b"".join(body_parts)
            warnings.append(
                skip_warning(path, len(header_lines), "repeated header line(s)", header_lines)
            )

    def typed_read(splits: list[int], schema: Any) -> Any:
        """The parse with the first block's types (spans, or one streaming reader), or None
        when a later block does not fit them."""
        named = schema is not None and len(set(schema.names)) == len(schema.names)
        got: list[str] = []
        try:
            # The streaming reader first: it holds a block at a time besides the table
            # (peak 281 MB instead of 508 MB, and 1.0 instead of 1.5 CPU-s, on a 201 MB
            # file). It fixes the column types from the first block, so a file whose types
            # change later (a column empty at first, an integer column that turns float)
            # is read again whole.
            if splits and named and schema is not None:
                table = _read_spans(path, body, splits, schema, delim, got)
            else:
                types = ({f.name: f.type for f in schema
                          if f.type in (pa.int64(), pa.float64())}
                         if named and schema is not None else {})
                with source() as src:
                    reader = pacsv.open_csv(src, parse_options=parse_options(got),
                                            convert_options=_convert(types),
                                            read_options=opts)
                    table = pa.Table.from_batches(list(reader), schema=reader.schema)
        except pa.ArrowInvalid:
            return None
        invalid.extend(got)
        return table

    table = None
    # The repeated-header scan reads the whole file (0.13-0.16 s of page faults and finds
    # on the 201 MB CSV). When the first block's types make a header line fail the typed
    # parse (`_header_fails`), the scan is needed only if that parse fails: a file that
    # parses has no repeated header line, and the table is the one the scan would have led
    # to (same spans, same types). A parse that fails scans, and reads as before.
    probed = deferred = False
    if nl >= 0 and len(buf) > opts.block_size:
        splits, schema = layout()
        probed, deferred = True, _header_fails(schema)
    if not deferred:
        if nl >= 0:
            cut_headers(buf)
        if header_lines or not probed:
            splits, schema = layout()
    if isinstance(buf, mmap.mmap):
        buf.close()  # its pages count as our memory while mapped; the parser reads the file
    table = typed_read(splits, schema)
    if table is None and deferred:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            cut_headers(mm)
        if header_lines:
            splits, schema = layout()
            table = typed_read(splits, schema)
        # else: the parse without the scan was the parse after it, and it failed
    try:
        if table is None:
            got: list[str] = []
            # one thread: a threaded whole-file parse calls the handler in no fixed order,
            # and the warning shows the first rows it set aside (this read only runs when
            # the types change after the first block: rare, and slower either way)
            whole = pacsv.ReadOptions(block_size=opts.block_size, use_threads=False)
            with source() as src:
                table = pacsv.read_csv(src, parse_options=parse_options(got),
                                       convert_options=_convert(), read_options=whole)
            invalid.extend(got)
    except pa.ArrowInvalid as exc:
        msg = str(exc).splitlines()[0]
        raise LogFormatError(f"{path}: not a valid CSV file ({msg})") from None
    if invalid:
        # the first three are shown: looking up only those keeps the scan short (the torn
        # last row of a 1M-row file would cost a pass over all of it)
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            shown = _invalid_lines(mm, invalid[:3], eol)
        warnings.append(
            f"{path}: skipped {len(invalid)} malformed row(s)"
            + (f" (line{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown))}"
               f"{', ...' if len(invalid) > 3 else ''})" if shown else "")
        )
    header = [str(c) for c in table.column_names]
    held = [table]
    del table  # `_to_frame` holds the only reference, and frees the table column by column
    frame, nan_mask = _to_frame(held)
    # `step, loss`: the names as the frame has them, and the NaN masks under the same names
    frame.columns = [_clean_name(c) for c in header]
    nan_mask = {_clean_name(c): m for c, m in nan_mask.items()}
    row_lines = None
    if header_lines:
        # row i sits on line i + 2, plus one for every header line cut above it
        row_lines = np.arange(2, len(frame) + 2)
        for h in header_lines:
            row_lines[row_lines >= h] += 1
    return CsvTable(frame, nan_mask, warnings, header, row_lines)


def _clean_name(cell: str) -> str:
    return cell.strip().lstrip("\ufeff")


#: Characters a header cell may hold and still parse as a number or a NaN/Inf word.
_NUMBERISH = frozenset("0123456789+-.#() einfatyd")


def _header_fails(schema: Any) -> bool:
    """Whether a repeated header line would fail a typed parse with these column types:
    some int64/float64 column is named by a word that is not a number nor a NaN/Inf
    spelling (`loss`, `step`), so its header cell cannot convert. A first block that held
    a repeated header line has no such column (the header cell made it text)."""
    import pyarrow as pa

    if schema is None or len(set(schema.names)) != len(schema.names):
        return False
    return any(f.type in (pa.int64(), pa.float64())
               and set(f.name.lstrip("\ufeff").lower()) - _NUMBERISH for f in schema)


def _convert(types: dict[str, Any] | None = None) -> Any:
    """The conversion every read of a CSV log shares (the probe, the streaming reader, the
    spans, the whole-file read), so that they agree on what a missing value is: an empty
    cell, quoted or not, is a null, never text. `types` states column types."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(null_values=[""], strings_can_be_null=True,
                                quoted_strings_can_be_null=True, column_types=types or {})


def _first_block_schema(source: Callable[[], Any], delim: str, opts: Any) -> Any:
    """The column types pyarrow infers from the file's first block, or None when that block
    does not parse.

    The streaming reader infers each column's type from its first block anyway; stating the
    types up front lets it convert every later block without its inference machinery (on
    the 201 MB, 14-column CSV the parse went from 0.93-1.35 to 0.53-0.71 CPU-s in a fresh
    process, 4 interleaved runs each, load 3-4) and lets several readers share one schema
    (`_read_spans`), for one extra parse of the first 4 MiB. The result is the same table:
    a later block that does not fit a stated type fails the streaming read exactly as an
    inferred type would, and the whole-file read that follows infers freely."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter=delim, invalid_row_handler=lambda row: "skip")
    convert = _convert()
    # one thread: the probe needs the first block only, not the blocks read ahead
    first = pacsv.ReadOptions(block_size=opts.block_size, use_threads=False)
    try:
        with source() as src:
            return pacsv.open_csv(src, parse_options=parse, convert_options=convert,
                                  read_options=first).schema
    except pa.ArrowInvalid:
        return None  # the real read reports it


#: Files at least this big are parsed in several byte spans at once (`_read_spans`).
_SPLIT_MIN = 64 << 20
_SPAN_BLOCK = 1 << 20


def _parts(size: int) -> int:
    """How many spans to parse at once: one per usable core, at most 4, and one for a file
    under `_SPLIT_MIN` (a thread pool costs more than it saves there)."""
    if size < _SPLIT_MIN:
        return 1
    from spikelens.cores import default_jobs

    return max(1, min(4, default_jobs()))


def _split_points(data: bytes | mmap.mmap, lo: int, parts: int) -> list[int]:
    """Offsets of row starts that cut `data[lo:]` into about `parts` equal spans. A newline
    always ends a row here (the parser is not told that values may hold newlines)."""
    out: list[int] = []
    n = len(data)
    for k in range(1, parts):
        nl = data.find(b"\n", lo + (n - lo) * k // parts)
        if nl < 0 or nl + 1 >= n:
            break
        if not out or nl + 1 > out[-1]:
            out.append(nl + 1)
    return out


def _read_spans(path: Path, body: bytes | None, splits: list[int], schema: Any, delim: str,
                invalid: list[str]) -> _Parsed:
    """The file parsed in byte spans cut at row starts, one streaming reader per span on its
    own thread (pyarrow's streaming reader parses one block after another on one core;
    several of them use several), every span with the first block's column types, the
    columns joined in file order. Malformed rows are collected per span and listed in file
    order in `invalid`. Raises `ArrowInvalid` as the single reader would (a block that does
    not fit a type), and the caller then reads the file whole.

    The float columns never become an Arrow table: each block's values are copied, while
    the block is still in the cache, into one numpy array per column, allocated up front
    for a little more than the rows the spans hold (`_row_estimate`; the pages past the
    rows written are never touched). The block's memory is then free for the next block,
    so the process touches the columns' memory once instead of twice (the table, then the
    copy that joins its blocks): on the 201 MB, 14-column CSV, `load_csv` 0.30-0.77 s
    (median 0.52) -> 0.32-0.39 s (0.33), 5 alternated fresh runs. A span with more rows
    than estimated keeps its blocks past the estimate as they are, and they are joined at
    the end."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.csv as pacsv

    size = len(body) if body is not None else os.path.getsize(path)
    bounds = [0, *splits, size]
    parts = len(bounds) - 1
    convert = _convert({f.name: f.type for f in schema})
    floats = [i for i, f in enumerate(schema) if f.type == pa.float64()]
    others = sorted(set(range(len(schema))) - set(floats))
    # No read-ahead inside a span, and 1 MiB blocks: the spans are the parallelism, and
    # each reader's blocks in flight add to the peak memory (two spans of 4 MiB blocks with
    # read-ahead: 500-525 MB on the 201 MB CSV, against 410 MB for one reader; of 1 MiB
    # blocks without: 380-400 MB). The column types are stated, so the block size does
    # not change the table.
    head = pacsv.ReadOptions(block_size=_SPAN_BLOCK, use_threads=False)
    rest = pacsv.ReadOptions(block_size=_SPAN_BLOCK, use_threads=False,
                             column_names=schema.names)
    found: list[list[str]] = [[] for _ in range(parts)]

    def estimate(k: int) -> int:
        lo, hi = bounds[k], bounds[k + 1]
        if body is not None:
            return _row_estimate(body, lo, hi)
        with open(path, "rb") as fh, \
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _row_estimate(mm, lo, hi)

    caps = [estimate(k) for k in range(parts)]
    starts = [sum(caps[:k]) for k in range(parts)]
    out = {i: np.empty(sum(caps)) for i in floats}
    rows = [0] * parts
    masks: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in range(parts)]
    kept: list[list[Any]] = [[] for _ in range(parts)]  # the other columns' blocks
    spill: list[list[Any]] = [[] for _ in range(parts)]  # whole blocks past the estimate

    def span(k: int) -> None:
        lo, hi = bounds[k], bounds[k + 1]
        seen = found[k]

        def on_invalid(row: Any) -> str:
            seen.append(row.text)
            return "skip"

        parse = pacsv.ParseOptions(delimiter=delim, invalid_row_handler=on_invalid)
        with (pa.BufferReader(pa.py_buffer(body)[lo:hi]) if body is not None
              else pa.OSFile(str(path))) as whole:
            src = whole if body is not None else whole.get_stream(lo, hi - lo)
            reader = pacsv.open_csv(src, parse_options=parse, convert_options=convert,
                                    read_options=head if k == 0 else rest)
            n, at = 0, starts[k]
            for batch in reader:
                m = batch.num_rows
                if spill[k] or n + m > caps[k]:
                    spill[k].append(batch)
                    continue
                for i in floats:
                    values = out[i][at + n:at + n + m]
                    logged = _copy_floats(batch.column(i), values)
                    if logged is not None:
                        masks[k].append((i, n, logged))
                kept[k].append(batch.select(others))
                n += m
            rows[k] = n

    with ThreadPoolExecutor(max_workers=parts) as pool:
        list(pool.map(span, range(parts)))
    for seen in found:
        invalid.extend(seen)
    return _join_spans(schema, out, starts, rows, masks, kept, spill, others)


#: `_row_estimate` counts the newlines of this many windows of this size, spread over a span.
_SAMPLES, _SAMPLE = 16, 1 << 18


def _row_estimate(data: bytes | mmap.mmap, lo: int, hi: int) -> int:
    """About 10 % more rows than `data[lo:hi]` holds, from the newlines of windows spread
    over it (the whole span when it is small): the line length of a log drifts (the step
    grows a digit, an eval column fills in), and a span with more rows than this keeps the
    blocks past it aside (`_join_spans`). Counting every newline instead costs a pass over
    the file, 0.03-0.04 s of the 201 MB CSV."""
    size = hi - lo
    if size <= _SAMPLES * _SAMPLE * 2:
        return _count_newlines(data, lo, hi) + 1
    step = size // _SAMPLES
    seen = sum(_count_newlines(data, lo + j * step, lo + j * step + _SAMPLE)
               for j in range(_SAMPLES))
    return int(seen / (_SAMPLES * _SAMPLE) * size * 1.1) + 1024


@dataclass
class _Parsed:
    """A parse's columns by position: the float ones as numpy arrays (with the logged-NaN
    mask of those that have one), the others as an Arrow table of those columns alone."""

    names: list[str]
    floats: dict[int, np.ndarray]
    nan_mask: dict[int, np.ndarray]
    others: Any  # pa.Table
    positions: list[int]  # of the `others` columns
    num_rows: int

    @property
    def column_names(self) -> list[str]:
        return self.names


def _copy_floats(col: Any, into: np.ndarray) -> np.ndarray | None:
    """Copy a float64 Arrow array into `into` (an empty cell becomes NaN) and return the
    mask of the NaNs written in the file, or None when there are none."""
    into[:] = col.to_numpy(zero_copy_only=False)
    return _logged_nans(col, into)


def _logged_nans(col: Any, values: np.ndarray) -> np.ndarray | None:
    """The NaNs of `values` (float64 Arrow column `col` as numpy) that the file wrote, or
    None when there are none: an empty cell is missing, not a logged NaN."""
    import pyarrow.compute as pc

    isnan = np.isnan(values)
    if not isnan.any():
        return None
    if col.null_count:
        isnan &= pc.is_valid(col).to_numpy(zero_copy_only=False)
    return isnan if isnan.any() else None


def _join_spans(schema: Any, out: dict[int, np.ndarray], starts: list[int], rows: list[int],
                masks: list[list[tuple[int, int, np.ndarray]]], kept: list[list[Any]],
                spill: list[list[Any]], others: list[int]) -> _Parsed:
    """The spans' columns in file order. Each span wrote its rows from its own start; the
    gaps that blank lines and skipped rows leave are closed by moving the later spans down
    in place (memory already touched). Blocks a span spilled past its estimate are joined
    by copying (a rare file: lines ended by a lone CR)."""
    import pyarrow as pa

    parts = len(rows)
    sub = schema.remove_metadata()
    for i in reversed(range(len(sub))):
        if i not in others:
            sub = sub.remove(i)
    blocks = [b for k in range(parts) for b in kept[k] + [s.select(others) for s in spill[k]]]
    table = pa.Table.from_batches(blocks, schema=sub)
    nan_mask: dict[int, np.ndarray] = {}
    if not any(spill):
        total = sum(rows)
        at = [sum(rows[:k]) for k in range(parts)]
        floats: dict[int, np.ndarray] = {}
        for i, arr in out.items():
            for k in range(1, parts):
                if at[k] != starts[k] and rows[k]:
                    arr[at[k]:at[k] + rows[k]] = arr[starts[k]:starts[k] + rows[k]]
            floats[i] = arr[:total]
        for k in range(parts):
            for i, n, logged in masks[k]:
                if i not in nan_mask:
                    nan_mask[i] = np.zeros(total, dtype=bool)
                nan_mask[i][at[k] + n:at[k] + n + len(logged)] = logged
        return _Parsed(list(schema.names), floats, nan_mask, table, others, total)
    pieces: dict[int, list[np.ndarray]] = {i: [] for i in out}
    mask_pieces: dict[int, list[np.ndarray]] = {i: [] for i in out}
    for k in range(parts):
        spans_masks = {i: np.zeros(rows[k], dtype=bool) for i in out}
        for i, n, logged in masks[k]:
            spans_masks[i][n:n + len(logged)] = logged
        for i, arr in out.items():
            pieces[i].append(arr[starts[k]:starts[k] + rows[k]])
            mask_pieces[i].append(spans_masks[i])
        for batch in spill[k]:
            for i in out:
                values = np.empty(batch.num_rows)
                spilled = _copy_floats(batch.column(i), values)
                pieces[i].append(values)
                mask_pieces[i].append(spilled if spilled is not None
                                      else np.zeros(batch.num_rows, dtype=bool))
    floats = {i: np.concatenate(pieces[i]) if pieces[i] else np.empty(0) for i in out}
    for i in out:
        joined = np.concatenate(mask_pieces[i]) if mask_pieces[i] else np.zeros(0, bool)
        if joined.any():
            nan_mask[i] = joined
    return _Parsed(list(schema.names), floats, nan_mask, table, others, sum(rows) +
                   sum(b.num_rows for k in range(parts) for b in spill[k]))


def _to_frame(held: list[Any]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The parsed table (taken out of `held`) as a frame, column by column, and the
    logged-NaN mask of each float column that has one (a NaN written in the file, not an
    empty cell).

    Numeric columns become numpy arrays straight from Arrow (one copy that joins the
    blocks, no pandas conversion layer), and each column's Arrow buffers are handed back to
    the allocator once it is converted, so the table and the frame are never both whole in
    memory. On the 201 MB, 14-column CSV: 0.58 to 0.24 s, and the reader's resident memory
    after the read 406 to 283 MB. Other types (text, booleans, dates, integers with empty
    cells) convert as `Table.to_pandas` converts them. A span parse (`_Parsed`) brings its
    float columns as arrays already; only its other columns convert here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parsed = held.pop()
    names = [str(c) for c in parsed.column_names]
    arrays: dict[int, Any] = {}
    masks: dict[int, np.ndarray] = {}  # by position: the masks come in column order
    if isinstance(parsed, _Parsed):
        table, positions = parsed.others, parsed.positions
        arrays.update(parsed.floats)
        masks.update(parsed.nan_mask)
    else:
        table, positions = parsed, list(range(len(names)))
    del parsed
    pool = pa.default_memory_pool()
    for i in positions:
        col = table.column(0)  # duplicate names are possible: by position
        table = table.remove_column(0)
        t = col.type
        if t == pa.float64() or (pa.types.is_integer(t) and col.null_count == 0):
            arr = col.to_numpy()
            logged = _logged_nans(col, arr) if t == pa.float64() else None
            if logged is not None:
                masks[i] = logged
        else:
            if pa.types.is_floating(t):
                isnan = pc.fill_null(pc.is_nan(col), False)
                if pc.any(isnan).as_py():
                    masks[i] = isnan.to_numpy(zero_copy_only=False)
            arr = col.to_pandas()
        del col
        arrays[i] = arr
        pool.release_unused()
    frame = pd.DataFrame({i: arrays[i] for i in range(len(names))}, copy=False)
    return frame, {names[i]: masks[i] for i in sorted(masks)}


def header_cells(path: Path, head: bytes) -> list[str]:
    """The cells of a delimited file's first line, unquoted; [] when it cannot be one."""
    if path.is_dir() or looks_binary(head):
        return []
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    if not first or first.startswith(("{", "[")):
        return []
    cells = [c.strip().strip('"') for c in first.split(_delimiter(first))]
    return cells if len(cells) >= 2 else []


#: Columns of the W&B UI's runs table ("Export CSV" of a project's run list), after `Name`.
_RUNS_TABLE = {"State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep", "End Time",
               "Hostname"}


def refuse_runs_table(path: Path, frame: pd.DataFrame) -> None:
    """A W&B runs table (one row per run: the UI's run list, or `api.runs()` summaries with
    their `name`, `id` and `_wandb` columns) holds each run's last values, not a history:
    read as one log, its rows would be steps and each run's `_step` a restart. It is an
    error that says what to export instead."""
    cols = set(map(str, frame.columns))
    ui = "Name" in cols and len(_RUNS_TABLE & cols) >= 3
    api = {"name", "id", "_wandb"} <= cols and len(frame) > 1 and \
        frame["id"].nunique(dropna=True) == len(frame)
    if ui or api:
        named = ", ".join(["Name", *sorted(_RUNS_TABLE & cols)]) if ui else "name, id, _wandb"
        raise LogFormatError(
            f"{path}: a W&B runs table ({len(frame)} rows, one per run: {named}), not a "
            "history; export each run's history (the run page's CSV, or run.history())")


class CsvReader:
    name = "csv"
    description = "CSV/TSV with a step column (generic, Lightning metrics.csv)"
    # pyarrow parses the spans on its threads while the caller's thread waits: on 2 cores
    # part of the second one idles, and `fleet.preload_analysis` fills it (analyze of the
    # 1M-step CSV 3.34 -> 3.24 s, median of 10 order-alternated pairs). The JSONL and
    # TensorBoard reads keep both cores busy; there, the preload measured 0.05-0.15 s slower.
    idle_core_while_reading = True

    def sniff(self, path: Path, head: bytes) -> float:
        cells = header_cells(path, head)
        if not cells:
            return 0.0
        # an `epoch` column is the step of a log with no step counter (Keras' CSVLogger
        # writes `training.log`: epoch,accuracy,loss,val_accuracy,val_loss)
        has_step = find_step_column(cells) is not None or \
            any(normalise(c) == "epoch" for c in cells)
        if path.suffix.lower() in (".csv", ".tsv"):
            return 0.6 if has_step else 0.5
        return 0.4 if has_step else 0.0

    def read(self, path: Path) -> list[RawLog]:
        t = load_csv(path)
        refuse_runs_table(path, t.frame)
        return [RawLog(frame=t.frame, nan_mask=t.nan_mask, warnings=t.warnings,
                       row_lines=t.row_lines)]


READERS.add("csv", CsvReader())
