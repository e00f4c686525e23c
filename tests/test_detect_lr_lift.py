"""The loss's answer to an upward LR jump, looked for over the `window` points after it
(`spikelens.detect.lr_lift`): a warm restart whose loss rises over 15-40 steps is a rise from
the jump even where no shift test opened at the jump reaches its bar; a jump the loss does
not answer, and a schedule that restarts every cycle, stay quiet."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens import read_log
from spikelens.detect import detect
from spikelens.detect.lr_lift import back_at, find_lift
from spikelens.model import Config
from spikelens.readers._base import RawLog, build_run

DATA = Path(__file__).parent / "data" / "generated"
JUMP = 500
#: bars like those the cross-validation places (benchmarks/accuracy.py --cv: 8.2 / 8.0)
PLACED = dict(z_threshold=8.2, shift_z_threshold=8.0)


def _log_loss(seed: int, rise: float, sigma: float = 0.05, n: int = 1200) -> np.ndarray:
    """Log loss: a decaying trend, white noise, and from JUMP a bump of `rise` that builds
    with a 10-step time constant and fades with a 40-step one (a warm restart's answer)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    d = np.clip(t - JUMP, 0, None)
    bump = rise * (1 - np.exp(-d / 10)) * np.exp(-d / 40)
    return np.log(1.0 + 2.0 * np.exp(-t / 100)) + np.log1p(bump) + sigma * rng.standard_normal(n)


@pytest.mark.parametrize("seed", range(5))
def test_a_delayed_answer_to_the_jump_is_measured_at_its_height(seed: int) -> None:
    x = _log_loss(seed, 0.4)
    lift = find_lift(x, JUMP, JUMP + 100, 100)
    assert lift is not None
    assert lift.z >= Config().lr_lift_z
    # the highest 20-point median sits on the bump (peak about 15 steps after the jump), not
    # at the jump, where the first 20 points are still mostly at the old level
    assert JUMP < lift.at <= JUMP + 30
    assert math.exp(lift.lift) > 1.10


@pytest.mark.parametrize("seed", range(20))
def test_no_answer_stays_under_the_bar(seed: int) -> None:
    lift = find_lift(_log_loss(seed, 0.0), JUMP, JUMP + 100, 100)
    assert lift is not None
    assert lift.z < Config().lr_lift_z


def test_too_little_to_compare_is_no_lift() -> None:
    # the bar was placed with a whole window before the jump: a shorter reference makes the
    # noise estimate noisier, and z >= 5.8 three times as common on quiet stretches
    x = _log_loss(0, 0.4)
    assert find_lift(x, 80, 180, 100) is None  # 80 points before the jump
    assert find_lift(x, 300, 310, 100) is None  # 10 points after it, under 20
    assert find_lift(x, JUMP, JUMP + 100, 100, floor=JUMP - 60) is None  # a jump 60 before
    assert find_lift(x, JUMP, JUMP + 100, 100, floor=JUMP - 100) is not None


@pytest.mark.parametrize(("name", "jump", "labelled"), [
    ("seed13000_glr00.csv", 765, (781, 797)),
    ("seed5000_glr02.csv", 560, (569, 624)),
])
def test_a_restart_the_shift_tests_miss_at_placed_bars_is_found_from_the_jump(
        name: str, jump: int, labelled: tuple[int, int]) -> None:
    run = read_log(DATA / name)
    det = detect(run, Config(**PLACED))
    [ev] = [e for e in det.events if e.kind in ("spike", "divergence")]
    assert ev.start_step == jump
    assert ev.start_step <= labelled[1] and ev.end_step >= labelled[0]
    assert any(n.startswith("1 lift(s) of the loss answering an upward LR jump")
               and f"step {jump} x1.1" in n for n in det.notes), det.notes
    # the lift rule is what finds it: with its bar out of reach the run is healthy
    off = detect(run, Config(**PLACED, lr_lift_z=100.0))
    assert off.verdict == "healthy", [(e.kind, e.start_step) for e in off.events]


@pytest.mark.parametrize("name", ["seed13000_glr00.csv", "seed5000_glr02.csv"])
def test_with_the_configured_bars_the_shift_test_finds_it_first(name: str) -> None:
    # the configured shift bar (5.5) finds these restarts at the jump: the lift rule, which
    # looks only where no rise was found, adds nothing there
    det = detect(read_log(DATA / name), Config())
    assert det.verdict == "spiky"
    assert not any("lift(s) of the loss" in n for n in det.notes)


def _run(seed: int, rise: float, restarts: tuple[int, ...], sigma: float = 0.05) -> object:
    n = 1600
    steps = np.arange(1, n + 1)
    x = _log_loss(seed, rise, sigma=sigma, n=n)
    lr = np.full(n, 3e-4)
    starts = (0, *restarts)
    for a, b in zip(starts, (*restarts, n), strict=True):
        d = np.arange(b - a, dtype=np.float64)
        lr[a:b] = 1e-5 + 3e-4 * 0.5 * (1 + np.cos(np.pi * d / max(1, b - a)))
    frame = pd.DataFrame({"step": steps, "loss": np.exp(x), "lr": lr})
    return build_run(RawLog(frame=frame), Path("restart.csv"), "csv")


@pytest.mark.parametrize("seed", range(4))
def test_a_restart_the_loss_does_not_answer_stays_healthy(seed: int) -> None:
    for config in (Config(), Config(**PLACED)):
        det = detect(_run(seed, 0.0, (JUMP,)), config)  # type: ignore[arg-type]
        assert det.verdict == "healthy", [(e.kind, e.start_step) for e in det.events]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_in_a_noisy_loss_the_z_bar_keeps_an_unanswered_jump_quiet(seed: int) -> None:
    # 25 % noise a step: the highest of the 81 20-point medians after the jump passes the
    # x1.10 ratio floor by chance (x1.11-x1.14 here), at z 1.2-1.8; only the z bar holds
    lift = find_lift(_log_loss(seed, 0.0, sigma=0.25), JUMP, JUMP + 100, 100)
    assert lift is not None and math.exp(lift.lift) > 1.10 and lift.z < 2.0
    det = detect(_run(seed, 0.0, (JUMP,), sigma=0.25), Config(**PLACED))  # type: ignore[arg-type]
    assert not any("lift(s) of the loss" in n for n in det.notes), det.notes
    assert det.verdict == "healthy", [(e.kind, e.start_step) for e in det.events]


def _lr_run(x: np.ndarray, lr: np.ndarray) -> object:
    frame = pd.DataFrame({"step": np.arange(1, len(x) + 1), "loss": np.exp(x), "lr": lr})
    return build_run(RawLog(frame=frame), Path("jumps.csv"), "csv")


def test_two_jumps_close_together_answered_once_are_one_incident() -> None:
    # a review's reproducer: jumps at 500 and 540, the loss answering the second; the first
    # one's window ends at the second jump, but its answer ran on into the rise the scans
    # found, and it was reported twice, with one peak
    n, j1, j2 = 1600, 500, 540
    rng = np.random.default_rng(5)
    t = np.arange(n, dtype=np.float64)
    d1, d2 = np.clip(t - j1, 0, None), np.clip(t - j2, 0, None)
    bump = 0.15 * (1 - np.exp(-d1 / 5)) * np.exp(-d1 / 200) \
        + 0.5 * (1 - np.exp(-d2 / 3)) * np.exp(-d2 / 60)
    x = np.log(1.0 + 2.0 * np.exp(-t / 100)) + np.log1p(bump) + 0.05 * rng.standard_normal(n)
    lr = np.where(t >= j2, 9e-4, np.where(t >= j1, 6e-4, 3e-4))
    det = detect(_lr_run(x, lr), Config())  # type: ignore[arg-type]
    spikes = [e for e in det.events if e.kind in ("spike", "divergence")]
    assert len(spikes) == 1, [(e.start_step, e.peak_step, e.end_step) for e in spikes]


def _held_answer(batch_at: int | None = None) -> object:
    """The LR doubles at JUMP, past anything the run had, and the loss answers with a level
    x1.08 higher that never comes back (seed 3); a x2 batch at `batch_at` if given."""
    n = 1600
    rng = np.random.default_rng(3)
    t = np.arange(n, dtype=np.float64)
    d = np.clip(t - JUMP, 0, None)
    x = np.log(1.0 + 2.0 * np.exp(-t / 100)) + np.log1p(0.08 * (1 - np.exp(-d / 10))) \
        + 0.05 * rng.standard_normal(n)
    if batch_at is not None:
        x[batch_at] += np.log(2.0)
    return _lr_run(x, np.where(t >= JUMP, 6e-4, 3e-4))


def test_an_answer_that_holds_lasts_to_the_end_of_the_log() -> None:
    # a review's reproducer: a point-wise recovery inside the rise tests' band ended the
    # held answer one step after its peak
    det = detect(_held_answer(), Config())  # type: ignore[arg-type]
    [ev] = [e for e in det.events if e.kind in ("spike", "divergence")]
    assert ev.start_step == JUMP + 1 and ev.end_step == 1600 and not ev.recovered


def test_a_schedule_that_restarts_every_cycle_is_left_to_the_oscillation() -> None:
    # the same log with two more restarts after its own: three jumps make a cyclic
    # schedule, whose answers are swings, and the rule stands aside
    frame = pd.read_csv(DATA / "seed13000_glr00.csv")
    lr = frame["lr"].to_numpy(copy=True)
    for at in (1100, 1300):
        lr[frame["step"].to_numpy() >= at] *= 2.0
    frame["lr"] = lr
    run = build_run(RawLog(frame=frame), Path("cyclic.csv"), "csv")
    det = detect(run, Config(**PLACED))
    assert not any("lift(s) of the loss" in n for n in det.notes), det.notes
    assert not [e for e in det.events if e.kind in ("spike", "divergence")]


def test_an_answer_that_holds_ends_where_a_later_incident_begins() -> None:
    # a second review's reproducer: the same held lift, and a x2 batch 800 steps on; the
    # batch is its own incident, and the lift ends where it begins, not yet back
    det = detect(_held_answer(batch_at=1300), Config())  # type: ignore[arg-type]
    spans = [(e.start_step, e.end_step, e.recovered) for e in det.events
             if e.kind in ("spike", "divergence")]
    assert spans[0][:2] == (JUMP + 1, 1300) and not spans[0][2]
    assert spans[1][0] == 1301


def test_back_at_is_where_the_level_came_back() -> None:
    x = np.where(np.arange(1000) < 300, 1.0, 0.0)
    at = back_at(x, 0, 0.5, 100)
    assert at is not None and abs(at - 300) <= 20  # the middle of the first window back
    assert back_at(np.ones(1000), 0, 0.5, 100) is None
