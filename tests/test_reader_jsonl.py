"""JSON-lines reader: bench run r23 (torn line, resumed run), a real fairseq json log, a W&B
offline history, NaN/Infinity tokens and numbers written as strings, a traceback in the
middle, eval records marked by a field, the exact errors for broken inputs, and properties:
random frames round-trip (fast path and json fallback alike), arbitrary bytes only ever raise
a SpikelensError."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikelens.readers.jsonl as jsonl_mod
from spikelens import LogFormatError, SpikelensError, read_log
from spikelens.model import Restart, Run
from spikelens.readers import detect_format
from spikelens.readers.jsonl import JsonlReader

J = DATA / "jsonl"


@pytest.fixture
def slow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pyarrow unavailable to the reader: every line goes through json.loads."""
    monkeypatch.setattr(jsonl_mod, "_read_arrow", lambda buf: None)


def _write(tmp: Path, name: str, text: str | bytes) -> Path:
    p = tmp / name
    if isinstance(text, str):
        p.write_text(text)
    else:
        p.write_bytes(text)
    return p


# -- real and realistic logs -----------------------------------------------------------------


def test_r23_torn_line_and_resume() -> None:
    p = J / "r23_resumed_torn.jsonl"
    run = read_log(p)
    assert run.format == "jsonl"
    assert dict(run.roles) == {
        "loss": "loss", "lr": "lr", "grad_norm": "grad_norm", "tokens": "tokens",
        "samples": "samples", "wall_time": "wall_time",
    }
    # line 1300 is step 1300 cut mid-write; the resumed job starts again at 1101 on line 1301
    assert run.warnings == (
        f"{p}: skipped 1 malformed line(s) (line 1300)",
        f"{p}: restart at line 1301: steps 1101-1299 were logged again; the later values win",
    )
    assert run.restarts == (Restart(row=1299, resumed_at=1101, previous_last=1299, segment=1),)
    assert list(run.steps[[0, -1]]) == [1, 1600] and len(run.steps) == 1600
    assert run.frame.loc[1101, "loss"] == pytest.approx(0.6088619828224182)
    assert run.frame.loc[1300, "loss"] == pytest.approx(0.5920264720916748)
    assert run.frame.loc[1300, "grad_norm"] == pytest.approx(0.6427769660949707)
    assert run.frame.loc[1600, "loss"] == pytest.approx(0.6478433012962341)
    assert run.segment_of_step is not None
    assert run.segment_of_step[run.frame.index.get_loc(1100)] == 0
    assert run.segment_of_step[run.frame.index.get_loc(1101)] == 1


def test_bundled_sample_reads() -> None:
    run = read_log(SAMPLES / "jsonl" / "r18_bad_batch_lr_metrics.jsonl")
    assert run.format == "jsonl" and run.warnings == () and len(run.steps) == 1600
    assert run.roles["loss"] == "loss" and run.roles["grad_norm"] == "grad_norm"
    assert run.frame.loc[1, "loss"] == pytest.approx(4.3411784172058105)


def test_fairseq_prefixed_lines() -> None:
    p = J / "fairseq_fsdp_13b.log"
    assert detect_format(p) == "jsonl"
    run = read_log(p)
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "valid_loss"
    assert run.roles["grad_norm"] == "gnorm" and run.roles["loss_scale"] == "loss_scale"
    assert run.frame.index.name == "step" and list(run.steps) == list(range(1, 11))
    # numbers written as strings, read as numbers
    assert run.frame.loc[1, "loss"] == 16.475
    assert run.frame.loc[3, "loss"] == 25.22 and run.frame.loc[3, "loss_scale"] == 1.0
    assert run.frame.loc[2, "loss_scale"] == 4.0
    # the valid record is eval, on its own step column; the epoch summary is nowhere
    assert run.eval_frame.loc[10, "valid_loss"] == 17.953
    assert "valid_loss" not in run.frame.columns
    assert not any(c.startswith("train_") and c != "train_wall" for c in run.extras)
    assert "train_loss" not in run.frame.columns and "train_loss" not in run.eval_frame.columns
    # the INFO chatter around the records is not reported as malformed
    assert run.warnings == ()


def test_wandb_offline_history() -> None:
    p = J / "wandb-history.jsonl"
    run = read_log(p)
    assert run.roles["loss"] == "train/loss" and run.roles["eval_loss"] == "eval/loss"
    assert run.roles["lr"] == "train/learning_rate"
    # the trainer's step, not W&B's per-call `_step`
    assert list(run.steps[[0, -1]]) == [10, 200] and len(run.steps) == 20
    assert run.frame.loc[120, "train/loss"] == 6.1234
    assert run.frame.loc[50, "train/loss"] == 2.6913
    assert run.frame.loc[50, "eval/loss"] == 2.755878
    assert math.isnan(run.frame.loc[60, "eval/loss"])
    assert list(run.nan_steps["train/grad_norm"]) == [150]
    # the media reference is skipped, a plain nested object is flattened with "/"
    assert not any("predictions" in c for c in run.frame.columns)
    assert run.frame.loc[200, "_wandb/runtime"] == 131.0
    assert run.interval == 10 and run.warnings == ()


def test_nan_infinity_and_string_numbers() -> None:
    run = read_log(J / "nonfinite_strings.jsonl")
    loss = run.frame["loss"]
    assert loss.loc[1] == 2.5 and loss.loc[2] == 2.25 and loss.loc[6] == 2.0
    assert math.isnan(loss.loc[3]) and math.isnan(loss.loc[4]) and loss.loc[5] == math.inf
    assert list(run.nan_steps["loss"]) == [3, 4]  # NaN and "nan": both written by the log
    g = run.frame["grad_norm"]
    assert g.loc[3] == math.inf and g.loc[4] == -math.inf and g.loc[5] == math.inf
    assert math.isnan(g.loc[6]) and "grad_norm" not in run.nan_steps  # null = not logged
    assert run.frame.loc[7, "lr"] == 1e-4
    assert run.warnings == ()  # a blank line is not worth a warning
    series = run.series("loss")
    assert series is not None and list(series.index) == [1, 2, 3, 4, 5, 6, 7]


def test_traceback_in_the_middle_then_resume() -> None:
    p = J / "traceback_resume.jsonl"
    run = read_log(p)
    assert run.warnings == (
        f"{p}: skipped 3 malformed line(s) (lines 17, 18, 19)",
        f"{p}: restart at line 20: steps 11-16 were logged again; the later values win",
    )
    assert run.frame.loc[16, "loss"] == 2.201  # the resumed job's value wins
    assert run.frame.loc[10, "loss"] == 2.5
    assert len(run.restarts) == 1 and run.restarts[0].resumed_at == 11


def test_split_field_keeps_eval_out_of_train_loss() -> None:
    run = read_log(J / "split_field.jsonl")
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "eval/loss"
    assert run.frame.loc[20, "loss"] == 2.12 and run.frame.loc[40, "loss"] == 1.87
    assert run.eval_frame.loc[20, "eval/loss"] == 2.47
    assert "split" not in run.frame.columns
    assert list(run.nan_steps["eval/loss"]) == [40] and "loss" not in run.nan_steps
    assert run.series("loss") is not None
    assert list(run.series("loss").index) == [10, 20, 30, 40, 50]  # type: ignore[union-attr]


def test_eval_only_keys_stay_in_frame_with_their_own_role(tmp_path: Path) -> None:
    p = _write(tmp_path, "m.jsonl", "\n".join([
        '{"step": 1, "loss": 3.0}', '{"step": 2, "loss": 2.9}',
        '{"step": 2, "eval_loss": 3.5}', '{"step": 3, "loss": 2.8}',
    ]) + "\n")
    run = read_log(p)
    assert run.roles["loss"] == "loss" and run.roles["eval_loss"] == "eval_loss"
    assert run.frame.loc[2, "loss"] == 2.9 and run.frame.loc[2, "eval_loss"] == 3.5


def test_crlf_bom_padding_and_blank_lines(tmp_path: Path) -> None:
    body = b'\xef\xbb\xbf{"step": 1, "loss": 2.0}\r\n\r\n  {"step": 2, "loss": 1.5}  \r\n' \
        b'{"step": 3, "loss": 1.25}\r\n\n\n'
    run = read_log(_write(tmp_path, "w.jsonl", body))
    assert list(run.frame["loss"]) == [2.0, 1.5, 1.25] and run.warnings == ()


def test_two_objects_on_one_line_are_one_malformed_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "two.jsonl",
               '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}{"step": 3, "loss": 1.8}\n'
               '{"step": 4, "loss": 1.7}\n')
    run = read_log(p)
    assert list(run.steps) == [1, 4]
    assert run.warnings == (f"{p}: skipped 1 malformed line(s) (line 2)",)


def test_torn_last_line_without_newline(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.jsonl", '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n'
               '{"step": 3, "lo')
    run = read_log(p)
    assert list(run.steps) == [1, 2]
    assert run.warnings == (f"{p}: skipped 1 malformed line(s) (line 3)",)


def test_many_malformed_lines_are_counted(tmp_path: Path) -> None:
    lines = []
    for i in range(1, 1201):
        lines.append(f'{{"step": {i}, "loss": {1 + 1 / i}}}' if i % 2 else f"noise {i}")
    p = _write(tmp_path, "n.jsonl", "\n".join(lines) + "\n")
    run = read_log(p)
    assert len(run.steps) == 600 and run.frame.loc[999, "loss"] == pytest.approx(1 + 1 / 999)
    assert run.warnings == (f"{p}: skipped 600 malformed line(s) (lines 2, 4, 6, ...)",)


def test_non_scalar_fields_are_reported(tmp_path: Path) -> None:
    p = _write(tmp_path, "h.jsonl",
               '{"step": 1, "loss": 2.0, "hist": [1, 2], "t": {"a": 1, "deep": {"x": 1}}}\n')
    run = read_log(p)
    assert run.frame.loc[1, "t/a"] == 1.0
    assert run.warnings == (
        f"{p}: ignored 2 non-scalar field(s) (lists, nested objects): hist, t/deep",
    )


def test_fast_path_and_json_fallback_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(J.iterdir())
    fast = [read_log(p) for p in files]
    monkeypatch.setattr(jsonl_mod, "_read_arrow", lambda buf: None)
    slow = [read_log(p) for p in files]
    for p, a, b in zip(files, fast, slow, strict=True):
        _assert_same_run(a, b, str(p))


@pytest.mark.parametrize("window", [5, 64, 1 << 24])
@pytest.mark.parametrize("many", [0, 64])
def test_line_numbers_do_not_depend_on_the_scan_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int, many: int
) -> None:
    """The one-pass scan numbers the set-aside lines window by window (16 MiB on a real
    log); lines that straddle windows, many odd lines in one window and the last line must
    come out as the line-by-line reference numbers them."""
    lines: list[str] = []
    for i in range(1, 400):
        if i % 7 == 0:
            lines.append(f"Traceback line {i}: RuntimeError")
        elif i % 11 == 0:
            lines.append("")
        elif i % 13 == 0:
            lines.append(f'  {{"step": {i}, "loss": {1 + 1 / i}}}\r')  # padded and CRLF
        else:
            lines.append(f'{{"step": {i}, "loss": {1 + 1 / i}, "note": "{"x" * (i % 50)}"}}')
    p = _write(tmp_path, "w.jsonl", "\n".join(lines) + '\n{"step": 400, "lo')  # torn end
    monkeypatch.setattr(jsonl_mod, "_WINDOW", window)
    monkeypatch.setattr(jsonl_mod, "_MANY_ODD", many)
    parsed: list[Any] = []
    read_arrow = jsonl_mod._read_arrow
    monkeypatch.setattr(jsonl_mod, "_read_arrow", lambda src: parsed.append(read_arrow(src))
                        or parsed[-1])
    fast = read_log(p)
    assert parsed and parsed[0] is not None  # pyarrow read the plain lines
    # a long torn last line begins windows before the scan finds it
    q = _write(tmp_path, "t.jsonl", "".join(f'{{"step": {i}, "loss": 1.5}}\n' for i in range(9))
               + "oops\n" + '{"step": 9, "loss": 1.5, "pad": "' + "y" * 300)
    assert read_log(q).warnings == (f"{q}: skipped 2 malformed line(s) (lines 10, 11)",)
    monkeypatch.setattr(jsonl_mod, "_read_arrow", lambda buf: None)
    slow = read_log(p)
    _assert_same_run(fast, slow, f"window {window}")
    assert fast.warnings[0].endswith("skipped 58 malformed line(s) (lines 7, 14, 21, ...)")


def _assert_same_run(a: Run, b: Run, what: str) -> None:
    pd.testing.assert_frame_equal(a.frame, b.frame, obj=what)
    pd.testing.assert_frame_equal(a.eval_frame, b.eval_frame, obj=what, check_index_type=False)
    assert dict(a.roles) == dict(b.roles), what
    assert {k: list(v) for k, v in a.nan_steps.items()} == \
        {k: list(v) for k, v in b.nan_steps.items()}, what
    assert a.warnings == b.warnings and a.restarts == b.restarts, what


# -- sniffing -----------------------------------------------------------------------------------


def test_sniff_scores() -> None:
    r = JsonlReader()
    assert r.sniff(Path("m.jsonl"), b'{"step": 1, "loss": 2}\n{"step": 2, "loss": 1}\n') == 0.95
    assert r.sniff(Path("m.txt"), b'{"step": 1, "loss": 2}\n') == 0.9
    fairseq = (J / "fairseq_fsdp_13b.log").read_bytes()
    assert r.sniff(Path("train.log"), fairseq) == 0.85
    ts = (DATA / "hf" / "r16_trainer_state.json").read_bytes()[:65536]
    assert r.sniff(Path("trainer_state.json"), ts) == 0.0
    assert r.sniff(Path("x.jsonl"), b'{"log_history": [{"loss": 1, "step": 1}]}\n') == 0.0
    assert r.sniff(Path("x.csv"), b"step,loss\n1,2\n") == 0.0
    assert r.sniff(Path("x.jsonl"), b"\x00\x01\x02" * 100) == 0.0


# -- broken input -------------------------------------------------------------------------------


def test_nothing_parses_names_the_first_bad_line() -> None:
    p = DATA / "invalid" / "jsonl_python_dicts.jsonl"
    with pytest.raises(LogFormatError) as exc:
        read_log(p)
    assert str(exc.value) == (
        f"{p}: no line parses as a JSON object (line 1: \"{{'step': 1, 'loss': 2.5, "
        f"'lr': 0.001}}\")"
    )


def test_long_bad_line_is_shortened(tmp_path: Path) -> None:
    p = _write(tmp_path, "b.jsonl",
               "\n\nTraceback (most recent call last): File train.py, line 9\n")
    with pytest.raises(LogFormatError) as exc:
        read_log(p, format="jsonl")
    assert str(exc.value) == (
        f"{p}: no line parses as a JSON object (line 3: 'Traceback (most recent call last): "
        f"File ...')"
    )


def test_empty_and_blank_files(tmp_path: Path) -> None:
    for name, body in (("e.jsonl", ""), ("b.jsonl", "\n \n\t\n")):
        p = _write(tmp_path, name, body)
        with pytest.raises(LogFormatError) as exc:
            JsonlReader().read(p)
        assert str(exc.value) == f"{p}: empty file"


def test_only_fairseq_epoch_summaries(tmp_path: Path) -> None:
    p = _write(tmp_path, "s.log", '2021-03-08 12:43:15 | INFO | train | {"epoch": 1, '
               '"train_loss": "19.351", "train_num_updates": "10"}\n')
    with pytest.raises(LogFormatError) as exc:
        read_log(p, format="jsonl")
    assert str(exc.value) == (
        f"{p}: only fairseq epoch summaries (| train |), no per-update records"
    )


# -- properties -----------------------------------------------------------------------------------

_NAMES = ["loss", "lr", "grad_norm", "train/acc", "eval/loss", "z loss", "x.y", "m-3"]
_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-(2**53), max_value=2**53),
)


@st.composite
def _frames(draw: Any) -> tuple[list[int], dict[str, list[Any]]]:
    n = draw(st.integers(min_value=1, max_value=40))
    steps = sorted(draw(st.sets(st.integers(min_value=0, max_value=10**6), min_size=n,
                                max_size=n)))
    names = draw(st.lists(st.sampled_from(_NAMES[1:]), unique=True, max_size=4))
    cols = {name: draw(st.lists(_VALUES, min_size=n, max_size=n)) for name in ["loss", *names]}
    return steps, cols


def _jsonl(steps: list[int], cols: dict[str, list[Any]], strings: bool, nest: bool) -> str:
    out = []
    for i, s in enumerate(steps):
        rec: dict[str, Any] = {"step": s}
        for name, vals in cols.items():
            v = vals[i]
            if v is None:
                continue
            if strings:
                v = repr(float(v))  # fairseq style, incl. 'nan' and 'inf'
            if nest and "/" in name:
                head, leaf = name.split("/")
                rec.setdefault(head, {})[leaf] = v
            else:
                rec[name] = v
        out.append(json.dumps(rec))
    return "\n".join(out) + "\n"


def _check_round_trip(steps: list[int], cols: dict[str, list[Any]], run: Run) -> None:
    assert list(run.steps) == steps
    for name, vals in cols.items():
        present = [v is not None for v in vals]
        if not any(present):
            assert name not in run.frame.columns
            continue
        got = run.frame[name].to_numpy()
        want = np.array([np.nan if v is None else float(v) for v in vals])
        np.testing.assert_array_equal(got, want)
        logged = [s for s, v in zip(steps, vals, strict=True)
                  if v is not None and math.isnan(float(v))]
        assert list(run.nan_steps.get(name, [])) == logged


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=_frames(), strings=st.booleans(), nest=st.booleans(), slow=st.booleans())
def test_random_frames_round_trip(
    frame: tuple[list[int], dict[str, list[Any]]], strings: bool, nest: bool, slow: bool
) -> None:
    steps, cols = frame
    if all(v is None for v in cols["loss"]):
        cols["loss"][0] = 1.0  # something analysable must be there
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        if slow:
            mp.setattr(jsonl_mod, "_read_arrow", lambda buf: None)
        p = Path(d) / "r.jsonl"
        p.write_text(_jsonl(steps, cols, strings, nest))
        _check_round_trip(steps, cols, read_log(p, format="jsonl"))


_JSONISH = st.text(alphabet='{}[]":,. \n\r\tstepoalrNIfinity-0123456789eE\\', max_size=300)


@settings(max_examples=150, deadline=None)
@given(data=st.one_of(st.binary(max_size=600), _JSONISH.map(str.encode)))
def test_arbitrary_bytes_raise_only_spikelens_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.jsonl"
        p.write_bytes(data)
        try:
            JsonlReader().read(p)
        except SpikelensError:
            pass
        try:
            read_log(p, format="jsonl")
        except SpikelensError:
            pass


def test_text_lines_are_damage_unless_most_records_are_prefixed(tmp_path: Path) -> None:
    p = _write(tmp_path, "m.jsonl", '{"step": 1, "loss": 2.0}\nSegmentation fault\n'
               'INFO {"step": 2, "loss": 1.9}\n{"step": 3, "loss": 1.8}\n')
    run = read_log(p)
    assert list(run.frame["loss"]) == [2.0, 1.9, 1.8]
    assert run.warnings == (f"{p}: skipped 1 malformed line(s) (line 2)",)


def test_a_string_that_is_not_a_number_is_missing_and_said(tmp_path: Path) -> None:
    # the writer put a string in the loss (a placeholder, a formatting bug): the line's other
    # fields stay, the loss there is missing, and the warning gives the line
    p = tmp_path / "log.jsonl"
    recs: list[dict[str, Any]] = [{"step": i, "loss": 2.0 - i / 1000, "lr": 1e-3}
                                  for i in range(1, 61)]
    recs[49]["loss"] = "abc"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = read_log(p)
    assert math.isnan(run.frame["loss"][50]) and run.frame["lr"][50] == 1e-3
    assert run.warnings == (
        f"{p}: 1 value(s) of column 'loss' are not numbers (first 'abc'), read as missing "
        "(line 50)",
    )


def test_a_config_line_s_empty_lr_does_not_take_the_role(tmp_path: Path) -> None:
    # the first line is the run's config (no step): its `lr` becomes a column with no value
    # in any step row, and the steps' own `train/lr` must be the LR
    p = tmp_path / "log.jsonl"
    lines = [json.dumps({"event": "config", "lr": 1e-6, "batch_size": 128})]
    lines += [json.dumps({"event": "step", "step": s, "train/loss": 2 - s / 100,
                          "train/lr": 1e-7 * (s + 1)}) for s in range(30)]
    p.write_text("\n".join(lines) + "\n")
    run = read_log(p)
    assert run.roles["lr"] == "train/lr" and "global_batch_size" not in run.roles
    assert "lr" in run.frame.columns  # still there, as an extra with nothing logged
    # the user may still name it
    assert read_log(p, metrics={"lr": "lr"}).roles["lr"] == "lr"


def test_keys_first_seen_in_later_blocks_keep_one_column_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key only on line 1 and another first seen blocks later make the streaming parse
    give up, and the whole-file parse reads the log. Its columns must come in the order the
    keys first appear, the same on every read: a threaded parse ordered them by which block
    finished first (found by a review, 2 reads in 12 with `extra0` after `pad`)."""
    monkeypatch.setattr(jsonl_mod, "_TEMPLATE_MIN_BYTES", 1 << 62)  # the plain path
    monkeypatch.setattr(jsonl_mod, "_BLOCK_SIZE", 1 << 14)
    lines = ['{"extra0": 1.5, "step": -1}']
    lines += [f'{{"step": {s}, "loss": {1 + 1 / (s + 1)!r}, "pad": "{"p" * 200}"}}'
              for s in range(3000)]
    lines.append('{"step": 3000, "loss": 1.0, "pad": "p", "extra": 2.5}')
    p = tmp_path / "late.jsonl"
    p.write_text("\n".join(lines) + "\n")
    orders = {tuple(JsonlReader().read(p)[0].frame.columns) for _ in range(8)}
    assert orders == {("extra0", "step", "loss", "pad", "extra")}

