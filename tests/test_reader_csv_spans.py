"""A big CSV is parsed in several byte spans at once (`readers/csv._read_spans`); the run
read that way must be the run read by one parser: same values, same logged NaNs, same
warnings with the same line numbers, same fallback when a type changes further down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spikelens import read_log
from spikelens.model import Run
from spikelens.readers import csv as csv_reader


def _read(path: Path, spans: int, monkeypatch: pytest.MonkeyPatch,
          parsed: list[int] | None = None) -> Run:
    """The run read with `spans` spans; `parsed` collects the row count of each span parse
    that got through (none when the reader fell back to the whole-file parse)."""
    real = csv_reader._read_spans

    def spy(*args: Any) -> Any:
        table = real(*args)
        if parsed is not None:
            parsed.append(table.num_rows)
        return table

    with monkeypatch.context() as m:
        m.setattr(csv_reader, "_SPLIT_MIN", 0 if spans > 1 else 1 << 62)
        m.setattr(csv_reader, "_parts", lambda size: spans)
        m.setattr(csv_reader, "_read_spans", spy)
        return read_log(path)


def _same(a: Run, b: Run) -> None:
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.warnings == b.warnings
    assert list(a.nan_steps) == list(b.nan_steps)  # the same columns, in the same order
    for k in a.nan_steps:
        np.testing.assert_array_equal(a.nan_steps[k], b.nan_steps[k])
    assert dict(a.roles) == dict(b.roles)


def _log(n: int, odd: dict[int, str], crlf: bool = False) -> str:
    lines = ["step,loss,grad_norm,tokens,phase"]
    for i in range(n):
        if i in odd:
            lines.append(odd[i])
        loss = "NaN" if i % 997 == 5 else f"{2 + 1 / (i + 1):.12f}"
        grad = "inf" if i % 1499 == 7 else f"{0.5 + (i % 13) / 7:.6f}"
        lines.append(f"{i},{loss},{grad},{512 * i},{'train' if i % 2 else 'warmup'}")
    return ("\r\n" if crlf else "\n").join(lines) + "\n"


@pytest.mark.parametrize("spans", [2, 3, 4])
def test_spans_read_the_same_run_as_one_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spans: int
) -> None:
    # malformed rows spread over the file: each span collects its own, listed in file order
    odd = {10: "Traceback (most recent call last):", 20_000: "17,2.5",
           39_000: "oops,1,2,3,4,5,6", 59_990: "  File \"train.py\", line 3"}
    p = tmp_path / "log.csv"
    p.write_text(_log(60_000, odd))
    one = _read(p, 1, monkeypatch)
    parsed: list[int] = []
    many = _read(p, spans, monkeypatch, parsed)
    assert parsed == [60_000]  # read by the spans, not by the fallback
    _same(one, many)
    assert len(many.frame) == 60_000
    assert many.warnings[0] == (f"{p}: skipped 4 malformed row(s) (lines 12, 20003, "
                                "39004, ...)")
    assert many.warnings[1] == f"{p}: ignored non-numeric column(s): phase"
    assert len(many.nan_steps["loss"]) == len(range(5, 60_000, 997))


def test_spans_with_crlf_and_a_repeated_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _log(30_000, {}, crlf=True)
    lines = text.split("\r\n")
    lines.insert(15_000, lines[0])  # a resumed job wrote its header again
    p = tmp_path / "resumed.csv"
    p.write_text("\r\n".join(lines))
    one = _read(p, 1, monkeypatch)
    parsed: list[int] = []
    many = _read(p, 3, monkeypatch, parsed)
    assert parsed == [30_000]
    _same(one, many)
    assert many.warnings[0] == f"{p}: skipped 1 repeated header line(s) (line 15001)"
    assert len(many.frame) == 30_000


def test_a_type_change_in_a_later_span_reads_the_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spans share the first block's types; a later span that does not fit them (an
    integer column turned float) makes the reader fall back to the whole-file parse, whose
    inference sees every row."""
    text = _log(200_000, {})
    lines = text.splitlines()
    # past the first 4 MiB block, whose types the spans are given
    lines[180_000] = lines[180_000].replace(f",{512 * 179_999},", f",{512 * 179_999}.5,")
    p = tmp_path / "drift.csv"
    p.write_text("\n".join(lines) + "\n")
    assert len("\n".join(lines[:180_000])) > 1 << 22
    one = _read(p, 1, monkeypatch)
    parsed: list[int] = []
    many = _read(p, 4, monkeypatch, parsed)
    assert parsed == []  # the spans gave up: the whole-file parse read it
    _same(one, many)
    assert many.frame["tokens"].loc[179_999] == 512 * 179_999 + 0.5
    assert many.frame["tokens"].loc[199_999] == 512 * 199_999


@pytest.mark.parametrize("spans", [2, 3])
def test_malformed_rows_after_blank_lines_keep_their_line_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spans: int
) -> None:
    """The first span takes a malformed row's line from the parser, which numbers only the
    lines it does not ignore: blank lines before it must still count, and a row in a later
    span (looked up in the file) must not be matched to an earlier row with the same text."""
    odd = {3: "", 4: "", 10: "oops", 400: "", 401: "17,2.5", 50_000: "", 50_001: "oops"}
    p = tmp_path / "blank.csv"
    p.write_text(_log(60_000, odd))
    lines = p.read_text().split("\n")
    expected = [i + 1 for i, line in enumerate(lines) if line in ("oops", "17,2.5")]
    assert len(expected) == 3
    one = _read(p, 1, monkeypatch)
    parsed: list[int] = []
    many = _read(p, spans, monkeypatch, parsed)
    assert parsed == [60_000]
    _same(one, many)
    assert many.warnings[0] == (f"{p}: skipped 3 malformed row(s) (lines "
                                f"{', '.join(map(str, expected))})")


def test_a_span_with_more_rows_than_estimated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each span's float columns are written into arrays sized from a sample of its
    newlines; rows ended by a lone CR (which pyarrow reads as rows) are not counted, so the
    span overflows its estimate, and the blocks past it must still land in file order with
    their logged NaNs."""
    text = _log(120_000, {})
    lines = text.splitlines()
    p = tmp_path / "cr.csv"
    p.write_text("\n".join(lines[:90_000]) + "\n" + "\r".join(lines[90_000:]) + "\r",
                 newline="")
    one = _read(p, 1, monkeypatch)
    parsed: list[int] = []
    many = _read(p, 3, monkeypatch, parsed)
    assert parsed == [120_000]  # read by the spans
    _same(one, many)
    assert len(many.nan_steps["loss"]) == len(range(5, 120_000, 997))
    assert many.frame["loss"].iloc[-1] == pytest.approx(2 + 1 / 120_000)


def test_logged_nans_are_listed_in_column_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span parse meets `grad_norm`'s first NaN (row 10) before `loss`'s (row 15000); the
    run still lists them in column order, as one parser does."""
    p = tmp_path / "order.csv"
    p.write_text("step,loss,grad_norm\n" + "".join(
        f"{i},{'NaN' if i == 15_000 else 1 + i * 1e-5},{'NaN' if i == 10 else 2.0}\n"
        for i in range(20_000)))
    one = _read(p, 1, monkeypatch)
    parsed: list[int] = []
    many = _read(p, 2, monkeypatch, parsed)
    assert parsed == [20_000]
    assert list(one.nan_steps) == list(many.nan_steps) == ["loss", "grad_norm"]


def test_split_points_fall_on_row_starts() -> None:
    data = b"step,loss\n" + b"".join(b"%d,1.5\n" % i for i in range(1000))
    cuts = csv_reader._split_points(data, 10, 4)
    assert len(cuts) == 3 and cuts == sorted(cuts)
    assert all(data[c - 1:c] == b"\n" for c in cuts)
    assert csv_reader._split_points(b"step,loss\n1,2", 10, 4) == []


@pytest.mark.parametrize("window", [64, 100, 1 << 24])
def test_malformed_lines_are_placed_in_one_pass_across_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """`_invalid_lines` searches window by window: a row cut by a window's edge, a text
    that first appears inside a longer line, the same text twice and a text that is not in
    the file all get the line a user would count in an editor."""
    rows = ["step,loss"] + [f"{i},{i / 10}" for i in range(40)]
    rows[7] = "Traceback (most recent call last): oops"  # the text inside a longer line
    rows[12] = "oops"
    rows[30] = "oops"
    rows[21] = "3,4,5,6,7,8,9,10,11,12,13,14"  # long enough to cross a 64-byte edge
    p = tmp_path / "odd.csv"
    p.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(csv_reader, "_WINDOW", window)
    data = p.read_bytes()
    lines = csv_reader._invalid_lines(data, ["oops", "3,4,5,6,7,8,9,10,11,12,13,14", "oops",
                                            "not there"])
    assert lines == [13, 22, 31]
