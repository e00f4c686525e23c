"""The detector on seeded synthetic curves with known answers: where each event starts,
peaks and ends, what kind it is, and the run's verdict; plus the invariances a scale-free,
step-agnostic detector must have (the loss times 1e-10, the steps shifted)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from spikelens.detect import Detection, detect
from spikelens.model import Config, Restart, Run

CFG = Config()


def make_run(loss: np.ndarray, steps: np.ndarray | None = None, *,
             grad_norm: np.ndarray | None = None, lr: np.ndarray | None = None,
             interval: int = 1, averaged: bool = False,
             restarts: tuple[Restart, ...] = (), segments: np.ndarray | None = None,
             loss_nan_steps: np.ndarray | None = None) -> Run:
    n = len(loss)
    st = np.arange(1, n + 1, dtype=np.int64) if steps is None else steps.astype(np.int64)
    cols: dict[str, np.ndarray] = {"loss": loss}
    roles = {"loss": "loss"}
    if grad_norm is not None:
        cols["grad_norm"] = grad_norm
        roles["grad_norm"] = "grad_norm"
    if lr is not None:
        cols["lr"] = lr
        roles["lr"] = "lr"
    frame = pd.DataFrame(cols, index=pd.Index(st, name="step"))
    nan_steps = {}
    if loss_nan_steps is not None:
        nan_steps["loss"] = loss_nan_steps
    elif np.isnan(loss).any():
        nan_steps["loss"] = st[np.isnan(loss)]
    if grad_norm is not None and np.isnan(grad_norm).any():
        nan_steps["grad_norm"] = st[np.isnan(grad_norm)]
    return Run(source="synthetic.csv", format="csv", frame=frame, roles=roles,
               nan_steps=nan_steps, interval=interval, averaged=averaged,
               restarts=restarts, segment_of_step=segments)


def noisy_curve(n: int = 1000, seed: int = 0, noise: float = 0.03) -> np.ndarray:
    """A descending loss (3.0 -> ~1.5) with multiplicative (log-normal) noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (1.5 + 1.5 * np.exp(-t / 150)) * np.exp(noise * rng.standard_normal(n))


def incidents(det: Detection) -> list[tuple[str, int, int, int]]:
    return [(e.kind, e.start_step, e.peak_step, e.end_step) for e in det.events
            if e.metric == "loss" and e.kind not in ("oscillation", "stall")]


def test_clean_noisy_curve_gives_nothing() -> None:
    det = detect(make_run(noisy_curve()), CFG)
    assert det.events == ()
    assert det.verdict == "healthy"


def test_one_step_spike_found_with_start_peak_end() -> None:
    loss = noisy_curve(seed=1)
    loss[599] *= 3.0  # step 600
    det = detect(make_run(loss), CFG)
    assert incidents(det) == [("spike", 600, 600, 601)]
    ev = det.events[0]
    assert ev.recovered is True
    assert ev.recovery_steps == 1
    assert ev.size.ratio == pytest.approx(3.0, rel=0.08)
    assert ev.size.z > 20
    assert ev.baseline == pytest.approx(loss[500:599].mean(), rel=0.05)
    assert det.verdict == "spiky"


def test_sustained_shift_starts_at_the_change_and_ends_when_back() -> None:
    # a bad shard: steps 700..729 at 1.4x, then back to normal
    loss = noisy_curve(seed=2)
    loss[699:729] *= 1.4
    det = detect(make_run(loss), CFG)
    [(kind, start, peak, end)] = incidents(det)
    assert kind == "spike"
    assert start == 700
    assert 700 <= peak <= 729
    assert 730 <= end <= 745
    assert det.events[0].recovered is True


def test_divergence_to_the_end_of_the_log() -> None:
    loss = noisy_curve(seed=3)
    loss[699:] *= 4.0
    det = detect(make_run(loss), CFG)
    [(kind, start, _peak, end)] = incidents(det)
    assert (kind, start, end) == ("divergence", 700, 1000)
    assert det.events[0].recovered is False
    assert det.events[0].recovery_steps is None
    assert det.verdict == "diverged"


def test_spike_still_coming_down_at_the_end_is_a_spike_not_a_divergence() -> None:
    loss = noisy_curve(seed=4)
    loss[989] *= 4.0  # step 990, then the log has 10 steps that are on their way back
    loss[990:995] *= np.array([2.0, 1.6, 1.4, 1.3, 1.2])
    det = detect(make_run(loss), CFG)
    [(kind, start, peak, _end)] = incidents(det)
    assert (kind, start, peak) == ("spike", 990, 990)


def test_nan_in_grad_norm_first() -> None:
    loss = noisy_curve(seed=5)
    gn = np.exp(0.1 * np.random.default_rng(5).standard_normal(1000))
    gn[499:501] = np.nan  # steps 500, 501
    loss[500:502] = np.nan  # steps 501, 502
    det = detect(make_run(loss, grad_norm=gn), CFG)
    [ev] = [e for e in det.events if e.kind == "nonfinite"]
    assert (ev.start_step, ev.peak_step, ev.end_step) == (501, 501, 503)
    assert ev.first_nonfinite == "grad_norm"
    assert ev.recovered is True
    assert math.isinf(ev.size.z)
    assert det.verdict == "nonfinite"


def test_nan_in_loss_first() -> None:
    loss = noisy_curve(seed=6)
    gn = np.exp(0.1 * np.random.default_rng(6).standard_normal(1000))
    loss[499] = np.inf  # step 500
    gn[500] = np.nan  # step 501
    det = detect(make_run(loss, grad_norm=gn), CFG)
    [ev] = [e for e in det.events if e.kind == "nonfinite"]
    assert (ev.start_step, ev.first_nonfinite) == (500, "loss")


def test_nonfinite_grad_norm_under_a_finite_loss_is_a_note_not_an_incident() -> None:
    loss = noisy_curve(seed=7)
    gn = np.exp(0.1 * np.random.default_rng(7).standard_normal(1000))
    gn[[299, 399, 499]] = np.inf
    det = detect(make_run(loss, grad_norm=gn), CFG)
    assert det.verdict == "healthy"
    assert "3 non-finite grad norm(s) under a finite loss (steps 300, 400, 500): overflow " \
           "steps the optimizer skipped, not incidents" in det.notes


def test_period_two_zigzag_is_one_oscillation_with_period_two() -> None:
    rng = np.random.default_rng(8)
    n = 2000
    loss = 1.6 * np.where(np.arange(n) % 2 == 0, 1.15, 0.87) * np.exp(0.03 * rng.standard_normal(n))
    det = detect(make_run(loss), CFG)
    # the level never moves from where it started: also an informational stall (issue 8)
    [osc, stall] = det.events
    assert (osc.kind, stall.kind) == ("oscillation", "stall")
    assert osc.period == 2.0
    assert osc.amplitude == pytest.approx(1.15 / 0.87 - 1, rel=0.15)
    assert det.verdict == "oscillating"


def test_sawtooth_is_one_oscillation_with_its_period() -> None:
    # an epoch-boundary sawtooth every 20 logged steps: the loss jumps 1.8x then decays
    rng = np.random.default_rng(9)
    n = 1200
    phase = np.arange(n) % 20
    loss = np.exp(-np.arange(n) / 2000) * (1 + 0.8 * np.exp(-phase / 4)) \
        * np.exp(0.01 * rng.standard_normal(n))
    det = detect(make_run(loss, steps=np.arange(10, 10 * n + 1, 10)), CFG)
    assert [e.kind for e in det.events] == ["oscillation"]
    assert det.events[0].period == 200.0  # 20 logged points, 10 steps apart
    assert det.verdict == "oscillating"


def test_cyclic_lr_makes_the_loss_oscillate_with_the_lr_period() -> None:
    rng = np.random.default_rng(10)
    n = 1500
    tri = np.abs((np.arange(n) % 200) / 100 - 1)  # triangular, period 200
    lr = 1e-3 * (1 - tri)
    loss = (0.5 + np.exp(-np.arange(n) / 300)) * (1 + 0.15 * (1 - tri)) \
        * np.exp(0.15 * rng.standard_normal(n))
    det = detect(make_run(loss, lr=lr), CFG)
    [osc] = [e for e in det.events if e.kind == "oscillation"]
    assert osc.period == pytest.approx(200, abs=2)
    assert incidents(det) == []


def test_quantised_loss_one_quantum_up_is_not_a_doubling() -> None:
    # an HF-style log that prints 4 decimals, around 0.00015: 0.0001 <-> 0.0002 all along
    rng = np.random.default_rng(11)
    loss = np.round(0.00015 * np.exp(0.3 * rng.standard_normal(800)), 4)
    det = detect(make_run(loss), CFG)
    assert incidents(det) == []
    assert "the loss is rounded to 0.0001: the scale is never taken below the rounding error " \
           "(2.9e-05) and a rise must span two rounding steps" in det.notes


def test_quantised_loss_real_rise_is_found() -> None:
    # a dozen rounding steps up from the floor: 0.0012 -> 0.0060 is a real 5x rise
    rng = np.random.default_rng(12)
    loss = np.round(0.0012 * np.exp(0.1 * rng.standard_normal(800)), 4)
    loss[600] = 0.0060
    det = detect(make_run(loss), CFG)
    assert incidents(det) == [("spike", 601, 601, 602)]


def test_three_line_excerpt_three_to_seven_is_a_spike() -> None:
    det = detect(make_run(np.array([3.06, 3.11, 7.71]), np.array([11446, 11447, 11448])), CFG)
    assert incidents(det) == [("spike", 11448, 11448, 11448)]
    assert det.events[0].recovered is False
    assert det.verdict == "spiky"


def test_three_line_log_from_step_one_is_still_a_spike() -> None:
    det = detect(make_run(np.array([3.1, 3.1, 7.7])), CFG)
    assert incidents(det) == [("spike", 3, 3, 3)]


def test_bump_right_after_initialisation_is_not_a_spike() -> None:
    # like the gpt2 fp16 calibration: the second logged loss is 1.87x the first
    loss = np.array([12.03, 22.48, 12.56, 9.72, 8.39, 8.15, 8.16, 8.03, 7.97, 7.90, 7.81])
    det = detect(make_run(loss, np.arange(20, 130, 10), interval=10, averaged=True), CFG)
    assert det.events == ()


def test_averaging_over_the_interval_lowers_the_ratio_bar() -> None:
    # a 1.06x one-point rise on a very smooth curve: diluted by a 10-step average it is a
    # 1.6x one-step spike, under the 1.1 bar for a per-step log
    rng = np.random.default_rng(13)
    loss = 2.0 * np.exp(0.001 * rng.standard_normal(600))
    loss[400] *= 1.06
    steps = np.arange(10, 6010, 10)
    per_step = detect(make_run(loss, steps, interval=10, averaged=False), CFG)
    averaged = detect(make_run(loss, steps, interval=10, averaged=True), CFG)
    assert incidents(per_step) == []
    assert incidents(averaged) == [("spike", 4010, 4010, 4020)]
    assert any("an average over 10 steps" in n for n in averaged.notes)


def test_spike_after_a_restart_carries_its_segment_and_replay_is_noted() -> None:
    loss = noisy_curve(seed=14)
    loss[799] *= 3.0  # step 800, in the second segment
    seg = np.where(np.arange(1000) >= 700, 1, 0)
    restart = Restart(row=800, resumed_at=601, previous_last=700, segment=1)
    det = detect(make_run(loss, restarts=(restart,), segments=seg), CFG)
    [ev] = det.events
    assert (ev.start_step, ev.segment) == (800, 1)
    assert det.notes == (
        "steps 601-700 were logged again by segment 1 (a resume from an earlier checkpoint):"
        " the later values are the run's history, and the rolled-back values of segment 0"
        " are analysed on their own (incidents there are reported with their segment)",
    )


def test_grad_norm_surge_that_leaves_the_loss_alone_is_informational() -> None:
    loss = noisy_curve(seed=15)
    gn = np.exp(0.1 * np.random.default_rng(15).standard_normal(1000))
    gn[499] *= 30  # step 500
    det = detect(make_run(loss, grad_norm=gn), CFG)
    [ev] = det.events
    assert (ev.kind, ev.metric, ev.start_step, ev.end_step) == ("spike", "grad_norm", 500, 501)
    assert det.verdict == "healthy"


def test_grad_norm_surge_before_a_loss_spike_belongs_to_the_spike() -> None:
    loss = noisy_curve(seed=16)
    gn = np.exp(0.1 * np.random.default_rng(16).standard_normal(1000))
    gn[495:500] *= np.array([4, 16, 60, 200, 900])  # steps 496-500
    loss[499] *= 2.5  # step 500
    det = detect(make_run(loss, grad_norm=gn), CFG)
    assert [(e.kind, e.metric) for e in det.events] == [("spike", "loss")]


def test_constant_zero_grad_norm_is_skipped_with_a_note() -> None:
    det = detect(make_run(noisy_curve(seed=17), grad_norm=np.zeros(1000)), CFG)
    assert "grad norm not analysed: grad_norm is constant (0): not computed by this run" \
        in det.notes


def test_no_train_loss_is_insufficient_data() -> None:
    frame = pd.DataFrame({"eval_loss": [2.0, 1.9]}, index=pd.Index([100, 200], name="step"))
    run = Run(source="x.csv", format="csv", frame=frame, roles={"eval_loss": "eval_loss"})
    det = detect(run, CFG)
    assert (det.events, det.verdict, det.notes) == \
        ((), "insufficient_data",
         ("no train loss: nothing to detect on (the log has eval_loss)",))


def test_negative_loss_is_judged_in_its_own_units() -> None:
    rng = np.random.default_rng(18)
    loss = -1.0 + 0.05 * rng.standard_normal(800)
    loss[500] = 0.5  # step 501
    det = detect(make_run(loss), CFG)
    assert incidents(det) == [("spike", 501, 501, 502)]
    assert "the loss goes negative: rises are judged in its own units, without ratios" \
        in det.notes


def test_adam_epsilon_spike_from_1e_minus_13() -> None:
    rng = np.random.default_rng(19)
    t = np.arange(1500)
    loss = np.exp(np.log(3.0) - t / 30) * np.exp(0.2 * rng.standard_normal(1500))
    loss = np.maximum(loss, 1e-13 * np.exp(0.2 * rng.standard_normal(1500)))
    loss[1200:1300] = 1e-4 * np.exp(-np.arange(100) / 10) + 1e-13
    det = detect(make_run(loss), CFG)
    [(kind, start, peak, _end)] = incidents(det)
    assert (kind, start, peak) == ("spike", 1201, 1201)
    assert det.events[0].size.ratio > 1e7


def scaled_events(det: Detection) -> list[tuple[str, str, int, int, int, bool]]:
    return [(e.kind, e.metric, e.start_step, e.peak_step, e.end_step, e.recovered)
            for e in det.events]


@settings(max_examples=12, deadline=None)
@given(power=hst.integers(min_value=-12, max_value=6), seed=hst.integers(0, 50))
def test_scale_invariance(power: int, seed: int) -> None:
    loss = noisy_curve(seed=seed)
    loss[599] *= 2.5
    loss[799:830] *= 1.5
    base = detect(make_run(loss), CFG)
    scaled = detect(make_run(loss * 10.0 ** power), CFG)
    assert scaled_events(scaled) == scaled_events(base)
    assert scaled.verdict == base.verdict


@settings(max_examples=10, deadline=None)
@given(shift=hst.integers(min_value=0, max_value=10**7), seed=hst.integers(0, 50))
def test_step_shift_invariance(shift: int, seed: int) -> None:
    loss = noisy_curve(seed=seed)
    loss[599] *= 2.5
    steps = np.arange(1, 1001, dtype=np.int64)
    base = detect(make_run(loss, steps + 10_000), CFG)
    moved = detect(make_run(loss, steps + 10_000 + shift), CFG)
    assert [(k, m, s + shift, p + shift, e + shift, r)
            for k, m, s, p, e, r in scaled_events(base)] == scaled_events(moved)
