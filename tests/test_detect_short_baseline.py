"""The first `window` points of a long log: a trailing baseline of 8-99 points. Its IQR scale
is far less steady than a standard deviation from as many points (`spikes.IQR_EFFICIENCY`),
and its lag-1 autocorrelation cannot be read from so short a past (the floor comes from the
log's first 300 points, `spikes._long_rho`). A run that never leaves its level, with the
noise of a small batch, used to open with a "spike" at the end of warmup (labelled seed
6000's gstall02 and gstall05; 17 of 300 such runs); real rises there are still found."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import stdtrit

from spikelens.detect import detect
from spikelens.detect.spikes import IQR_EFFICIENCY, _t_factor
from spikelens.model import Config, Run
from spikelens.readers._base import RawLog, build_run


def _flat_loss(seed: int, n: int = 600) -> tuple[np.ndarray, int, float]:
    """A loss that stays at its level: the mean of `batch` gamma per-sample losses (shape
    1-3), AR(1)-smoothed (rho 0.5) in half the draws, as `benchmarks/labelled.py` draws it."""
    rng = np.random.default_rng(seed)
    batch = int(rng.choice([8, 16, 32]))
    shape = float(rng.uniform(1.0, 3.0))
    rho = float(rng.choice([0.0, 0.5]))
    rel = np.log(rng.gamma(shape * batch, 1.0 / (shape * batch), n))
    if rho:
        acc, out = 0.0, np.empty(n)
        for i in range(n):
            acc = rho * acc + math.sqrt(1 - rho * rho) * rel[i]
            out[i] = acc
        rel = out
    return float(rng.uniform(2, 8)) * np.exp(rel), batch, rho


def _run(loss: np.ndarray, name: str) -> Run:
    n = len(loss)
    df = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss,
                       "lr": 1e-3 * np.minimum(1.0, np.arange(1, n + 1) / 100)})
    return build_run(RawLog(frame=df), Path(name), "csv")


def _incidents(run: Run) -> list[tuple[str, int]]:
    d = detect(run, Config())
    return [(e.kind, e.start_step) for e in d.events
            if e.metric == "loss" and e.kind in ("spike", "divergence")]


@pytest.mark.parametrize("seed", range(48))
def test_a_flat_noisy_run_opens_without_a_spike(seed: int) -> None:
    # seeds 0, 43 and 46 opened with a x1.5-1.8 "spike" at steps 20-28 before (a shift
    # test against 9-27 points whose IQR was a fraction of the noise, or whose AR(1)
    # wander went unmeasured); over 300 such seeds 17 did, 2 still do (docs/detection.md)
    loss, _, _ = _flat_loss(seed)
    assert _incidents(_run(loss, f"flat{seed}.csv")) == []


def test_the_labelled_stall_shape_stays_quiet() -> None:
    # gstall02 of labelled seed 6000, rebuilt: a loss at 7.3 with batch-16 noise whose
    # first nine points happen to sit close together (IQR a fifth of the noise's); the
    # next twenty are 12 % higher by chance, which the shift test read at z 7.1
    first = [7.184, 8.621, 6.917, 5.610, 6.717, 6.792, 7.782, 6.322, 5.951, 5.089, 6.647,
             8.762, 9.143, 8.119, 8.562, 8.669, 7.469, 8.338, 7.953, 6.922, 6.307, 6.879,
             6.937, 6.317, 8.861, 8.645, 10.298, 7.229, 7.097, 6.054]
    rng = np.random.default_rng(15003)
    rest = 7.31 * np.exp(np.log(rng.gamma(16 * 1.6, 1 / (16 * 1.6), 1200)))
    assert _incidents(_run(np.concatenate([first, rest]), "gstall02.csv")) == []


@pytest.mark.parametrize("at", [30, 45, 70])
def test_a_real_shift_in_the_first_window_is_still_found(at: int) -> None:
    # a bad shard lifts the loss x1.8 for 25 steps, `at` points into a run of batch-32
    # white noise (7 % a step): found, starting at the shard
    rng = np.random.default_rng(at)
    loss = 3.0 * np.exp(np.log(rng.gamma(64.0, 1 / 64.0, 600)))
    loss[at:at + 25] *= 1.8
    found = _incidents(_run(loss, "shard.csv"))
    assert found and found[0][0] == "spike"
    assert at + 1 <= found[0][1] <= at + 3  # steps are 1-based


def test_a_one_step_spike_in_the_first_window_is_still_found() -> None:
    rng = np.random.default_rng(7)
    loss = 3.0 * np.exp(np.log(rng.gamma(64.0, 1 / 64.0, 600)))
    loss[40] *= 4.0
    assert ("spike", 41) in _incidents(_run(loss, "bad_batch.csv"))


def test_the_t_factor_counts_the_degrees_of_freedom_of_an_iqr() -> None:
    # an IQR scale from n points is as uncertain as a standard deviation from 0.368 n
    f = _t_factor(np.array([9.0, 30.0, 100.0, 500.0]), 100)
    full = stdtrit(IQR_EFFICIENCY * 99, 0.999)
    assert f[0] == pytest.approx(stdtrit(max(IQR_EFFICIENCY * 8, 2.0), 0.999) / full)
    assert f[1] == pytest.approx(stdtrit(IQR_EFFICIENCY * 29, 0.999) / full)
    assert f[2] == f[3] == 1.0
    assert f[0] > 3 * f[1] / 1.25 > 1.0


def test_a_spike_in_the_steep_first_window_of_a_long_log_is_found() -> None:
    # detectron2's metrics.json logs every 20 iterations: its first 100 points are the steep
    # descent, where the trailing median lags far above the loss (a x1.9 spike at point 75
    # had trailing z 1.8); the isolated test, against its neighbours, now judges it there too
    i = np.arange(1, 151, dtype=np.float64)
    rng = np.random.default_rng(9)
    loss = 1.6 * (0.5 + 2 * np.exp(-i / 30) + rng.normal(0, 0.005, len(i)))
    loss[74] *= 1.9
    assert ("spike", 75) in _incidents(_run(loss, "metrics.csv"))
    loss[74] /= 1.9
    assert _incidents(_run(loss, "metrics.csv")) == []  # the same descent, clean, is quiet
