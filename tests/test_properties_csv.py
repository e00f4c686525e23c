"""Property tests for the CSV path and the shared core: random frames written as CSV read
back equal (NaN and infinities included, restarts resolved last-write-wins), and arbitrary
bytes through format sniffing never raise anything but a SpikelensError."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikelens import SpikelensError, read_log

finite_or_not = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e30, max_value=1e30),
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
)


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True).map(sorted),
    data=st.data(),
)
def test_csv_round_trip(steps: list[int], data: st.DataObject) -> None:
    loss = data.draw(st.lists(finite_or_not, min_size=len(steps), max_size=len(steps)))
    lr = data.draw(st.lists(st.floats(1e-8, 1.0), min_size=len(steps), max_size=len(steps)))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "log.csv"
        rows = [f"{s},{_fmt(a)},{_fmt(b)}" for s, a, b in zip(steps, loss, lr, strict=True)]
        p.write_text("step,loss,lr\n" + "\n".join(rows) + "\n")
        run = read_log(p)
    assert run.steps.tolist() == steps
    got = run.frame["loss"].to_numpy()
    want = np.array(loss)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok], want[ok])
    assert sorted(run.nan_steps.get("loss", np.array([], dtype=np.int64)).tolist()) == [
        s for s, v in zip(steps, loss, strict=True) if math.isnan(v)
    ]
    assert np.allclose(run.frame["lr"].to_numpy(), lr, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(first=st.integers(5, 50), back=st.integers(1, 4), extra=st.integers(0, 5))
def test_restart_last_write_wins(first: int, back: int, extra: int) -> None:
    resume = first - back
    seg1 = [(s, float(s)) for s in range(1, first + 1)]
    seg2 = [(s, float(s) + 0.5) for s in range(resume, first + extra + 1)]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "log.csv"
        p.write_text("step,loss\n" + "".join(f"{s},{v}\n" for s, v in seg1 + seg2))
        run = read_log(p)
    assert run.steps.tolist() == list(range(1, first + extra + 1))
    assert run.frame.loc[resume, "loss"] == resume + 0.5
    if resume > 1:
        assert run.frame.loc[resume - 1, "loss"] == resume - 1
    assert [(r.resumed_at, r.replayed) for r in run.restarts] == [(resume, (resume, first))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.binary(max_size=2048), name=st.sampled_from(
    ["x.csv", "x.tsv", "x.jsonl", "x.json", "trainer_state.json", "x.log", "x.txt",
     "events.out.tfevents.1.host.1.0", "noext"]))
def test_arbitrary_bytes_raise_only_spikelens_errors(blob: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(blob)
        try:
            read_log(p)
        except SpikelensError:
            pass
