"""A `time` column is a clock in some logs and the time an iteration took in others (nanoGPT's
`iter 10: loss 3.9, time 250.13ms`, mmengine's `time: 0.2345`). Read as a clock, a
per-iteration time was never looked at for slowdowns; its values say which it is (a clock
does not go back between restarts, a duration falls about half the time), and a duration
takes the `step_time` role (`readers._base._durations_are_step_times`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikelens import read_log
from spikelens.detect import detect
from spikelens.model import Config


def _nanogpt(path: Path, slow: slice | None = None) -> Path:
    """A nanoGPT `train.py` stdout: `iter N: loss X, time Tms, mfu M%` every 10 iterations
    and an evaluation line every 250; iterations in `slow` take twice as long."""
    rng = np.random.default_rng(3)
    lines = ["tokens per iteration will be: 16,384", "number of parameters: 10.65M"]
    for k, it in enumerate(range(0, 3001, 10)):
        loss = 1.0 + 3.2 * np.exp(-it / 400) + 0.03 * rng.standard_normal()
        if it % 250 == 0:
            lines.append(f"step {it}: train loss {loss:.4f}, val loss {loss + 0.05:.4f}")
        ms = 250.0 * np.exp(0.01 * rng.standard_normal())
        if slow is not None and slow.start <= k < slow.stop:
            ms *= 2.0
        lines.append(f"iter {it}: loss {loss:.4f}, time {ms:.2f}ms, mfu 11.{k % 10}0%")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_per_iteration_time_is_a_step_time_and_its_slowdown_is_reported(
        tmp_path: Path) -> None:
    run = read_log(_nanogpt(tmp_path / "train.log", slow=slice(150, 190)))
    assert run.roles["step_time"] == "time" and "wall_time" not in run.roles
    ops = [e for e in detect(run, Config()).events if e.kind == "slowdown"]
    assert [(e.metric, e.start_step) for e in ops] == [("step_time", 1500)]
    assert 1.9 < ops[0].size.ratio < 2.1


def test_a_steady_per_iteration_time_reports_nothing(tmp_path: Path) -> None:
    run = read_log(_nanogpt(tmp_path / "train.log"))
    assert run.roles["step_time"] == "time"
    assert not [e for e in detect(run, Config()).events if e.kind == "slowdown"]


def test_a_clock_stays_a_clock(tmp_path: Path) -> None:
    """Seconds since the start, logged every step at whole seconds (most steps add 0), with
    a restart that sets the clock back: still `wall_time`."""
    n = 600
    clock = np.floor(np.arange(n) * 0.4)
    clock[400:] = np.floor(np.arange(200) * 0.4)  # the job restarted, its clock with it
    steps = np.r_[np.arange(400), np.arange(350, 550)]
    rows = [f"{s},{2.0 + 1 / (s + 1):.5f},{c:.0f}" for s, c in zip(steps, clock, strict=True)]
    p = tmp_path / "metrics.csv"
    p.write_text("step,loss,time\n" + "\n".join(rows) + "\n")
    run = read_log(p)
    assert run.roles["wall_time"] == "time" and "step_time" not in run.roles


def test_the_users_role_stands(tmp_path: Path) -> None:
    run = read_log(_nanogpt(tmp_path / "train.log"), metrics={"wall_time": "time"})
    assert run.roles["wall_time"] == "time" and "step_time" not in run.roles
