"""The template path of the JSON-lines reader. A flat log writes the same keys in the same order
with the same spacing on nearly every line (`{"step": 7, "loss": 2.31, ...}`): only the
values change. The most common shape among the first lines is learnt as a template (the
exact bytes before each value); numpy then finds every line's newline and commas, checks
each field's key bytes against the template eight bytes at a time and each value's first
and last bytes (a JSON number, NaN/Infinity, or a plain ASCII string without escapes), and
pyarrow's cast turns the number bytes into float64 with the correctly rounded conversion
its JSON reader uses, without tokenising every byte as that reader does. Lines that do not
match exactly (null, a missing or extra key, another key order or spacing, an escape, a
comma in a string, a leading zero, `5.`, `5.e3`) are parsed by pyarrow's JSON reader in a
buffer of their own and merged back in line order, with the column order and types that
reader gives the whole file; lines that are not objects are handed back, with their line
numbers, for json.loads, exactly as the plain path sets them aside. Where the equivalence
cannot be shown cheaply (a string that could be read as a timestamp, an integer beyond 15
digits, `-0`, a type that differs between template and other lines, lists, duplicate keys,
a log whose shape changes) the path gives up and returns None, and the caller runs the
plain path, which is the reference (`tests/test_reader_jsonl_template.py` holds them
equal)."""

from __future__ import annotations

import json
import mmap
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

_WINDOW = 1 << 22  # bytes per scan window: its temporaries are a few times this
_SAMPLE = 256  # lines looked at to learn the template
_THREADS = 2
_SPAN32 = 1 << 31  # string ranges spanning less than this are taken with 32-bit offsets
_MAX_INT_DIGITS = 15  # an integer that float64 holds exactly whatever the parser did
_NL, _COMMA, _QUOTE, _RBRACE, _CR = 0x0A, 0x2C, 0x22, 0x7D, 0x0D

# A key as the template accepts it: ASCII without quotes, escapes or JSON punctuation, so
# that its bytes are its name and no comma or colon can hide in it.
_KEY_PREFIX = re.compile(rb'[ \t]*"([^"\\\x00-\x1f\x7f-\xff,:{}\[\]]*)"[ \t]*:[ \t]*')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TEXT = re.compile(rb'"[\x20\x21\x23-\x5b\x5d-\x7e]*"')
# `-0` is an integer zero to pyarrow in an integer column and -0.0 in a float one: the
# template path does not decide which
_MINUS_ZERO = re.compile(rb"[:\[,][ \t]*-0(?![0-9.eE])")


class _GiveUp(Exception):
    """The template path cannot show that its result equals the plain path's."""


@dataclass(frozen=True)
class Template:
    keys: tuple[str, ...]
    prefixes: tuple[bytes, ...]  # the bytes before each value ("{" included for the first)
    text: tuple[bool, ...]  # a string value (else a number)

    def lengths(self) -> np.ndarray:
        return np.array([len(p) for p in self.prefixes], dtype=np.int64)

    def words(self) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray | None]:
        """The key bytes as little-endian 8-byte words: ((field, offset from the field's
        start) of each word, its value, the mask of the bytes it covers, or None when every
        word covers eight bytes). A prefix of eight bytes or more is covered by whole words,
        the last one overlapping the one before; a field after the first starts after a comma
        the scan found there, so a shorter prefix takes the comma as a key byte too (offset
        -1) and fills a whole word from seven bytes on. Only still shorter ones need a mask."""
        fields: list[int] = []
        offsets: list[int] = []
        want: list[int] = []
        mask: list[int] = []
        for j, prefix in enumerate(self.prefixes):
            comma = j > 0 and len(prefix) < 8  # the comma only where it saves a mask
            start = -1 if comma else 0
            known = b"," + prefix if comma else prefix
            at = list(range(0, len(known) - 7, 8))
            if len(known) % 8:
                at.append(max(len(known) - 8, 0))
            for w in at:
                chunk = known[w:w + 8]
                fields.append(j)
                offsets.append(start + w)
                want.append(int.from_bytes(chunk.ljust(8, b"\0"), "little"))
                mask.append((1 << (8 * len(chunk))) - 1)
        full = all(m == (1 << 64) - 1 for m in mask)
        return ((np.array(fields), np.array(offsets, dtype=np.int64)),
                np.array(want, dtype=np.uint64),
                None if full else np.array(mask, dtype=np.uint64))


def shape(line: bytes) -> Template | None:
    """The template of one line, or None when the line is not a flat object of numbers and
    plain strings that the template path can check byte by byte."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not (line.startswith(b"{") and line.endswith(b"}")):
        return None
    keys: list[str] = []
    prefixes: list[bytes] = []
    text: list[bool] = []
    for i, field in enumerate(line[1:-1].split(b",")):
        m = _KEY_PREFIX.match(field)
        if m is None:
            return None
        value = field[m.end():]
        if _NUMBER.fullmatch(value):
            text.append(False)
        elif _TEXT.fullmatch(value):
            text.append(True)
        else:
            return None
        keys.append(m.group(1).decode("ascii"))
        prefixes.append((b"{" if i == 0 else b"") + field[:m.end()])
    if len(set(keys)) != len(keys):
        return None
    return Template(tuple(keys), tuple(prefixes), tuple(text))


def learn(buf: Any) -> Template | None:
    """The most common shape among the first object lines, if at least half of them share
    it."""
    seen: Counter[Template] = Counter()
    pos, looked = 0, 0
    n = len(buf)
    while pos < n and looked < _SAMPLE:
        e = buf.find(b"\n", pos)
        e = n if e < 0 else e
        line = bytes(buf[pos:e])
        if _is_object(line):
            looked += 1
            t = shape(line)
            if t is not None:
                seen[t] += 1
        pos = e + 1
    if not seen:
        return None
    best, count = seen.most_common(1)[0]
    return best if 2 * count >= looked else None


def _is_object(line: bytes) -> bool:
    """The reader's test for a line pyarrow's JSON parser reads (any other line is set
    aside for json.loads): a `{...}` once surrounding white space is stripped. Both paths
    (this one and the plain odd-line scan in jsonl.py) use it, so they set aside the same
    lines."""
    t = line.strip()
    return t[:1] == b"{" and t[-1:] == b"}"


@dataclass
class _Window:
    lines: np.ndarray  # line numbers of the template rows (from 0 in the window)
    cols: list[Any]  # per template column: float64 numpy array or pyarrow string array
    rest: list[tuple[int, int, int]]  # (line, start, end) of the other lines
    count: int  # lines in the window


def _string_array(starts: np.ndarray, ends: np.ndarray, data: Any) -> pa.Array:
    """The byte ranges [starts, ends) of `data` (ascending) as one contiguous string array: a
    zero-copy array over `data` whose every other element is a wanted range, then `take`.
    Over a window's slice of `data` the offsets fit 32 bits and `take` gives the string type
    the table wants; only ranges spanning 2 GiB or more go through large_string and a cast."""
    import pyarrow as pa
    import pyarrow.compute as pc

    m = len(starts)
    if not m:
        return pa.array([], type=pa.string())
    base, span = int(starts[0]), int(ends[-1]) - int(starts[0])
    small = span < _SPAN32
    offsets = np.empty(2 * m, dtype=np.int32 if small else np.int64)
    offsets[0::2] = starts - base
    offsets[1::2] = ends - base
    whole = pa.Array.from_buffers(pa.string() if small else pa.large_string(), 2 * m - 1,
                                  [None, pa.py_buffer(offsets), data.slice(base, span)])
    got = whole.take(pa.array(np.arange(0, 2 * m, 2, dtype=np.int64)))
    return got if small else pc.cast(got, pa.string())


def _offsets(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The value offsets and the data bytes of a string or large_string array."""
    import pyarrow as pa

    m = len(col)
    kind = np.int64 if pa.types.is_large_string(col.type) else np.int32
    offs = np.frombuffer(col.buffers()[1], dtype=kind)[col.offset:col.offset + m + 1]
    return offs, np.frombuffer(col.buffers()[2], dtype=np.uint8)


def _rows_of(offs: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The row of each byte position."""
    rows: np.ndarray = np.searchsorted(offs, pos, side="right") - 1
    return rows


def _number_rows(arr: np.ndarray, vs: np.ndarray, fe: np.ndarray, lo: int, hi: int
                 ) -> np.ndarray:
    """Which of the values at [vs, fe) of the buffer may be JSON numbers: a digit (after an
    optional minus) first and last, no leading zero, no `5.e3`; or a word starting with N
    or I (NaN, Infinity, -Infinity: their spelling is checked after the cast,
    `_check_special`). null, true, false and strings are turned away by their first byte.
    What else is not a JSON number (`1e`, `1.2.3`, `1-2`, a space inside) pyarrow's cast
    refuses, and the caller then gives up."""
    n = len(arr)
    ok = fe > vs
    if not len(vs):
        return ok
    # the bytes read at vs + 1 and vs + 2 lie before hi + 2: clamped only near the buffer's end
    clear = hi + 2 <= n
    first = arr[vs]
    second = np.where(fe - vs >= 2, arr[vs + 1 if clear else np.minimum(vs + 1, n - 1)], 0)
    neg = first == ord("-")
    d0 = np.where(neg, second, first)
    number = (d0 >= ord("0")) & (d0 <= ord("9"))
    word = (d0 == ord("I")) | ((d0 == ord("N")) & ~neg)
    ok &= number | word
    after = vs + neg + 1
    after = np.where(after < fe, arr[after if clear else np.minimum(after, n - 1)], 0)
    ok &= ~((d0 == ord("0")) & (after >= ord("0")) & (after <= ord("9")))  # a leading zero
    tail = arr[fe - 1]
    ok &= word | ((tail >= ord("0")) & (tail <= ord("9")))  # not `5.`
    window = arr[lo:hi]
    if _has_dot_e(window):
        hit = np.flatnonzero((window[:-1] == ord(".")) & ((window[1:] | 0x20) == ord("e"))) + lo
        at = np.searchsorted(vs, hit, side="right") - 1
        inside = (at >= 0) & (hit < fe[np.maximum(at, 0)])
        ok[at[inside]] = False
    return ok


def _cast_numbers(vs: np.ndarray, fe: np.ndarray, keep: np.ndarray, data: Any) -> np.ndarray:
    """The values at [vs, fe) of the buffer as float64, through pyarrow's cast (the
    correctly rounded parser its JSON reader uses too). The values are the even elements of
    one zero-copy string array over the buffer; the odd ones (the keys between) and the
    values not kept are null, which the cast skips. NaN where not kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    m = len(vs)
    if not m:
        return np.zeros(0)
    offsets = np.empty(2 * m, dtype=np.int64)
    offsets[0::2] = vs
    offsets[1::2] = fe
    valid = np.zeros(2 * m - 1, dtype=bool)
    valid[0::2] = keep
    bitmap = np.packbits(valid, bitorder="little")
    whole = pa.Array.from_buffers(pa.large_string(), 2 * m - 1,
                                  [pa.py_buffer(bitmap), pa.py_buffer(offsets), data],
                                  null_count=2 * m - 1 - int(keep.sum()))
    try:
        got = pc.cast(whole, pa.float64())
    except (pa.ArrowException, ValueError):
        raise _GiveUp from None  # `1e`, `1.2.3`: not worth a search for the row
    values = np.frombuffer(got.buffers()[1], dtype=np.float64)[got.offset:got.offset + 2 * m:2]
    # np.where costs a pass more than the copy that every value kept needs
    out: np.ndarray = values.copy() if keep.all() else np.where(keep, values, np.nan)
    _exact_enough(out, vs, fe)
    return out


def _exact_enough(values: np.ndarray, vs: np.ndarray, fe: np.ndarray) -> None:
    """Raises _GiveUp where pyarrow's JSON reader might have read the number as an int64
    whose float value could differ: beyond 15 digits (pyarrow then refuses the int -> float
    cast) or -0 (an integer zero, +0.0, in an integer column)."""
    with np.errstate(invalid="ignore"):
        big = np.flatnonzero(np.abs(values) >= 1e15)
    if len(big) and (fe[big] - vs[big] > _MAX_INT_DIGITS).any():
        raise _GiveUp
    zero = np.flatnonzero(values == 0)
    if len(zero) and np.signbit(values[zero]).any():
        raise _GiveUp


def _has_dot_e(body: np.ndarray) -> bool:
    """Whether the bytes hold '.e' or '.E' anywhere: RE2 (pyarrow's regex kernel) over the
    bytes as one binary value, cheaper than numpy's compares of the even and the odd byte
    pairs against the two patterns, and cheaper than finding every '.' of the numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    one = pa.Array.from_buffers(pa.large_binary(), 1,
                                [None, pa.py_buffer(np.array([0, len(body)], dtype=np.int64)),
                                 pa.py_buffer(body)])
    return bool(pc.match_substring_regex(one, r"\.[eE]")[0].as_py())


def _check_special(values: np.ndarray, keep: np.ndarray, arr: np.ndarray, vs: np.ndarray,
                   fe: np.ndarray) -> np.ndarray:
    """Kept values that, if not finite, are spelt NaN, Infinity or -Infinity (what JSON
    readers accept; the cast also takes nan, inf, +inf, 1e999...)."""
    ok = np.ones(len(values), dtype=bool)
    for i in np.flatnonzero(keep & ~np.isfinite(values)).tolist():
        ok[i] = arr[vs[i]:fe[i]].tobytes() in (b"NaN", b"Infinity", b"-Infinity")
    return ok


def _check_text(col: pa.Array) -> np.ndarray:
    """Rows of a string array (the content between the quotes) that hold only
    printable ASCII without quotes or backslashes. Raises _GiveUp when a value starts with a
    digit: pyarrow may read a column of such strings as timestamps."""
    m = len(col)
    offs, data = _offsets(col)
    ok = np.ones(m, dtype=bool)
    if not m or offs[-1] == offs[0]:
        return ok
    lo = int(offs[0])
    body = data[lo:int(offs[-1])]
    # not printable ASCII (0x20-0x7E: the subtraction wraps the others past 0x5E), or '"', or
    # '\': three passes over the bytes, cheaper than a 256-entry lookup (a fancy gather)
    bad_byte = body - np.uint8(0x20) > np.uint8(0x5E)
    bad_byte |= body == _QUOTE
    bad_byte |= body == ord("\\")
    bad = np.flatnonzero(bad_byte)
    if len(bad):
        ok[_rows_of(offs, bad + lo)] = False
    nonempty = offs[1:] > offs[:-1]
    firsts = data[offs[:-1][nonempty]]
    if ((firsts >= ord("0")) & (firsts <= ord("9"))).any():
        raise _GiveUp
    return ok


def _scan_window(buf: Any, arr: np.ndarray, words: np.ndarray, data: Any, lo: int, hi: int,
                 tpl: Template) -> _Window:
    import pyarrow as pa

    n = len(arr)
    k = len(tpl.keys)
    nl = np.flatnonzero(arr[lo:hi] == _NL)
    nl += lo
    ends = np.append(nl, n) if hi == n and arr[n - 1] != _NL else nl
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = lo
        starts[1:] = ends[:-1] + 1
    lines = np.arange(len(ends), dtype=np.int64)
    plain = ends > starts
    commas = np.flatnonzero(arr[lo:hi] == _COMMA)
    commas += lo
    first_comma = np.searchsorted(commas, starts)
    # a line's commas end where the next line's begin (a line ends at a newline, not a comma)
    count = np.diff(first_comma, append=np.searchsorted(commas, ends[-1:]))
    cand = np.flatnonzero(plain & (count == k - 1))
    # field j runs from fs[:, j] to fe[:, j]: between the commas, and to the closing brace
    # (before an optional CR)
    close = ends[cand] - 1
    close -= arr[np.maximum(close, 0)] == _CR
    good = arr[np.maximum(close, 0)] == _RBRACE
    fs = np.empty((len(cand), k), dtype=np.int64)
    fe = np.empty((len(cand), k), dtype=np.int64)
    fs[:, 0] = starts[cand]
    if k > 1:
        # every comma of the window lies in exactly one line, the lines' commas in line
        # order: the candidates' commas are picked with a mask, no index array
        c = commas[np.repeat(count == k - 1, count)].reshape(len(cand), k - 1)
        fe[:, :-1] = c
        fs[:, 1:] = c + 1
        del c
    fe[:, -1] = close
    # the key bytes, eight at a time against the template's
    at, want, mask = tpl.words()
    # each field's start repeated once per word of its key (the words go field by field):
    # np.repeat writes rows in order, where fs[:, at[0]] gave a layout that ravel copied
    pos = np.repeat(fs, np.bincount(at[0], minlength=k), axis=1)
    pos += at[1]
    pos = pos.ravel()
    lengths = tpl.lengths()
    if hi + int(lengths.max()) + 8 > n:
        # the last window: a row is not taken where a word 0, 8, 16... bytes into one of its
        # prefixes would reach past the buffer's end (no word read here reaches further).
        # Which short last lines go to pyarrow's parse is kept as it was: whether the path
        # gives up may depend on those lines
        last = (lengths - 1) // 8 * 8
        good &= ~(fs + last > n - 8).any(axis=1)
        np.minimum(pos, n - 8, out=pos)
    got = words[pos]
    got = got.reshape(len(cand), len(want))
    if mask is not None:
        got &= mask
    _turn_away(good, got != want)
    del pos, got
    vs = fs + lengths
    del fs
    _turn_away(good, vs >= fe)
    text = np.asarray(tpl.text)
    if text.any():
        tvs, tfe = vs[:, text], fe[:, text]
        _turn_away(good, arr[np.minimum(tvs, n - 1)] != _QUOTE)
        _turn_away(good, arr[np.maximum(tfe - 1, 0)] != _QUOTE)
        _turn_away(good, tfe - tvs < 2)
        del tvs, tfe
    rows = np.flatnonzero(good)
    if len(rows) < len(good):  # most windows' candidate lines all pass: no copy then
        vs, fe = vs[rows], fe[rows]
    number = ~text
    kn, kt = int(number.sum()), int(text.sum())
    # all numbers of the window in one array (row by row); each string column on its own,
    # as the table wants it (no second copy of the strings to split them into columns)
    nvs, nfe = vs[:, number].ravel(), fe[:, number].ravel()
    ok = _number_rows(arr, nvs, nfe, lo, hi).reshape(len(rows), kn).all(axis=1)
    strs: list[pa.Array] = []
    for j in np.flatnonzero(text).tolist():
        strs.append(_string_array(vs[:, j] + 1, fe[:, j] - 1, data))
        ok &= _check_text(strs[-1])
    del vs, fe
    keep = np.repeat(ok, kn)
    values = _cast_numbers(nvs, nfe, keep, data)
    spelt = _check_special(values, keep, arr, nvs, nfe).reshape(-1, kn).all(axis=1)
    ok &= spelt
    del nvs, nfe, keep
    values = values.reshape(-1, kn)
    if not ok.all():
        values = values[ok]
        if kt:
            kept = pa.array(ok)
            strs = [col.filter(kept) for col in strs]
    cols: list[Any] = []
    jn = jt = 0
    for j in range(k):
        if tpl.text[j]:
            cols.append(strs[jt])
            jt += 1
        else:
            cols.append(np.ascontiguousarray(values[:, jn]))
            jn += 1
    taken = cand[rows[ok]]
    is_rest = np.ones(len(ends), dtype=bool)
    is_rest[taken] = False
    rest = [(int(lines[i]), int(starts[i]), int(ends[i])) for i in np.flatnonzero(is_rest)]
    _drop_pages(buf, lo, hi)
    return _Window(lines[taken], cols, rest, len(ends))


def _turn_away(good: np.ndarray, bad: np.ndarray) -> None:
    """Clears `good` for the rows of `bad` (rows x fields) with a field set: such rows are
    few, and finding them is cheaper than reducing every row with all(axis=1)."""
    good[np.flatnonzero(bad) // bad.shape[1]] = False


def _rest_table(buf: Any, rest: list[tuple[int, int, int]]) -> tuple[pa.Table, list[list[str]]]:
    """pyarrow's JSON parse of the lines outside the template, and each line's top-level
    keys in order (null values included: pyarrow orders columns by first appearance)."""
    import pyarrow as pa
    import pyarrow.json as pj

    text = b"\n".join(bytes(buf[s:e]) for _, s, e in rest) + b"\n"
    if _MINUS_ZERO.search(text):
        raise _GiveUp
    keys: list[list[str]] = []
    for _, s, e in rest:
        try:
            pairs = json.loads(bytes(buf[s:e]), object_pairs_hook=lambda p: p)
        except (ValueError, RecursionError):
            raise _GiveUp from None
        if type(pairs) is not list:
            raise _GiveUp
        keys.append([key for key, _ in pairs])
    try:
        table = pj.read_json(pa.BufferReader(text),
                             read_options=pj.ReadOptions(block_size=max(1 << 20, 2 * len(text))))
    except (pa.ArrowException, ValueError, OverflowError):
        raise _GiveUp from None
    if table.num_rows != len(rest):
        raise _GiveUp
    return table, keys


def _plain_type(t: pa.DataType) -> str:
    """'number', 'string', 'bool', 'null' or 'other' (lists, timestamps...)."""
    import pyarrow as pa

    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_struct(t) and all(
            _plain_type(t.field(i).type) in ("null", "bool", "number", "string")
            for i in range(t.num_fields)):
        return "struct"
    return "other"


def _no_digit_first(col: pa.ChunkedArray | pa.Array) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return not pc.any(pc.match_substring_regex(col, "^[0-9]")).as_py()
    if pa.types.is_struct(t):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        return all(_no_digit_first(arr.field(i)) for i in range(t.num_fields))
    return True


@dataclass
class Parsed:
    """What the template path read: the table pyarrow's JSON reader would give for the
    object lines, the lines set aside for json.loads (line number, start, end), and the
    number of lines."""

    table: pa.Table
    odd: list[tuple[int, int, int]]
    total: int


def template_parse(buf: Any, arr: np.ndarray) -> Parsed | None:
    """The template path over the whole buffer, or None when the log has no template, too
    many lines outside it, or a result that could differ from the plain path's."""
    try:
        return _template_parse(buf, arr)
    except _GiveUp:
        return None


def _template_parse(buf: Any, arr: np.ndarray) -> Parsed | None:
    import pyarrow as pa

    n = len(buf)
    if n < 8:
        return None
    tpl = learn(buf)
    if tpl is None:
        return None
    words = np.ndarray(shape=(n - 7,), dtype="<u8", buffer=arr, offset=0, strides=(1,))
    data = pa.py_buffer(arr)
    bounds: list[tuple[int, int]] = []
    lo = 0
    while lo < n:
        hi = buf.find(b"\n", lo + _WINDOW) + 1 if lo + _WINDOW < n else n
        hi = hi or n  # no newline after the window's end: the rest is the last line
        bounds.append((lo, hi))
        lo = hi

    stop: list[bool] = []

    def scan(bound: tuple[int, int]) -> _Window:
        if stop:
            raise _GiveUp
        w = _scan_window(buf, arr, words, data, bound[0], bound[1], tpl)
        if len(w.rest) > max(1000, w.count // 20):
            stop.append(True)  # not a templated log after all: the other windows need not run
            raise _GiveUp
        return w

    line0 = 1
    t_parts: list[np.ndarray] = []
    rest: list[tuple[int, int, int]] = []
    odd: list[tuple[int, int, int]] = []
    windows: list[_Window] = []
    numbers = _Numbers([j for j, t in enumerate(tpl.text) if not t], _line_estimate(buf))
    # numpy and pyarrow let go of the GIL in the heavy steps: two windows at a time. Each
    # window is taken in file order as soon as it is done, its numbers copied to their
    # rows and its arrays freed for the windows still to scan
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for w in pool.map(scan, bounds):
            t_parts.append(w.lines + line0)
            theirs: list[int] = []
            for line, s, e in w.rest:
                # the plain path's split: object lines to pyarrow, the others to json.loads
                if _is_object(bytes(buf[s:e])):
                    rest.append((line + line0, s, e))
                    theirs.append(line)
                else:
                    odd.append((line + line0, s, e))
            numbers.place(w, np.asarray(theirs, dtype=np.int64))
            windows.append(w)
            line0 += w.count
    total = line0 - 1
    t_lines = np.concatenate(t_parts)
    if not len(t_lines):
        return None
    return Parsed(_merge_rest(buf, tpl, windows, t_lines, rest, numbers), odd, total)


def _line_estimate(buf: Any) -> int:
    """About 10 % more lines than the buffer holds, from the newlines of its first MiB (a
    flat log's lines are alike; `_Numbers` grows when there are more)."""
    head = min(len(buf), 1 << 20)
    seen = buf.count(b"\n", 0, head) if isinstance(buf, (bytes, bytearray)) else \
        bytes(buf[:head]).count(b"\n")
    return int((seen + 1) / head * len(buf) * 1.1) + 1024


class _Numbers:
    """The template's number columns, one float64 array each, filled window by window at
    the rows they take in the table (the other object lines' rows are left for
    `_merge_rest`). Each window's arrays are freed once copied, so the memory the columns
    need is touched once: before, every window's arrays stayed until the end and were then
    copied into the table's columns. On the 358 MB, 14-column JSONL (11 number columns) the
    merge went from 0.08-0.19 s to 0.035-0.04 s (5 alternated fresh runs), and the peak of
    `inspect` from 518-524 to 433-450 MB."""

    def __init__(self, columns: list[int], capacity: int) -> None:
        self.cols = {j: np.empty(capacity) for j in columns}
        self.rows = 0

    def place(self, w: _Window, theirs: np.ndarray) -> None:
        """Window `w`'s numbers, after the rows placed so far; `theirs` are the window's
        lines (numbered as `w.lines`) that are object lines outside the template."""
        start, n_t = self.rows, len(w.lines)
        self.rows += n_t + len(theirs)
        for j, col in self.cols.items():
            if self.rows > len(col):  # more lines than estimated: grow by half
                grown = np.empty(max(self.rows, len(col) * 3 // 2))
                grown[:start] = col[:start]
                self.cols[j] = col = grown
            if len(theirs):
                col[start + np.arange(n_t) + np.searchsorted(theirs, w.lines)] = w.cols[j]
            else:
                col[start:start + n_t] = w.cols[j]
            w.cols[j] = None


def _merge_rest(buf: Any, tpl: Template, windows: list[_Window], t_lines: np.ndarray,
                rest: list[tuple[int, int, int]], numbers: _Numbers) -> pa.Table:
    """The template rows and pyarrow's parse of the other object lines, as one table in
    line order, with pyarrow's column order and types. The template's number columns come
    placed already (`numbers`); its text columns are joined here."""
    import pyarrow as pa

    k = len(tpl.keys)
    n_t, n_r = len(t_lines), len(rest)
    n_all = n_t + n_r
    # where each plain row comes from: template rows and other rows, both in line order
    r_lines = np.fromiter((line for line, _, _ in rest), np.int64, n_r)
    r_pos = np.searchsorted(t_lines, r_lines) + np.arange(n_r)
    t_mask = np.ones(n_all, dtype=bool)
    t_mask[r_pos] = False
    # the windows' text columns, handed over one column at a time: never two whole copies
    parts_of: list[list[Any]] = [[w.cols[j] for w in windows] if tpl.text[j] else []
                                 for j in range(k)]
    windows.clear()
    if numbers.rows != n_all:  # the windows' rows are the table's: a bug, not a log
        raise AssertionError(f"{numbers.rows} rows placed for {n_all}")

    def column(j: int) -> Any:
        if not tpl.text[j]:
            return numbers.cols[j][:n_all]
        parts, parts_of[j] = parts_of[j], []
        return pa.chunked_array(parts, type=pa.string()).combine_chunks()

    if not n_r:
        return pa.table({key: column(j) if tpl.text[j] else pa.array(column(j))
                         for j, key in enumerate(tpl.keys)})
    table, keys = _rest_table(buf, rest)
    # column order: first appearance, line by line, as pyarrow's JSON reader orders them
    first_t = int(t_lines[0])
    order: dict[str, None] = {}
    placed = False
    for (line, _, _), line_keys in zip(rest, keys, strict=True):
        if not placed and line > first_t:
            order.update(dict.fromkeys(tpl.keys))
            placed = True
        order.update(dict.fromkeys(line_keys))
    if not placed:
        order.update(dict.fromkeys(tpl.keys))
    if set(order) != set(tpl.keys) | set(table.column_names):
        raise _GiveUp
    text_of = dict(zip(tpl.keys, tpl.text, strict=True))
    index_of = {key: j for j, key in enumerate(tpl.keys)}
    take: pa.Array | None = None
    out: dict[str, Any] = {}
    for name in order:
        other = table.column(name) if name in table.column_names else None
        kind = _plain_type(other.type) if other is not None else "null"
        if kind == "other" or (other is not None and not _no_digit_first(other)):
            raise _GiveUp
        j = index_of.get(name)
        mine = j is not None
        if mine and not text_of[name] or not mine and kind in ("number", "bool"):
            # numbers: placed with numpy, nulls as a mask
            if kind not in ("null", "number", "bool") or (mine and kind == "bool"):
                raise _GiveUp
            missing = None
            if j is not None:
                values = column(j)
            else:
                values = np.empty(n_all)
                values.fill(np.nan)  # the other rows' values are written over it below
                missing = t_mask.copy()
            if other is not None and kind != "null":
                try:
                    theirs = other.cast(pa.float64())
                except (pa.ArrowException, ValueError, OverflowError):
                    raise _GiveUp from None
                values[r_pos] = theirs.to_numpy()
                if theirs.null_count:
                    if missing is None:
                        missing = np.zeros(n_all, dtype=bool)
                    missing[r_pos] = theirs.is_null().to_numpy()
            else:
                values[r_pos] = np.nan
                if missing is None:
                    missing = np.zeros(n_all, dtype=bool)
                missing[r_pos] = True
            out[name] = pa.array(values, type=pa.float64(),
                                 mask=missing if missing is not None and missing.any() else None)
            continue
        if j is not None:  # text
            if kind not in ("null", "string"):
                raise _GiveUp
            chunks = [pa.nulls(n_r, pa.string())] if other is None else \
                other.cast(pa.string()).chunks
            # the windows' parts and the other rows' in one copy (take copies them again)
            parts, parts_of[j] = parts_of[j], []
            both = pa.concat_arrays([*parts, *chunks])
            del parts
        else:
            assert other is not None
            both = pa.concat_arrays([pa.nulls(n_t, other.type), *other.chunks])
        if take is None:
            idx = np.empty(n_all, dtype=np.int64)
            idx[t_mask] = np.arange(n_t)
            idx[r_pos] = n_t + np.arange(n_r)
            take = pa.array(idx)
        out[name] = both.take(take)
    return pa.table(out)


def _drop_pages(buf: Any, start: int, end: int) -> None:
    """Hand the pages of a scanned window back (they stay in the page cache): a scan over
    the map must not count the whole file into the process's peak memory. Only clean pages
    of a map are released; the few blanked lines live in the private copies of their pages,
    which MADV_DONTNEED would throw away, so a window is released before any blanking.
    (Both this path and the JSON-lines reader's odd-line scan use it.)"""
    if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        lo = start - start % mmap.PAGESIZE
        if end > lo:
            buf.madvise(mmap.MADV_DONTNEED, lo, min(end, len(buf)) - lo)
