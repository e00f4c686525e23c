"""A loss that climbs slowly in heavy noise crosses its band a few times before it leaves for
good; those crossings are the start of the divergence, not spikes of their own, once the
loss's level has moved `min_ratio` above where they began. A bad batch before an unrelated
divergence came back to its level and stays its own incident. Seeded signals with known
answers (realruns-v3's v3gx02 is the real case: docs/detection.md, seventh pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spikelens.detect import detect
from spikelens.model import INCIDENT_KINDS, Config, Run
from spikelens.readers._base import RawLog, build_run


def _run(seed: int, noise: float, tau: float, bad_batch: int | None = None,
         at: int = 900, n: int = 1600, lr_climbs: bool = True,
         loss_at: int | None = None) -> Run:
    """A loss settling at 1 with per-step noise `noise` (log scale); from `at` the LR grows
    e-fold every 150 steps (unless not `lr_climbs`: then it stays at 0.05) and the loss
    e-fold every `tau` steps from `loss_at` (default `at`), to the end of the log;
    `bad_batch`: one step x4 there."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    lr = np.where(t < at, 0.05, 0.05 * np.exp((t - at) / 150 if lr_climbs else 0.0))
    start = at if loss_at is None else loss_at
    level = (1.0 + 2 * np.exp(-t / 200)) * np.exp(np.clip((t - start) / tau, 0, None))
    loss = level * np.exp(rng.normal(0, noise, n))
    if bad_batch is not None:
        loss[bad_batch] *= 4
    frame = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": lr})
    return build_run(RawLog(frame=frame), Path("climb.csv"), "csv")


def _incidents(run: Run) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    det = detect(run, Config())
    return ([(e.kind, e.start_step) for e in det.events
             if e.metric == "loss" and e.kind in INCIDENT_KINDS], det.notes)


def test_the_first_crossings_of_a_noisy_climb_are_the_divergence() -> None:
    # 22 % noise a step, e-fold every 250 steps: half the seeds cross the band 2-4 times
    # before the divergence is declared. Every seed has its divergence; in 9 of 10 it is
    # the only incident, starting in the climb's first 90 steps (seed 5 keeps an early
    # crossing: the divergence is declared before the level has moved x1.10, and its
    # crossing at 932 stood higher than the one after it)
    single = 0
    for seed in range(10):
        found, notes = _incidents(_run(seed, noise=0.22, tau=250))
        assert [k for k, _ in found][-1] == "divergence", (seed, found)
        if len(found) == 1:
            single += 1
            assert 900 <= found[0][1] <= 990, (seed, found)
    assert single >= 9
    found, notes = _incidents(_run(7, noise=0.22, tau=250))
    assert found == [("divergence", 952)]
    assert notes == ("the loss crossed its band 4 time(s) from step 952 before it left for "
                     "good at step 1067 (its level x1.52 by then): one divergence",)


def test_a_crossing_inside_an_lr_climb_is_the_divergence_only_with_the_lr() -> None:
    """Seed 4 crosses its band at 937 and comes back before the level has moved x1.10: by
    the level alone a spike beside the divergence. The LR there stands past 1.2x anything
    the run had trained at, in the same climb as the divergence's start, so the log says
    what drove both: one divergence from 937. The twin with the same loss and an LR that
    never climbs keeps the spike (real runs: v6gx00, v4gx03)."""
    found, notes = _incidents(_run(4, noise=0.22, tau=250))
    assert found == [("divergence", 937)]
    assert notes == ("the loss crossed its band 1 time(s) from step 937 before it left for "
                     "good at step 970 (the LR past 1.2x the highest LR logged before its "
                     "climb throughout): one divergence",)
    found, _ = _incidents(_run(4, noise=0.22, tau=250, lr_climbs=False))
    assert found == [("spike", 937), ("divergence", 970)]
    # the same with the LR as loggers write it: every second row, or two digits
    run = _run(4, noise=0.22, tau=250)
    lr = run.frame["lr"].to_numpy().copy()
    sparse, rounded = lr.copy(), np.array([float(f"{v:.2g}") for v in lr])
    sparse[1::2] = sparse[:-1:2]
    for values in (sparse, rounded):
        frame = pd.DataFrame({"step": run.frame.index, "loss": run.frame["loss"].to_numpy(),
                              "lr": values})
        found, _ = _incidents(build_run(RawLog(frame=frame), Path("c.csv"), "csv"))
        assert found == [("divergence", 937)]


def test_a_bad_batch_before_a_divergence_stays_its_own_incident() -> None:
    for seed in range(10):
        found, _ = _incidents(_run(seed, noise=0.08, tau=120, bad_batch=850))
        assert [k for k, _ in found] == ["spike", "divergence"], (seed, found)
        assert found[0][1] == 851 and found[1][1] > 900, (seed, found)


def test_a_bad_batch_inside_an_lr_climb_stays_its_own_incident() -> None:
    """The LR climbs from 900 and the loss diverges from 1000; a batch x4 at step 961 sits
    where the LR is past 1.2x its earlier maximum, in the climb that diverges, but it is an
    outlier at the point bar, not a band crossing: it stays a spike (found by a review:
    the first version of the LR lead-in took it into the divergence in 12 of 20 seeds)."""
    for seed in range(10):
        found, _ = _incidents(_run(seed, noise=0.08, tau=120, bad_batch=960, loss_at=1000))
        assert found[0] == ("spike", 961), (seed, found)
        assert found[-1][0] == "divergence" and found[-1][1] > 1000, (seed, found)

