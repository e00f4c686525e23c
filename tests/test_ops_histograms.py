"""TensorBoard histograms (issue 14): a `Summary.Value.histo` (PyTorch `add_histogram`, TF1)
is read into `<tag>/hist_min`, `/hist_max`, `/hist_mean` and `/hist_rms` series, exact from
the proto's sums; a TF2 `histograms` plugin tensor (k x [left, right, count]) the same way from
its buckets. Empty histograms stay ignored (and counted) as before, and the fast and general
decoders agree."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from spikelens import read_log
from spikelens.readers import _tfrecord as tfr
from spikelens.readers._tfrecord import encode_event, encode_field, encode_record


def _histo(values: np.ndarray) -> bytes:
    return b"".join([encode_field(1, float(values.min()), 1),
                     encode_field(2, float(values.max()), 1),
                     encode_field(3, float(len(values)), 1),
                     encode_field(4, float(values.sum()), 1),
                     encode_field(5, float((values ** 2).sum()), 1),
                     encode_field(6, struct.pack("<3d", -1.0, 0.0, 1.0)),  # bucket limits
                     encode_field(7, struct.pack("<3d", 1.0, 1.0, 2.0))])  # bucket counts


def _tf2_histogram(buckets: list[tuple[float, float, float]]) -> bytes:
    shape = b"".join(encode_field(2, encode_field(1, d, wire=0)) for d in (len(buckets), 3))
    content = b"".join(struct.pack("<3d", *b) for b in buckets)
    tensor = encode_field(1, tfr.DT_DOUBLE, wire=0) + encode_field(2, shape) + \
        encode_field(4, content)
    meta = encode_field(1, encode_field(1, b"histograms"))
    return encode_field(8, tensor) + encode_field(9, meta)


def _write(path: Path) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    drawn: dict[int, np.ndarray] = {}
    recs = [encode_record(encode_event(wall_time=1.0))]
    for step in range(1, 6):
        w = rng.standard_normal(100) * step
        drawn[step] = w
        recs.append(encode_record(encode_event(step=step, wall_time=1.0 + step, values=[
            encode_field(1, b"loss") + encode_field(2, 3.0 - 0.1 * step, wire=5),
            encode_field(1, b"layers.0.mlp.weight") + encode_field(5, _histo(w)),
            encode_field(1, b"acts") + _tf2_histogram([(-2.0, 0.0, 1.0), (0.0, 2.0, 3.0),
                                                       (2.0, 4.0, 0.0)]),
        ])))
    path.write_bytes(b"".join(recs))
    return drawn


def test_histograms_become_min_max_mean_rms_series(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1700000000.host.1.0"
    drawn = _write(path)
    run = read_log(path)
    assert run.warnings == ()
    for step, w in drawn.items():
        row = run.frame.loc[step]
        assert row["layers.0.mlp.weight/hist_min"] == pytest.approx(w.min())
        assert row["layers.0.mlp.weight/hist_max"] == pytest.approx(w.max())
        assert row["layers.0.mlp.weight/hist_mean"] == pytest.approx(w.mean())
        assert row["layers.0.mlp.weight/hist_rms"] == pytest.approx(np.sqrt((w ** 2).mean()))
        # TF2 buckets: the first and last non-empty edges, and the bucket centres
        assert row["acts/hist_min"] == -2.0 and row["acts/hist_max"] == 2.0
        assert row["acts/hist_mean"] == pytest.approx((-1.0 + 3 * 1.0) / 4)
        assert row["acts/hist_rms"] == pytest.approx(1.0)
    # the statistics are extras, never a role
    assert set(run.roles) == {"loss", "wall_time"}
    buf = tfr.read_file(path)
    fr = tfr.frame_records(buf, str(path))
    fast_state, slow_state = tfr.DecodeState(), tfr.DecodeState()
    parts = list(tfr.iter_scalars(buf, fr, fast_state, chunk=2))
    slow = tfr.decode_general(buf, fr, slow_state)
    np.testing.assert_array_equal(np.concatenate([p.values for p in parts]), slow.values)
    assert fast_state.tags == slow_state.tags


def test_empty_histograms_are_still_ignored_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1700000000.host.1.0"
    empty = encode_field(1, 0.0, wire=1) + encode_field(2, 1.0, wire=1)  # num = 0
    path.write_bytes(b"".join([
        encode_record(encode_event(step=1, wall_time=1.0, values=[
            encode_field(1, b"loss") + encode_field(2, 1.0, wire=5)])),
        encode_record(encode_event(step=1, wall_time=1.0, values=[
            encode_field(1, b"w") + encode_field(5, empty)])),
    ]))
    run = read_log(path)
    assert list(run.frame.columns) == ["wall_time", "loss"]
    assert run.warnings == (f"{path}: read scalars only; ignored 1 histograms",)
