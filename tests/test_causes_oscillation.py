"""Oscillation causes (issue 8, item 2) on constructed runs whose cause is known, each next to
the opposite case that must not get it: a loss locked to a cyclic LR, a swing that shrinks as
the LR decays, a small batch, a period of one epoch or a fixed data cycle, high momentum."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.causes import CAUSES, OSCILLATION_CAUSES, explain
from spikelens.causes.labels import EVIDENCE_LABELS
from spikelens.model import Config, Event, Finding, Run, Size
from spikelens.readers._base import RawLog, build_run

N = 2000


def osc(period: float | None, start: int = 1, end: int = N) -> Event:
    return Event(kind="oscillation", metric="loss", start_step=start, peak_step=start + 10,
                 end_step=end, recovered=False, size=Size(2.0, 1.2), period=period,
                 amplitude=0.2)


def make(cols: dict[str, np.ndarray], **params: object) -> Run:
    run = build_run(RawLog(frame=pd.DataFrame(cols)), Path("osc.csv"), "csv")
    return dataclasses.replace(run, params=params) if params else run


def one(run: Run, e: Event) -> Finding:
    return explain(run, e, [e], Config())


def names(f: Finding) -> list[str]:
    return [c.cause for c in f.causes]


STEP = np.arange(1, N + 1)
RNG = np.random.default_rng(0)
NOISE = np.exp(RNG.normal(0, 0.01, N))


def cyclic_run(cyclic: bool) -> Run:
    lr = (1e-3 * (1.5 + np.sin(2 * np.pi * STEP / 100)) if cyclic
          else 1e-3 * 0.5 * (1 + np.cos(np.pi * STEP / N)))
    loss = 1.0 * (1 + 0.2 * np.sin(2 * np.pi * STEP / 100)) * NOISE
    return make({"step": STEP, "loss": loss, "lr": lr})


def test_loss_locked_to_a_cyclic_lr_is_lr_schedule() -> None:
    f = one(cyclic_run(True), osc(100.0))
    best = f.causes[0]
    assert best.cause == "lr_schedule"
    assert best.score >= 0.85
    assert best.evidence["lr_period_steps"] == pytest.approx(100, abs=2)
    assert best.summary.startswith("The LR itself cycles every 100 steps")
    assert "check the scheduler's step unit and period" in best.remedy.lower()


def test_a_plain_cosine_lr_does_not_explain_a_periodic_swing() -> None:
    f = one(cyclic_run(False), osc(100.0))
    assert "lr_schedule" not in names(f)


def decaying_lr_run(swing_follows: bool) -> Run:
    lr = 1e-3 * np.exp(-STEP / 600)  # falls ~28x
    amp = 0.3 * (lr / lr[0]) ** 0.5 if swing_follows else np.full(N, 0.3)
    loss = (1 + amp * np.sign(np.sin(2 * np.pi * STEP / 7.3))) * NOISE
    return make({"step": STEP, "loss": loss, "lr": lr})


def test_swing_that_shrinks_with_the_lr_is_lr_too_high() -> None:
    f = one(decaying_lr_run(True), osc(7.3))
    hi = next(c for c in f.causes if c.cause == "lr_too_high")
    assert f.causes[0].cause == "lr_too_high"
    assert hi.evidence["swing_decay_ratio"] > 2
    assert hi.evidence["lr_decay_ratio"] > 4
    assert hi.remedy.startswith("Lower the LR by about")


def test_swing_that_stays_while_the_lr_falls_is_not_lr_too_high() -> None:
    f = one(decaying_lr_run(False), osc(7.3))
    assert "lr_too_high" not in names(f)


def noisy_run(batch: int) -> Run:
    noise = np.exp(RNG.normal(0, 0.3 / math.sqrt(batch) * 4, N))
    return make({"step": STEP, "loss": 1.5 * noise, "samples": STEP * batch})


def test_small_batch_from_the_counter_is_batch_noise() -> None:
    f = one(noisy_run(4), osc(None))
    best = f.causes[0]
    assert best.cause == "batch_noise"
    assert best.score >= 0.6
    assert best.evidence["samples_per_step"] == 4
    assert "gradient" in best.remedy.lower() and "batch" in best.remedy.lower()


def test_large_batch_is_not_batch_noise() -> None:
    f = one(noisy_run(2048), osc(None))
    assert "batch_noise" not in names(f)


def test_batch_size_from_params() -> None:
    run = make({"step": STEP, "loss": 1.5 * np.exp(RNG.normal(0, 0.1, N))}, global_batch_size=8)
    best = one(run, osc(None)).causes[0]
    assert best.cause == "batch_noise"
    assert best.evidence["samples_per_step"] == 8


def epoch_run(steps_per_epoch: int) -> Run:
    saw = 1 + 0.3 * ((STEP % 250) == 0)  # a jump every 250 steps
    return make({"step": STEP, "loss": saw * NOISE, "epoch": STEP / steps_per_epoch})


def test_period_of_one_epoch_is_data_order() -> None:
    best = one(epoch_run(250), osc(250.0)).causes[0]
    assert best.cause == "data_order"
    assert best.score >= 0.8
    assert best.evidence["epoch_steps"] == pytest.approx(250)
    assert "shuffle" in best.remedy.lower()


def test_period_that_is_not_an_epoch_is_not_data_order() -> None:
    f = one(epoch_run(1000), osc(250.0))
    assert "data_order" not in names(f)


def test_short_fixed_cycle_is_data_order() -> None:
    loss = (1 + 0.15 * (STEP % 2)) * NOISE  # two data sources in turn
    f = one(make({"step": STEP, "loss": loss, "samples": STEP * 64}), osc(2.0))
    assert f.causes[0].cause == "data_order"


def test_high_momentum_is_named_and_ordinary_momentum_is_not() -> None:
    loss = (1 + 0.1 * np.sin(2 * np.pi * STEP / 40)) * NOISE
    cols = {"step": STEP, "loss": loss}
    hi = one(make(cols, momentum=0.99), osc(40.0))
    opt = next(c for c in hi.causes if c.cause == "optimizer_state")
    assert opt.evidence["momentum"] == 0.99
    assert "0.9" in opt.remedy
    lo = one(make(cols, momentum=0.9), osc(40.0))
    assert "optimizer_state" not in names(lo)


def test_oscillation_without_any_signal_is_unknown_and_says_what_to_log() -> None:
    loss = (1 + 0.1 * np.sin(2 * np.pi * STEP / 40)) * NOISE
    f = one(make({"step": STEP, "loss": loss}), osc(40.0))
    assert f.causes[0].cause == "unknown"
    assert "samples or tokens per step" in f.causes[0].remedy
    # incident rules never judge an oscillation
    judged = {c.cause for c in f.causes} | {s.cause for s in f.skipped}
    assert judged <= set(OSCILLATION_CAUSES) | {"unknown"}


def test_every_oscillation_key_has_a_label_and_every_cause_is_registered() -> None:
    for c in OSCILLATION_CAUSES:
        assert c in CAUSES
    runs = [(cyclic_run(True), osc(100.0)), (decaying_lr_run(True), osc(7.3)),
            (noisy_run(4), osc(None)), (epoch_run(250), osc(250.0))]
    for run, e in runs:
        for c in one(run, e).causes:
            assert set(c.evidence) <= set(EVIDENCE_LABELS)
            assert c.remedy.endswith(".")


def test_swing_folded_by_epoch_phase_is_data_order_whatever_the_detected_period() -> None:
    # a fine-tune that re-sees its data: the loss drops at each epoch start and creeps back
    # up, 200 steps per epoch, under step noise; the detector may report another period
    rng = np.random.default_rng(4)
    phase = (STEP % 200) / 200
    loss = (1 + 0.15 * phase) * np.exp(rng.normal(0, 0.05, N))
    best = one(make({"step": STEP, "loss": loss, "epoch": STEP / 200}), osc(50.0)).causes[0]
    assert best.cause == "data_order"
    assert best.score >= 0.8
    assert best.evidence["epoch_boundaries"] == 9
    assert best.summary.startswith("Folded by the phase of the epoch (200 steps)")


def test_noise_with_an_epoch_column_is_not_an_epoch_cycle() -> None:
    rng = np.random.default_rng(5)
    loss = np.exp(rng.normal(0, 0.05, N))
    f = one(make({"step": STEP, "loss": loss, "epoch": STEP / 200}), osc(50.0))
    do = [c for c in f.causes if c.cause == "data_order"]
    assert not do or do[0].score < 0.8
