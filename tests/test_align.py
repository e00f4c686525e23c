"""Cross-run alignment: the same point of the data stream, by step or by consumed tokens,
within one batch; chance coincidences of two busy runs are not reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.align import find_recurrences, recurrence_for, run_key
from spikelens.model import Event, Run, Size
from spikelens.readers._base import RawLog, build_run


def run_of(name: str, n: int = 2000, tokens_per_step: int | None = None,
           run_name: str | None = None) -> Run:
    step = np.arange(1, n + 1)
    cols: dict[str, np.ndarray] = {"step": step, "loss": np.full(n, 2.0)}
    if tokens_per_step is not None:
        cols["tokens"] = step * tokens_per_step
    raw = RawLog(frame=pd.DataFrame(cols), name=run_name)
    return build_run(raw, Path(name), "csv")


def spike(peak: int, kind: str = "spike", metric: str = "loss") -> Event:
    return Event(kind=kind, metric=metric, start_step=peak, peak_step=peak, end_step=peak + 1,
                 recovered=True, size=Size(10.0, 2.0))


def test_same_step_in_three_runs() -> None:
    runs = [run_of("a.log"), run_of("b.log"), run_of("c.log")]
    events = [[spike(500), spike(918)], [spike(919)], [spike(918), spike(1500)]]
    recs = find_recurrences(runs, events)
    assert len(recs) == 1
    rec = recs[0]
    assert rec.axis == "step"
    assert rec.position == 918.0
    assert rec.members == (("a.log", 918), ("b.log", 919), ("c.log", 918))


def test_two_steps_apart_is_not_the_same_batch() -> None:
    runs = [run_of("a.log"), run_of("b.log")]
    assert find_recurrences(runs, [[spike(918)], [spike(920)]]) == ()


def test_aligned_on_tokens_when_every_run_logs_them() -> None:
    # b has twice the batch: its step 400 consumed the same tokens as a's step 800
    runs = [run_of("a.log", tokens_per_step=1000), run_of("b.log", tokens_per_step=2000)]
    recs = find_recurrences(runs, [[spike(800)], [spike(400), spike(800)]])
    assert len(recs) == 1
    assert recs[0].axis == "tokens"
    assert recs[0].position == 800_000
    assert recs[0].members == (("a.log", 800), ("b.log", 400))


def test_steps_used_when_one_run_lacks_tokens() -> None:
    runs = [run_of("a.log", tokens_per_step=1000), run_of("b.log")]
    recs = find_recurrences(runs, [[spike(800)], [spike(800)]])
    assert [r.axis for r in recs] == ["step"]


def test_chance_coincidences_of_busy_runs_are_dropped() -> None:
    rng = np.random.default_rng(0)
    busy_a = sorted(int(x) for x in rng.choice(np.arange(10, 1990), 300, replace=False))
    busy_b = sorted(int(x) for x in rng.choice(np.arange(10, 1990), 300, replace=False))
    runs = [run_of("a.log"), run_of("b.log"), run_of("c.log")]
    a = [spike(s) for s in busy_a if abs(s - 1000) > 3] + [spike(1000)]
    b = [spike(s) for s in busy_b if abs(s - 1000) > 3] + [spike(1000)]
    recs = find_recurrences(runs, [a, b, [spike(1000)]])
    # hundreds of pairs of a and b fall within a step of each other by chance: only the
    # three-run recurrence survives
    assert [r.position for r in recs] == [1000.0]
    assert len(recs[0].members) == 3


def test_two_quiet_runs_are_a_recurrence() -> None:
    runs = [run_of("a.log"), run_of("b.log")]
    recs = find_recurrences(runs, [[spike(300), spike(1200)], [spike(1201), spike(1700)]])
    assert [(r.position, r.members) for r in recs] == [
        (1200.0, (("a.log", 1200), ("b.log", 1201)))]


def test_conditions_and_grad_events_do_not_align() -> None:
    runs = [run_of("a.log"), run_of("b.log")]
    events = [[spike(700, kind="oscillation")], [spike(700, metric="grad_norm")]]
    assert find_recurrences(runs, events) == ()


def test_single_run_and_bad_arguments() -> None:
    assert find_recurrences([run_of("a.log")], [[spike(5)]]) == ()
    with pytest.raises(ValueError, match="2 runs but 1 event lists"):
        find_recurrences([run_of("a.log"), run_of("b.log")], [[spike(5)]])


def test_recurrence_for_and_named_runs() -> None:
    a = run_of("panel.csv", run_name="run-1")
    b = run_of("panel.csv", run_name="run-2")
    assert run_key(a) == "panel.csv#run-1"
    recs = find_recurrences([a, b], [[spike(640)], [spike(640)]])
    assert recs[0].members == (("panel.csv#run-1", 640), ("panel.csv#run-2", 640))
    assert recurrence_for(recs, b, spike(640)) is recs[0]
    assert recurrence_for(recs, b, spike(641)) is None
