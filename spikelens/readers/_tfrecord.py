"""TFRecord framing and the few protobuf fields of a TensorBoard event file, decoded with numpy
alone (no tensorflow, tensorboard or protobuf). A TFRecord is `uint64 length | uint32 masked
crc32c(length) | data | uint32 masked crc32c(data)`; the data is an `Event` (wall_time=1
double, step=2 int64, summary=5) whose `Summary.Value`s carry a scalar as `simple_value`
(field 2: PyTorch, tensorboardX, TF1) or as a one-element float `tensor` (field 8: TF2,
PyTorch `new_style`). Nothing loops in Python per record. `frame_records` walks the chain of
record lengths from thousands of CRC-verified starting points at once (one numpy step per
record of the longest chain) and checks every length checksum by table lookup;
`iter_scalars` then decodes records in cache-sized chunks: the events shaped like one scalar
(`09 wall 10 step 2a .. 0a .. 0a tag value`) are read with fancy indexing at offsets that
follow from the record length and the step's varint length, their framing checked with one
48-bit compare, their tags identified by a short key and then compared byte for byte; the
other records (the file-version event, step 0, histograms, merged summaries, anything odd)
go through a plain protobuf decoder, `decode_general`, which is also the reference the
vectorised path is tested against. Histograms (`Summary.Value.histo`, PyTorch
`add_histogram`, and TF2's `histograms` plugin tensors of [left, right, count] buckets) are
read into four scalars per tag: `<tag>/hist_min`, `/hist_max`, `/hist_mean` and `/hist_rms`
(exact from the proto's sums; from bucket centres for TF2 tensors). Damage is read around:
a bad length checksum ends a walk, the walk resynchronises on the next valid header, and
every skipped range is reported. A large file uses two threads (numpy releases the GIL on
big arrays): the two halves of the chains are walked at once, and the byte-level decoding
of the next chunk, a pure function of its bytes, runs ahead of the chunk whose tags and
state are being settled in file order; results are the same as on one thread.
`write_scalar_events` is the inverse, vectorised too, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import functools
import math
import queue
import struct
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from spikelens.errors import LogFormatError

if TYPE_CHECKING:
    import pandas as pd

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
HEADER = 12  # uint64 length + uint32 crc of the length
FOOTER = 4  # uint32 crc of the data

#: scalar tensor dtypes (TensorProto.dtype): DT_FLOAT and DT_DOUBLE
DT_FLOAT = 1
DT_DOUBLE = 2

# ---------------------------------------------------------------------------------------------
# CRC-32C


@functools.cache
def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


@functools.cache
def _word_tables() -> tuple[np.ndarray, np.ndarray]:
    """Slicing-by-4 folded into two 64K tables: after `c ^= word`, `c = A[c & 0xffff] ^
    B[c >> 16]` consumes four bytes with two lookups (the tables stay in L2 cache)."""
    t1 = _byte_table()
    t2 = (t1 >> 8) ^ t1[t1 & 0xFF]
    t3 = (t2 >> 8) ^ t1[t2 & 0xFF]
    t4 = (t3 >> 8) ^ t1[t3 & 0xFF]
    x = np.arange(65536, dtype=np.uint32)
    return t4[x & 0xFF] ^ t3[x >> 8], t2[x & 0xFF] ^ t1[x >> 8]


@functools.cache
def _py_table() -> tuple[int, ...]:
    return tuple(int(v) for v in _byte_table())


def crc32c(data: bytes) -> int:
    """CRC-32C of a short byte string (pure Python; sniffing and single headers)."""
    table = _py_table()
    c = _U32
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ _U32


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: crc32c rotated right by 15 bits plus a constant."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & _U32


def _mask(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.uint32, copy=False)
    return ((c >> np.uint32(15)) | (c << np.uint32(17))) + np.uint32(_MASK_DELTA)


def _header_crcs(u32: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Masked crc32c of the 8 length bytes at each offset, vectorised."""
    a, b = _word_tables()
    c = u32[offsets] ^ np.uint32(_U32)
    c = a[c & 0xFFFF] ^ b[c >> 16]
    c ^= u32[offsets + 4]
    c = a[c & 0xFFFF] ^ b[c >> 16]
    return _mask(c ^ np.uint32(_U32))


def _crc_spans(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Masked crc32c of buf[starts[i] : starts[i] + lengths[i]] for every i, vectorised:
    records sorted by length so the ones still running are always a prefix."""
    a, b = _word_tables()
    t1 = _byte_table()
    u32 = _view(buf, "<u4")
    order = np.argsort(-lengths, kind="stable")
    st = starts[order]
    ln = lengths[order]
    c = np.full(len(st), _U32, dtype=np.uint32)
    words = ln // 4
    nmax = int(words[0]) if len(words) else 0
    # number of records with at least k+1 whole words, for each k
    counts = np.searchsorted(-words, -np.arange(1, nmax + 1), side="right")
    for k in range(nmax):
        m = int(counts[k])
        cc = c[:m] ^ u32[st[:m] + 4 * k]
        c[:m] = a[cc & 0xFFFF] ^ b[cc >> 16]
    rest = ln - 4 * words
    base = st + 4 * words
    for k in range(3):
        sel = np.flatnonzero(rest > k)
        if len(sel) == 0:
            break
        cc = c[sel]
        c[sel] = t1[(cc ^ buf[base[sel] + k]) & 0xFF] ^ (cc >> 8)
    out = np.empty_like(c)
    out[order] = _mask(c ^ np.uint32(_U32))
    return out


def _crc_rows(mat: np.ndarray) -> np.ndarray:
    """Masked crc32c of each row of a (n, k) uint8 matrix (the writer's equal-length records)."""
    a, b = _word_tables()
    t1 = _byte_table()
    n, k = mat.shape
    c = np.full(n, _U32, dtype=np.uint32)
    j = 0
    while j + 4 <= k:
        w = mat[:, j:j + 4].astype(np.uint32)
        c ^= w[:, 0] | (w[:, 1] << 8) | (w[:, 2] << 16) | (w[:, 3] << 24)
        c = a[c & 0xFFFF] ^ b[c >> 16]
        j += 4
    while j < k:
        c = t1[(c ^ mat[:, j]) & 0xFF] ^ (c >> 8)
        j += 1
    return _mask(c ^ np.uint32(_U32))


# ---------------------------------------------------------------------------------------------
# framing


def _view(buf: np.ndarray, dtype: str) -> np.ndarray:
    """A view of `buf` with one little-endian integer starting at *every* byte offset, so a
    field at any offset is one fancy-index away (numpy reads unaligned items fine)."""
    size = np.dtype(dtype).itemsize
    n = max(buf.shape[0] - size + 1, 0)
    return np.ndarray((n,), dtype=dtype, buffer=buf, offset=0, strides=(1,))


#: files at least this large are framed and decoded on two threads (below it a thread's
#: start and hand-offs cost more than they save)
PARALLEL_MIN_BYTES = 8 << 20


def use_threads(nbytes: int) -> bool:
    """Whether to split the work of a file of `nbytes` over two threads."""
    if nbytes < PARALLEL_MIN_BYTES:
        return False
    from spikelens.cores import default_jobs  # the cores this process may run on

    return default_jobs() >= 2


_T = TypeVar("_T")
_U = TypeVar("_U")


def _background(fn: Callable[[], _T]) -> Callable[[], _T]:
    """Start `fn` on a thread; the returned callable waits for it and returns its result
    (or raises its exception). The work handed to threads is numpy on large arrays, which
    releases the GIL, and touches no shared state: each call writes its own arrays."""
    box: list[Any] = []

    def run() -> None:
        try:
            # widening a float32 signalling NaN raises numpy's "invalid" flag; numpy's error
            # state is per thread, so the worker sets its own
            with np.errstate(invalid="ignore"):
                box.append((True, fn()))
        except BaseException as exc:  # handed to the caller, re-raised there
            box.append((False, exc))

    t = threading.Thread(target=run, name="spikelens-tfrecord", daemon=True)
    t.start()

    def result() -> _T:
        t.join()
        ok, value = box[0]
        if not ok:
            raise value
        out: _T = value
        return out

    return result


def _both(f: Callable[[], _T], g: Callable[[], _U]) -> tuple[_T, _U]:
    """f() here and g() on a second thread, at the same time."""
    later = _background(g)
    try:
        a = f()
    except BaseException:
        with contextlib.suppress(Exception):
            later()  # joined all the same: no thread outlives the call
        raise
    return a, later()


@dataclass(frozen=True)
class Damage:
    """A byte range the walk could not read as records."""

    offset: int
    size: int
    record: int  # 1-based number of the record that would have started here
    reason: str  # "torn" (cut off at the end of the file), "checksum", "garbage"


@dataclass(frozen=True)
class Framing:
    """The records of one file that can be read: where each starts."""

    offsets: np.ndarray  # int64, offset of each record's header
    damage: tuple[Damage, ...] = ()
    bad_data: tuple[int, ...] = ()  # record numbers dropped for a bad data crc (check mode)
    # indices into `offsets` before which a skipped record sits (keeps numbering honest)
    gaps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def numbers(self, idx: np.ndarray) -> np.ndarray:
        """1-based record number in the file of the records `idx` (skipped ones count)."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(self.gaps) == 0:
            return idx + 1
        return idx + 1 + np.searchsorted(self.gaps, idx, side="right")


def record_lengths(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Data length of the records at `offsets` (their headers were validated)."""
    lengths: np.ndarray = _view(buf, "<u8")[offsets].view(np.int64)
    return lengths


_CHUNK = 1 << 16  # records per vectorised step: keeps every temporary in cache
_SYNC_WINDOW = 256  # bytes scanned for a record start at each chunk boundary
_TARGET_CHAINS = 8192  # chains walked in parallel
_MIN_CHUNK = 64 * 1024
_PY_TAIL = 32  # below this many live chains, finishing in plain Python is cheaper


def _valid_headers(u64: np.ndarray, u32: np.ndarray, n: int, pos: np.ndarray) -> np.ndarray:
    """Which positions hold a whole record whose length checksum matches."""
    pos = pos[pos + HEADER <= n]
    if len(pos) == 0:
        return pos
    ln = u64[pos]
    ok = ln <= np.uint64(n)
    pos, ln = pos[ok], ln[ok].astype(np.int64)
    pos = pos[pos + HEADER + ln + FOOTER <= n]
    if len(pos) == 0:
        return pos
    valid: np.ndarray = pos[_header_crcs(u32, pos) == u32[pos + 8]]
    return valid


def _next_header(u64: np.ndarray, u32: np.ndarray, n: int, start: int, stop: int) -> int | None:
    """First offset in [start, stop) holding a valid record header, or None."""
    step = 1 << 16
    lo = start
    while lo < stop:
        hi = min(stop, lo + step)
        pos = np.arange(lo, hi, dtype=np.int64)
        # a plausible length has its top 4 bytes zero; cheap filter before the checksum
        pos = pos[pos + HEADER <= n]
        pos = pos[(u64[pos] >> np.uint64(32)) == 0] if len(pos) else pos
        hits = _valid_headers(u64, u32, n, pos)
        if len(hits):
            return int(hits[0])
        lo = hi
    return None


def _sync_points(u64: np.ndarray, u32: np.ndarray, n: int) -> np.ndarray:
    """Offset 0 plus, for each chunk boundary, the first valid header a little after it (a
    small window first; a wider one for the chunks where the small one found none)."""
    chunk = max(_MIN_CHUNK, n // _TARGET_CHAINS)
    bounds = np.arange(chunk, n - HEADER, chunk, dtype=np.int64)
    found: list[np.ndarray] = [np.zeros(1, np.int64)]
    for win in (_SYNC_WINDOW, 16 * _SYNC_WINDOW):
        if len(bounds) == 0:
            break
        win = min(win, chunk)
        pos = (bounds[:, None] + np.arange(win, dtype=np.int64)[None, :]).ravel()
        pos = pos[pos + HEADER <= n]
        pos = pos[(u64[pos] >> np.uint64(32)) == 0]
        hits = _valid_headers(u64, u32, n, pos)
        which = hits // chunk
        first = np.ones(len(hits), dtype=bool)
        first[1:] = which[1:] != which[:-1]
        found.append(hits[first])
        bounds = np.setdiff1d(bounds, which[first] * chunk, assume_unique=True)
    return np.unique(np.concatenate(found))


def _py_walk(u64: np.ndarray, n: int, p: int, end: int) -> tuple[list[int], int]:
    """Plain walk from p until reaching >= end or a record that does not fit."""
    out: list[int] = []
    while p < end and p + HEADER <= n:
        ln = int(u64[p])
        nxt = p + HEADER + ln + FOOTER
        if nxt > n:
            break
        out.append(p)
        p = nxt
    return out, p


def _walk_chains(
    u64: np.ndarray, n: int, starts: np.ndarray, last_end: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_walk` with its offsets placed in one array."""
    walk = _walk(u64, n, starts, last_end)
    flat = np.empty(walk.total, dtype=np.int64)
    walk.place(flat)
    return flat, walk.base, walk.stop


def _walk(u64: np.ndarray, n: int, starts: np.ndarray, last_end: int | None = None) -> _Walk:
    """Walk from every start to the next one, all chains in lock-step (one numpy step per
    record of the longest chain). Returns the record offsets (to be placed chain after
    chain), where each chain's offsets begin (plus the total), and where each chain stopped: the
    first record boundary at or past the next start, or the record that did not fit. The
    last chain runs to `last_end` (the end of the file unless a later group of chains
    starts there: each chain's walk depends on its own start and end alone)."""
    nc = len(starts)
    ends = np.append(starts[1:], n if last_end is None else last_end).astype(np.int64)
    stop = np.empty(nc, dtype=np.int64)
    count = np.zeros(nc, dtype=np.int64)
    ids = np.arange(nc)
    p = starts.astype(np.int64).copy()
    e = ends.copy()
    lim = max(n - 8, 0)
    # the k-th step visits the k-th record of every live chain, so (chain, step) places
    # each offset without sorting
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    tails: dict[int, list[int]] = {}
    while len(ids) > _PY_TAIL:
        ln = u64[np.minimum(p, lim)].view(np.int64)  # >= 2**63 reads as negative: bad
        nxt = p + (HEADER + FOOTER) + ln
        fits = (ln >= 0) & (nxt <= n)
        cont = fits & (nxt < e)
        if cont.all():
            steps.append((ids, p))
            p = nxt
            continue
        steps.append((ids[fits], p[fits]))
        gone = ~cont
        stop[ids[gone]] = np.where(fits[gone], nxt[gone], p[gone])
        ids, p, e = ids[cont], nxt[cont], e[cont]
    for ids_k, _ in steps:
        count[ids_k] += 1
    for cid, pp in zip(ids.tolist(), p.tolist(), strict=True):
        tail, stop[cid] = _py_walk(u64, n, pp, int(ends[cid]))
        tails[cid] = tail
        count[cid] += len(tail)
    return _Walk(steps, tails, np.concatenate([[0], np.cumsum(count)]).astype(np.int64), stop)


@dataclass
class _Walk:
    """The offsets a walk visited, step by step, before they are placed chain after chain
    (so that two walks can place theirs into one array, with no copy to join them)."""

    steps: list[tuple[np.ndarray, np.ndarray]]  # (chains, offsets) of each lock-step
    tails: dict[int, list[int]]  # offsets of the chains finished in Python
    base: np.ndarray  # where each chain's offsets begin, plus the total
    stop: np.ndarray

    @property
    def total(self) -> int:
        return int(self.base[-1])

    def place(self, flat: np.ndarray) -> None:
        """Write the offsets into `flat` (of `total` items), chain after chain."""
        base = self.base
        for k, (ids_k, p_k) in enumerate(self.steps):
            flat[base[ids_k] + k] = p_k
        for cid, tail in self.tails.items():
            if tail:
                hi = int(base[cid + 1])
                flat[hi - len(tail):hi] = tail
        self.steps, self.tails = [], {}  # freed as soon as placed


def frame_records(buf: np.ndarray, source: str, check_crc: bool = False,
                  parallel: bool | None = None) -> Framing:
    """Find every record of one event file. Lengths are always checked against their
    checksum; data checksums only when `check_crc`. Raises LogFormatError when the first
    record is not a valid record; later damage is skipped and described in `damage`.
    `parallel` (default: a file of `PARALLEL_MIN_BYTES` or more on a machine with two cores
    or more) walks the two halves of the chains on two threads; the result is the same."""
    if parallel is None:
        parallel = use_threads(int(buf.shape[0]))
    n = int(buf.shape[0])
    if n == 0:
        raise LogFormatError(f"{source}: empty file")
    u64 = _view(buf, "<u8")
    u32 = _view(buf, "<u4")
    if n < HEADER:
        raise LogFormatError(
            f"{source}: truncated event file: record 1 at byte 0 has {n} of {HEADER} header bytes"
        )
    ln0 = int(u64[0])
    if not _header_ok(u32, 0):
        raise LogFormatError(
            f"{source}: not a TensorBoard event file (record 1 at byte 0 has a bad length "
            "checksum)"
        )
    if HEADER + ln0 + FOOTER > n:
        raise LogFormatError(
            f"{source}: truncated event file: record 1 at byte 0 needs "
            f"{HEADER + ln0 + FOOTER} bytes, the file has {n}"
        )
    starts = _sync_points(u64, u32, n)
    flat, base, stop, ok = _walk_checked(u64, u32, n, starts, parallel)
    end = int(stop[-1])
    clean = (bool(ok.all()) and bool(np.all(stop[:-1] == starts[1:]))
             and (end == n or _is_torn(u32, n, end)))
    damage: list[Damage] = []
    if clean:
        offsets = flat
    else:
        offsets, end, damage = _stitch(u64, u32, n, starts, flat, base, stop, ok)
    if end < n:
        damage.append(Damage(end, n - end, 0, "torn" if _is_torn(u32, n, end) else "garbage"))
    gaps = np.searchsorted(offsets, np.asarray([d.offset for d in damage], dtype=np.int64))
    numbered = tuple(
        Damage(d.offset, d.size, int(g) + i + 1, d.reason)
        for i, (d, g) in enumerate(zip(damage, gaps.tolist(), strict=True))
    )
    fr = Framing(offsets, numbered, (), gaps)
    if check_crc and len(offsets):
        good = np.empty(len(offsets), dtype=bool)

        def crcs(lo: int, hi: int) -> None:
            for a in range(lo, hi, _CHUNK):
                off = offsets[a:min(hi, a + _CHUNK)]
                ln = record_lengths(buf, off)
                good[a:a + len(off)] = (_crc_spans(buf, off + HEADER, ln)
                                        == u32[off + HEADER + ln])

        # disjoint halves of `good`, in whole chunks: the same checks either way
        half = _CHUNK * ((len(offsets) // 2) // _CHUNK) if parallel else 0
        if half:
            _both(lambda: crcs(0, half), lambda: crcs(half, len(offsets)))
        else:
            crcs(0, len(offsets))
        if not good.all():
            dropped = np.flatnonzero(~good)
            bad = tuple(int(x) for x in fr.numbers(dropped))
            # each dropped record leaves a gap before the next kept one
            moved = gaps - np.searchsorted(dropped, gaps)
            new_gaps = np.sort(np.concatenate([moved, dropped - np.arange(len(dropped))]))
            fr = Framing(offsets[good], numbered, bad, new_gaps)
    return fr


def _walk_checked(
    u64: np.ndarray, u32: np.ndarray, n: int, starts: np.ndarray, parallel: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_walk_chains` over all chains plus whether each record's length checksum matches.
    In parallel the chains are split in two groups walked on two threads (the first
    group's last chain ends where the second group starts, as it would in one walk), and
    each thread then places its offsets into its part of one array and checks them: the
    same arrays as one walk gives, and no more memory."""

    def check(flat: np.ndarray, ok: np.ndarray) -> None:
        for a in range(0, len(flat), _CHUNK):
            ok[a:a + _CHUNK] = _lengths_ok(u64, u32, flat[a:a + _CHUNK])

    h = len(starts) // 2
    if not parallel or h == 0:
        flat, base, stop = _walk_chains(u64, n, starts)
        ok = np.empty(len(flat), dtype=bool)
        check(flat, ok)
        return flat, base, stop, ok
    first, second = _both(lambda: _walk(u64, n, starts[:h], int(starts[h])),
                          lambda: _walk(u64, n, starts[h:]))
    t = first.total
    flat = np.empty(t + second.total, dtype=np.int64)
    ok = np.empty(len(flat), dtype=bool)

    def finish(w: _Walk, lo: int, hi: int) -> None:
        w.place(flat[lo:hi])
        check(flat[lo:hi], ok[lo:hi])

    _both(lambda: finish(first, 0, t), lambda: finish(second, t, len(flat)))
    return (flat, np.concatenate([first.base[:-1], second.base + t]),
            np.concatenate([first.stop, second.stop]), ok)


def _lengths_ok(u64: np.ndarray, u32: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Whether each header's length checksum matches. The checksum depends on the length
    alone and a file has few distinct lengths, so it is looked up, not computed."""
    ln = u64[off]
    lut = _length_crc_lut()
    small = ln < np.uint64(len(lut))
    out: np.ndarray
    if small.all():
        out = lut[ln] == u32[off + 8]
        return out
    out = np.empty(len(off), dtype=bool)
    out[small] = lut[ln[small]] == u32[off[small] + 8]
    big = ~small
    out[big] = _header_crcs(u32, off[big]) == u32[off[big] + 8]
    return out


@functools.cache
def _length_crc_lut() -> np.ndarray:
    """Masked crc32c of every record length below 64 KiB, as stored in a header."""
    ln = np.arange(1 << 16, dtype=np.uint64)
    return _crc_rows(ln.astype("<u8").view(np.uint8).reshape(-1, 8))


def _header_ok(u32: np.ndarray, pos: int) -> bool:
    return int(_header_crcs(u32, np.asarray([pos], np.int64))[0]) == int(u32[pos + 8])


def _is_torn(u32: np.ndarray, n: int, end: int) -> bool:
    """The bytes from `end` look like the start of a record cut off by the end of the file:
    fewer than a header, or a valid header whose record runs past the end."""
    return n - end < HEADER or _header_ok(u32, end)


def _stitch(
    u64: np.ndarray,
    u32: np.ndarray,
    n: int,
    starts: np.ndarray,
    flat: np.ndarray,
    bounds: np.ndarray,
    stop: np.ndarray,
    ok: np.ndarray,
) -> tuple[np.ndarray, int, list[Damage]]:
    """Slow path, only for damaged files or false sync points: follow the true chain from
    byte 0, take a parallel chain whenever the walk lands exactly on its start, walk in
    Python between, and resynchronise on the next valid header after a bad one. Returns the
    offsets, where reading ended (< n: a torn or garbage tail) and the damage skipped."""
    pieces: list[np.ndarray] = []
    damage: list[Damage] = []
    start_list = starts.tolist()
    nc = len(start_list)
    cur = 0
    j = 0
    while cur < n:
        while j < nc and start_list[j] < cur:
            j += 1
        if j < nc and start_list[j] == cur:
            c_ok = ok[bounds[j]:bounds[j + 1]]
            chain = flat[bounds[j]:bounds[j + 1]]
            if c_ok.all():
                pieces.append(chain)
                if int(stop[j]) == cur:  # not even one record fits: the tail
                    break
                cur = int(stop[j])
                j += 1
                continue
            bad = int(np.argmin(c_ok))
            pieces.append(chain[:bad])
            cur = int(chain[bad])
        # walk record by record, checking each length checksum, until we land on a chain
        target = start_list[j] if j < nc else n
        while cur < n:
            if cur + HEADER > n:
                return _joined(pieces), cur, damage
            if not _header_ok(u32, cur):
                nxt = _next_header(u64, u32, n, cur + 1, n)
                if nxt is None:
                    return _joined(pieces), cur, damage
                damage.append(Damage(cur, nxt - cur, 0, "checksum"))
                cur = nxt
                break
            ln = int(u64[cur])
            if cur + HEADER + ln + FOOTER > n:
                return _joined(pieces), cur, damage
            pieces.append(np.asarray([cur], np.int64))
            cur += HEADER + ln + FOOTER
            while cur > target and j < nc:
                j += 1
                target = start_list[j] if j < nc else n
            if cur == target:
                break
    return _joined(pieces), cur, damage


def _joined(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces).astype(np.int64) if pieces else np.empty(0, np.int64)


# ---------------------------------------------------------------------------------------------
# decoding


@dataclass(frozen=True)
class Scalars:
    """Scalars in write order: a chunk of a file (`iter_scalars`) or a whole file."""

    steps: np.ndarray  # int64
    values: np.ndarray  # float64 (float32 scalars widened)
    tag_ids: np.ndarray  # int32 index into the decoder's `tags`
    rec: np.ndarray  # int64 index into the framing's records of each scalar
    walls: np.ndarray  # float64 wall time of each scalar's event


@dataclass
class DecodeState:
    """What decoding one file learns as it goes: the tags (in order of first appearance),
    the plugin each tag's metadata names, and what was not read."""

    tags: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)
    plugin_at: dict[str, int] = field(default_factory=dict)  # record where it was named
    skipped: dict[str, int] = field(default_factory=dict)
    malformed: list[int] = field(default_factory=list)

    def tag_id(self, tag: str) -> int:
        tid = self.index.get(tag)
        if tid is None:
            tid = self.index[tag] = len(self.tags)
            self.tags.append(tag)
        return tid


class _ProtoError(ValueError):
    pass


def _varint(b: bytes, i: int, end: int) -> tuple[int, int]:
    r = 0
    shift = 0
    while True:
        if i >= end or shift > 63:
            raise _ProtoError("truncated varint")
        c = b[i]
        i += 1
        r |= (c & 0x7F) << shift
        if c < 0x80:
            return r, i
        shift += 7


def _fields(b: bytes, start: int, end: int) -> Iterable[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field."""
    i = start
    while i < end:
        key, i = _varint(b, i, end)
        fnum, wt = key >> 3, key & 7
        if fnum == 0:
            raise _ProtoError("field number 0")
        if wt == 0:
            v, i = _varint(b, i, end)
            yield fnum, wt, v, i
        elif wt == 1:
            if i + 8 > end:
                raise _ProtoError("truncated fixed64")
            yield fnum, wt, i, i + 8
            i += 8
        elif wt == 5:
            if i + 4 > end:
                raise _ProtoError("truncated fixed32")
            yield fnum, wt, i, i + 4
            i += 4
        elif wt == 2:
            ln, i = _varint(b, i, end)
            if i + ln > end:
                raise _ProtoError("truncated length-delimited field")
            yield fnum, wt, i, i + ln
            i += ln
        else:
            raise _ProtoError(f"unsupported wire type {wt}")


# Summary.Value oneof fields other than the scalar ones, by what they hold
_VALUE_KINDS = {3: "histograms", 4: "images", 5: "histograms", 6: "audio"}
#: the scalars a histogram is read into, as suffixes of its tag
HIST_STATS = ("hist_min", "hist_max", "hist_mean", "hist_rms")


def _histo_stats(b: bytes, start: int, end: int) -> tuple[float, float, float, float] | None:
    """(min, max, mean, rms) of a HistogramProto (min=1, max=2, num=3, sum=4,
    sum_squares=5, all doubles), or None for an empty histogram."""
    vals = {1: math.nan, 2: math.nan, 3: 0.0, 4: math.nan, 5: math.nan}
    for f, wt, s, _ in _fields(b, start, end):
        if f in vals and wt == 1:
            vals[f] = struct.unpack_from("<d", b, s)[0]
    n = vals[3]
    if not n > 0:
        return None
    return (vals[1], vals[2], vals[4] / n, math.sqrt(max(vals[5], 0.0) / n))


def _tensor_histogram(b: bytes, start: int, end: int) -> tuple[float, float, float, float] | None:
    """(min, max, mean, rms) of a TF2 `histograms` plugin tensor: k x 3 (left edge, right
    edge, count), from the edges of the first and last non-empty buckets and the bucket
    centres; None when it is not such a tensor or is empty."""
    dtype = 0
    dims: list[int] = []
    content: bytes | None = None
    floats: list[float] = []
    for f, wt, s, e in _fields(b, start, end):
        if f == 1 and wt == 0:
            dtype = s
        elif f == 2 and wt == 2:
            for f2, wt2, s2, e2 in _fields(b, s, e):
                if f2 == 2 and wt2 == 2:
                    size = 0
                    for f3, wt3, s3, _ in _fields(b, s2, e2):
                        if f3 == 1 and wt3 == 0:
                            size = s3
                    dims.append(size)
        elif f == 4 and wt == 2:
            content = b[s:e]
        elif f == 5 and wt == 2:
            floats.extend(struct.unpack(f"<{(e - s) // 4}f", b[s:s + 4 * ((e - s) // 4)]))
        elif f == 6 and wt == 2:
            floats.extend(struct.unpack(f"<{(e - s) // 8}d", b[s:s + 8 * ((e - s) // 8)]))
    if dtype not in (DT_FLOAT, DT_DOUBLE) or len(dims) != 2 or dims[1] != 3:
        return None
    if content is not None:
        arr = np.frombuffer(content, dtype="<f4" if dtype == DT_FLOAT else "<f8")
    else:
        arr = np.asarray(floats, dtype=np.float64)
    if arr.size != dims[0] * 3 or dims[0] == 0:
        return None
    m = arr.astype(np.float64).reshape(dims[0], 3)
    nz = np.flatnonzero(m[:, 2] > 0)
    if not len(nz):
        return None
    c = m[:, 2]
    mid = (m[:, 0] + m[:, 1]) / 2
    n = float(c.sum())
    return (float(m[nz[0], 0]), float(m[nz[-1], 1]), float((c * mid).sum() / n),
            float(math.sqrt((c * mid * mid).sum() / n)))


def _plugin_name(b: bytes, start: int, end: int) -> str:
    for f, wt, s, e in _fields(b, start, end):
        if f == 1 and wt == 2:  # SummaryMetadata.plugin_data
            for f2, wt2, s2, e2 in _fields(b, s, e):
                if f2 == 1 and wt2 == 2:  # PluginData.plugin_name
                    return b[s2:e2].decode("utf-8", "replace")
    return ""


def _tensor_scalar(b: bytes, start: int, end: int) -> float | str:
    """The value of a one-element DT_FLOAT/DT_DOUBLE tensor, or what else the tensor is."""
    dtype = 0
    elems = 1
    content: bytes | None = None
    floats: list[float] = []
    for f, wt, s, e in _fields(b, start, end):
        if f == 1 and wt == 0:
            dtype = s
        elif f == 2 and wt == 2:  # TensorShapeProto: repeated Dim dim = 2 {int64 size = 1}
            for f2, wt2, s2, e2 in _fields(b, s, e):
                if f2 == 2 and wt2 == 2:
                    size = 0
                    for f3, wt3, s3, _ in _fields(b, s2, e2):
                        if f3 == 1 and wt3 == 0:
                            size = s3
                    elems *= size
        elif f == 4 and wt == 2:
            content = b[s:e]
        elif f == 5 and wt == 2:  # packed float_val
            floats.extend(struct.unpack(f"<{(e - s) // 4}f", b[s:s + 4 * ((e - s) // 4)]))
        elif f == 5 and wt == 5:
            floats.append(struct.unpack_from("<f", b, s)[0])
        elif f == 6 and wt == 2:  # packed double_val
            floats.extend(struct.unpack(f"<{(e - s) // 8}d", b[s:s + 8 * ((e - s) // 8)]))
        elif f == 6 and wt == 1:
            floats.append(struct.unpack_from("<d", b, s)[0])
    if dtype not in (DT_FLOAT, DT_DOUBLE):
        return "non-float tensors"
    if elems != 1:
        return "tensors"
    if content is not None:
        fmt, size = ("<f", 4) if dtype == DT_FLOAT else ("<d", 8)
        if len(content) != size:
            return "tensors"
        return float(struct.unpack(fmt, content)[0])
    if len(floats) != 1:
        return "tensors"
    return float(floats[0])


@dataclass
class _GeneralOut:
    rec: list[int]  # index into the framing's records, one per scalar
    steps: list[int]
    values: list[float]
    tags: list[str]
    walls: list[float]


def _decode_event(
    b: bytes, plugins: dict[str, str]
) -> tuple[float, int, list[tuple[str, float]], list[str]]:
    """(wall_time, step, [(tag, value)], [kinds skipped]) of one serialized Event."""
    wall = 0.0
    step = 0
    summaries: list[tuple[int, int]] = []
    for f, wt, s, e in _fields(b, 0, len(b)):
        if f == 1 and wt == 1:
            wall = struct.unpack_from("<d", b, s)[0]
        elif f == 2 and wt == 0:
            s &= (1 << 64) - 1  # int64 on the wire: keep the low 64 bits, two's complement
            step = s - (1 << 64) if s >= 1 << 63 else s
        elif f == 5 and wt == 2:
            summaries.append((s, e))
    scalars: list[tuple[str, float]] = []
    skipped: list[str] = []
    for s, e in summaries:
        for f, wt, vs, ve in _fields(b, s, e):
            if f != 1 or wt != 2:
                continue
            tag = ""
            value: float | str | None = None
            tensor: tuple[int, int] | None = None
            hist: tuple[float, float, float, float] | None = None
            kind = "empty values"
            for f2, wt2, s2, e2 in _fields(b, vs, ve):
                if f2 == 1 and wt2 == 2:
                    tag = b[s2:e2].decode("utf-8", "replace")
                elif f2 == 2 and wt2 == 5:
                    value = float(struct.unpack_from("<f", b, s2)[0])
                elif f2 == 8 and wt2 == 2:
                    tensor = (s2, e2)
                elif f2 == 9 and wt2 == 2:
                    name = _plugin_name(b, s2, e2)
                    if name:
                        plugins.setdefault(tag, name)
                elif f2 == 5 and wt2 == 2:  # histo: read into min/max/mean/rms scalars
                    kind = "histograms"  # an empty one is ignored like the others
                    hist = _histo_stats(b, s2, e2)
                elif f2 in _VALUE_KINDS:
                    kind = _VALUE_KINDS[f2]
            if value is None and tensor is not None:
                # the metadata of a TF2 summary comes after its tensor, and often only
                # with the tag's first event: decide once the whole value is read
                plugin = plugins.get(tag, "")
                if plugin == "histograms":
                    hist = _tensor_histogram(b, tensor[0], tensor[1])
                    kind = "histograms"
                elif plugin not in ("", "scalars"):
                    kind = plugin
                else:
                    value = _tensor_scalar(b, tensor[0], tensor[1])
                    if isinstance(value, str):
                        kind, value = value, None
            if isinstance(value, float):
                scalars.append((tag, value))
            elif hist is not None:
                scalars.extend((f"{tag}/{name}", v) for name, v in zip(HIST_STATS, hist,
                                                                       strict=True))
            else:
                skipped.append(kind)
    return wall, step, scalars, skipped


def _general(
    buf: np.ndarray, fr: Framing, which: np.ndarray, st: DecodeState,
    named: Sequence[tuple[int, str]] = (),
) -> _GeneralOut:
    """The per-record protobuf decoder over the records `which`. `named` are (record,
    tag) pairs where the fast path met `scalars` metadata, applied in record order."""
    out = _GeneralOut([], [], [], [], [])
    raw = buf.data
    offsets = fr.offsets[which].tolist()
    lengths = record_lengths(buf, fr.offsets[which]).tolist()
    pending = list(named)
    for k, o, ln in zip(which.tolist(), offsets, lengths, strict=True):
        while pending and pending[0][0] < k:
            _name_plugin(st, pending.pop(0), "scalars")
        b = bytes(raw[o + HEADER:o + HEADER + ln])
        nplug = len(st.plugins)
        try:
            wall, step, scalars, skipped = _decode_event(b, st.plugins)
        except (_ProtoError, struct.error, OverflowError):
            st.malformed.append(int(fr.numbers(np.asarray([k]))[0]))
            continue
        finally:
            if len(st.plugins) != nplug:
                for tag in st.plugins:
                    st.plugin_at.setdefault(tag, k)
        for tag, value in scalars:
            out.rec.append(k)
            out.steps.append(step)
            out.values.append(value)
            out.tags.append(tag)
            out.walls.append(wall)
        for kind in skipped:
            st.skipped[kind] = st.skipped.get(kind, 0) + 1
    for item in pending:
        _name_plugin(st, item, "scalars")
    return out


def _name_plugin(st: DecodeState, item: tuple[int, str], name: str) -> None:
    k, tag = item
    if tag not in st.plugins:
        st.plugins[tag] = name
        st.plugin_at[tag] = k


def _general_scalars(g: _GeneralOut, st: DecodeState) -> Scalars:
    return Scalars(
        steps=np.asarray(g.steps, dtype=np.int64),
        values=np.asarray(g.values, dtype=np.float64),
        tag_ids=np.asarray([st.tag_id(t) for t in g.tags], dtype=np.int32),
        rec=np.asarray(g.rec, dtype=np.int64),
        walls=np.asarray(g.walls, dtype=np.float64),
    )


def decode_general(buf: np.ndarray, fr: Framing, st: DecodeState | None = None) -> Scalars:
    """Reference decoder: every record through the per-record protobuf parser."""
    st = st or DecodeState()
    return _general_scalars(_general(buf, fr, np.arange(len(fr.offsets)), st), st)


# The fast path. A PyTorch/tensorboardX scalar event is, byte for byte:
#   09 <wall_time: 8>  10 <step varint: s>  2a <slen>  0a <vlen>  0a <T> <tag: T>  15 <f32>
# so with m = record length - s every framing byte is known: slen = m - 12, vlen = m - 14,
# T = m - 21. One 48-bit compare checks them all. TF2 and PyTorch `new_style` scalars put a
# tensor where `15 <f32>` is; those few layouts are matched from `_TENSOR_TAILS`.
_MASK48 = np.uint64((1 << 48) - 1)
_FRAME_B = np.uint64((1 << 8) | (1 << 24) | (1 << 40))
_FRAME_C = np.uint64((0x0A000A002A - ((12 << 8) | (14 << 24) | (21 << 40))) % (1 << 64))
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_BYTE_MASKS = np.asarray([(1 << (8 * i)) - 1 for i in range(8)] + [(1 << 64) - 1],
                         dtype=np.uint64)

#: bytes of a one-scalar tensor Value after its tag: (bytes before the value, value size)
_TENSOR_TAILS = (
    (b"\x42\x0a\x08\x01\x12\x00\x22\x04", 4),  # TF2: DT_FLOAT, tensor_content
    (b"\x42\x0a\x08\x01\x12\x00\x2a\x04", 4),  # PyTorch new_style: DT_FLOAT, float_val
    (b"\x42\x0e\x08\x02\x12\x00\x22\x08", 8),  # DT_DOUBLE, tensor_content
    (b"\x42\x0e\x08\x02\x12\x00\x32\x08", 8),  # DT_DOUBLE, double_val
)
#: what may follow the tensor: nothing, or the `scalars` plugin metadata (with and
#: without data_class); anything else goes through the general decoder
_SCALARS_META = (
    b"",
    b"\x4a\x0b\x0a\x09\x0a\x07scalars",
    b"\x4a\x0d\x0a\x09\x0a\x07scalars\x20\x01",
)


class _Views:
    def __init__(self, buf: np.ndarray) -> None:
        self.n = int(buf.shape[0])
        self.u8 = buf
        self.u64 = _view(buf, "<u8")
        self.f4 = _view(buf, "<f4")
        self.f8 = _view(buf, "<f8")


class _TagTable:
    """Tags met by the fast path. Two keys find a tag: its length and last 8 bytes (round
    0), or a hash of all its bytes (round 1, for tags that share a round-0 key); each id
    keeps the tag's bytes, so a match is always checked byte for byte."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.names: list[str] = []
        self.to_state = np.empty(0, dtype=np.int32)  # fast-path tag id -> state tag id
        self._keys: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self._sorted: list[tuple[np.ndarray, np.ndarray]] = [
            (np.empty(0, np.uint64), np.empty(0, np.int32))] * 2
        self._words: list[np.ndarray] = []  # word k of every tag, by id
        self._lens = np.empty(0, dtype=np.int64)

    def add(self, raw: bytes) -> int:
        tid = len(self.raw)
        self.raw.append(raw)
        self.names.append(raw.decode("utf-8", "replace"))
        self._words = []
        self._lens = np.asarray([len(r) for r in self.raw], dtype=np.int64)
        return tid

    def ids_of(self, name: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if n == name]

    def _word(self, k: int) -> np.ndarray:
        while len(self._words) <= k:
            j = len(self._words)
            self._words.append(np.asarray([_word(r, j) for r in self.raw], dtype=np.uint64))
        return self._words[k]

    def _lookup(self, rnd: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sk, sid = self._sorted[rnd]
        if len(sk) == 0:
            return np.zeros(len(keys), np.int32), np.zeros(len(keys), bool)
        pos = np.minimum(np.searchsorted(sk, keys), len(sk) - 1)
        return sid[pos], sk[pos] == keys

    def match(self, rnd: int, keys: np.ndarray, words: list[np.ndarray], tlen: np.ndarray,
              u8: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, hit = self._lookup(rnd, keys)
        if not hit.all():
            miss = np.flatnonzero(~hit)
            # a new key takes its first record's tag as the reference
            uk, first = np.unique(keys[miss], return_index=True)
            keymap = self._keys[rnd]
            for kv, i in zip(uk.tolist(), miss[first].tolist(), strict=True):
                keymap[kv] = self.add(bytes(u8[int(g[i]):int(g[i]) + int(tlen[i])]))
            items = sorted(keymap.items())
            self._sorted[rnd] = (np.asarray([k for k, _ in items], dtype=np.uint64),
                                 np.asarray([v for _, v in items], dtype=np.int32))
            ids[miss], _ = self._lookup(rnd, keys[miss])
        exact = self._lens[ids] == tlen
        for k, w in enumerate(words):
            exact &= self._word(k)[ids] == w
        return ids, exact


def _tensor_values(
    vw: _Views, idx: np.ndarray, w2: np.ndarray, q: np.ndarray, mm: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the records `idx` that are not simple_value ones: which hold a one-scalar tensor
    layout, their values, tag lengths and whether `scalars` metadata came with them."""
    u64 = vw.u64
    w2, q, mm = w2[idx], q[idx], mm[idx]
    tlen = ((w2 >> np.uint64(40)) & np.uint64(0xFF)).astype(np.int64)
    ok = (w2 & np.uint64(0xFF00FF00FF)) == np.uint64(0x0A000A002A)
    ok &= ((w2 >> np.uint64(8)) & np.uint64(0xFF)).astype(np.int64) == mm - 12
    ok &= ((w2 >> np.uint64(24)) & np.uint64(0xFF)).astype(np.int64) == mm - 14
    ok &= (mm - 12 < 128) & (tlen < 128)
    tail = mm - 16 - tlen  # Value bytes after the tag
    t = np.where(ok, q + 6 + tlen, 0)
    values = np.full(len(idx), np.nan)
    matched = np.zeros(len(idx), dtype=bool)
    has_meta = np.zeros(len(idx), dtype=bool)
    for head, size in _TENSOR_TAILS:
        hw = np.uint64(int.from_bytes(head, "little"))
        for meta in _SCALARS_META:
            sel = np.flatnonzero(ok & ~matched & (tail == len(head) + size + len(meta)))
            if len(sel) == 0:
                continue
            tt = t[sel]
            good = u64[tt] == hw
            for j in range(0, len(meta), 8):
                part = meta[j:j + 8]
                word = u64[tt + len(head) + size + j]
                good &= (word & _BYTE_MASKS[len(part)]) == np.uint64(
                    int.from_bytes(part, "little"))
            sel = sel[good]
            vpos = t[sel] + len(head)
            values[sel] = vw.f4[vpos] if size == 4 else vw.f8[vpos]
            matched[sel] = True
            has_meta[sel] = bool(meta)
    return matched, values, tlen, has_meta


@dataclass
class _Prepared:
    """What the bytes of one chunk of records say before any tag is identified: a pure
    function of the bytes, so it can be worked out on another thread ahead of the chunk's
    turn. `fast` marks the records of a fast-path layout (their tags still to be checked);
    `idx` lists them (None when all are), and `g`, `tlen` and `words` are their tags'
    starts, lengths and bytes as words."""

    steps: np.ndarray
    values: np.ndarray
    tensor: np.ndarray
    meta: np.ndarray
    fast: np.ndarray
    idx: np.ndarray | None
    g: np.ndarray
    tlen: np.ndarray
    words: list[np.ndarray]


def _prepare_chunk(vw: _Views, off: np.ndarray) -> _Prepared:
    """The byte-level part of the fast path over the records at `off`."""
    u8, u64 = vw.u8, vw.u64
    m = len(off)
    ln = record_lengths(u8, off)
    values = np.empty(m, dtype=np.float64)
    tensor = np.zeros(m, dtype=bool)
    meta = np.zeros(m, dtype=bool)
    d = off + HEADER
    ok = ln >= 22  # the shortest event of this shape (empty tag)
    if not ok.all():
        d = np.where(ok, d, 0)  # keep the reads inside the buffer; these are decided already
    w1 = u64[d + 9]
    ok &= (u8[d] == 0x09) & ((w1 & np.uint64(0xFF)) == np.uint64(0x10))
    v = w1 >> np.uint64(8)
    ends = ~v & np.uint64(0x0080808080808080)  # a clear top bit ends the varint
    ok &= ends != 0
    vmask = ends ^ (ends - np.uint64(1))  # the varint's bytes
    s = (np.bitwise_count(vmask) >> 3).astype(np.int64)
    v &= vmask
    step = v & np.uint64(0x7F)
    for k in range(1, min(int(s.max()), 7) if m else 0):
        step |= (v >> np.uint64(k)) & np.uint64(0x7F << (7 * k))
    steps = step.view(np.int64)
    q = d + 10 + s  # the Summary field
    mm = ln - s
    ok &= (mm >= 21) & (mm < 140)
    w2 = u64[q]
    simple = ok & ((w2 & _MASK48) == mm.astype(np.uint64) * _FRAME_B + _FRAME_C)
    w3 = u64[d + ln - 8]  # ... 15 <f32>: the last 5 bytes of a simple_value event
    simple &= ((w3 >> np.uint64(24)) & np.uint64(0xFF)) == np.uint64(0x15)
    values[:] = (w3 >> np.uint64(32)).astype(np.uint32).view(np.float32)
    tlen = mm - 21
    rest = np.flatnonzero(ok & ~simple)
    if len(rest):
        matched, tvals, ttlen, tmeta = _tensor_values(vw, rest, w2, q, mm)
        meta[rest[tmeta]] = True
        rest = rest[matched]
        values[rest] = tvals[matched]
        tlen[rest] = ttlen[matched]
        tensor[rest] = True
        simple[rest] = True
    idx = None if simple.all() else np.flatnonzero(simple)
    if idx is not None:
        q, tlen = q[idx], tlen[idx]
    g = q + 6  # first tag byte
    words = _tag_words(u64, g, tlen) if len(g) else []
    return _Prepared(steps, values, tensor, meta, simple, idx, g, tlen, words)


def _fast_chunk(u8: np.ndarray, prep: _Prepared, table: _TagTable,
                ids: np.ndarray) -> np.ndarray:
    """Identify the tags of a prepared chunk into `ids`; returns which records the fast
    path read (the rest go to the general decoder)."""
    fast = prep.fast.copy()
    idx = prep.idx
    if len(prep.g) == 0:
        ids[:] = 0
        return fast
    tag_ids, exact = _identify_tags(u8, prep.g, prep.tlen, prep.words, table)
    if idx is None:
        ids[:] = tag_ids
        if not exact.all():
            fast = exact
    else:
        ids[:] = 0
        ids[idx] = tag_ids
        fast[idx[~exact]] = False
    return fast


def _tag_words(u64: np.ndarray, g: np.ndarray, tlen: np.ndarray) -> list[np.ndarray]:
    """Every tag's bytes as little-endian words: 8 at a time from its start, the last word
    overlapping the one before it (so no word reaches past the tag); tags shorter than 8
    bytes are one masked word. Records with shorter tags repeat their last word."""
    tmin, tmax = int(tlen.min()), int(tlen.max())
    short = tlen < 8
    any_short = bool(short.any())
    lastoff = np.maximum(tlen - 8, 0)
    words: list[np.ndarray] = []
    for k in range(max(1, (tmax + 7) // 8)):
        if 8 * k + 8 <= tmin:  # a whole word of every tag in the chunk
            w = u64[g + 8 * k]
        else:
            w = u64[g + np.minimum(8 * k, lastoff)]
            if any_short:
                w = np.where(short, w & _BYTE_MASKS[np.minimum(tlen, 8)], w)
        words.append(w)
    return words


def _identify_tags(u8: np.ndarray, g: np.ndarray, tlen: np.ndarray, words: list[np.ndarray],
                   table: _TagTable) -> tuple[np.ndarray, np.ndarray]:
    """Tag id of each record and whether its tag bytes equal that tag's exactly. A cheap key
    first (the tag's length and last 8 bytes); records whose tag only shares that key with
    a known tag try again with a hash of all their bytes."""
    ln = tlen.astype(np.uint64)
    ids, exact = table.match(0, words[-1] ^ (ln * _K1), words, tlen, u8, g)
    if not exact.all():
        sub = np.flatnonzero(~exact)
        sw = [w[sub] for w in words]
        h = ln[sub] * _K1
        for w in sw:
            h = (h ^ w) * _K2
        ids[sub], exact[sub] = table.match(1, h, sw, tlen[sub], u8, g[sub])
    return ids, exact


def _word(raw: bytes, k: int) -> int:
    """The k-th hashed word of a tag, as `_fast_chunk` reads it."""
    if len(raw) < 8:
        return int.from_bytes(raw, "little")
    o = min(8 * k, len(raw) - 8)
    return int.from_bytes(raw[o:o + 8], "little")


def iter_scalars(
    buf: np.ndarray, fr: Framing, st: DecodeState, chunk: int = _CHUNK,
    parallel: bool | None = None,
) -> Iterator[Scalars]:
    """Every scalar of the file in write order, `chunk` records at a time: the vectorised
    path for the common layouts, the general decoder for the rest of each chunk. Tag ids
    index `st.tags`, which grows as tags appear. `parallel` (default as `frame_records`)
    works out the byte-level part of the next chunks on a second thread while this one's
    tags, general-decoder records and state are settled (in file order, on this thread, as
    without it) and the caller uses its scalars: the same results either way."""
    if parallel is None:
        parallel = use_threads(int(buf.shape[0]))
    vw = _Views(buf)
    table = _TagTable()
    nrec = len(fr.offsets)
    bounds = [(a, min(nrec, a + chunk)) for a in range(0, nrec, chunk)]

    def prepare(k: int) -> _Prepared:
        a, b = bounds[k]
        return _prepare_chunk(vw, fr.offsets[a:b])

    preps = _ahead(prepare, len(bounds)) if parallel else _in_turn(prepare, len(bounds))
    try:
        for (a, b), prep in zip(bounds, preps, strict=True):
            # widening a float32 signalling NaN to float64 raises numpy's "invalid" flag;
            # the NaN is kept either way
            with np.errstate(invalid="ignore"):
                part = _decode_chunk(buf, fr, st, vw, table, a, b, prep)
            yield part
    finally:
        preps.close()  # the reader may stop early: stop the worker with it


def _in_turn(fn: Callable[[int], _T], n: int) -> Generator[_T, None, None]:
    for k in range(n):
        with np.errstate(invalid="ignore"):
            item = fn(k)
        yield item


#: chunks a worker may prepare ahead of the one being used (each is a few MB)
_AHEAD = 2


def _ahead(fn: Callable[[int], _T], n: int) -> Generator[_T, None, None]:
    """fn(0), ..., fn(n - 1), computed in order on one worker thread that runs up to
    `_AHEAD` items ahead of the caller. One long-lived thread and a queue rather than a
    thread per item: on a busy machine every wake-up waits for a free core, so the fewer
    times either side has to sleep, the better."""
    out: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=_AHEAD)
    stop = threading.Event()

    def run() -> None:
        with np.errstate(invalid="ignore"):  # numpy's error state is per thread
            for k in range(n):
                try:
                    item: tuple[bool, Any] = (True, fn(k))
                except BaseException as exc:  # handed to the caller, re-raised there
                    item = (False, exc)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set() or not item[0]:
                    return

    t = threading.Thread(target=run, name="spikelens-tfrecord-ahead", daemon=True)
    t.start()
    try:
        for _ in range(n):
            ok, value = out.get()
            if not ok:
                raise value
            yield value
    finally:
        stop.set()
        t.join()


def _decode_chunk(buf: np.ndarray, fr: Framing, st: DecodeState, vw: _Views,
                  table: _TagTable, a: int, b: int, prep: _Prepared) -> Scalars:
    m = b - a
    steps, values, tensor, meta = prep.steps, prep.values, prep.tensor, prep.meta
    ids = np.empty(m, dtype=np.int32)
    fast = _fast_chunk(vw.u8, prep, table, ids)
    # `scalars` metadata read by the fast path names the tag's plugin at that record,
    # in order with what the general decoder meets
    named: list[tuple[int, str]] = []
    if meta.any():
        for t in np.unique(ids[fast & meta]).tolist():
            if table.names[t] not in st.plugins:
                named.append((a + int(np.argmax(fast & meta & (ids == t))), table.names[t]))
    g = _general(buf, fr, a + np.flatnonzero(~fast), st, sorted(named))
    if tensor.any() and st.plugin_at:
        for tag, at_rec in st.plugin_at.items():
            name = st.plugins[tag]
            if name in ("", "scalars"):
                continue
            # a tensor whose tag's metadata (met on an earlier record) names another
            # plugin is that plugin's data, as the general decoder would decide
            for t in table.ids_of(tag):
                hit = fast & tensor & (ids == t)
                hit[:max(0, at_rec - a)] = False
                if hit.any():
                    st.skipped[name] = st.skipped.get(name, 0) + int(hit.sum())
                    fast &= ~hit
    # new tags take ids in order of first appearance, whichever decoder met them
    grow = len(table.raw) - len(table.to_state)
    if grow:
        table.to_state = np.append(table.to_state, np.full(grow, -1, dtype=np.int32))
    present = np.bincount(ids[fast], minlength=len(table.raw)) > 0 if fast.any() else \
        np.zeros(len(table.raw), dtype=bool)
    fresh = [(int(np.argmax(fast & (ids == t))), t, table.names[t])
             for t in np.flatnonzero(present & (table.to_state < 0)).tolist()]
    fresh += [(k - a, -1, tag) for k, tag in zip(g.rec, g.tags, strict=True)
              if tag not in st.index]
    for _, t, tag in sorted(fresh, key=lambda x: x[0]):
        tid = st.tag_id(tag)
        if t >= 0:
            table.to_state[t] = tid
    if len(table.to_state):
        ids = table.to_state[ids]
    rec = a + np.arange(m, dtype=np.int64)
    # read here rather than ahead: it evens out the two threads' shares of the work
    walls = vw.f8[np.minimum(fr.offsets[a:b] + HEADER + 1, len(vw.f8) - 1)]
    if not g.rec:
        if fast.all():
            return Scalars(steps, values, ids, rec, walls)
        return Scalars(steps[fast], values[fast], ids[fast], rec[fast], walls[fast])
    # splice the general decoder's scalars in at their records' places
    keep = np.flatnonzero(fast)
    gs = _general_scalars(g, st)
    at = np.searchsorted(rec[keep], gs.rec)
    return Scalars(
        np.insert(steps[keep], at, gs.steps),
        np.insert(values[keep], at, gs.values),
        np.insert(ids[keep], at, gs.tag_ids),
        np.insert(rec[keep], at, gs.rec),
        np.insert(walls[keep], at, gs.walls),
    )


def read_file(path: Path) -> np.ndarray:
    """The whole file as a read-only uint8 array. Mapped rather than read: the pages come
    straight from the page cache, with no 400 MB allocation to fault in and copy into (a
    writer appending meanwhile does not disturb the mapped part). Anything that cannot be
    mapped (an empty file, a pipe) is read instead."""
    import mmap

    with open(path, "rb") as fh:  # an unreadable file fails here, as it should
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return np.frombuffer(fh.read(), dtype=np.uint8)
    return np.frombuffer(mm, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# writer


def event_file_name(timestamp: int, host: str = "localhost", pid: int = 0, n: int = 0) -> str:
    """`events.out.tfevents.<unix_ts>.<host>.<pid>.<n>`, as the writers name their files."""
    return f"events.out.tfevents.{timestamp}.{host}.{pid}.{n}"


def _varint_len(values: np.ndarray) -> np.ndarray:
    """Bytes of the protobuf varint of each int64 (negative ones take 10)."""
    u = values.astype(np.int64).view(np.uint64)
    n = np.ones(len(u), dtype=np.int64)
    for k in range(1, 10):
        n += u >= np.uint64(1 << (7 * k))
    return n


def _varint_columns(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) bytes of the varints of values that all take `width` bytes."""
    rest = values.astype(np.int64).view(np.uint64).copy()
    out = np.empty((len(rest), width), dtype=np.uint8)
    for k in range(width):
        out[:, k] = (rest & np.uint64(0x7F)).astype(np.uint8) | (0x80 if k < width - 1 else 0)
        rest >>= np.uint64(7)
    return out


def _one_varint(v: int) -> bytes:
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _record(data: bytes) -> bytes:
    ln = struct.pack("<Q", len(data))
    return (ln + struct.pack("<I", masked_crc32c(ln)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _columns(
    records: Iterable[Sequence[Any]] | pd.DataFrame, start_time: float
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(steps, tag ids, tags, values, wall times) from tuples or a wide frame."""
    import pandas as pd

    if isinstance(records, pd.DataFrame):
        frame = records
        tags = [str(c) for c in frame.columns if c not in ("step", "wall_time")]
        nrow, ntag = len(frame), len(tags)
        steps = np.repeat(frame["step"].to_numpy(dtype=np.int64), ntag)
        vals = (np.column_stack([frame[t].to_numpy(dtype=np.float64) for t in tags]).ravel()
                if ntag else np.empty(0))
        ids = np.tile(np.arange(ntag, dtype=np.int64), nrow)
        if "wall_time" in frame.columns:
            walls = np.repeat(frame["wall_time"].to_numpy(dtype=np.float64), ntag)
        else:
            walls = start_time + 0.001 * np.arange(len(steps), dtype=np.float64)
        return steps, ids, tags, vals, walls
    st: list[int] = []
    tg: list[int] = []
    vl: list[float] = []
    wt: list[float] = []
    index: dict[str, int] = {}
    for i, rec in enumerate(records):
        st.append(int(rec[0]))
        tg.append(index.setdefault(str(rec[1]), len(index)))
        vl.append(float(rec[2]))
        wt.append(float(rec[3]) if len(rec) > 3 else start_time + 0.001 * i)
    return (np.asarray(st, dtype=np.int64), np.asarray(tg, dtype=np.int64), list(index),
            np.asarray(vl, dtype=np.float64), np.asarray(wt, dtype=np.float64))


#: value bytes after the tag, value dtype, metadata bytes, per writer layout
_LAYOUT_BYTES = {
    "simple_value": (b"\x15", "<f4", b""),
    "tensor": (_TENSOR_TAILS[0][0], "<f4", _SCALARS_META[2]),
    "tensor_float_val": (_TENSOR_TAILS[1][0], "<f4", _SCALARS_META[1]),
    "tensor_double": (_TENSOR_TAILS[2][0], "<f8", _SCALARS_META[2]),
}


def write_scalar_events(
    path: str | Path,
    records: Iterable[Sequence[Any]] | pd.DataFrame,
    layout: str = "simple_value",
    *,
    file_version: bool = True,
    start_time: float = 1_700_000_000.0,
    tensor_metadata: str = "first",
) -> int:
    """Write scalars as a TensorBoard event file, one event per scalar (as PyTorch's
    SummaryWriter does); returns the number of bytes written.

    `records` is either an iterable of `(step, tag, value)` or `(step, tag, value, wall_time)`
    tuples, or a wide DataFrame with a `step` column (and optionally `wall_time`) whose every
    other column is a tag: each cell becomes one event, row by row. `layout`:
    `simple_value` (PyTorch/tensorboardX), `tensor` (TF2: DT_FLOAT `tensor_content` with
    `scalars` plugin metadata), `tensor_float_val` (PyTorch new_style: `float_val`),
    `tensor_double` (DT_DOUBLE `tensor_content`). `tensor_metadata` is "first" (metadata on
    the first event of each tag only) or "every". Zero steps and wall times are left out of
    the event, as proto3 serialisers do; the file starts with a `file_version` event at
    `start_time` unless `file_version=False`. Wall times default to `start_time` plus a
    millisecond per record.
    """
    if layout not in _LAYOUT_BYTES:
        raise ValueError(f"layout must be one of {', '.join(_LAYOUT_BYTES)}, got {layout!r}")
    if tensor_metadata not in ("first", "every"):
        raise ValueError(f"tensor_metadata must be 'first' or 'every', got {tensor_metadata!r}")
    steps, ids, tags, vals, walls = _columns(records, start_time)
    body = _encode_events(steps, ids, tags, vals, walls, layout, tensor_metadata == "every")
    prefix = _record(b"\x09" + struct.pack("<d", start_time) + b"\x1a\x0dbrain.Event:2") \
        if file_version else b""
    with open(path, "wb") as fh:
        fh.write(prefix)
        fh.write(body.tobytes())
    return len(prefix) + len(body)


def _encode_events(steps: np.ndarray, ids: np.ndarray, tags: list[str], vals: np.ndarray,
                   walls: np.ndarray, layout: str, meta_every: bool) -> np.ndarray:
    """The framed records of one event per scalar, vectorised: records that share a tag,
    a step varint length and the presence of optional fields share a byte layout, so each
    such group is built as a byte matrix, column by column."""
    head, vdtype, meta = _LAYOUT_BYTES[layout]
    vsize = np.dtype(vdtype).itemsize
    n = len(steps)
    with_meta = np.zeros(n, dtype=bool)
    if meta:
        if meta_every:
            with_meta[:] = True
        else:
            with_meta[np.unique(ids, return_index=True)[1]] = True
    slen = np.where(steps != 0, _varint_len(steps), 0)
    has_wall = walls.view(np.uint64) != 0
    key = ((ids * 11 + slen) * 2 + has_wall) * 2 + with_meta
    ukeys, inverse = np.unique(key, return_inverse=True)
    layouts: list[tuple[bytes, bytes, int, int]] = []  # summary head, meta, wall?, step len
    sizes_of = np.empty(len(ukeys), dtype=np.int64)
    for gi, k in enumerate(ukeys.tolist()):
        # the key spells out everything that shapes the record
        m_flag, k = k % 2, k // 2
        w_flag, k = k % 2, k // 2
        sl, tid = k % 11, k // 11
        tb = tags[tid].encode("utf-8")
        value = b"\x0a" + _one_varint(len(tb)) + tb + head
        vtail = meta if m_flag else b""
        vlen = len(value) + vsize + len(vtail)
        summary = b"\x0a" + _one_varint(vlen)
        shead = b"\x2a" + _one_varint(len(summary) + vlen) + summary + value
        layouts.append((shead, vtail, w_flag, sl))
        sizes_of[gi] = (HEADER + 9 * w_flag + (1 + sl if sl else 0) + len(shead) + vsize
                        + len(vtail) + FOOTER)
    sizes = sizes_of[inverse]
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(ukeys) + 1))
    vbytes = vals.astype(vdtype)
    for gi, (shead, vtail, w_flag, sl) in enumerate(layouts):
        idx = order[bounds[gi]:bounds[gi + 1]]
        parts: list[np.ndarray | bytes] = []
        if w_flag:
            parts += [b"\x09", walls[idx].view(np.uint8).reshape(-1, 8)]
        if sl:
            parts += [b"\x10", _varint_columns(steps[idx], sl)]
        parts += [shead, vbytes[idx].view(np.uint8).reshape(-1, vsize)]
        if vtail:
            parts.append(vtail)
        data = _byte_matrix(len(idx), parts)
        lenb = struct.pack("<Q", data.shape[1])
        header = lenb + struct.pack("<I", masked_crc32c(lenb))
        crc = _crc_rows(data).astype("<u4").view(np.uint8).reshape(-1, 4)
        # scatter column by column: index arrays stay one row of the group long
        pos = starts[idx]
        for j, byte in enumerate(header):
            out[pos + j] = byte
        pos = pos + HEADER
        for j in range(data.shape[1]):
            out[pos + j] = data[:, j]
        pos = pos + data.shape[1]
        for j in range(FOOTER):
            out[pos + j] = crc[:, j]
    return out


def _byte_matrix(rows: int, parts: Sequence[np.ndarray | bytes]) -> np.ndarray:
    """Concatenate constant byte strings and per-row byte columns into a (rows, k) matrix."""
    width = sum(len(p) if isinstance(p, bytes) else p.shape[1] for p in parts)
    mat = np.empty((rows, width), dtype=np.uint8)
    at = 0
    for p in parts:
        if isinstance(p, bytes):
            mat[:, at:at + len(p)] = np.frombuffer(p, dtype=np.uint8)
            at += len(p)
        else:
            mat[:, at:at + p.shape[1]] = p
            at += p.shape[1]
    return mat


def encode_record(data: bytes) -> bytes:
    """Frame one record (for hand-built test events)."""
    return _record(data)


def encode_event(
    step: int | None = None, wall_time: float | None = None, values: Iterable[bytes] = ()
) -> bytes:
    """An Event with the given serialized `Summary.Value`s (for hand-built test events)."""
    out = bytearray()
    if wall_time is not None:
        out += b"\x09" + struct.pack("<d", wall_time)
    if step is not None:
        out += b"\x10" + _one_varint(step)
    body = b"".join(b"\x0a" + _one_varint(len(v)) + v for v in values)
    if body:
        out += b"\x2a" + _one_varint(len(body)) + body
    return bytes(out)


def encode_field(field: int, payload: bytes | int | float, wire: int = 2) -> bytes:
    """One protobuf field: wire 2 (bytes), 0 (varint), 5 (float32) or 1 (float64)."""
    key = _one_varint((field << 3) | wire)
    if wire == 2:
        assert isinstance(payload, bytes)
        return key + _one_varint(len(payload)) + payload
    if wire == 0:
        return key + _one_varint(int(payload))
    if wire == 5:
        return key + struct.pack("<f", float(payload))
    return key + struct.pack("<d", float(payload))
