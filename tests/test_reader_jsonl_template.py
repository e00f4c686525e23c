"""The JSON-lines reader's template path (`readers/_jsonl_template.py`) against the plain path
(the odd-line scan and pyarrow's JSON parser, json.loads for the lines set aside): the same
RawLog (columns and their order, dtypes, values to the bit, logged-NaN masks, row lines),
the same warnings and the same one-line errors, on every JSONL file of the repository and of
../shared, on a realistic log, and on random logs whose lines are mutated in the ways the
template must not accept (NaN spellings, null, strings with commas, quotes and escapes,
leading zeros, `5.`, `5.e3`, -0, big integers, other key orders and spacing, duplicate keys,
nested values, CRLF, blank, torn and garbage lines)."""

from __future__ import annotations

import json
import mmap
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, SAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikelens.readers.jsonl as jsonl_mod
from spikelens import SpikelensError
from spikelens.readers._base import RawLog
from spikelens.readers._jsonl_template import template_parse
from spikelens.readers.jsonl import JsonlReader


def _read(path: Path, templated: bool) -> list[RawLog] | str:
    old = jsonl_mod._TEMPLATE_MIN_BYTES
    jsonl_mod._TEMPLATE_MIN_BYTES = 0 if templated else 1 << 62
    try:
        return JsonlReader().read(path)
    except SpikelensError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        jsonl_mod._TEMPLATE_MIN_BYTES = old


def _same_column(a: pd.Series, b: pd.Series, where: str) -> None:
    assert a.dtype == b.dtype, where
    x, y = a.to_numpy(), b.to_numpy()
    if x.dtype.kind == "f":
        assert np.array_equal(x, y, equal_nan=True), where
        assert np.array_equal(np.signbit(x), np.signbit(y)), where
    else:
        assert len(x) == len(y), where
        for u, v in zip(x, y, strict=True):
            assert type(u) is type(v), where
            assert u == v or (u != u and v != v), where


def _same_frame(a: pd.DataFrame | None, b: pd.DataFrame | None, where: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, where
        return
    assert list(a.columns) == list(b.columns), where
    assert a.index.equals(b.index), where
    for c in a.columns:
        _same_column(a[c], b[c], f"{where}: column {c}")


def assert_same(path: Path) -> list[RawLog] | str:
    """Read `path` both ways; they must agree in everything a Run is built from."""
    fast, plain = _read(path, True), _read(path, False)
    if isinstance(fast, str) or isinstance(plain, str):
        assert fast == plain
        return fast
    assert len(fast) == len(plain)
    for x, y in zip(fast, plain, strict=True):
        _same_frame(x.frame, y.frame, f"{path} frame")
        _same_frame(x.eval_frame, y.eval_frame, f"{path} eval frame")
        assert x.nan_mask.keys() == y.nan_mask.keys()
        for k in x.nan_mask:
            assert np.array_equal(x.nan_mask[k], y.nan_mask[k]), k
        assert x.row_lines is not None and y.row_lines is not None
        assert np.array_equal(x.row_lines, y.row_lines)
        assert x.warnings == y.warnings
        assert x.step_column == y.step_column
        assert x.eval_step_column == y.eval_step_column
    return fast


def _templated(path: Path) -> bool:
    """Whether the template path takes the file (rather than leaving it to the plain path)."""
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            return template_parse(buf, np.frombuffer(buf, dtype=np.uint8)) is not None
        finally:
            try:
                buf.close()
            except BufferError:
                pass


# -- the repository's and the bench's JSONL files --------------------------------------------


_FILES = sorted(p for folder in (DATA / "jsonl", SAMPLES / "jsonl") for p in folder.iterdir()
                if p.is_file())


@pytest.mark.parametrize("path", _FILES, ids=lambda p: p.name)
def test_repository_files_read_the_same(path: Path) -> None:
    assert_same(path)


def test_shared_files_read_the_same(shared: Path) -> None:
    files = sorted(shared.rglob("*.jsonl"))
    if not files:
        pytest.skip("no JSONL files under ../shared")
    for path in files:
        assert_same(path)


# -- a realistic log ------------------------------------------------------------------------


def _realistic(tmp: Path, n: int = 5000, crlf: bool = False) -> Path:
    """The bench's shape: int step, float metrics, val_loss every 100 lines, two text
    columns, NaN losses, +-Infinity grad norms, a traceback, a blank line, a torn line."""
    rng = random.Random(7)
    lines: list[str] = []
    for step in range(n):
        rec: dict[str, Any] = {
            "step": step, "epoch": step / 50_000, "loss": 3 * rng.random(),
            "lr": 3e-4 * (1 - step / n), "grad_norm": rng.random(), "time": 1.7e9 + step * 0.35,
        }
        if step % 100 == 0:
            rec["val_loss"] = rng.random()
        rec["phase"] = "train"
        rec["run"] = "exp-042-llama-1b"
        text = json.dumps(rec)
        if step % 997 == 5:
            text = text.replace(f'"loss": {rec["loss"]!r}', '"loss": NaN')
        if step % 1301 == 7:
            text = text.replace(f'"grad_norm": {rec["grad_norm"]!r}', '"grad_norm": -Infinity')
        lines.append(text)
    lines.insert(1200, "Traceback (most recent call last):")
    lines.insert(2400, "")
    lines[3000] = lines[3000][:57]
    p = tmp / ("crlf.jsonl" if crlf else "log.jsonl")
    p.write_bytes(("\r\n" if crlf else "\n").join(lines).encode() + b"\n")
    return p


def test_realistic_log_takes_the_template_path_and_reads_the_same(tmp_path: Path) -> None:
    p = _realistic(tmp_path)
    assert _templated(p)
    logs = assert_same(p)
    assert not isinstance(logs, str)
    frame = logs[0].frame
    # `phase` (all "train") is read as the train/eval marker and consumed
    assert list(frame.columns) == [
        "step", "epoch", "loss", "lr", "grad_norm", "time", "val_loss", "run"]
    assert int(frame["val_loss"].notna().sum()) == 50
    assert logs[0].nan_mask["loss"].sum() == 6
    assert np.isneginf(frame["grad_norm"]).sum() == 4
    # the blank line is skipped without a word; the traceback and the torn line are named
    assert logs[0].warnings == [f"{p}: skipped 2 malformed line(s) (lines 1201, 3001)"]


def test_small_windows_read_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of a few lines, scanned on two threads: lines that straddle a window's
    nominal end, line numbers carried across windows, columns stitched back together."""
    import spikelens.readers._jsonl_template as template_mod

    monkeypatch.setattr(template_mod, "_WINDOW", 1000)
    p = _realistic(tmp_path, n=3000)
    assert _templated(p)
    assert_same(p)


def test_more_lines_than_the_first_mib_predicts_read_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The number columns are placed in arrays sized from the first MiB's line length;
    a log whose lines get much shorter later (a long note that stops being written) has
    more rows than that, and the arrays must grow without losing or moving a value. Small
    windows put non-template lines (NaN, a traceback) inside several windows."""
    import spikelens.readers._jsonl_template as template_mod

    monkeypatch.setattr(template_mod, "_WINDOW", 1 << 16)
    lines = []
    for step in range(60_000):
        note = "x" * (600 if step < 3000 else 1)
        loss = "NaN" if step % 4999 == 3 else repr(2 + 1 / (step + 1))
        lines.append(f'{{"step": {step}, "loss": {loss}, "note": "{note}"}}')
    lines.insert(40_000, "Traceback (most recent call last):")
    p = tmp_path / "shrinking.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert template_mod._line_estimate(p.read_bytes()) < 20_000  # the estimate is short
    assert _templated(p)
    logs = assert_same(p)
    assert not isinstance(logs, str)
    assert len(logs[0].frame) == 60_000
    assert logs[0].nan_mask["loss"].sum() == len(range(3, 60_000, 4999))


def test_string_columns_spanning_2_gib_read_the_same(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """String ranges spanning 2 GiB or more (a window over one huge line) are taken as
    large_string and cast: the path is forced here with a tiny span limit."""
    import spikelens.readers._jsonl_template as template_mod

    monkeypatch.setattr(template_mod, "_SPAN32", 10)
    p = _realistic(tmp_path, n=3000)
    assert _templated(p)
    assert_same(p)


def test_crlf_log_takes_the_template_path_and_reads_the_same(tmp_path: Path) -> None:
    p = _realistic(tmp_path, crlf=True)
    assert _templated(p)
    assert_same(p)


def test_a_log_without_a_common_shape_is_left_to_the_plain_path(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    p.write_text("".join(json.dumps({f"k{i}": i, "loss": 1.0}) + "\n" for i in range(300)))
    assert not _templated(p)
    assert_same(p)


def test_a_log_whose_shape_changes_is_left_to_the_plain_path(tmp_path: Path) -> None:
    """A resumed run that logs other keys from line 301 on: the template of the first lines
    covers too little of the file, and the plain path reads it."""
    rng = random.Random(3)
    lines = [_line(i, None, rng) for i in range(300)]
    lines += [json.dumps({"iter": i, "train_loss": rng.random()}) for i in range(1500)]
    p = tmp_path / "resumed.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert not _templated(p)
    assert_same(p)


# -- random logs, mutated where the template must not accept them ---------------------------

_VALUES = [
    "NaN", "Infinity", "-Infinity", "nan", "inf", "-NaN", "+1", "1e999", "null", "true",
    "false", '"x"', '"1,5"', '"a\\"b"', '"caf\\u00e9"', '"café"', '"2024-01-01"', "-0", "0",
    "01", "-01", "5.", ".5", "-.5", "5.e3", "5.E3", "1e5", "1E+5", "2e-05", "1e", "1.2.3",
    "1-2", "12345678901234567890", "9007199254740993", "-0.0", "[1, 2]", '{"a": 1}',
    '{"_type": "image"}', "1 ", " 1", "0.1", "-7",
]
_LINES = [
    "", "   ", "Traceback (most recent call last):", '{"step": 1, "loss": 2',
    '{"loss": 1.0, "step": 3, "lr": 0.1, "phase": "train"}',  # another key order
    '{"step":3,"loss":1.0,"lr":0.1,"phase":"train"}',  # other spacing
    '{"step": 3, "loss": 1.0, "lr": 0.1, "phase": "train", "extra": 4}',
    '{"step": 3, "loss": 1.0, "lr": 0.1}',
    '{"step": 3, "step": 4, "loss": 1.0, "lr": 0.1, "phase": "train"}',
    '  {"step": 3, "loss": 1.0, "lr": 0.1, "phase": "train"}  ',
    '{"step": 3, "loss": 1.0, "lr": 0.1, "phase": "eval"}',
    '{"step": 3, "loss": 1.0, "lr": 0.1, "phase": "train"}{"step": 4}',
    "[1, 2, 3]", "\ufeff" + '{"step": 3, "loss": 1.0, "lr": 0.1, "phase": "train"}',
]
_KEYS = ("step", "loss", "lr", "phase")


def _line(step: int, mutation: tuple[int, int] | None, rng: random.Random) -> str:
    vals = [str(step), repr(rng.uniform(0, 4)), repr(rng.choice([3e-4, 1e-05, 0.5])),
            '"train"']
    if mutation is None:
        pass
    elif mutation[0] == 0:  # a value replaced
        vals[mutation[1] % len(vals)] = _VALUES[mutation[1] // len(vals) % len(_VALUES)]
    else:  # a whole line replaced
        return _LINES[mutation[1] % len(_LINES)]
    return "{" + ", ".join(f'"{k}": {v}' for k, v in zip(_KEYS, vals, strict=True)) + "}"


_MUTATION = st.one_of(
    st.none(), st.none(), st.none(), st.none(), st.none(), st.none(),
    st.tuples(st.integers(0, 1), st.integers(0, 4 * len(_VALUES))))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=60), seed=st.integers(0, 99),
       crlf=st.booleans(), end=st.sampled_from(["\n", "", "\n\n"]))
def test_random_mutations_read_the_same(tmp_path: Path, mutations: list[Any], seed: int,
                                        crlf: bool, end: str) -> None:
    rng = random.Random(seed)
    lines = [_line(i, m, rng) for i, m in enumerate(mutations)]
    p = tmp_path / "random.jsonl"
    p.write_bytes((("\r\n" if crlf else "\n").join(lines) + end).encode())
    assert_same(p)


@pytest.mark.parametrize("value", _VALUES)
def test_each_value_in_the_middle_of_a_templated_log_reads_the_same(tmp_path: Path,
                                                                    value: str) -> None:
    """One odd value per column, among 300 plain lines: rejected rows go to pyarrow's JSON
    parser or the whole file to the plain path, never a different result."""
    rng = random.Random(1)
    for column in range(len(_KEYS)):
        lines = [_line(i, None, rng) for i in range(300)]
        vals = lines[150][1:-1].split(", ")
        key = vals[column].split(": ")[0]
        vals[column] = f"{key}: {value}"
        lines[150] = "{" + ", ".join(vals) + "}"
        p = tmp_path / f"v{column}.jsonl"
        p.write_text("\n".join(lines) + "\n")
        assert_same(p)


@pytest.mark.parametrize("line", _LINES)
def test_each_odd_line_in_the_middle_of_a_templated_log_reads_the_same(tmp_path: Path,
                                                                       line: str) -> None:
    rng = random.Random(2)
    lines = [_line(i, None, rng) for i in range(300)]
    lines[100] = line
    p = tmp_path / "odd.jsonl"
    p.write_text("\n".join(lines) + "\n")
    # pyarrow refuses duplicate keys and two objects on a line: the plain path then reads
    # everything with json.loads, and the template path leaves the file to it
    assert _templated(p) == ('"step": 4' not in line)
    assert_same(p)
