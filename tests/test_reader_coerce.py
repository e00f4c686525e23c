"""The vectorised text-to-number pass (`readers/_base._coerce`) against a cell-by-cell
reference written with Python's `float`: the same values, the same logged NaNs, the same
unparseable cells and the same text-column verdict, on random cells, on label columns long
enough to take the distinct-values path, and on JSON-decoded object columns that mix numbers
and strings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from spikelens.readers import read_log
from spikelens.readers._base import _coerce, coerce_numeric

_NAN = {"nan", "-nan", "+nan", "nan(ind)", "-nan(ind)", "null", "none", "na", "n/a"}
_POS = {"inf", "+inf", "infinity", "+infinity", "1.#inf", "inf.0"}
_NEG = {"-inf", "-infinity", "-1.#inf"}


def reference(cells: list[Any], decoded: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         bool]:
    """What each cell means, one at a time (the behaviour the vectorised pass must keep)."""
    n = len(cells)
    out, logged, bad = np.full(n, np.nan), np.zeros(n, bool), np.zeros(n, bool)
    for i, v in enumerate(cells):
        if v is None or (isinstance(v, float) and not decoded):
            continue
        if isinstance(v, float):
            out[i], logged[i] = v, math.isnan(v)
            continue
        s = str(v).strip().strip('"').strip()
        if not s:
            continue
        low = s.lower()
        if low in _NAN:
            logged[i] = True
        elif low in _POS:
            out[i] = math.inf
        elif low in _NEG:
            out[i] = -math.inf
        elif low in ("true", "false"):
            out[i] = 1.0 if low == "true" else 0.0
        else:
            try:
                f = float(s)
            except ValueError:
                bad[i] = True
                continue
            out[i], logged[i] = f, math.isnan(f)
    text = int(bad.sum()) > max(3, 0.5 * int((~np.isnan(out)).sum()))
    return out, logged, bad, text


def _check(cells: list[Any], series: pd.Series, decoded: bool) -> None:
    want_v, want_l, want_b, want_text = reference(cells, decoded)
    got_v, got_l, got_b, got_text = _coerce(series)
    assert got_text == want_text
    if want_text:
        return  # a text column is dropped; its unparsed rest need not be parsed
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_l, want_l)
    np.testing.assert_array_equal(got_b, want_b)
    v, lg, b = coerce_numeric(series)  # the public form parses every cell
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(b, want_b)


_WORDS = ["nan", "NaN", "-nan", "NULL", "n/a", "inf", "-Infinity", "+INF", "1.#INF", "true",
          "False", "", "  ", "train", "exp-042", "1_000", "０.５", "1e400", "-1e-400", "0x10",
          "1.5e", ".5", "5.", "+3", '"2.5"', " 7 ", "1,5", "é"]
_cell = st.one_of(
    st.sampled_from(_WORDS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**20, 10**20).map(str),
    st.text(alphabet="0123456789.eE+- \"natifNI", max_size=8),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_cell, max_size=40))
def test_string_column_matches_the_reference(cells: list[Any]) -> None:
    _check(cells, pd.Series(cells, dtype="str"), decoded=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_cell, st.floats(allow_nan=True, allow_infinity=True)), max_size=40))
def test_decoded_object_column_matches_the_reference(cells: list[Any]) -> None:
    arr = np.empty(len(cells), dtype=object)
    arr[:] = cells
    _check(cells, pd.Series(arr, dtype=object), decoded=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(_WORDS + ["3.25", "-1", "train", "eval"]), min_size=1,
                max_size=6), st.integers(0, 2**32 - 1))
def test_long_label_columns_take_the_distinct_values_path(vocab: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    cells: list[Any] = [vocab[i] for i in rng.integers(0, len(vocab), 6000)]
    for i in rng.integers(0, 6000, 20):
        cells[int(i)] = None
    _check(cells, pd.Series(cells, dtype="str"), decoded=False)


def test_a_numeric_column_with_a_few_odd_cells_stays_numeric() -> None:
    cells = [f"{i * 0.5}" for i in range(1000)] + ["NaN", "garbage", "1_000", "-Infinity"]
    v, logged, bad, text = _coerce(pd.Series(cells, dtype="str"))
    assert not text
    assert v[1] == 0.5 and v[1002] == 1000.0 and v[1003] == -math.inf
    assert logged[1000] and not logged[1001] and bad[1001]
    assert int(bad.sum()) == 1


def test_text_columns_are_ignored_with_a_warning(tmp_path: Any) -> None:
    path = tmp_path / "log.csv"
    rows = ["step,loss,phase,run,note"]
    rows += [f"{i},{3 - i * 1e-4:.5f},train,exp-042-llama-1b,ok {i}" for i in range(10_000)]
    path.write_text("\n".join(rows) + "\n")
    run = read_log(path)
    assert list(run.frame.columns) == ["loss"]
    assert any("ignored non-numeric column(s): phase, run, note" in w for w in run.warnings)
