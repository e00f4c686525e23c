"""Issue 8, item 7 (sixth pass): the isolated-outlier test's short noise estimate gives way to
the long one where the two agree. A 100-point IQR scale has a 12 % standard error, so a real
one-step outlier in a patch where that estimate happens to run high was missed (the 1.5B
modded-nanogpt log's step 17992, z 7.9 against the bar of 9.3 with the short scale, 9.7 with
the long one). Known answers, the clean twin that must stay quiet, a real change of noise
regime that must keep the short estimate, and the shared log itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.detect import Detection, detect
from spikelens.detect.baseline import IQR_TO_SIGMA
from spikelens.detect.spikes import isolated_z
from spikelens.model import INCIDENT_KINDS, Config, Run

CFG = Config()
AT = 2000  # index of the outlier; its step is AT + 1


def make_run(x: np.ndarray) -> Run:
    st = np.arange(1, len(x) + 1, dtype=np.int64)
    frame = pd.DataFrame({"loss": np.exp(x)}, index=pd.Index(st, name="step"))
    return Run(source="synthetic.csv", format="csv", frame=frame, roles={"loss": "loss"},
               interval=1)


def incidents(det: Detection) -> list[tuple[str, int, int]]:
    return [(e.kind, e.start_step, e.peak_step) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def patch_log(seed: int, ratio: float, patch: float, n: int = 4000) -> np.ndarray:
    """A log loss that descends slowly with 5 % per-step noise, the noise `patch` times
    larger over the 120 points around AT, and (ratio > 1) a one-step outlier at AT that is
    `ratio` times the loss there would have been."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    noise = 0.05 * rng.standard_normal(n)
    noise[AT - 60:AT + 60] *= patch
    x = np.log(2.7 + 0.5 * (1 + t / 300) ** -1.0) + noise
    if ratio > 1:
        x[AT] += np.log(ratio) - noise[AT]
    return x


def short_scale_z(x: np.ndarray, i: int) -> float:
    """The outlier's z against the 100 excesses centred on it alone (the short estimate),
    computed here without the detector: the excess over the median of the 10 points either
    side, in units of the IQR scale of the 100 excesses around it."""
    def excess(j: int) -> float:
        return float(x[j] - np.median(np.r_[x[j - 10:j], x[j + 1:j + 11]]))
    around = np.array([excess(j) for j in range(i - 50, i + 51) if j != i])
    q1, q3 = np.percentile(around, [25, 75])
    return (excess(i) - float(np.median(around))) / ((q3 - q1) / IQR_TO_SIGMA)


@pytest.mark.parametrize("seed", [0, 7, 12, 13])
def test_an_outlier_in_a_patch_whose_short_noise_runs_high_is_found(seed: int) -> None:
    # the patch's noise is 1.25x the log's, within what a 100-point estimate's own error
    # gives on a stationary noise: the long estimate decides, and the 1.7x outlier is found
    x = patch_log(seed, 1.7, 1.25)
    assert short_scale_z(x, AT) < CFG.z_threshold  # missed against the short estimate
    z, _ = isolated_z(x, CFG.window)
    assert z[AT] >= CFG.z_threshold
    det = detect(make_run(x), CFG)
    assert incidents(det) == [("spike", AT + 1, AT + 1)]
    assert det.verdict == "spiky"


@pytest.mark.parametrize("seed", [0, 7, 12, 13])
def test_the_same_log_without_the_outlier_stays_quiet(seed: int) -> None:
    det = detect(make_run(patch_log(seed, 1.0, 1.25)), CFG)
    assert (det.events, det.verdict) == ((), "healthy")


@pytest.mark.parametrize("seed", [0, 1, 3, 4])
def test_a_real_rise_of_the_noise_keeps_the_short_estimate(seed: int) -> None:
    # a patch whose noise is 3x the log's is a change of regime, not the error of an
    # estimate: the same 1.7x jump there is ordinary noise of the patch and stays quiet
    # (a 2x patch can read as 1.42x in 100 points: docs/detection.md, Blind spots)
    x = patch_log(seed, 1.7, 3.0)
    z, _ = isolated_z(x, CFG.window)
    assert z[AT] < CFG.z_threshold
    det = detect(make_run(x), CFG)
    assert incidents(det) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_run_whose_noise_triples_stays_quiet(seed: int) -> None:
    # calm for 2000 steps, then three times noisier (a run that starts to learn): the long
    # window straddles both regimes, and no point of the noisy part becomes an outlier
    rng = np.random.default_rng(seed)
    t = np.arange(4000)
    x = np.log(2.7 + 0.5 * (1 + t / 300) ** -1.0) + \
        np.where(t < 2000, 0.01, 0.03) * rng.standard_normal(4000)
    det = detect(make_run(x), CFG)
    assert incidents(det) == []
    assert det.verdict == "healthy"


def test_the_1_5b_step_17992_is_found(shared: Path) -> None:
    path = shared / "real_logs" / "modded_nanogpt" / "1.5B-52L_2024-10-20_ScaleUp1B_87bd51fd.log"
    if not path.exists():
        pytest.skip("../shared/real_logs is not beside this checkout")
    from spikelens import read_log

    det = detect(read_log(path), CFG)
    # 17992 is 5.05 against about 2.73 around it (1.85x) in the log's noisiest stretch
    assert ("spike", 17992, 17992) in incidents(det)
    # 10339 (1.46x) stays under the bar: at z 7.2 against the long estimate it is one of
    # about 60 jumps of that size in the log
    assert all(peak != 10339 for _, _, peak in incidents(det))


# --- the shift test's autocorrelation: never below what the longer past says ---------------------
DATA = Path(__file__).parent / "data"


def ar_log(seed: int, rho: float, lift: float = 1.0, n: int = 2000, at: int = 1200
           ) -> np.ndarray:
    """A log loss descending 2.7 -> 0.7 with stationary AR(1) noise of 5 % and lag-1
    autocorrelation `rho` (a smoothed or accumulated loss), lifted `lift`-fold from `at` on."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    w = 0.05 * np.sqrt(1 - rho ** 2) * rng.standard_normal(n)
    e = np.empty(n)
    e[0] = 0.05 * rng.standard_normal()
    for i in range(1, n):
        e[i] = rho * e[i - 1] + w[i]
    x = np.log(0.7 + 2.0 * (1 + t / 100) ** -1.0) + e
    x[at:] += np.log(lift)
    return x


@pytest.mark.parametrize(("rho", "share"), [(0.6, 0.08), (0.8, 0.13)])
def test_the_inflation_is_rarely_far_below_the_autocorrelation_of_the_noise(
        rho: float, share: float) -> None:
    # the window's own estimate fell under half of (1 + rho) / (1 - rho) at 10 % of the
    # points (rho 0.6) and 15 % (0.8); with the long floor (less two of its standard errors)
    # at 5 % and 11 %
    from spikelens.detect.spikes import trailing_stats

    true = (1 + rho) / (1 - rho)
    infl = np.concatenate([trailing_stats(ar_log(seed, rho), CFG.window, 1e-6, True)
                           .inflation[400:] for seed in range(5)])
    assert float(np.mean(infl < 0.5 * true)) < share


@pytest.mark.parametrize(("seed", "rho"), [(27, 0.6), (40, 0.8), (43, 0.8)])
def test_a_wander_of_autocorrelated_noise_is_not_a_shift(seed: int, rho: float) -> None:
    # clean runs whose noise wanders: each put a shift-test event on a wander where the
    # trailing window's rho had collapsed (1134, 1286, 1447); they stay quiet now
    det = detect(make_run(ar_log(seed, rho)), CFG)
    assert incidents(det) == []


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_a_lasting_rise_in_autocorrelated_noise_is_still_found(seed: int) -> None:
    # the same noise (rho 0.6) with the loss lifted 1.25x from step 1201 on: a level shift of
    # 4.5 sigma, found at its first step
    det = detect(make_run(ar_log(seed, 0.6, lift=1.25)), CFG)
    [(kind, start, _)] = incidents(det)
    assert kind in ("spike", "divergence") and 1200 <= start <= 1202


def test_seed_5000_gamp02_a_clean_fp16_run_stays_healthy() -> None:
    from spikelens import read_log

    det = detect(read_log(DATA / "generated" / "seed5000_gamp02_steps1-800.jsonl"), CFG)
    assert incidents(det) == []
    assert det.verdict == "healthy"
