"""W&B run directories (`wandb/offline-run-*/`, `wandb/run-*/`) read from their transaction log,
`run-<id>.wandb`, without the wandb package. The file is a 7-byte header (`:W&B`, magic
0xBEE1, version 0) followed by LevelDB-style log records in 32 KiB blocks: each record is
`uint32 crc32(type + data) | uint16 length | uint8 type | data`, type FULL, or FIRST, MIDDLE,
LAST for a record split across blocks; fewer than 7 bytes left in a block are zero padding.
Each record's data is a protobuf `Record`: `history` (field 2: items with a key or nested
key and a `value_json`), `summary` (3), `config` (5) and `run` (17: run id, display name,
config) are read; the rest (telemetry, system stats, output) is skipped. The framing is
walked in all blocks at once with numpy, split records are joined in place, and the history
items are decoded in bulk: records, items and keys are located with vectorised varint
walks, keys are identified by a 64-bit hash of their bytes (then decoded once per distinct
key), and the numbers are parsed by pyarrow in one pass; only odd items (strings, booleans,
media, multi-part nested keys) go through Python. A history row is one `wandb.log` call;
`_step` is its step, unless the run logged a trainer step (`trainer/global_step`), as in the
JSONL reader. The run's config goes to `Run.params` under canonical keys
(`readers/_params.py`) and its final summary under `params["summary"]`. A record cut off at
the end of the file (a run still writing, or killed) is skipped with a warning, as is a
damaged record (the rest of its block is lost, as in LevelDB); set
`SPIKELENS_WANDB_CHECK_CRC=1` to verify every record's checksum (the last one always is).
A `wandb/` directory (or any directory whose subdirectories are run directories) yields one
run per run directory; `latest-run` links are not read twice."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, env_flag
from spikelens.readers._params import canonical_params, json_value
from spikelens.readers._tfrecord import _one_varint as _pb_varint

FILE_HEADER = b":W&B\xe1\xbe\x00"
BLOCK = 32768
HDR = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
CRC_ENV = "SPIKELENS_WANDB_CHECK_CRC"
_PAD = 16  # zero bytes after the data: varint reads never run off the array
_TRAINER_STEPS = ("trainer/global_step", "train/global_step")
_RESERVED = ("_runtime", "_timestamp")
#: the final summary is taken from this many last summary records: wandb-core writes one
#: after every history row, so reading them all would double the work for one dict
_SUMMARY_TAIL = 1 << 16


# ---------------------------------------------------------------------------------------------
# framing


@dataclass
class Frames:
    """The readable records of one `.wandb` file: data spans into `buf` (record order)."""

    buf: np.ndarray  # uint8, the file (split records joined in place) + zero padding
    starts: np.ndarray  # int64 data offset of each record
    lengths: np.ndarray  # int64 data length
    warnings: list[str] = field(default_factory=list)
    torn_at: int | None = None  # byte offset of a record cut off by the end of the file


def load(path: Path) -> np.ndarray:
    """The file in a writable uint8 array followed by `_PAD` zero bytes. Mapped (private,
    copy-on-write) when the last page has room for the padding: the bytes past the end of a
    file in its last mapped page read as zeros, so no copy of the file is made; otherwise
    read into a padded array."""
    try:
        size = os.path.getsize(path)
        slack = -size % mmap.PAGESIZE
        if size and _PAD <= slack:
            return _mapped(path, size)
        buf = np.zeros(size + _PAD, dtype=np.uint8)
        with open(path, "rb") as fh:
            got = fh.readinto(memoryview(buf.data)[:size])
    except OSError as exc:
        raise LogFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return buf[: got + _PAD] if got < size else buf


def _mapped(path: Path, size: int) -> np.ndarray:
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
    anchor = ctypes.c_char.from_buffer(mm)
    view = (ctypes.c_uint8 * (size + _PAD)).from_address(ctypes.addressof(anchor))
    view._keep = (mm, anchor)  # type: ignore[attr-defined]  # the map lives as long as the array
    arr: np.ndarray = np.ctypeslib.as_array(view)
    return arr


def frame_records(buf: np.ndarray, path: Path | str, check_crc: bool = False) -> Frames:
    """Walk the record chain of every 32 KiB block at once (one numpy step per record of the
    fullest block), join split records in place, and report what could not be read."""
    n = len(buf) - _PAD
    if n < len(FILE_HEADER) or bytes(buf[:4]) != FILE_HEADER[:4]:
        raise LogFormatError(f"{path}: not a W&B transaction log (no :W&B header)")
    if bytes(buf[4:6]) != FILE_HEADER[4:6] or buf[6] != 0:
        raise LogFormatError(f"{path}: unknown W&B log version "
                             f"(header {bytes(buf[:7]).hex()}, expected {FILE_HEADER.hex()})")
    nblocks = (n + BLOCK - 1) // BLOCK
    pos = np.arange(nblocks, dtype=np.int64) * BLOCK
    bend = np.minimum(pos + BLOCK, n)
    pos[0] = len(FILE_HEADER)
    active = np.arange(nblocks, dtype=np.int64)
    counts = np.zeros(nblocks, dtype=np.int64)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    bad_pos: list[np.ndarray] = []
    k = 0
    while len(active):
        p, e = pos[active], bend[active]
        room = p + HDR <= e
        active, p, e = active[room], p[room], e[room]
        if not len(active):
            break
        ln = buf[p + 4].astype(np.int64) | (buf[p + 5].astype(np.int64) << 8)
        ty = buf[p + 6]
        pad = (ty == 0) & (ln == 0)  # zero padding to the end of the block
        ok = (ty >= FULL) & (ty <= LAST) & (p + HDR + ln <= e)
        bad = ~pad & ~ok
        if bad.any():
            bad_pos.append(p[bad])
        sel = active[ok]
        found.append((sel, np.full(len(sel), k, np.int64), p[ok], ln[ok], ty[ok]))
        counts[sel] += 1
        pos[sel] = p[ok] + HDR + ln[ok]
        active = sel
        k += 1
    total = int(counts.sum())
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    hp = np.empty(total, np.int64)
    lens = np.empty(total, np.int64)
    types = np.empty(total, np.uint8)
    for blk, it, p, ln, ty in found:
        at = first[blk] + it  # block order, then order inside the block: file order
        hp[at], lens[at], types[at] = p, ln, ty
    warnings: list[str] = []
    torn_at: int | None = None
    for p_bad in sorted(int(x) for arr in bad_pos for x in arr):
        blen = int(buf[p_bad + 4]) | (int(buf[p_bad + 5]) << 8)
        if p_bad + HDR + blen > n and n - p_bad < BLOCK and (p_bad // BLOCK) == (n - 1) // BLOCK:
            torn_at = p_bad
            warnings.append(f"{path}: skipped a torn last record ({n - p_bad} bytes at byte "
                            f"{p_bad}, {blen + HDR} expected)")
        else:
            end = min((p_bad // BLOCK + 1) * BLOCK, n)
            warnings.append(f"{path}: skipped {end - p_bad} damaged bytes at byte {p_bad} "
                            "(a record header that is not valid; the rest of its block)")
    starts = hp + HDR
    keep = types == FULL
    if not keep.all():
        starts, lens, keep = _join_split(buf, starts, lens, types, keep, path, warnings, n)
    starts, lens = starts[keep], lens[keep]
    if len(starts):
        checked = np.arange(len(starts)) if check_crc else np.array([len(starts) - 1])
        bad_crc = [int(i) for i in checked if not _crc_ok(buf, int(starts[i]), int(lens[i]))]
        if bad_crc:
            drop = np.zeros(len(starts), bool)
            drop[bad_crc] = True
            first_bad = int(starts[bad_crc[0]]) - HDR
            warnings.append(f"{path}: skipped {len(bad_crc)} record(s) with a bad checksum "
                            f"(the first at byte {first_bad})")
            starts, lens = starts[~drop], lens[~drop]
    return Frames(buf=buf, starts=starts, lengths=lens, warnings=warnings, torn_at=torn_at)


def _crc_ok(buf: np.ndarray, start: int, length: int) -> bool:
    # the checksum covers the type byte (just before the data) and the data; a split record's
    # data was moved, so its fragments cannot be checked any more: they count as good
    want = int(buf[start - 7]) | int(buf[start - 6]) << 8 | int(buf[start - 5]) << 16 \
        | int(buf[start - 4]) << 24
    ln = int(buf[start - 3]) | int(buf[start - 2]) << 8
    if ln != length:
        return True
    return zlib.crc32(memoryview(buf.data)[start - 1:start + length]) == want


def _join_split(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, types: np.ndarray,
                keep: np.ndarray, path: Path | str, warnings: list[str], n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FIRST, MIDDLE..., LAST fragments -> one record, its data moved together in place (each
    fragment moves left over the headers between them, so nothing is overwritten before it
    is read). Fragments without their FIRST or LAST are reported."""
    starts, lens = starts.copy(), lens.copy()
    orphans: list[int] = []
    open_i: int | None = None
    for i in np.flatnonzero(types != FULL).tolist():
        t = int(types[i])
        if t == FIRST:
            if open_i is not None:
                orphans.append(int(starts[open_i]))
            open_i = i
        elif open_i is None:
            orphans.append(int(starts[i]))
        else:
            dst = int(starts[open_i] + lens[open_i])
            src, ln = int(starts[i]), int(lens[i])
            buf[dst:dst + ln] = buf[src:src + ln].copy()
            lens[open_i] += ln
            if t == LAST:
                keep[open_i] = True
                open_i = None
    if open_i is not None:
        at = int(starts[open_i]) - HDR
        warnings.append(f"{path}: skipped a torn last record (split record from byte {at} "
                        f"is not complete at the end of the file, {n - at} bytes)")
    if orphans:
        warnings.append(f"{path}: skipped {len(orphans)} record fragment(s) whose other parts "
                        f"were lost (the first at byte {orphans[0] - HDR})")
    return starts, lens, keep


# ---------------------------------------------------------------------------------------------
# protobuf, vectorised


def varints(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The base-128 varint at each position: (value, position after it)."""
    b = buf[pos].astype(np.int64)
    val = b & 0x7F
    nxt = pos + 1
    cont = np.flatnonzero(b & 0x80)
    shift = 7
    while len(cont) and shift < 64:
        bb = buf[nxt[cont]].astype(np.int64)
        val[cont] |= (bb & 0x7F) << shift
        nxt[cont] += 1
        cont = cont[(bb & 0x80) != 0]
        shift += 7
    return val, nxt


def decode_message(data: bytes) -> list[tuple[int, int, Any]]:
    """A plain protobuf decoder for the few small records (run, config): (field, wire,
    value) with bytes for length-delimited fields."""
    return [(num, wire, v) for num, wire, v, _ in decode_with_offsets(data)]


def decode_with_offsets(data: bytes) -> list[tuple[int, int, Any, int]]:
    """`decode_message`, with the offset of each length-delimited payload in `data`."""
    out: list[tuple[int, int, Any, int]] = []
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = val = 0
        while True:
            if i >= n:
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            val |= (b & 0x7F) << shift
            if not b & 0x80:
                return val
            shift += 7

    while i < n:
        tag = varint()
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            out.append((num, wire, varint(), i))
        elif wire == 2:
            ln = varint()
            if i + ln > n:
                raise ValueError("truncated field")
            out.append((num, wire, data[i:i + ln], i))
            i += ln
        elif wire == 1:
            out.append((num, wire, data[i:i + 8], i))
            i += 8
        elif wire == 5:
            out.append((num, wire, data[i:i + 4], i))
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _item_key_value(data: bytes) -> tuple[str, str | None]:
    """A HistoryItem/ConfigItem/SummaryItem: (key, value_json)."""
    key = ""
    nested: list[str] = []
    value: str | None = None
    for num, wire, v in decode_message(data):
        if wire != 2 and num not in (3, 4, 5, 6):
            continue
        if num == 1:
            key = v.decode("utf-8", "replace")
        elif num == 2:
            nested.append(v.decode("utf-8", "replace"))
        elif num == 16:
            value = v.decode("utf-8", "replace")
        elif num == 6 and wire == 1:  # typed `number` (double)
            value = repr(float(np.frombuffer(v, "<f8")[0]))
        elif num in (4, 5) and wire == 0:  # typed boolean / zigzag integer
            value = str(v) if num == 4 else str((v >> 1) ^ -(v & 1))
        elif num == 7:
            value = json.dumps(v.decode("utf-8", "replace"))
    return ("/".join(nested) if nested else key), value


# ---------------------------------------------------------------------------------------------
# history items in bulk


_WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1],
                       dtype=np.uint64)


class _Words:
    """uint64 at any byte offset, read as two aligned words (numpy's gather through a
    byte-strided view is several times slower)."""

    def __init__(self, buf: np.ndarray) -> None:
        n8 = len(buf) // 8
        self.a = np.frombuffer(buf[:n8 * 8].data, dtype="<u8") if buf.flags.c_contiguous \
            else np.ascontiguousarray(buf[:n8 * 8]).view("<u8")

    def __getitem__(self, off: np.ndarray) -> np.ndarray:
        i = off >> 3
        sh = ((off & 7) << 3).astype(np.uint64)
        lo = self.a[i] >> sh
        hi = self.a[np.minimum(i + 1, len(self.a) - 1)]
        # a shift by 64 is undefined: where sh == 0 the high word contributes nothing
        hi = np.where(sh == 0, np.uint64(0), hi << (np.uint64(64) - sh))
        out: np.ndarray = lo | hi
        return out


def _hash_keys(buf: np.ndarray, ks: np.ndarray, kl: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each key's bytes and length, 8 bytes per numpy step (keys longer than
    a word are a shrinking subset). Distinct keys of one run number in the hundreds at most,
    so a collision (probability ~ n^2 / 2^65) is not a practical concern."""
    u64 = _Words(buf)
    with np.errstate(over="ignore"):
        h = kl.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        w = u64[ks] & _WORD_MASKS[np.minimum(kl, 8)]
        h = (h ^ w) * np.uint64(0xFF51AFD7ED558CCD)
        idx = np.flatnonzero(kl > 8)
        j = 1
        while len(idx):
            rem = kl[idx] - 8 * j
            w = u64[ks[idx] + 8 * j] & _WORD_MASKS[np.minimum(rem, 8)]
            h[idx] = ((h[idx] ^ (h[idx] >> np.uint64(31))) ^ w) * np.uint64(0xC4CEB9FE1A85EC53)
            idx = idx[rem > 8]
            j += 1
        h ^= h >> np.uint64(29)
    out: np.ndarray = h
    return out


def _parse_numbers(buf: np.ndarray, vs: np.ndarray, vl: np.ndarray, threads: bool = True
                   ) -> np.ndarray:
    """float64 of the JSON numbers at (vs, vl) (NaN and Infinity included), parsed by Arrow's
    string-to-double cast on a string-view array over the file buffer itself (no copy of the
    text), in two threads. Raises ValueError (ArrowInvalid) if a value is not a number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(vs)
    if not n:
        return np.empty(0)
    # Arrow string views: 16 bytes each, `len | prefix(4) | buffer index | offset`, or
    # `len | 12 inline bytes` for strings of at most 12 bytes
    u32 = np.ndarray((len(buf) - 3,), dtype="<u4", buffer=buf, offset=0, strides=(1,))
    v = np.empty((n, 4), dtype=np.uint32)
    v[:, 0] = vl
    w0 = u32[vs]
    v[:, 1] = w0
    v[:, 2] = 0
    v[:, 3] = vs
    short = np.flatnonzero(vl <= 12)
    if len(short):
        ss, sl = vs[short], vl[short]
        m = _WORD_MASKS[np.clip(sl, 0, 4)].astype(np.uint32)
        v[short, 1] = w0[short] & m
        m = _WORD_MASKS[np.clip(sl - 4, 0, 4)].astype(np.uint32)
        v[short, 2] = u32[ss + 4] & m
        m = _WORD_MASKS[np.clip(sl - 8, 0, 4)].astype(np.uint32)
        v[short, 3] = u32[ss + 8] & m
    arr = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(v),
                                                      pa.py_buffer(buf)])
    if n < 1 << 16 or not threads:
        out: np.ndarray = pc.cast(arr, pa.float64()).to_numpy()
        return out
    from concurrent.futures import ThreadPoolExecutor

    half = n // 2
    with ThreadPoolExecutor(2) as ex:
        parts = list(ex.map(lambda a: pc.cast(a, pa.float64()).to_numpy(),
                            [arr.slice(0, half), arr.slice(half)]))
    return np.concatenate(parts)


class _KeyTable:
    """Key names of one file, coded 0, 1, ... in order of appearance: fast items are looked
    up by the hash of their bytes (each new hash decoded once), odd ones by name."""

    def __init__(self) -> None:
        import threading

        self.by_hash: dict[int, int] = {}
        self.by_name: dict[str, int] = {}
        self.names: list[str] = []
        self.lock = threading.RLock()  # batches are decoded in two threads

    def code_of(self, name: str) -> int:
        with self.lock:
            c = self.by_name.get(name)
            if c is None:
                c = self.by_name[name] = len(self.names)
                self.names.append(name)
            return c

    def codes(self, buf: np.ndarray, ks: np.ndarray, kl: np.ndarray) -> np.ndarray:
        h = _hash_keys(buf, ks, kl)
        local, uniq = pd.factorize(h)
        lut = np.empty(len(uniq), np.int64)
        for u, hv in enumerate(uniq.tolist()):
            c = self.by_hash.get(hv)
            if c is None:
                i = int(np.argmax(local == u))
                name = bytes(buf[ks[i]:ks[i] + kl[i]]).decode("utf-8", "replace")
                with self.lock:
                    c = self.by_hash[hv] = self.code_of(name)
            lut[u] = c
        out: np.ndarray = lut[local]
        return out


@dataclass
class _Chunk:
    """The k-th item of each message that has one (one step of the walk), in file order."""

    owner: np.ndarray
    order: int
    code: np.ndarray  # -1: not an item with a key and a value
    vs: np.ndarray
    vl: np.ndarray
    odd: dict[int, str]  # position in the chunk -> value_json decoded in Python


def _walk_items(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, keys: _KeyTable,
                bad: list[int], item_field: int = 1) -> Iterator[_Chunk]:
    """The repeated items (`HistoryItem`, `SummaryItem`) of many messages, one numpy step per
    item of the longest message. Other fields (the step, `_info`) are stepped over; a message
    whose bytes are not protobuf is counted in `bad` from the field where it breaks."""
    cur = starts.astype(np.int64, copy=True)
    idx = np.flatnonzero(cur < ends)
    item_tag = item_field << 3 | 2
    k = 0
    while len(idx):
        p = cur[idx]
        e = ends[idx]
        # the usual field: a one-byte tag of a length-delimited field with a one-byte length
        t0 = buf[p]
        l0 = buf[p + 1]
        common = (t0 < 0x80) & ((t0 & 7) == 2) & (l0 < 0x80)
        if common.all():
            tag = t0.astype(np.int64)
            size = l0.astype(np.int64)
            start = p + 2
            nxt = start + size
        else:
            tag, start, size, nxt = _fields_general(buf, p)
        ok = (nxt <= e) & ((tag >> 3) > 0)
        if not ok.all():
            bad.append(int((~ok).sum()))
        sel = np.flatnonzero(ok & (tag == item_tag))
        if len(sel):
            yield _item_chunk(buf, idx[sel], k, start[sel], size[sel], keys)
        cur[idx[ok]] = nxt[ok]
        idx = idx[ok][nxt[ok] < e[ok]]
        k += 1


def _fields_general(buf: np.ndarray, p: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tag, payload start, payload size or varint value, next field) of the field at each
    position, any wire type."""
    tag, q = varints(buf, p)
    wire = tag & 7
    nxt = np.full(len(p), np.iinfo(np.int64).max // 2, np.int64)
    size = np.zeros(len(p), np.int64)
    m = np.flatnonzero(wire == 2)
    ln, s = varints(buf, q[m])
    size[m], nxt[m] = ln, s + ln
    start = q.copy()
    start[m] = s
    m = np.flatnonzero(wire == 0)
    if len(m):
        nxt[m] = varints(buf, q[m])[1]
    m = np.flatnonzero(wire == 1)
    nxt[m] = q[m] + 8
    m = np.flatnonzero(wire == 5)
    nxt[m] = q[m] + 4
    return tag, start, size, nxt


def _item_chunk(buf: np.ndarray, owner: np.ndarray, k: int, s: np.ndarray, ln: np.ndarray,
                keys: _KeyTable) -> _Chunk:
    # fast path: `0a|12 kl key 82 01 vl value` with one-byte lengths, the shape W&B writes
    b0 = buf[s]
    kl = buf[s + 1].astype(np.int64)
    p = np.minimum(s + 2 + kl, len(buf) - 3)  # reads past a short item stay in the array
    vl = buf[p + 2].astype(np.int64)
    fast = (((b0 == 0x0A) | (b0 == 0x12)) & (kl < 128) & (buf[p] == 0x82)
            & (buf[p + 1] == 0x01) & (vl < 128) & (ln == kl + vl + 5))
    code = np.full(len(s), -1, np.int64)
    fi = np.flatnonzero(fast)
    if len(fi) == len(s):
        code = keys.codes(buf, s + 2, kl)
    elif len(fi):
        code[fi] = keys.codes(buf, s[fi] + 2, kl[fi])
    odd: dict[int, str] = {}
    for i in np.flatnonzero(~fast).tolist():
        try:
            key, value = _item_key_value(bytes(buf[s[i]:s[i] + ln[i]]))
        except ValueError:
            continue
        if value is None or not key:
            continue
        code[i] = keys.code_of(key)
        odd[i] = value
    return _Chunk(owner=owner, order=k, code=code, vs=p + 3, vl=np.where(fast, vl, 0),
                  odd=odd)


def _numeric_start(buf: np.ndarray, vs: np.ndarray) -> np.ndarray:
    c = buf[vs]
    # a digit, '-', 'N'(aN) or 'I'(nfinity): what a JSON number (W&B's flavour) starts with
    out: np.ndarray = ((c >= 0x30) & (c <= 0x39)) | (c == 0x2D) | (c == 0x4E) | (c == 0x49)
    return out


# ---------------------------------------------------------------------------------------------
# the reader


@dataclass
class _RunInfo:
    run_id: str | None = None
    name: str | None = None
    project: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _config_items(data: bytes, into: dict[str, Any]) -> None:
    for num, wire, v in decode_message(data):
        if num == 1 and wire == 2:
            key, value = _item_key_value(v)
            if value is not None and key:
                into[key] = json_value(value)
        elif num == 2 and wire == 2:
            key, _ = _item_key_value(v)
            into.pop(key, None)


def _run_record(data: bytes, info: _RunInfo) -> None:
    for num, wire, v in decode_message(data):
        if wire != 2:
            continue
        if num == 1:
            info.run_id = v.decode("utf-8", "replace")
        elif num == 3:
            info.project = v.decode("utf-8", "replace")
        elif num == 8:
            info.name = v.decode("utf-8", "replace")
        elif num == 4:
            _config_items(v, info.config)


def wandb_files(directory: Path) -> list[Path]:
    """The `.wandb` logs of a run directory, or of each run directory below `directory`
    (one level), each file once (`latest-run` links to a run directory listed anyway)."""
    direct = sorted(p for p in directory.glob("*.wandb") if p.is_file())
    if direct:
        return direct
    seen: set[Path] = set()
    out: list[Path] = []
    try:
        subdirs = sorted(p for p in directory.iterdir() if p.is_dir())
    except OSError:
        return []
    for sub in subdirs:
        for f in sorted(sub.glob("*.wandb")):
            key = f.resolve()
            if f.is_file() and key not in seen:
                seen.add(key)
                out.append(f)
    return out


class WandbRunReader:
    """The `.wandb` transaction log of W&B runs (offline or synced)."""

    name = "wandb_run"
    description = ("W&B run directories (offline-run-*/run-*.wandb transaction log; a wandb/ "
                   "directory gives one run per run directory)")
    reads_directories = True

    def __init__(self, check_crc: bool | None = None) -> None:
        self.check_crc = check_crc

    def sniff(self, path: Path, head: bytes) -> float:
        try:
            if path.is_dir():
                return 0.96 if wandb_files(path) else 0.0
        except OSError:
            return 0.0
        if head.startswith(FILE_HEADER[:4]):
            return 1.0 if path.suffix == ".wandb" else 0.9
        return 0.0

    def _crc(self) -> bool:
        if self.check_crc is not None:
            return self.check_crc
        return env_flag(CRC_ENV)

    def read(self, path: Path) -> list[RawLog]:
        files = wandb_files(path) if path.is_dir() else [path]
        if not files:
            raise LogFormatError(f"{path}: no W&B run (.wandb file) in this directory")
        out: list[RawLog] = []
        many = len(files) > 1
        for f in files:
            raw = self.read_file(f)
            if many and not raw.name:
                raw.name = f.parent.name
            out.append(raw)
        return out

    def read_file(self, path: Path) -> RawLog:
        buf = load(path)
        fr = frame_records(buf, path, check_crc=self._crc())
        return decode_records(fr, path)


def decode_records(fr: Frames, path: Path) -> RawLog:
    """Records -> the history table, config and summary of one run."""
    buf = fr.buf
    warnings = list(fr.warnings)
    starts, lens = fr.starts, fr.lengths
    ends = starts + lens
    # Record: `08 num` then the record's own field; read the first two fields of each
    # record in bulk, the rare records of interest beyond that in Python
    _, q = varints(buf, starts + 1)
    has_num = buf[starts] == 0x08
    at = np.where(has_num, q, starts)
    tag = buf[at]
    plen, pstart = varints(buf, at + 1)
    simple = (tag == 0x12) | (tag == 0x1A)
    simple &= pstart + plen <= ends
    hist = np.flatnonzero(simple & (tag == 0x12))
    summ = np.flatnonzero(simple & (tag == 0x1A))
    info = _RunInfo()
    bad_records = 0
    # config (5) and run (17) records, and anything not in the simple shape (a history or
    # summary record with its `_info` written first)
    more_h: list[tuple[int, int, int]] = []
    more_s: list[tuple[int, int, int]] = []
    for i in np.flatnonzero(~simple).tolist():
        data = bytes(buf[starts[i]:ends[i]])
        try:
            msg = decode_with_offsets(data)
        except ValueError:
            bad_records += 1
            continue
        for fnum, wire, v, off in msg:
            if wire != 2:
                continue
            if fnum == 17:
                _run_record(v, info)
            elif fnum == 5:
                _config_items(v, info.config)
            elif fnum in (2, 3):
                (more_h if fnum == 2 else more_s).append((i, int(starts[i]) + off, len(v)))
    if more_h or more_s:
        for extra, which in ((more_h, 2), (more_s, 3)):
            if not extra:
                continue
            ex = np.array(extra, dtype=np.int64)
            pstart[ex[:, 0]], plen[ex[:, 0]] = ex[:, 1], ex[:, 2]
            if which == 2:
                hist = np.union1d(hist, ex[:, 0])
            else:
                summ = np.union1d(summ, ex[:, 0])
    frame, masks, rec_numbers, dropped, malformed = _history(buf, pstart[hist], plen[hist], hist)
    bad_records += malformed
    summ = summ[-_SUMMARY_TAIL:]
    summary = _summary(buf, pstart[summ], plen[summ])
    if bad_records:
        warnings.append(f"{path}: skipped {bad_records} malformed record(s) or item(s)")
    if dropped:
        warnings.append(f"{path}: ignored non-scalar history values of "
                        f"{', '.join(sorted(dropped))}")
    if frame is None:
        frame = pd.DataFrame({"_step": np.empty(0)})
    step_col = next((c for c in _TRAINER_STEPS if c in frame.columns), None)
    if step_col is None:
        step_col = "_step" if "_step" in frame.columns else None
    config = {k: v for k, v in info.config.items() if k != "_wandb"}
    params = canonical_params(config)
    if info.run_id:
        params["run_id"] = info.run_id
    if info.project:
        params["project"] = info.project
    if summary:
        params["summary"] = summary
    return RawLog(frame=frame, step_column=step_col, nan_mask=masks, row_lines=rec_numbers,
                  row_unit="record", warnings=warnings, name=info.name or info.run_id,
                  params=params)


@dataclass
class _Numbers:
    """One chunk's values, ready to be put in their columns."""

    codes: np.ndarray
    owners: np.ndarray
    vals: np.ndarray
    nan: np.ndarray  # a NaN the run logged
    texts: list[tuple[int, int, str]]  # (code, owner, value_json) of the other values


def _numbers(buf: np.ndarray, ch: _Chunk, skip: np.ndarray) -> _Numbers:
    want = (ch.code >= 0) & ~np.isin(ch.code, skip)
    plain = want.copy()
    if ch.odd:
        plain[np.fromiter(ch.odd, np.int64)] = False
    num = plain & _numeric_start(buf, ch.vs)
    sel = np.flatnonzero(num)
    texts = [(int(ch.code[i]), int(ch.owner[i]), _text(buf, ch.vs[i], ch.vl[i]))
             for i in np.flatnonzero(plain & ~num).tolist()]
    texts += [(int(ch.code[i]), int(ch.owner[i]), t) for i, t in ch.odd.items() if want[i]]
    try:
        vals = _parse_numbers(buf, ch.vs[sel], ch.vl[sel], threads=False)
        nan = np.isnan(vals)
    except Exception:  # noqa: BLE001 - Arrow refused a value (e.g. `1.0e`): Python decides
        texts += [(int(ch.code[i]), int(ch.owner[i]), _text(buf, ch.vs[i], ch.vl[i]))
                  for i in sel.tolist()]
        sel = sel[:0]
        vals, nan = np.empty(0), np.zeros(0, bool)
    return _Numbers(ch.code[sel], ch.owner[sel], vals, nan, texts)


def _history(buf: np.ndarray, ps: np.ndarray, pl: np.ndarray, rec_idx: np.ndarray
             ) -> tuple[pd.DataFrame | None, dict[str, np.ndarray], np.ndarray, set[str], int]:
    """History records -> one column per key (a row per record), the logged-NaN masks, the
    record numbers, keys whose values were not scalars, and the malformed count. Batches of
    records are decoded in two threads (numpy and Arrow release the GIL); their values are
    put in the columns here, in file order."""
    from concurrent.futures import ThreadPoolExecutor

    nrec = len(ps)
    if nrec == 0:
        return None, {}, np.empty(0, np.int64), set(), 0
    keys = _KeyTable()
    cols: list[np.ndarray | None] = []
    nans: dict[int, np.ndarray] = {}
    dropped: set[int] = set()
    # wall-clock bookkeeping: not parsed
    skip = np.array([keys.code_of(k) for k in _RESERVED], dtype=np.int64)

    def column(c: int) -> np.ndarray:
        while len(cols) <= c:
            cols.append(None)
        col = cols[c]
        if col is None:
            col = cols[c] = np.full(nrec, np.nan)
        return col

    def decode(b: int) -> tuple[list[_Numbers], int]:
        bad: list[int] = []
        s, ln = ps[b:b + _BATCH], pl[b:b + _BATCH]
        out = []
        for ch in _walk_items(buf, s, s + ln, keys, bad):
            ch.owner = ch.owner + b
            out.append(_numbers(buf, ch, skip))
        return out, sum(bad)

    malformed = 0
    starts = range(0, nrec, _BATCH)
    with ThreadPoolExecutor(2) as ex:
        for parts, nbad in (ex.map(decode, starts) if len(starts) > 1 else map(decode, starts)):
            malformed += nbad
            for part in parts:
                codes, owners, vals = part.codes, part.owners, part.vals
                for c in np.unique(codes).tolist():
                    m = codes == c
                    column(c)[owners[m]] = vals[m]
                    isn = part.nan[m]
                    if isn.any():
                        nans.setdefault(c, np.zeros(nrec, bool))[owners[m][isn]] = True
                for c, owner, text in part.texts:
                    f, nan = _scalar(json_value(text))
                    if f is None:
                        dropped.add(c)
                        continue
                    column(c)[owner] = f
                    if nan:
                        nans.setdefault(c, np.zeros(nrec, bool))[owner] = True
    data: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for c, maybe in enumerate(cols):
        if maybe is None:
            continue
        name = keys.names[c]
        data[name] = maybe
        if c in nans:
            masks[name] = nans[c]
    dropped_names = {keys.names[c] for c in dropped} - set(data)
    return (pd.DataFrame(data, copy=False), masks, rec_idx.astype(np.int64) + 1,
            dropped_names, malformed)


#: records decoded together: their bytes (about 10 MB) stay in the CPU cache through the
#: dozens of passes the walk makes over them
_BATCH = 1 << 14


def _batched(buf: np.ndarray, ps: np.ndarray, pl: np.ndarray, keys: _KeyTable,
             bad: list[int]) -> Iterator[_Chunk]:
    for b in range(0, len(ps), _BATCH):
        s, ln = ps[b:b + _BATCH], pl[b:b + _BATCH]
        for ch in _walk_items(buf, s, s + ln, keys, bad):
            if b:
                ch.owner = ch.owner + b
            yield ch


def _text(buf: np.ndarray, vs: Any, vl: Any) -> str:
    return bytes(buf[int(vs):int(vs) + int(vl)]).decode("utf-8", "replace")


def _scalar(v: Any) -> tuple[float | None, bool]:
    """A decoded JSON value as a float (None: not a scalar), and whether it is a logged NaN."""
    if isinstance(v, bool):
        return (1.0 if v else 0.0), False
    if isinstance(v, int | float):
        f = float(v)
        return f, f != f
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("nan", "-nan"):
            return float("nan"), True
        if low in ("inf", "infinity", "+infinity", "-inf", "-infinity"):
            return (float("-inf") if low.startswith("-") else float("inf")), False
    return None, False


def _summary(buf: np.ndarray, ps: np.ndarray, pl: np.ndarray) -> dict[str, Any]:
    """The final summary: the last value written for each key (internal `_wandb` and
    `_runtime` entries left out)."""
    if not len(ps):
        return {}
    keys = _KeyTable()
    parts: list[tuple[np.ndarray, ...]] = []
    odd: dict[tuple[int, int], str] = {}
    for ch in _batched(buf, ps, pl, keys, []):
        ok = np.flatnonzero(ch.code >= 0)
        parts.append((ch.code[ok], ch.owner[ok], np.full(len(ok), ch.order), ch.vs[ok],
                      ch.vl[ok]))
        for i, text in ch.odd.items():
            odd[(int(ch.owner[i]), ch.order)] = text
    if not parts:
        return {}
    code, owner, order, vs, vl = (np.concatenate([p[i] for p in parts]) for i in range(5))
    # the last write of each key: sort by (record, item), keep each code's last position
    idx = np.lexsort((order, owner))
    rev = idx[::-1]
    _, first = np.unique(code[rev], return_index=True)
    out: dict[str, Any] = {}
    for i in rev[first].tolist():
        key = keys.names[int(code[i])]
        if key.startswith("_wandb") or key == "_runtime":
            continue
        found = odd.get((int(owner[i]), int(order[i])))
        out[key] = json_value(found if found is not None else _text(buf, vs[i], vl[i]))
    return dict(sorted(out.items()))


def iter_runs(path: Path) -> Iterator[Path]:
    """The `.wandb` files `path` stands for (a file, a run directory, a wandb/ directory)."""
    yield from (wandb_files(path) if path.is_dir() else [path])


# ---------------------------------------------------------------------------------------------
# writing (tests and benchmarks)


def _pb_len(num: int, data: bytes) -> bytes:
    return _pb_varint(num << 3 | 2) + _pb_varint(len(data)) + data


def _item(key: str, value_json: str, nested: bool = True) -> bytes:
    k = key.encode()
    return _pb_len(2 if nested else 1, k) + _pb_len(16, value_json.encode())


def history_record(num: int, step: int, values: dict[str, Any]) -> bytes:
    """One `Record{num, history}` as wandb-core writes it (`nested_key` items, `_step`)."""
    items = b"".join(_pb_len(1, _item(k, _json(v))) for k, v in values.items())
    items += _pb_len(1, _item("_step", str(step)))
    hist = items + _pb_len(2, _pb_varint(1 << 3) + _pb_varint(step) if step else b"")
    return _pb_varint(1 << 3) + _pb_varint(num) + _pb_len(2, hist)


def summary_record(num: int, values: dict[str, Any]) -> bytes:
    """One `Record{num, summary}`: the updates wandb-core writes after each history row."""
    items = b"".join(_pb_len(1, _item(k, _json(v))) for k, v in values.items())
    return _pb_varint(1 << 3) + _pb_varint(num) + _pb_len(3, items)


def run_record(num: int, run_id: str, name: str, config: dict[str, Any]) -> bytes:
    cfg = b"".join(_pb_len(1, _item(k, json.dumps(v), nested=False)) for k, v in config.items())
    run = _pb_len(1, run_id.encode()) + _pb_len(4, cfg) + _pb_len(8, name.encode())
    return _pb_varint(1 << 3) + _pb_varint(num) + _pb_len(17, run)


def _json(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    return json.dumps(v)


class LogWriter:
    """Appends records to a `.wandb` file in the LevelDB framing (a record that does not fit
    in the current block is split), flushing after each record (a run being written)."""

    def __init__(self, path: Path) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.fh.write(FILE_HEADER)
        self.pos = len(FILE_HEADER)

    def write(self, data: bytes, flush: bool = True) -> None:
        first = True
        while True:
            left = BLOCK - self.pos % BLOCK
            if left < HDR:
                self.fh.write(b"\0" * left)
                self.pos += left
                left = BLOCK
            room = left - HDR
            chunk, data = data[:room], data[room:]
            if first:
                ty = FULL if not data else FIRST
            else:
                ty = LAST if not data else MIDDLE
            crc = zlib.crc32(bytes([ty]) + chunk)
            self.fh.write(crc.to_bytes(4, "little") + len(chunk).to_bytes(2, "little")
                          + bytes([ty]) + chunk)
            self.pos += HDR + len(chunk)
            first = False
            if not data:
                break
        if flush:
            self.fh.flush()

    def close(self) -> None:
        self.fh.close()


READERS.add("wandb_run", WandbRunReader())

__all__ = ["CRC_ENV", "FILE_HEADER", "LogWriter", "WandbRunReader", "decode_records",
           "frame_records", "history_record", "load", "run_record", "summary_record",
           "wandb_files"]
