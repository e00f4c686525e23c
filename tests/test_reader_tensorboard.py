"""TensorBoard event files: the real bench runs r09 (resumed, two files) and r10, both scalar
layouts, run directories with subdirectories, damaged files (torn, garbage, flipped bytes,
with and without CRC checking), non-scalar summaries, and property tests: written frames
read back equal, the vectorised decoder agrees with the per-record one, and arbitrary bytes
only ever raise a SpikelensError."""

from __future__ import annotations

import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikelens.errors import LogFormatError, MissingMetricError, SpikelensError
from spikelens.readers import READERS, detect_format, read_log
from spikelens.readers import _tfrecord as tfr
from spikelens.readers._tfrecord import (
    encode_event,
    encode_field,
    encode_record,
    event_file_name,
    write_scalar_events,
)
from spikelens.readers.tensorboard import TensorBoardReader

R09 = DATA / "tensorboard" / "r09"
R10 = SAMPLES / "tensorboard" / "r10"
R10_FILE = R10 / "events.out.tfevents.1715414400.trainer-node-0.4100.0"
R09_FIRST = R09 / "events.out.tfevents.1715328000.trainer-node-0.4100.0"
R09_SECOND = R09 / "events.out.tfevents.1715328921.trainer-node-0.4101.0"
INVALID = DATA / "invalid"



def f32(x: float) -> float:
    """The value a float32 layout stores for x."""
    return float(np.float32(x))


def _reader() -> TensorBoardReader:
    reader = READERS.get("tensorboard")
    assert isinstance(reader, TensorBoardReader)
    return reader


def _write(path: Path, records: list[tuple[object, ...]], layout: str = "simple_value",
           **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scalar_events(path, records, layout=layout, **kw)  # type: ignore[arg-type]
    return path


def _offsets(path: Path) -> np.ndarray:
    buf = tfr.read_file(path)
    return tfr.frame_records(buf, str(path)).offsets


# -- real runs -----------------------------------------------------------------------------


def test_r10_single_file_values_at_named_steps() -> None:
    run = read_log(R10_FILE)
    assert run.format == "tensorboard"
    assert run.roles["loss"] == "train/loss"
    assert run.roles["lr"] == "train/lr"
    assert run.roles["grad_norm"] == "train/grad_norm"
    assert run.roles["tokens"] == "train/tokens"
    assert run.roles["eval_loss"] == "eval/loss"
    assert run.roles["wall_time"] == "wall_time"
    assert list(run.steps[[0, -1]]) == [1, 1600]
    assert len(run.frame) == 1600
    assert run.interval == 1
    assert run.restarts == ()
    assert run.warnings == ()
    # from step 1000 the LR is 10x the schedule: the loss peaks at 1008
    assert run.frame.loc[1000, "train/loss"] == 0.7174283862113953
    assert run.frame.loc[1008, "train/loss"] == 1.1368272304534912
    assert run.frame.loc[1001, "train/grad_norm"] == 2.340708017349243
    assert run.frame.loc[1000, "train/lr"] == 0.00823677983134985
    assert run.frame.loc[1600, "grad_norm/blocks.1"] == 0.2784871459007263
    assert run.frame.loc[1, "train/tokens"] == 1024.0
    evals = run.series("eval_loss")
    assert evals is not None
    assert list(evals.index[:3]) == [100, 200, 300]
    assert len(evals) == 16
    assert evals.loc[1000] == 0.8738438487052917
    # per-layer grad norms are extras, not the total
    assert "grad_norm/head" in run.extras


def test_r10_directory_reads_like_the_file() -> None:
    by_dir = read_log(R10)
    by_file = read_log(R10_FILE)
    pd.testing.assert_frame_equal(by_dir.frame, by_file.frame)
    assert detect_format(R10) == "tensorboard"
    assert detect_format(R10_FILE) == "tensorboard"


def test_r09_resumed_run_two_files_restart_and_replay() -> None:
    run = read_log(R09)
    assert run.roles["loss"] == "train/loss"
    assert list(run.steps[[0, -1]]) == [1, 1600]
    assert len(run.frame) == 1600
    assert len(run.restarts) == 1
    restart = run.restarts[0]
    assert restart.resumed_at == 1001
    assert restart.previous_last == 1100
    assert restart.replayed == (1001, 1100)
    assert restart.segment == 1
    # the replayed steps keep the second file's values (last write wins) ...
    assert run.frame.loc[1050, "train/loss"] == 0.496477872133255
    assert run.frame.loc[1008, "train/lr"] == 0.0004799999878741801
    assert run.frame.loc[1100, "eval/loss"] == 0.6521930694580078
    # ... and the steps logged once keep theirs
    assert run.frame.loc[1000, "train/loss"] == 0.565022885799408
    assert run.frame.loc[1101, "train/loss"] == 0.7290064692497253
    assert run.segment_of_step is not None
    assert run.segment_of_step[run.steps == 1000][0] == 0
    assert run.segment_of_step[run.steps == 1050][0] == 1
    assert run.warnings == (
        f"{R09}: read 2 event files in write order (steps 1-1100 in {R09_FIRST.name}, "
        f"steps 1001-1600 in {R09_SECOND.name})",
        f"{R09}: restart at record 2: steps 1001-1100 were logged again; the later values win",
    )


def test_r09_rows_in_write_order_across_files() -> None:
    raw = _reader().read(R09)[0]
    steps = raw.frame["step"].to_numpy()
    assert len(steps) == 1700  # 1100 + 600 rows: nothing merged before the shared core
    assert steps[1099] == 1100 and steps[1100] == 1001
    assert raw.row_lines is not None
    # record numbers within each file: the file_version event is record 1
    assert raw.row_lines[0] == 2
    assert raw.row_lines[1100] == 2
    assert raw.step_column == "step"
    assert raw.frame.columns[:2].tolist() == ["step", "wall_time"]
    assert raw.frame.loc[0, "wall_time"] == pytest.approx(1715328000.6, abs=1.0)


def test_bench_runs_when_shared_is_present(shared: Path) -> None:
    for name in ("r09", "r10"):
        run = read_log(shared / "bench" / "runs" / name)
        assert run.roles["loss"] == "train/loss"
        assert run.roles["lr"] == "train/lr"
        assert run.roles["grad_norm"] == "train/grad_norm"
        assert run.roles["tokens"] == "train/tokens"


@pytest.mark.parametrize("path", [R09_FIRST, R09_SECOND, R10_FILE], ids=lambda p: p.name)
def test_fast_path_agrees_with_general_decoder_on_real_files(path: Path) -> None:
    buf = tfr.read_file(path)
    fr = tfr.frame_records(buf, str(path), check_crc=True)
    assert fr.damage == () and fr.bad_data == ()
    _assert_decoders_agree(buf, fr)


def _assert_decoders_agree(buf: np.ndarray, fr: tfr.Framing, chunk: int = 4096) -> None:
    fast_state, slow_state = tfr.DecodeState(), tfr.DecodeState()
    parts = list(tfr.iter_scalars(buf, fr, fast_state, chunk=chunk))
    slow = tfr.decode_general(buf, fr, slow_state)
    for name in ("steps", "values", "tag_ids", "rec", "walls"):
        got = np.concatenate([getattr(p, name) for p in parts]) if parts else \
            getattr(slow, name)[:0]
        np.testing.assert_array_equal(got, getattr(slow, name), err_msg=name)
    assert fast_state.tags == slow_state.tags
    assert fast_state.skipped == slow_state.skipped
    assert fast_state.malformed == slow_state.malformed


# -- layouts and the writer ----------------------------------------------------------------

RECORDS: list[tuple[object, ...]] = [
    (0, "train/loss", 2.5),
    (0, "train/lr", 1e-4),
    (1, "train/loss", 2.25),
    (1, "train/lr", 2e-4),
    (2, "train/loss", float("nan")),
    (2, "train/lr", 3e-4),
    (3, "train/loss", float("inf")),
    (300, "train/loss", 1.0),
    (300, "train/lr", -0.5),
]


@pytest.mark.parametrize("layout", ["simple_value", "tensor", "tensor_float_val",
                                    "tensor_double"])
@pytest.mark.parametrize("metadata", ["first", "every"])
def test_both_scalar_layouts_read_back(tmp_path: Path, layout: str, metadata: str) -> None:
    path = _write(tmp_path / event_file_name(1700000000), RECORDS, layout,
                  tensor_metadata=metadata)
    run = read_log(path)
    conv = (lambda x: x) if layout == "tensor_double" else f32
    assert run.frame.loc[0, "train/loss"] == 2.5
    assert run.frame.loc[1, "train/lr"] == conv(2e-4)
    assert run.frame.loc[300, "train/lr"] == -0.5
    assert math.isinf(float(run.frame.loc[3, "train/loss"]))
    assert list(run.nan_steps["train/loss"]) == [2]
    assert list(run.steps) == [0, 1, 2, 3, 300]
    assert run.warnings == ()
    buf = tfr.read_file(path)
    _assert_decoders_agree(buf, tfr.frame_records(buf, str(path)), chunk=3)


def test_writer_bytes_match_a_hand_built_pytorch_event(tmp_path: Path) -> None:
    # what torch.utils.tensorboard writes for add_scalar("train/loss", 0.5, 7, walltime=1.5)
    path = _write(tmp_path / "e.tfevents", [(7, "train/loss", 0.5, 1.5)], file_version=False)
    tag = b"train/loss"
    value = encode_field(1, tag) + encode_field(2, 0.5, wire=5)
    event = (encode_field(1, 1.5, wire=1) + encode_field(2, 7, wire=0)
             + encode_field(5, encode_field(1, value)))
    assert path.read_bytes() == encode_record(event)
    # and the record framing: the TFRecord spec's masked crc32c
    assert tfr.crc32c(b"123456789") == 0xE3069283


def test_wide_frame_input_writes_one_event_per_cell(tmp_path: Path) -> None:
    frame = pd.DataFrame({"step": [10, 20], "wall_time": [5.0, 6.0],
                          "loss": [1.0, np.nan], "lr": [0.1, 0.2]})
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    write_scalar_events(path, frame)
    raw = _reader().read(path)[0]
    assert raw.frame.columns.tolist() == ["step", "wall_time", "loss", "lr"]
    assert raw.frame["step"].tolist() == [10, 20]
    assert raw.frame["wall_time"].tolist() == [5.0, 6.0]
    assert raw.frame["loss"].tolist()[0] == 1.0
    assert math.isnan(raw.frame["loss"].tolist()[1])
    assert raw.frame["lr"].tolist() == [f32(0.1), f32(0.2)]
    assert list(raw.nan_mask["loss"]) == [False, True]
    assert len(_offsets(path)) == 5  # file_version + 4 scalar events


def test_step_zero_negative_and_huge_steps(tmp_path: Path) -> None:
    recs: list[tuple[object, ...]] = [(0, "loss", 1.0), (-5, "loss", 2.0),
                                      (2**40, "loss", 3.0), (2**62, "loss", 4.0)]
    path = _write(tmp_path / "events.out.tfevents.1.h.1.0", recs)
    raw = _reader().read(path)[0]
    assert raw.frame["step"].tolist() == [0, -5, 2**40, 2**62]
    assert raw.frame["loss"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_a_tag_logged_twice_in_a_step_keeps_the_last_write(tmp_path: Path) -> None:
    recs: list[tuple[object, ...]] = [(1, "loss", 1.0), (1, "lr", 0.5), (1, "loss", 9.0),
                                      (2, "loss", 2.0)]
    raw = _reader().read(_write(tmp_path / "events.out.tfevents.1.h.1.0", recs))[0]
    assert raw.frame["loss"].tolist() == [9.0, 2.0]
    assert raw.frame["lr"].tolist()[0] == 0.5


def test_tags_named_like_the_table_columns_are_renamed(tmp_path: Path) -> None:
    recs: list[tuple[object, ...]] = [(1, "step", 7.0), (1, "wall_time", 8.0), (1, "loss", 1.0)]
    raw = _reader().read(_write(tmp_path / "events.out.tfevents.1.h.1.0", recs))[0]
    assert raw.frame.columns.tolist() == ["step", "wall_time", "step (tag)",
                                          "wall_time (tag)", "loss"]
    assert raw.frame["step"].tolist() == [1]


def test_merged_summaries_several_values_per_event(tmp_path: Path) -> None:
    # TF1 `merge_all`: one event per step carrying every scalar
    def value(tag: str, x: float) -> bytes:
        return encode_field(1, tag.encode()) + encode_field(2, x, wire=5)

    data = encode_record(encode_event(wall_time=1.0)) + b"".join(
        encode_record(encode_event(step=s, wall_time=1.0 + s,
                                   values=[value("loss", s * 1.5), value("lr", 0.25)]))
        for s in (1, 2, 3)
    )
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    path.write_bytes(data)
    run = read_log(path)
    assert run.frame["loss"].tolist() == [1.5, 3.0, 4.5]
    assert run.frame["lr"].tolist() == [0.25, 0.25, 0.25]
    buf = tfr.read_file(path)
    _assert_decoders_agree(buf, tfr.frame_records(buf, str(path)), chunk=2)


# -- non-scalar summaries ------------------------------------------------------------------


def _tensor(dtype: int, dims: list[int], content: bytes = b"",
            strings: tuple[bytes, ...] = ()) -> bytes:
    shape = b"".join(encode_field(2, encode_field(1, d, wire=0)) for d in dims)
    out = encode_field(1, dtype, wire=0) + encode_field(2, shape)
    if content:
        out += encode_field(4, content)
    for s in strings:
        out += encode_field(8, s)
    return out


def _meta(plugin: str) -> bytes:
    return encode_field(1, encode_field(1, plugin.encode()))


def _non_scalar_file(path: Path) -> Path:
    histo = encode_field(1, 0.0, wire=1) + encode_field(2, 1.0, wire=1)
    image = encode_field(1, 2, wire=0) + encode_field(2, 2, wire=0) + encode_field(4, b"PNG")
    values = [
        encode_field(1, b"weights") + encode_field(5, histo),  # TF1/PyTorch histogram
        encode_field(1, b"sample") + encode_field(4, image),  # image
        encode_field(1, b"clip") + encode_field(6, encode_field(1, 16000.0, wire=5)),  # audio
        encode_field(1, b"notes") + encode_field(8, _tensor(7, [], strings=(b"hello",)))
        + encode_field(9, _meta("text")),  # TF2 text
        encode_field(1, b"w_hist") + encode_field(8, _tensor(2, [2, 3], bytes(48)))
        + encode_field(9, _meta("histograms")),  # TF2 histogram
        encode_field(1, b"odd") + encode_field(8, _tensor(1, [], struct.pack("<f", 3.0)))
        + encode_field(9, _meta("custom_plugin")),  # a float tensor another plugin owns
    ]
    recs = [encode_record(encode_event(wall_time=1.0))]
    for step in (1, 2):
        recs.append(encode_record(encode_event(step=step, wall_time=1.0 + step, values=[
            encode_field(1, b"loss") + encode_field(2, 0.5 * step, wire=5)])))
        for v in values:
            recs.append(encode_record(encode_event(step=step, wall_time=1.0, values=[v])))
    # later events of the custom tag carry no metadata (TF writes it with the first one)
    recs.append(encode_record(encode_event(step=3, wall_time=4.0, values=[
        encode_field(1, b"odd") + encode_field(8, _tensor(1, [], struct.pack("<f", 4.0)))])))
    path.write_bytes(b"".join(recs))
    return path


def test_histograms_images_audio_text_and_other_plugins_are_skipped(tmp_path: Path) -> None:
    path = _non_scalar_file(tmp_path / "events.out.tfevents.1.h.1.0")
    run = read_log(path)
    assert run.frame.columns.tolist() == ["wall_time", "loss"]
    assert run.frame["loss"].tolist() == [0.5, 1.0]
    assert run.warnings == (
        f"{path}: read scalars only; ignored 2 audio, 3 custom_plugin, 4 histograms, "
        "2 images, 2 text",
    )
    buf = tfr.read_file(path)
    _assert_decoders_agree(buf, tfr.frame_records(buf, str(path)), chunk=3)


def test_only_non_scalar_summaries_is_an_error(tmp_path: Path) -> None:
    path = INVALID / "tensorboard_histograms_only.tfevents"
    with pytest.raises(MissingMetricError) as exc:
        read_log(path)
    assert str(exc.value) == (
        f"{path}: no scalar summaries in the event file(s) (found: 2 histograms)")


# -- directories ---------------------------------------------------------------------------


def test_keras_train_and_validation_subdirectories(tmp_path: Path) -> None:
    _write(tmp_path / "train" / event_file_name(100), [
        (0, "epoch_loss", 2.0), (0, "epoch_learning_rate", 0.1),
        (1, "epoch_loss", 1.5), (1, "epoch_learning_rate", 0.1)], layout="tensor")
    _write(tmp_path / "validation" / event_file_name(100), [
        (0, "epoch_loss", 2.5), (1, "epoch_loss", 2.0)], layout="tensor")
    run = read_log(tmp_path)
    assert run.roles["loss"] == "train/epoch_loss"
    assert run.roles["eval_loss"] == "validation/epoch_loss"
    assert run.frame.columns.tolist() == ["wall_time", "train/epoch_loss",
                                          "train/epoch_learning_rate"]
    assert run.eval_frame["validation/epoch_loss"].tolist() == [2.5, 2.0]
    assert run.restarts == ()


def test_other_subdirectories_are_prefixed_and_merged_by_wall_time(tmp_path: Path) -> None:
    # PyTorch add_scalars("loss", {"train": .., "val": ..}) writes one subdirectory per key
    _write(tmp_path / event_file_name(100), [
        (s, "train/loss", 1.0 / s, 10.0 + s) for s in (1, 2, 3)])
    _write(tmp_path / "loss_train" / event_file_name(100), [
        (s, "loss", 2.0 / s, 10.2 + s) for s in (1, 2, 3)])
    _write(tmp_path / "loss_val" / event_file_name(100), [(3, "loss", 0.75, 13.5)])
    _write(tmp_path / "deeper" / "too_deep" / event_file_name(100), [(1, "ignored", 1.0)])
    raw = _reader().read(tmp_path)[0]
    assert raw.frame["step"].tolist() == [1, 1, 2, 2, 3, 3]
    assert raw.frame.columns.tolist() == ["step", "wall_time", "train/loss", "loss_train/loss"]
    assert raw.eval_frame is not None
    assert raw.eval_frame.to_dict("list") == {"step": [3], "loss_val/loss": [0.75]}
    run = read_log(tmp_path)
    assert run.frame.loc[2, "loss_train/loss"] == 1.0
    assert run.restarts == ()


def test_only_evaluation_subdirectories_are_the_table(tmp_path: Path) -> None:
    _write(tmp_path / "eval" / event_file_name(100), [(1, "loss", 1.0), (2, "loss", 0.5)])
    run = read_log(tmp_path)
    assert run.roles["eval_loss"] == "eval/loss"
    assert run.frame["eval/loss"].tolist() == [1.0, 0.5]


def test_files_of_one_run_ordered_by_name_timestamp_then_first_wall_time(
    tmp_path: Path,
) -> None:
    # "1000" sorts before "200" as text: the number decides, not the name
    _write(tmp_path / event_file_name(1000, pid=2), [(s, "loss", 2.0) for s in range(5, 9)],
           start_time=2000.0)
    _write(tmp_path / event_file_name(200, pid=1), [(s, "loss", 1.0) for s in range(1, 7)],
           start_time=1000.0)
    # same timestamp: the first event's wall time decides
    _write(tmp_path / event_file_name(1000, pid=1), [(s, "loss", 3.0) for s in range(7, 10)],
           start_time=3000.0)
    run = read_log(tmp_path)
    assert [(r.resumed_at, r.previous_last) for r in run.restarts] == [(5, 6), (7, 8)]
    assert run.frame["loss"].tolist() == [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0]


def test_empty_event_file_in_a_directory_is_skipped_with_a_warning(tmp_path: Path) -> None:
    good = _write(tmp_path / event_file_name(100), [(1, "loss", 1.0)])
    empty = tmp_path / event_file_name(200)
    empty.write_bytes(b"")
    run = read_log(tmp_path)
    assert run.frame["loss"].tolist() == [1.0]
    assert run.warnings == (
        f"{empty}: skipped this file: empty file",
        f"{tmp_path}: read 2 event files in write order (steps 1-1 in {good.name}, "
        f"no scalars in {empty.name})",
    )


def test_directory_without_event_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    assert _reader().sniff(tmp_path, b"") == 0.0
    with pytest.raises(LogFormatError) as exc:
        read_log(tmp_path, format="tensorboard")
    assert str(exc.value) == f"{tmp_path}: no TensorBoard event files in this directory"


# -- sniffing ------------------------------------------------------------------------------


def test_sniff_by_name_by_content_and_directory(tmp_path: Path) -> None:
    reader = _reader()
    renamed = tmp_path / "run.bin"
    renamed.write_bytes(R10_FILE.read_bytes()[:4096])
    head = renamed.read_bytes()
    assert reader.sniff(R10_FILE, head) == 1.0
    assert reader.sniff(renamed, head) == 0.9
    assert detect_format(renamed) == "tensorboard"
    assert reader.sniff(R09, b"") == 0.95
    assert reader.sniff(tmp_path / "events.out.tfevents.1.h", b"\x00" * 20) == 0.6
    assert reader.sniff(tmp_path / "x.csv", b"step,loss\n1,2\n") == 0.0
    assert reader.sniff(INVALID / "garbage.bin", (INVALID / "garbage.bin").read_bytes()) == 0.0


# -- damage --------------------------------------------------------------------------------


def _steps_file(path: Path, n: int = 40) -> Path:
    return _write(path, [(s, t, s + k / 10) for s in range(1, n + 1)
                         for k, t in enumerate(("loss", "lr"))])


def test_torn_last_record_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = _steps_file(tmp_path / "events.out.tfevents.1.h.1.0")
    offsets = _offsets(path)
    data = path.read_bytes()
    cut = int(offsets[-1]) + 20
    path.write_bytes(data[:cut])
    run = read_log(path)
    assert run.steps[-1] == 40
    assert run.frame.loc[40, "loss"] == 40.0
    assert math.isnan(float(run.frame.loc[40, "lr"]))  # the torn record was step 40's lr
    assert run.warnings == (
        f"{path}: skipped a torn last record (record {len(offsets)}, 20 bytes at byte "
        f"{offsets[-1]})",
    )


def test_garbage_after_the_last_record(tmp_path: Path) -> None:
    path = _steps_file(tmp_path / "events.out.tfevents.1.h.1.0")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\xff" * 20)
    run = read_log(path)
    assert run.frame.loc[40, "lr"] == f32(40.1)
    assert run.warnings == (
        f"{path}: skipped 20 trailing bytes at byte {size} (record 82) that are not a valid "
        "record",
    )


def test_flipped_length_byte_is_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    path = _steps_file(tmp_path / "events.out.tfevents.1.h.1.0")
    offsets = _offsets(path)
    data = bytearray(path.read_bytes())
    bad = int(offsets[10])  # record 11: step 5's lr
    data[bad] ^= 0x40
    path.write_bytes(bytes(data))
    run = read_log(path)
    size = int(offsets[11] - offsets[10])
    assert run.warnings == (
        f"{path}: skipped {size} damaged bytes at byte {bad} (record 11: bad length checksum)",
    )
    assert math.isnan(float(run.frame.loc[5, "lr"]))
    assert run.frame.loc[5, "loss"] == 5.0
    assert run.frame.loc[40, "lr"] == f32(40.1)
    assert len(run.frame) == 40


def test_flipped_data_byte_only_caught_in_crc_mode(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _steps_file(tmp_path / "events.out.tfevents.1.h.1.0")
    offsets = _offsets(path)
    data = bytearray(path.read_bytes())
    rec = int(offsets[7])  # record 8: step 4's loss; its float sits in the last 4 data bytes
    ln = struct.unpack_from("<Q", data, rec)[0]
    data[rec + 12 + ln - 2] ^= 0x01
    path.write_bytes(bytes(data))
    quiet = read_log(path)
    assert quiet.warnings == ()
    assert quiet.frame.loc[4, "loss"] != 4.0  # silently wrong without checksums
    monkeypatch.setenv("SPIKELENS_TB_CHECK_CRC", "1")
    run = read_log(path)
    assert run.warnings == (f"{path}: skipped 1 record(s) with a bad data checksum (record 8)",)
    assert math.isnan(float(run.frame.loc[4, "loss"]))
    assert run.frame.loc[4, "lr"] == f32(4.1)
    monkeypatch.delenv("SPIKELENS_TB_CHECK_CRC")
    raw = TensorBoardReader(check_crc=True).read(path)[0]
    assert raw.warnings == list(run.warnings)


def test_damage_with_many_parallel_chains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    # small chunks so a small file exercises the lock-step walk and its stitching
    monkeypatch.setattr(tfr, "_MIN_CHUNK", 512)
    monkeypatch.setattr(tfr, "_PY_TAIL", 1)
    path = _steps_file(tmp_path / "events.out.tfevents.1.h.1.0", n=400)
    clean_offsets = _offsets(path)
    data = bytearray(path.read_bytes())
    hits = [int(clean_offsets[i]) for i in (100, 101, 500)]
    for h in hits:
        data[h + 2] ^= 0x10
    path.write_bytes(bytes(data))
    buf = tfr.read_file(path)
    fr = tfr.frame_records(buf, str(path))
    # a damaged range counts as one record, however many it swallowed
    assert [(d.offset, d.record, d.reason) for d in fr.damage] == [
        (hits[0], 101, "checksum"), (hits[2], 500, "checksum")]
    assert fr.damage[0].size == int(clean_offsets[102] - clean_offsets[100])
    assert fr.damage[1].size == int(clean_offsets[501] - clean_offsets[500])
    keep = np.ones(len(clean_offsets), dtype=bool)
    keep[[100, 101, 500]] = False
    np.testing.assert_array_equal(fr.offsets, clean_offsets[keep])
    k = np.arange(len(fr.offsets))
    expected = k + 1 + (k >= 100) + (k >= 498)
    np.testing.assert_array_equal(fr.numbers(k), expected)


def test_parallel_walk_matches_a_plain_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    path = _steps_file(tmp_path / "events.out.tfevents.1.h.1.0", n=3000)
    plain = _offsets(path)
    monkeypatch.setattr(tfr, "_MIN_CHUNK", 256)
    monkeypatch.setattr(tfr, "_PY_TAIL", 1)
    buf = tfr.read_file(path)
    starts = tfr._sync_points(tfr._view(buf, "<u8"), tfr._view(buf, "<u4"), len(buf))
    assert len(starts) > 100
    np.testing.assert_array_equal(_offsets(path), plain)


# -- bad files: the invalid corpus ---------------------------------------------------------


def test_garbage_file_named_like_an_event_file() -> None:
    path = INVALID / "tensorboard_garbage.tfevents"
    assert detect_format(path) == "tensorboard"
    with pytest.raises(LogFormatError) as exc:
        read_log(path)
    assert str(exc.value) == (
        f"{path}: not a TensorBoard event file (record 1 at byte 0 has a bad length checksum)")


def test_truncated_first_record() -> None:
    path = INVALID / "tensorboard_truncated.tfevents"
    with pytest.raises(LogFormatError) as exc:
        read_log(path)
    assert str(exc.value) == (
        f"{path}: truncated event file: record 1 at byte 0 needs 40 bytes, the file has 30")


def test_short_header_and_empty_file(tmp_path: Path) -> None:
    short = tmp_path / "events.out.tfevents.1.h.1.0"
    short.write_bytes(b"\x05\x00\x00")
    with pytest.raises(LogFormatError) as exc:
        read_log(short, format="tensorboard")
    assert str(exc.value) == (
        f"{short}: truncated event file: record 1 at byte 0 has 3 of 12 header bytes")
    short.write_bytes(b"")
    with pytest.raises(LogFormatError) as exc:
        read_log(short, format="tensorboard")
    assert str(exc.value) == f"{short}: empty file"


def test_malformed_event_protobuf_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.h.1.0"
    good = [encode_record(encode_event(step=s, wall_time=1.0, values=[
        encode_field(1, b"loss") + encode_field(2, 1.0 * s, wire=5)])) for s in (1, 2, 3)]
    broken = encode_record(b"\x2a\x50\x0a")  # a summary field longer than the record
    path.write_bytes(good[0] + broken + good[1] + good[2])
    run = read_log(path)
    assert run.frame["loss"].tolist() == [1.0, 2.0, 3.0]
    assert run.warnings == (f"{path}: skipped 1 malformed record(s) (record 2)",)


# -- properties ----------------------------------------------------------------------------

TAGS = ("loss", "train/lr", "grad norm", "x/ü", "a" * 30)
finite_or_not = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def sparse_frames(draw: st.DrawFn) -> list[tuple[int, str, float]]:
    steps = sorted(draw(st.sets(st.integers(0, 2**33), min_size=1, max_size=25)))
    recs: list[tuple[int, str, float]] = []
    for s in steps:
        tags = draw(st.lists(st.sampled_from(TAGS[1:]), max_size=4, unique=True))
        recs.append((s, "loss", draw(finite_or_not)))
        recs.extend((s, t, draw(finite_or_not)) for t in tags)
    return recs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_frames(), st.sampled_from(["simple_value", "tensor", "tensor_float_val",
                                         "tensor_double"]))
def test_random_frames_read_back_equal(recs: list[tuple[int, str, float]], layout: str
                                       ) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / event_file_name(1)
        write_scalar_events(path, recs, layout=layout)
        run = read_log(path)
    assert list(run.steps) == sorted({s for s, _, _ in recs})
    for s, tag, v in recs:
        got = float(run.frame.loc[s, tag])
        if math.isnan(v):
            assert math.isnan(got)
            assert s in run.nan_steps[tag]
        else:
            assert got == v  # float32 inputs: every layout stores them exactly
    assert run.warnings == ()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_spikelens_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / event_file_name(1)
        path.write_bytes(data)
        try:
            read_log(path, format="tensorboard")
        except SpikelensError:
            pass


protobuf_fields = st.lists(st.tuples(st.integers(1, 12), st.sampled_from([0, 1, 2, 5]),
                                     st.binary(max_size=12)), max_size=5)


def _field_bytes(fields: list[tuple[int, int, bytes]]) -> bytes:
    out = b""
    for num, wire, payload in fields:
        if wire == 0:
            out += encode_field(num, int.from_bytes(payload[:9], "little"), wire=0)
        elif wire == 1:
            out += encode_field(num, struct.unpack("<d", payload[:8].ljust(8, b"\0"))[0], 1)
        elif wire == 5:
            out += encode_field(num, struct.unpack("<f", payload[:4].ljust(4, b"\0"))[0], 5)
        else:
            out += encode_field(num, payload)
    return out


@st.composite
def event_records(draw: st.DrawFn) -> bytes:
    """Framed records: well-formed scalar events (all layouts), random protobuf, flipped
    bytes and torn tails, so the vectorised path meets everything the general one does."""
    recs = [encode_record(encode_event(wall_time=1.0))]
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["scalar", "tensor", "random", "flip"]))
        step = draw(st.one_of(st.integers(-3, 300), st.integers(0, 2**62)))
        wall = draw(st.sampled_from([0.0, 1.5, 1e9]))
        tag = draw(st.sampled_from([b"loss", b"lr", b"", "\u00fc".encode(), b"\xff\xfe",
                                    b"t" * 9]))
        x = draw(finite_or_not)
        if kind == "random":
            payload = _field_bytes(draw(protobuf_fields))
            data = encode_event(step=step, wall_time=wall, values=[payload])
        elif kind == "tensor":
            value = encode_field(1, tag) + encode_field(8, _tensor(1, [], struct.pack("<f", x)))
            if draw(st.booleans()):
                value += encode_field(9, _meta(draw(st.sampled_from(["scalars", "other"]))))
            data = encode_event(step=step, wall_time=wall, values=[value])
        else:
            value = encode_field(1, tag) + encode_field(2, x, wire=5)
            data = encode_event(step=step if step else None, wall_time=wall or None,
                                values=[value])
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
        recs.append(encode_record(data))
    return b"".join(recs)


@settings(max_examples=200, deadline=None)
@given(event_records())
def test_vectorised_decoder_agrees_with_the_general_one(data: bytes) -> None:
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    fr = tfr.frame_records(buf, "x")
    _assert_decoders_agree(buf, fr, chunk=5)


@settings(max_examples=100, deadline=None)
@given(event_records(), st.binary(max_size=40))
def test_framed_garbage_only_raises_spikelens_errors(data: bytes, tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / event_file_name(1)
        path.write_bytes(data + tail)
        try:
            read_log(path)
        except SpikelensError:
            pass
