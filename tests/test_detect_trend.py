"""The trailing baseline on a loss that still descends steeply within one window: the
descent is trend, not noise, so a doubling in the middle of it is found, and a clean steep
descent (or a sparse log of one) raises nothing. Before the scale was measured around the
window's local line, the doubling at step 200 of 3 + 8 e^(-t/150) was missed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spikelens.detect import detect
from spikelens.detect.baseline import IQR_TO_SIGMA, detrended_quantiles
from spikelens.detect.spikes import trailing_stats, window_stats
from spikelens.model import Config, Run

CFG = Config()


def steep(seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1..n and 3 + 8 e^(-t/150) with 1 % multiplicative noise."""
    t = np.arange(1, n + 1)
    rng = np.random.default_rng(seed)
    return t, (3 + 8 * np.exp(-t / 150)) * (1 + 0.01 * rng.standard_normal(n))


def make_run(steps: np.ndarray, loss: np.ndarray) -> Run:
    frame = pd.DataFrame({"loss": loss}, index=pd.Index(steps.astype(np.int64), name="step"))
    return Run(source="steep.csv", format="csv", frame=frame, roles={"loss": "loss"})


def loss_incidents(run: Run) -> list[tuple[str, int, int, int]]:
    return [(e.kind, e.start_step, e.peak_step, e.end_step) for e in detect(run, CFG).events
            if e.metric == "loss" and e.kind != "oscillation"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_doubling_in_a_steep_descent_is_one_spike_at_its_step(seed: int) -> None:
    t, loss = steep(seed)
    loss[t == 200] *= 2
    assert loss_incidents(make_run(t, loss)) == [("spike", 200, 200, 201)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_clean_steep_descent_has_no_event(seed: int) -> None:
    t, loss = steep(seed)
    assert loss_incidents(make_run(t, loss)) == []


@pytest.mark.parametrize("every", [5, 10])
def test_sparse_log_of_a_clean_descent_has_no_event(every: int) -> None:
    # one point every 5 or 10 steps: a 100-point window spans 500-1000 steps of descent
    t, loss = steep(7, n=20_000)
    keep = t % every == 0
    assert loss_incidents(make_run(t[keep], loss[keep])) == []


def test_scale_of_a_descending_line_is_its_noise_not_its_descent() -> None:
    # a straight descent of 0.1 per point plus noise of sigma 0.01: the raw IQR/1.349 of a
    # 100-point window would be 3.7 (half the descent). Around the local line it is of the
    # order of the noise; when the descent dominates, each half-median is one point, so the
    # slope carries two points' noise and the scale lands at 1-3 sigma
    rng = np.random.default_rng(0)
    x = -0.1 * np.arange(400) + 0.01 * rng.standard_normal(400)
    st = trailing_stats(x, 100, 0.0, is_log=False)
    assert 0.007 < float(np.min(st.scale[100:]))
    assert float(np.max(st.up_scale[100:])) < 0.03
    # the level stays the window median: half a window (5.0) above the newest points
    assert st.level[300] == np.sort(x[200:300])[50]
    assert st.level[300] - x[299] == pytest.approx(5.0, abs=0.1)


def test_a_rising_window_keeps_its_raw_spread() -> None:
    # only a falling line is removed: a climb is what the detector looks for
    w = np.linspace(0.0, 1.0, 100)[None, :]
    _, q = detrended_quantiles(w, (0.25, 0.75))
    assert (q[0, 1] - q[0, 0]) == pytest.approx(0.5, abs=0.011)
    _, q = detrended_quantiles(w[:, ::-1].copy(), (0.25, 0.75))
    assert (q[0, 1] - q[0, 0]) / IQR_TO_SIGMA < 1e-12


def test_window_stats_agree_with_the_trailing_statistics() -> None:
    # the non-finite detector judges a window with window_stats: it must be the same yardstick
    t, loss = steep(0)
    x = np.log(loss)
    st = trailing_stats(x, 100, 0.0, is_log=True)
    for i in (50, 300, 1000):
        # point i uses the window refreshed at the last multiple of the stride (5)
        end = i if i < 100 else 100 + (i - 100) // 5 * 5
        lv, sc, up = window_stats(x[max(0, end - 100):end], 0.0, is_log=True)
        assert (lv, sc, up) == (st.level[i], st.scale[i], st.up_scale[i])
