"""The two-thread TensorBoard read gives exactly what the one-thread read gives: the framing
(chains split in two groups walked on two threads, data checksums checked in two halves) and
the decoding (the byte-level part of the next chunk worked out ahead on a second thread)
are compared with the serial path on files built so that tag state and damage fall across
every border: a TF2 tag whose `scalars` metadata comes with its first event only, a float
tensor whose first event names another plugin, a histogram plugin tag, a tag first met late,
merged summaries and a malformed event for the general decoder, a bad length checksum, a
bad data checksum and a torn tail; then random byte flips. Sync-chunk and decode-chunk
sizes are shrunk so that the small files have many chains and chunks."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from spikelens.errors import LogFormatError
from spikelens.readers import _tfrecord as tfr
from spikelens.readers import tensorboard as tbr
from spikelens.readers._tfrecord import (
    encode_event,
    encode_field,
    encode_record,
    write_scalar_events,
)
from spikelens.readers.tensorboard import TensorBoardReader


def _tensor(dtype: int, dims: list[int], content: bytes) -> bytes:
    shape = b"".join(encode_field(2, encode_field(1, d, wire=0)) for d in dims)
    return encode_field(1, dtype, wire=0) + encode_field(2, shape) + encode_field(4, content)


def _meta(plugin: str) -> bytes:
    return encode_field(1, encode_field(1, plugin.encode()))


def _scalar(tag: str, x: float) -> bytes:
    return encode_field(1, tag.encode()) + encode_field(2, x, wire=5)


def _event(step: int, values: list[bytes]) -> bytes:
    return encode_record(encode_event(step=step, wall_time=1000.0 + step, values=values))


def _stateful_file(tmp_path: Path) -> bytes:
    """Records whose reading depends on records far before them, interleaved with the
    plain scalar layouts."""
    tf2 = tmp_path / "tf2.tfevents"
    write_scalar_events(tf2, [(s, t, 0.25 * s + i) for s in range(1, 60)
                              for i, t in enumerate(("a/x", "a/y"))],
                        layout="tensor", tensor_metadata="first")
    plain = tmp_path / "plain.tfevents"
    write_scalar_events(plain, [(s, t, 1.5 * s - i) for s in range(60, 140)
                                for i, t in enumerate(("loss", "lr", "grad_norm"))],
                        file_version=False)
    odd = encode_field(1, b"odd")
    hist = encode_field(1, b"w_hist")
    parts = [tf2.read_bytes()]
    # a float tensor owned by another plugin: only its first event says so
    parts.append(_event(59, [odd + encode_field(8, _tensor(1, [], struct.pack("<f", 3.0)))
                             + encode_field(9, _meta("custom_plugin"))]))
    parts.append(_event(59, [hist + encode_field(8, _tensor(2, [2, 3], bytes(48)))
                             + encode_field(9, _meta("histograms"))]))
    body = plain.read_bytes()
    offs = tfr.frame_records(np.frombuffer(body, dtype=np.uint8), "plain").offsets
    cut = int(offs[len(offs) // 2])
    parts.append(body[:cut])
    for s in (100, 101, 102):
        parts.append(_event(s, [odd + encode_field(8, _tensor(1, [], struct.pack("<f", s)))]))
        parts.append(_event(s, [hist + encode_field(8, _tensor(2, [1, 3], bytes(24)))]))
        # TF1 merge_all: several values in one event, for the general decoder
        parts.append(_event(s, [_scalar("merged/a", s), _scalar("merged/b", -s)]))
    parts.append(encode_record(b"\x2a\x05\x0a"))  # a truncated Summary: malformed
    parts.append(body[cut:])
    # more of the TF2 tags, without metadata now, and a tag first met at the very end
    write_scalar_events(tf2, [(s, "a/x", s / 3) for s in range(140, 170)], layout="tensor",
                        tensor_metadata="first", file_version=False)
    raw = tf2.read_bytes()
    offs = tfr.frame_records(np.frombuffer(raw, dtype=np.uint8), "tf2").offsets
    parts.append(raw[int(offs[1]):])  # drops the event that carried the metadata
    parts.append(_event(171, [_scalar("late/tag", 7.0)]))
    return b"".join(parts)


def _damaged(data: bytes) -> bytes:
    """A bad length checksum a third in, a flipped data byte half-way, a torn tail."""
    out = bytearray(data)
    offs = tfr.frame_records(np.frombuffer(data, dtype=np.uint8), "x").offsets
    a = int(offs[len(offs) // 3])
    out[a + 2] ^= 0x40  # the length of that record
    b = int(offs[len(offs) // 2])
    out[b + tfr.HEADER + 3] ^= 0x01  # a byte of that record's data
    return bytes(out[:-7])


def _framings(buf: np.ndarray, check: bool) -> tuple[tfr.Framing, tfr.Framing]:
    return (tfr.frame_records(buf, "x", check_crc=check, parallel=False),
            tfr.frame_records(buf, "x", check_crc=check, parallel=True))


def _assert_same_framing(a: tfr.Framing, b: tfr.Framing) -> None:
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.gaps, b.gaps)
    assert a.damage == b.damage
    assert a.bad_data == b.bad_data


def _decoded(buf: np.ndarray, fr: tfr.Framing, chunk: int, parallel: bool
             ) -> tuple[dict[str, np.ndarray], tfr.DecodeState]:
    st = tfr.DecodeState()
    parts = list(tfr.iter_scalars(buf, fr, st, chunk=chunk, parallel=parallel))
    cols = {name: np.concatenate([getattr(p, name) for p in parts])
            for name in ("steps", "values", "tag_ids", "rec", "walls")}
    return cols, st


def _assert_same_decoding(buf: np.ndarray, fr: tfr.Framing, chunk: int) -> None:
    one, st1 = _decoded(buf, fr, chunk, parallel=False)
    two, st2 = _decoded(buf, fr, chunk, parallel=True)
    for name, arr in one.items():
        # NaN payloads included: compare the bytes
        assert arr.tobytes() == two[name].tobytes(), name
    assert (st1.tags, st1.plugins, st1.plugin_at, st1.skipped, st1.malformed) == \
        (st2.tags, st2.plugins, st2.plugin_at, st2.skipped, st2.malformed)


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
@pytest.mark.parametrize("sync_chunk", [64, 200, 1024])
def test_parallel_framing_and_decoding_match_the_serial_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damaged: bool, sync_chunk: int
) -> None:
    data = _stateful_file(tmp_path)
    if damaged:
        data = _damaged(data)
    monkeypatch.setattr(tfr, "_MIN_CHUNK", sync_chunk)  # many chains in a small file
    buf = np.frombuffer(data, dtype=np.uint8)
    for check in (False, True):
        serial, parallel = _framings(buf, check)
        _assert_same_framing(serial, parallel)
        if damaged:
            reasons = {d.reason for d in serial.damage}
            assert {"checksum", "torn"} <= reasons
            assert len(serial.bad_data) == (1 if check else 0)
        for chunk in (1, 2, 3, 7, 64, 4096):
            _assert_same_decoding(buf, serial, chunk)


def test_the_state_carried_across_chunks_is_what_the_serial_read_learns(
    tmp_path: Path,
) -> None:
    # the test above would pass if both paths dropped the stateful records: pin them
    buf = np.frombuffer(_stateful_file(tmp_path), dtype=np.uint8)
    fr = tfr.frame_records(buf, "x", parallel=True)
    cols, st = _decoded(buf, fr, 3, parallel=True)
    assert st.plugins["a/x"] == "scalars"
    assert st.plugins["odd"] == "custom_plugin"
    assert st.skipped == {"custom_plugin": 4, "histograms": 4}
    assert len(st.malformed) == 1
    assert st.tags[-1] == "late/tag"
    x = st.tags.index("a/x")
    assert int((cols["tag_ids"] == x).sum()) == 59 + 29  # the last batch lost one event


def test_reader_output_is_identical_on_two_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.out.tfevents.1700000000.h.1.0"
    path.write_bytes(_damaged(_stateful_file(tmp_path)))
    monkeypatch.setattr(tfr, "_MIN_CHUNK", 128)
    got = []
    for threshold in (1 << 62, 0):  # serial, then parallel for any size
        monkeypatch.setattr(tfr, "PARALLEL_MIN_BYTES", threshold)
        for check in (False, True):
            raw = TensorBoardReader(check_crc=check).read(path)[0]
            masks = {k: v.tolist() for k, v in (raw.nan_mask or {}).items()}
            lines = [] if raw.row_lines is None else list(raw.row_lines)
            # the frame as bytes: NaNs compare equal, dtypes and column order count
            frame = [(c, str(raw.frame[c].dtype), raw.frame[c].to_numpy().tobytes())
                     for c in raw.frame.columns]
            got.append((frame, masks, lines, raw.warnings))
    assert got[0] == got[2] and got[1] == got[3]
    assert any("bad length checksum" in w for w in got[0][3])
    assert any("torn last record" in w for w in got[0][3])
    assert any("bad data checksum" in w for w in got[1][3])


@pytest.mark.parametrize("seed", range(12))
def test_random_damage_reads_the_same_on_two_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(tfr, "_MIN_CHUNK", 96)
    data = bytearray(_stateful_file(tmp_path))
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))).tolist():
        data[pos] ^= 1 << int(rng.integers(0, 8))
    buf = np.frombuffer(bytes(data[:len(data) - int(rng.integers(0, 40))]), dtype=np.uint8)
    for check in (False, True):
        try:
            serial = tfr.frame_records(buf, "x", check_crc=check, parallel=False)
        except LogFormatError as exc:  # the first record hit: the same error both ways
            with pytest.raises(LogFormatError) as other:
                tfr.frame_records(buf, "x", check_crc=check, parallel=True)
            assert str(other.value) == str(exc)
            continue
        _assert_same_framing(serial, tfr.frame_records(buf, "x", check_crc=check,
                                                       parallel=True))
        for chunk in (2, 5, 4096):
            _assert_same_decoding(buf, serial, chunk)


def test_an_error_on_the_worker_thread_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = np.frombuffer(_stateful_file(tmp_path), dtype=np.uint8)
    fr = tfr.frame_records(buf, "x")
    calls = []

    def broken(vw: object, off: np.ndarray) -> object:
        calls.append(len(off))
        if len(calls) == 3:
            raise MemoryError("worker")
        return real(vw, off)  # type: ignore[arg-type]

    real = tfr._prepare_chunk
    monkeypatch.setattr(tfr, "_prepare_chunk", broken)
    with pytest.raises(MemoryError, match="worker"):
        list(tfr.iter_scalars(buf, fr, tfr.DecodeState(), chunk=5, parallel=True))


class _ConcatPivot(tbr._Pivot):
    """The pivot as first written: the carried run joined to each chunk by a copy of the
    whole chunk. The reference the copy-free `feed` must match row for row."""

    def feed(self, steps: np.ndarray, values: np.ndarray, cols: np.ndarray,
             lines: np.ndarray, walls: np.ndarray) -> None:
        parts: tuple[np.ndarray, ...] = (steps, values, cols, lines, walls)
        if self.carry is not None:
            parts = tuple(np.concatenate([c, p]) for c, p in zip(self.carry, parts,
                                                                   strict=True))
            self.carry = None
        st = parts[0]
        if len(st) == 0:
            return
        change = np.flatnonzero(st[1:] != st[:-1])
        cut = int(change[-1]) + 1 if len(change) else 0
        if len(st) - cut > tbr._MAX_CARRY:
            cut = len(st)
        self.carry = tuple(p[cut:] for p in parts) if cut < len(st) else None
        if cut:
            self.rows.add(*(p[:cut] for p in parts))


@pytest.mark.parametrize("seed", range(20))
def test_rows_cut_chunk_by_chunk_match_the_reference_pivot(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    # runs of equal steps of all lengths, some longer than the (shrunk) carry limit
    monkeypatch.setattr(tbr, "_MAX_CARRY", int(rng.integers(3, 12)))
    runs = rng.integers(1, 25, size=40)
    steps = np.repeat(np.cumsum(rng.integers(0, 3, size=40)), runs).astype(np.int64)
    n = len(steps)
    values = rng.normal(size=n)
    values[rng.random(n) < 0.1] = np.nan
    cols = rng.integers(0, 4, size=n).astype(np.int64)
    lines = np.arange(1, n + 1, dtype=np.int64)
    walls = np.arange(n, dtype=np.float64)
    cuts = np.sort(rng.choice(np.arange(1, n), size=int(rng.integers(1, 30)), replace=False))
    out = []
    for cls in (tbr._Pivot, _ConcatPivot):
        rows = tbr._Rows()
        for c in range(4):
            rows.col(f"c{c}")
        pivot = cls(rows)
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True):
            pivot.feed(steps[a:b], values[a:b], cols[a:b], lines[a:b], walls[a:b])
        pivot.flush()
        data, masks, st_, wl, ln = rows.table()
        out.append(([v.tobytes() for v in data.values()],
                    {k: v.tobytes() for k, v in masks.items()},
                    st_.tobytes(), wl.tobytes(), ln.tobytes()))
    assert out[0] == out[1]
