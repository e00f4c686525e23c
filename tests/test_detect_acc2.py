"""Second round of issue 8 on the real CPU runs: the oscillation period limit that follows
the log, and the other rules of docs/detection.md's "second round" section. Each rule has a
known-answer test and a clean run of the same shape that must stay quiet."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spikelens.detect import Detection, detect
from spikelens.model import INCIDENT_KINDS, Config, Run

CFG = Config()


def make_run(loss: np.ndarray, **cols: np.ndarray) -> Run:
    st = np.arange(1, len(loss) + 1, dtype=np.int64)
    data = {"loss": loss, **cols}
    frame = pd.DataFrame(data, index=pd.Index(st, name="step"))
    return Run(source="synthetic.csv", format="csv", frame=frame,
               roles={k: k for k in data}, interval=1)


def incidents(det: Detection) -> list[tuple[str, int, int]]:
    return [(e.kind, e.start_step, e.peak_step) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def _epoch_run(epoch: int, jump: float, seed: int, n: int = 2000) -> Run:
    """A descending loss with 6 % batch noise and, when jump > 0, a sawtooth that restarts
    at every epoch boundary (a dataset iterated in a fixed order)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    trend = 1.0 + 1.5 * (1 + t / 150) ** -1.0
    phase = (t % epoch) / epoch
    saw = np.exp(jump * (1 - phase))  # high at the boundary, decaying through the epoch
    loss = trend * saw * np.exp(0.06 * rng.standard_normal(n))
    return make_run(loss, samples=(32.0 * (t + 1)))


def test_an_epoch_sawtooth_longer_than_50_steps_is_an_oscillation_at_its_period() -> None:
    # the epochs of the two real runs the fixed 50-point limit missed (v2osc04, v1osc02)
    for epoch in (56, 71):
        det = detect(_epoch_run(epoch, jump=0.25, seed=epoch), CFG)
        assert det.verdict == "oscillating", (epoch, det.verdict)
        [osc] = [e for e in det.events if e.kind == "oscillation"]
        assert osc.period is not None and abs(osc.period - epoch) <= max(2, epoch // 10)
        assert incidents(det) == []


def test_the_same_noise_without_an_epoch_sawtooth_stays_quiet() -> None:
    for seed in (56, 71, 72):
        det = detect(_epoch_run(71, jump=0.0, seed=seed), CFG)
        assert det.verdict == "healthy", (seed, det.verdict)
        assert [e for e in det.events if e.kind == "oscillation"] == []


# --- a level shift where the logged LR jumps ---------------------------------------------------
def _restart_run(lift: float, jump: bool, seed: int, n: int = 2000, at: int = 1200) -> Run:
    """A descending loss with 20 % batch noise under a cosine LR; with `jump`, the schedule
    restarts at its peak at step `at` + 1 (the LR x2 in one step); the loss is lifted by `lift`
    for 300 steps from there."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    trend = 1.0 + 1.5 * (1 + t / 150) ** -1.0
    base = 1e-3 * (1 + np.cos(np.pi * t / n)) / 2
    lr = np.where(t < at, base, 1e-3 * (1 + np.cos(np.pi * (t - at) / n)) / 2) if jump else base
    lifted = np.where((t >= at) & (t < at + 300), lift, 1.0)
    return make_run(trend * lifted * np.exp(0.20 * rng.standard_normal(n)), lr=lr)


def test_a_loss_lift_that_opens_at_an_lr_jump_is_found_under_the_whole_log_bar() -> None:
    # x1.2 for 300 steps in 20 % noise: shift z 3-5, under the whole-log bar (5.5), which
    # misses it (checked with the LR-jump bar raised to it); at the LR jump it is found
    for seed in (2, 3, 4, 5):
        run = _restart_run(1.2, jump=True, seed=seed)
        found = incidents(detect(run, CFG))
        assert len(found) == 1 and 1199 <= found[0][1] <= 1215, (seed, found)
        assert incidents(detect(run, Config(lr_jump_shift_z=CFG.shift_z_threshold))) == []


def test_the_same_lift_without_an_lr_jump_is_not_found() -> None:
    for seed in (2, 3, 4, 5):
        assert incidents(detect(_restart_run(1.2, jump=False, seed=seed), CFG)) == [], seed


def test_an_lr_restart_that_does_not_move_the_loss_stays_quiet() -> None:
    for seed in range(8):
        det = detect(_restart_run(1.0, jump=True, seed=seed), CFG)
        assert incidents(det) == [] and det.verdict == "healthy", seed


def _typo_run(lift: float, jump: bool, seed: int, n: int = 2000, at: int = 1000) -> Run:
    """A descending loss with 4 % batch noise at a constant LR; with `jump`, the LR is x20
    from step `at` + 1 (a config typo on restart); the loss is lifted by `lift` for 120 steps
    from there (realruns-v3's v3lr02: x1.07-1.12 for about 100 steps)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    trend = 1.0 + 1.5 * (1 + t / 150) ** -1.0
    lr = np.where((t >= at) & jump, 8e-3, 4e-4)
    lifted = np.where((t >= at) & (t < at + 120), lift, 1.0)
    return make_run(trend * lifted * np.exp(0.04 * rng.standard_normal(n)), lr=lr)


def test_a_lift_under_min_ratio_at_an_lr_jump_is_found() -> None:
    # x1.08 for 120 steps: under the 1.10 that a rise anywhere must reach, over the 1.05 of
    # the place where the LR was just multiplied x20. Found at the jump in every seed; with
    # the ordinary ratio there, in a few (its forward mean is x1.10 by chance)
    old = Config(lr_jump_min_ratio=CFG.min_ratio)
    found_before = 0
    for seed in range(12):
        run = _typo_run(1.08, jump=True, seed=seed)
        found = incidents(detect(run, CFG))
        assert len(found) == 1 and 999 <= found[0][1] <= 1010, (seed, found)
        found_before += bool(incidents(detect(run, old)))
    assert found_before <= 3


def test_the_same_small_lift_without_an_lr_jump_is_rarely_found() -> None:
    # the ordinary ratio decides there: only a forward mean that reaches x1.10 by chance
    found = [seed for seed in range(12)
             if incidents(detect(_typo_run(1.08, jump=False, seed=seed), CFG))]
    assert len(found) <= 2, found


def test_an_lr_typo_that_does_not_move_a_calm_loss_stays_quiet() -> None:
    for seed in range(8):
        det = detect(_typo_run(1.0, jump=True, seed=seed), CFG)
        assert incidents(det) == [] and det.verdict == "healthy", seed


def test_warm_restarts_back_to_the_peak_lr_keep_the_ordinary_ratio() -> None:
    # SGDR: a cosine restarted every 1000 steps from 1e-5 back to its peak 1e-3, each
    # restart lifting the loss x1.07 for ~60 steps, as it does by design. The LR goes back
    # to a value the run trained at: min_ratio (x1.10) holds there, so at most one seed in
    # eight has an incident (7 of 8 with x1.05 at every LR jump)
    spiky = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        t = np.arange(3000)
        phase = t % 1000
        lr = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * phase / 1000))
        bump = np.where(t >= 1000, 1 + 0.07 * np.exp(-phase / 60.0), 1.0)
        trend = 1.0 + 1.5 * (1 + t / 150) ** -1.0
        run = make_run(trend * bump * np.exp(0.04 * rng.standard_normal(3000)), lr=lr)
        spiky += bool(incidents(detect(run, CFG)))
    assert spiky <= 1


# --- a one-step jump no noise of that scale makes ----------------------------------------------
def _noisy_classifier(seed: int, jump: float, at: int = 900, n: int = 2000) -> Run:
    """A loss with 22 % per-step noise (a noisy-label classifier at batch 32) and, when
    jump > 1, one batch that lifts the loss by `jump` for one step."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    loss = (0.8 + 1.5 * (1 + t / 150) ** -1.0) * np.exp(0.22 * rng.standard_normal(n))
    loss[at] *= jump
    return make_run(loss, samples=32.0 * (t + 1))


def test_a_6x_one_step_jump_in_22_percent_noise_is_a_spike() -> None:
    for seed in range(8):
        det = detect(_noisy_classifier(seed, jump=6.0), CFG)
        assert [(k, s) for k, s, _ in incidents(det)] == [("spike", 901)], seed
    # the seeds where its z is 6.6-8.4: the ordinary bar (9.3) alone misses it
    for seed in (1, 2, 3, 5, 6):
        assert incidents(detect(_noisy_classifier(seed, jump=6.0),
                                Config(big_jump_z=CFG.z_threshold))) == [], seed


def test_the_same_noise_without_the_jump_stays_quiet() -> None:
    for seed in range(8):
        det = detect(_noisy_classifier(seed, jump=1.0), CFG)
        assert incidents(det) == [] and det.verdict == "healthy", seed


def test_the_lr_jump_bar_stays_on_the_loss_when_the_grad_norm_is_logged_less_often() -> None:
    # the per-point bars are indexed by the loss's points; a grad norm logged every 10 steps
    # (200 points) is tested with the ordinary bars and the loss's event is unchanged
    run = _restart_run(1.2, jump=True, seed=3)
    gn = np.full(len(run.frame), np.nan)
    gn[::10] = 1.0 + 0.05 * np.random.default_rng(0).standard_normal(len(gn[::10]))
    frame = run.frame.assign(grad_norm=gn)
    run2 = Run(source=run.source, format=run.format, frame=frame,
               roles={**run.roles, "grad_norm": "grad_norm"}, interval=1)
    assert incidents(detect(run2, CFG)) == incidents(detect(run, CFG)) != []
