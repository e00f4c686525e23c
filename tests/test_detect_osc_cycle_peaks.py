"""A boundary jump of an epoch sawtooth is one of its swings when it stands no higher above
the trend than the other cycles' highest points. The folded swing is an average cycle's
peak-to-trough, and a rise is measured from the trailing median to its highest, noisy
point: a 65-step sawtooth of x1.5 jumps in 5 % noise was reported as spikes at some of its
boundaries (4 of 4 seeds `spiky`). A bad batch standing clear above the boundaries stays an
incident, and a run with no oscillation is untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.detect import detect
from spikelens.detect.oscillation import cycle_peaks_fence
from spikelens.model import Config
from spikelens.readers._base import RawLog, build_run


def _log_loss(seed: int, jump: float, per: int, sigma: float, n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    saw = np.log1p(jump * np.exp(-(t % per) / (per / 4)))  # up at each boundary, then down
    return np.log(0.5 + 2.0 * np.exp(-t / 150)) + saw + sigma * rng.standard_normal(n)


def _run(x: np.ndarray):  # type: ignore[no-untyped-def]
    frame = pd.DataFrame({"step": np.arange(1, len(x) + 1), "loss": np.exp(x)})
    return build_run(RawLog(frame=frame), Path("saw.csv"), "csv")


@pytest.mark.parametrize("seed", range(4))
def test_boundary_jumps_of_a_sawtooth_are_its_swings(seed: int) -> None:
    det = detect(_run(_log_loss(seed, 0.5, 65, 0.05)), Config())
    assert det.verdict == "oscillating", [(e.kind, e.start_step) for e in det.events]
    assert not [e for e in det.events if e.kind in ("spike", "divergence")]


@pytest.mark.parametrize("seed", range(4))
def test_a_bad_batch_above_the_boundaries_stays_an_incident(seed: int) -> None:
    x = _log_loss(seed, 0.5, 65, 0.05)
    x[1000] += np.log(2.0)  # mid-epoch (step 1001): x2 over a point x1.1 above its trough
    det = detect(_run(x), Config())
    assert det.verdict == "spiky"
    assert any(e.start_step <= 1001 <= e.end_step for e in det.events if e.kind == "spike")


def test_the_fence_sits_at_the_cycles_highest_points() -> None:
    x = _log_loss(0, 0.5, 65, 0.05)
    got = cycle_peaks_fence(x, 200, 1499, 65.0, 133)
    assert got is not None
    res, fence = got
    peaks = res[:20 * 65].reshape(20, 65).max(axis=1)
    # above most cycles' peaks, and well under a x2 batch on top of a boundary
    assert np.mean(peaks <= fence) >= 0.9
    assert fence < float(np.median(peaks)) + np.log(2.0) / 2
    assert cycle_peaks_fence(x, 200, 400, 65.0, 133) is None  # three cycles: too few


def test_a_run_without_an_oscillation_keeps_its_spikes() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(2000)
    x = np.log(0.5 + 2.0 * np.exp(-t / 150)) + 0.05 * rng.standard_normal(2000)
    x[1000] += np.log(1.5)
    det = detect(_run(x), Config())
    assert [e.start_step for e in det.events if e.kind == "spike"] == [1001]
