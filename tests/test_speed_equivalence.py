"""The shortcuts taken for speed (issue 10) give exactly what the plain computations give:
the second pass's reused baseline windows, the grad-norm break found by binary search, the
LR stretch found from block minima, and the point z kept from the detector's first pass.
Exact equality (bytes), not closeness: a report must not change because it got faster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spikelens import read_log
from spikelens.causes._window import RunArrays, Series, stretch_start
from spikelens.detect import detect, point_z
from spikelens.detect.nonfinite import _grad_first, _grad_first_all
from spikelens.detect.spikes import trailing_stats
from spikelens.model import Config

ROOT = Path(__file__).resolve().parents[1]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_second_pass_reuses_only_unchanged_windows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.choice([50, 100, 101, 3000, 20000]))
    window = int(rng.choice([8, 100]))
    x = np.cumsum(rng.standard_normal(n)) * 0.01 + 0.1 * rng.standard_normal(n)
    clipped = x.copy()
    for _ in range(4):  # events clipped to their band, as find_rises does
        a = int(rng.integers(0, n))
        clipped[a:a + 200] = np.minimum(clipped[a:a + 200], float(np.median(x)))
    reuse: dict[str, dict[str, object]] = {}
    trailing_stats(x, window, 1e-6, True, reuse)
    fast = trailing_stats(clipped, window, 1e-6, True, reuse)
    plain = trailing_stats(clipped, window, 1e-6, True)
    for name in ("level", "scale", "up_scale", "inflation", "count", "floor"):
        assert _same(getattr(fast, name), getattr(plain, name)), name


def test_grad_first_by_binary_search_matches_the_scan() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        steps = np.sort(rng.choice(10 * n, n, replace=False)).astype(np.int64)
        vals = rng.random(n)
        vals[rng.random(n) < 0.3] = np.nan
        vals[rng.random(n) < 0.1] = np.inf
        first = _grad_first_all(steps, vals)
        for loss_step in rng.integers(-5, 10 * n + 5, 20):
            assert first(int(loss_step)) == _grad_first(int(loss_step), steps, vals)


class _Arrays(RunArrays):
    def __init__(self, values: np.ndarray) -> None:  # noqa: D107 - no Run needed
        self.misc = {}
        self._v = values

    def finite(self, role: str) -> Series | None:
        return Series(np.arange(len(self._v), dtype=np.int64), self._v)


def test_lr_stretch_from_block_minima_matches_the_scan() -> None:
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(1, 5000))
        v = [np.sort(rng.random(n))[::-1].copy(), rng.random(n),
             np.round(3 * rng.random(n))][trial % 3]
        arr = _Arrays(v)
        for _ in range(5):
            end = int(rng.integers(1, n + 1))
            thr = float(rng.choice([rng.random(), 0.999 * v[end - 1], -1.0, 2.0]))
            assert arr.start_at_or_above("lr", end, thr) == \
                stretch_start(lambda lo, hi, t=thr, v=v: v[lo:hi] >= t, end)


def test_detection_carries_the_point_z_of_point_z() -> None:
    run = read_log(ROOT / "sample_logs" / "csv" / "bench_r05_fp16_overflow_storm.csv")
    cfg = Config()
    det = detect(run, cfg)
    assert det.point_z is not None
    want = point_z(run, cfg)
    assert _same(det.point_z.steps, want.steps)
    assert _same(det.point_z.z, want.z)
    assert np.isfinite(want.z).any()  # the comparison is about real values
