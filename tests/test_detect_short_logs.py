"""Logs no longer than one window (100 points: an HF fine-tune logged every 10 steps, a W&B
panel): the isolated one-step outlier test measures each point past the first `min_window`
against the whole log's noise around its neighbours' median, so a bad batch on the steep
descent such a log is mostly made of is found; clean short logs stay quiet.
`benchmarks/short_logs.py` measures both on 1,500 generated logs (docs/detection.md)."""

from __future__ import annotations

import numpy as np
import pytest
from test_detect_synthetic import make_run

from spikelens.detect import Detection, detect
from spikelens.model import Config

CFG = Config()


def _short(n: int, seed: int, spike_at: int | None = None, ratio: float = 2.5,
           noise: float = 0.01) -> Detection:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float)
    # most of the log is the descent: 5 -> 2 with a time constant of a fifth of the log
    loss = 2.0 + 3.0 * np.exp(-t / (n / 5)) * (1 + rng.uniform(-0.3, 0.3))
    loss *= np.exp(noise * rng.standard_normal(n))
    if spike_at is not None:
        loss[spike_at] *= ratio
    return detect(make_run(loss, ((t + 1) * 10).astype(np.int64), interval=10), CFG)


@pytest.mark.parametrize(("n", "at"), [(100, 60), (64, 40), (30, 20), (100, 95)])
def test_a_bad_batch_on_the_descent_of_a_short_log_is_found(n: int, at: int) -> None:
    res = _short(n, seed=n + at, spike_at=at)
    spikes = [e for e in res.events if e.kind == "spike"]
    assert [e.peak_step for e in spikes] == [(at + 1) * 10], res.events
    assert res.verdict == "spiky"


def test_clean_short_logs_stay_quiet() -> None:
    for seed in range(40):
        n = 22 + (seed * 7) % 79
        noise = (0.005, 0.01, 0.02, 0.04)[seed % 4]
        res = _short(n, seed=seed, noise=noise)
        assert res.verdict == "healthy", (seed, n, noise, res.events)


def test_one_rounding_step_near_zero_is_not_a_spike() -> None:
    # a loss printed to 4 decimals that has dropped to 0.0002-0.0003 (a fine-tune that
    # memorised its data) while its trailing median is still 10x higher: 0.0002 -> 0.0003 is
    # one step of the printer, half the two rounding steps a rise must span at that level
    # (a public whisper fine-tune's trainer_state.json was reported spiky on it)
    n = 200
    t = np.arange(n, dtype=float)
    loss = np.where(t < 100, 0.006 - 0.00004 * t, 0.0003 - 0.0001 * (t >= 110))
    loss[130] = 0.0003
    loss = np.round(loss, 4)
    res = detect(make_run(loss, ((t + 1) * 25).astype(np.int64), interval=25), CFG)
    assert [e for e in res.events if e.kind == "spike"] == [], res.events


def test_an_outlier_below_its_trailing_baseline_is_sized_against_its_neighbours() -> None:
    # one bad epoch on a steep descent (a Keras run logged per epoch): 1.12x its neighbours
    # but still under the median of the points before it; its size must not read "x0.8,
    # z -1.3" but the rise the test found, against the neighbours' median
    n = 100
    t = np.arange(n, dtype=float)
    loss = (2 + 3 * np.exp(-t / 15)) * np.exp(0.003 * np.random.default_rng(3).standard_normal(n))
    loss[40] *= 1.12
    det = detect(make_run(loss, (t + 1).astype(np.int64)), CFG)
    [ev] = [e for e in det.events if e.kind == "spike"]
    assert ev.peak_step == 41
    assert ev.size.ratio == pytest.approx(1.12, abs=0.02) and ev.size.z > 9
    assert ev.baseline is not None and ev.baseline < loss[40]
