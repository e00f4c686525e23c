"""The gaps issue 8 left open, on seeded signals with a known answer: a loss stuck at 7.6 is
never an oscillation (with or without a short initial drop, at every logging interval), and
its stall is reported when the log lets a run that never learned be told from one that
converged; an epoch sawtooth is labelled oscillating by the generator exactly when its
periodic part carries 30 % of the variance around the trend, and the detector agrees; real CPU
runs that start to learn after 100 calm steps raise no outlier at their first noisy points
(the isolated-outlier noise is measured around the point too); back-to-back rises are one
incident."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens import read_log
from spikelens.detect import detect
from spikelens.model import INCIDENT_KINDS, Config, Run

CFG = Config()
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def make_run(loss: np.ndarray, steps: np.ndarray) -> Run:
    frame = pd.DataFrame({"loss": loss}, index=pd.Index(steps.astype(np.int64), name="step"))
    return Run(source="synthetic.csv", format="csv", frame=frame, roles={"loss": "loss"},
               interval=int(steps[1] - steps[0]))


def stuck_at_7_6(seed: int, every: int, drop: bool, n: int = 11_000
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The Lightning run of issue 8: 11k steps at 7.6, logged as a running mean (smoothed
    noise), with a 0.9 % wander of period 700 steps; `drop`: it first falls from 10.8 (an
    untrained LM's ln(vocab)) in a few hundred steps."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level = 7.6 + (3.2 * np.exp(-t / 60) if drop else 0.0)
    noise = np.convolve(rng.standard_normal(n + 49), np.ones(50) / 50, mode="valid")
    loss = level * np.exp(0.05 * noise + 0.0045 * np.sin(2 * np.pi * t / 700))
    steps = np.arange(1, n + 1)
    keep = steps % every == 0
    return loss[keep], steps[keep]


@pytest.mark.parametrize("every", [1, 10, 50])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_loss_stuck_at_7_6_is_never_oscillating(every: int, drop: bool, seed: int) -> None:
    loss, steps = stuck_at_7_6(seed, every, drop)
    det = detect(make_run(loss, steps), CFG)
    assert det.verdict == "healthy"
    assert [e.kind for e in det.events if e.kind != "stall"] == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stuck_at_7_6_from_its_first_losses_is_a_stall(seed: int) -> None:
    loss, steps = stuck_at_7_6(seed, 1, drop=False)
    det = detect(make_run(loss, steps), CFG)
    [ev] = det.events
    assert ev.kind == "stall" and ev.detail is not None and "never learned" in ev.detail
    assert ev.start_step <= 11_000 // 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_short_drop_then_stuck_is_a_stall_when_the_first_points_cover_the_drop(
        seed: int) -> None:
    # logged every 10 steps, the log's first points (its first 250 steps) already hold the
    # drop from 10.8: their median is the plateau's level, and the run never learned
    loss, steps = stuck_at_7_6(seed, 10, drop=True)
    det = detect(make_run(loss, steps), CFG)
    [ev] = det.events
    assert ev.kind == "stall" and ev.detail is not None and "never learned" in ev.detail


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_that_drops_and_keeps_learning_has_no_stall(seed: int) -> None:
    # the clean run of the same shape: the same drop from 10.8, then an LM's slow power-law
    # descent (7.6 -> 6.9 over 11k steps), the same smoothed noise
    loss, steps = stuck_at_7_6(seed, 1, drop=True)
    t = steps.astype(np.float64)
    loss = loss * (1 + t / 1000) ** -0.04
    det = detect(make_run(loss, steps), CFG)
    assert det.events == ()
    assert det.verdict == "healthy"


# --- epoch sawtooths: the generator's label and the detector share one definition ----------
def _labelled() -> object:
    sys.path.insert(0, str(BENCHMARKS))
    import labelled

    return labelled


def sawtooth(share: float, seed: int, per: int = 30, n: int = 2400, sigma: float = 0.08
             ) -> tuple[np.ndarray, float]:
    """A descending loss with Gaussian step noise (sigma, log units) and an epoch sawtooth
    (a jump at each boundary that decays within the epoch) sized so that its periodic part
    carries `share` of the variance around the trend. Returns the loss and the share."""
    lab = _labelled()
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    noise = sigma * rng.standard_normal(n)
    for jump in np.linspace(0.01, 2.0, 800):
        saw = np.log1p(jump * np.exp(-(t % per) / (per / 4)))
        got = lab.periodic_share(saw, noise)  # type: ignore[attr-defined]
        if got >= share:
            break
    trend = 2.0 + 2.0 * (1 + t / 100) ** -1.0
    return trend * np.exp(saw + noise), float(got)


def test_the_periodic_share_is_the_autocorrelation_at_the_period() -> None:
    lab = _labelled()
    t = np.arange(40_000)
    saw = np.log1p(0.3 * np.exp(-(t % 30) / 7.5))
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    share = lab.periodic_share(saw, noise)  # type: ignore[attr-defined]
    y = saw + noise - np.mean(saw + noise)
    acf30 = float(np.dot(y[:-30], y[30:]) / np.dot(y, y))
    assert share == pytest.approx(acf30, abs=0.02)
    assert lab.periodic_share(np.zeros(10), np.ones(10)) == 0.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sawtooth_under_the_noise_floor_is_not_an_oscillation(seed: int) -> None:
    # 10-20 % of the variance: the generator labels it a quiet run, and the detector agrees
    for share in (0.1, 0.2):
        loss, _ = sawtooth(share, seed)
        det = detect(make_run(loss, np.arange(1, len(loss) + 1)), CFG)
        assert det.events == ()
        assert det.verdict == "healthy"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_sawtooth_above_the_noise_floor_is_an_oscillation_with_its_period(seed: int) -> None:
    # 40 % of the variance (the label's bar is 30 %): one oscillation, period 30
    loss, share = sawtooth(0.4, seed)
    assert share >= 0.4
    det = detect(make_run(loss, np.arange(1, len(loss) + 1)), CFG)
    osc = [e for e in det.events if e.kind == "oscillation"]
    assert [(e.period, e.source) for e in osc] == [(30.0, "periodic")]
    assert [e for e in det.events if e.kind in INCIDENT_KINDS] == []
    assert det.verdict == "oscillating"


def test_generated_sawtooth_labels_follow_the_share() -> None:
    lab = _labelled()
    seen = set()
    for s in range(400):  # draw osc runs until both kinds of sawtooth have come up
        rng = np.random.default_rng(s)
        c = lab.osc(rng)  # type: ignore[attr-defined]
        if c.osc_cause != "data_order":
            continue
        assert c.oscillating == (c.osc_share >= lab.OSC_MIN_SHARE)  # type: ignore[attr-defined]
        seen.add(c.oscillating)
        if seen == {True, False}:
            break
    assert seen == {True, False}


# --- the isolated-outlier noise around the point, not only before it ----------------------
REALRUNS = Path(__file__).resolve().parent / "data" / "realruns"


@pytest.mark.parametrize("name", ["v1amp00_steps1-400.log", "v1nan01_steps1-400.log"])
def test_a_real_run_that_starts_to_learn_has_no_spike_at_its_first_noisy_points(
        name: str) -> None:
    # 100 steps at ln(10) with tiny noise, then learning with 10-30 % noise a step: against
    # the calm past alone its first noisy points were z 13 "outliers" (steps 101-135)
    det = detect(read_log(REALRUNS / name), CFG)
    assert [e for e in det.events if e.kind in INCIDENT_KINDS] == []


@pytest.mark.parametrize("name", ["v1amp00_steps1-400.log", "v1nan01_steps1-400.log"])
def test_a_bad_batch_in_the_same_real_run_is_still_found(name: str) -> None:
    run = read_log(REALRUNS / name)
    loss = run.series("loss")
    assert loss is not None
    v = loss.to_numpy(dtype=np.float64, copy=True)
    i = int(np.searchsorted(loss.index.to_numpy(), 300))
    # a garbage batch, 10x its neighbourhood: in this run's 20-25 % noise a step, 4x is only
    # z 6-8 (under the bar; docs/detection.md, blind spots: realruns-v2's v2bb00)
    v[i] = 10.0 * float(np.median(np.r_[v[i - 10:i], v[i + 1:i + 11]]))
    det = detect(make_run(v, loss.index.to_numpy()), CFG)
    assert [(e.kind, e.peak_step) for e in det.events if e.kind in INCIDENT_KINDS] == \
        [("spike", 300)]


# --- one incident, not two ----------------------------------------------------------------
def test_rises_back_to_back_are_one_incident() -> None:
    from spikelens.detect import _join_back_to_back
    from spikelens.detect.spikes import Rise

    x = np.zeros(100)
    x[40], x[55] = 1.0, 2.0
    a = Rise(start=38, peak=40, end=50, recovered=True, level=0.0, scale=0.1, band_hi=0.3)
    b = Rise(start=50, peak=55, end=70, recovered=True, level=0.2, scale=0.2, band_hi=0.8)
    c = Rise(start=80, peak=82, end=90, recovered=True, level=0.0, scale=0.1, band_hi=0.3)
    [ab, cc] = _join_back_to_back([a, b, c], x)
    assert (ab.start, ab.peak, ab.end, ab.level) == (38, 55, 70, 0.0)
    assert cc == c
