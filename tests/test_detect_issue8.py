"""The rules of issue 8 on seeded signals with a known answer, each next to a clean noisy run
of the same shape that must stay quiet: a climb at the end of a short log (divergence with no
history), too little to judge (`insufficient_data`), a stall, overfitting, rises at the peaks
of a cyclic LR, batch noise that the log explains, incidents in rolled-back segments, and the
isolated one-step outlier test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from spikelens import read_log
from spikelens.cli import app
from spikelens.detect import Detection, detect
from spikelens.model import INCIDENT_KINDS, Config, Run

CFG = Config()


def make_run(loss: np.ndarray, steps: np.ndarray | None = None, **cols: np.ndarray) -> Run:
    st = np.arange(1, len(loss) + 1, dtype=np.int64) if steps is None else steps
    data = {"loss": loss, **cols}
    frame = pd.DataFrame(data, index=pd.Index(st.astype(np.int64), name="step"))
    roles = {k: k for k in data}
    return Run(source="synthetic.csv", format="csv", frame=frame, roles=roles,
               interval=int(st[1] - st[0]) if len(st) > 1 else 1)


def incidents(det: Detection) -> list[tuple[str, int, int]]:
    return [(e.kind, e.start_step, e.peak_step) for e in det.events
            if e.metric == "loss" and e.kind in INCIDENT_KINDS]


def kinds(det: Detection) -> list[str]:
    return [e.kind for e in det.events]


def descending(n: int, seed: int, noise: float = 0.03) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (2.0 + 2.0 * (1 + t / 100) ** -1.0) * np.exp(noise * rng.standard_normal(n))


# --- divergence with no history -------------------------------------------------------
MEGATRON_CLIMB = "".join(
    f" iteration {it:8d}/  200000 | consumed samples: {it * 432:12d} | learning rate: 3.000E-05"
    f" | global batch size:   432 | lm loss: {loss:.6E} | loss scale: 65536.0 | grad norm: "
    f"{gn:.3f} | number of skipped iterations:   0 | number of nan iterations:   0 |\n"
    for it, loss, gn in ((7000, 2.41, 1.20), (7010, 2.55, 1.41), (7020, 2.83, 1.95),
                         (7030, 3.22, 2.60), (7040, 3.86, 3.71)))


def test_five_line_megatron_excerpt_climbing_with_the_grad_norm_is_divergence(
        tmp_path: Path) -> None:
    log = tmp_path / "excerpt.log"
    log.write_text(MEGATRON_CLIMB)
    det = detect(read_log(log), CFG)
    assert incidents(det) == [("divergence", 7010, 7040)]
    assert det.verdict == "diverged"
    [ev] = det.events
    assert ev.size.ratio == pytest.approx(3.86 / 2.41, rel=1e-3)
    result = CliRunner().invoke(app, ["analyze", str(log), "--fail-on", "any"])
    assert result.exit_code == 1


def test_five_noisy_points_with_a_flat_grad_norm_are_not_a_divergence() -> None:
    # the same shape of log, rising at every point but by 1.2x in all, grad norm flat
    loss = np.array([2.41, 2.45, 2.52, 2.60, 2.89])
    run = make_run(loss, np.arange(7000, 7050, 10), grad_norm=np.full(5, 1.2))
    det = detect(run, CFG)
    assert incidents(det) == []
    assert det.verdict == "insufficient_data"


def test_a_climb_without_grad_norm_needs_twice_the_loss() -> None:
    up = make_run(np.array([2.0, 2.3, 2.9, 3.5, 4.3]), np.arange(100, 150, 10))
    assert incidents(detect(up, CFG)) == [("divergence", 110, 140)]
    small = make_run(np.array([2.0, 2.2, 2.5, 2.7, 3.2]), np.arange(100, 150, 10))
    assert incidents(detect(small, CFG)) == []


def test_a_climb_at_the_end_of_a_long_log_is_left_to_the_trailing_tests() -> None:
    # four consecutive rises of noise at the end of 1000 points are not a divergence
    loss = descending(1000, seed=3)
    loss[-5:] = loss[-6] * np.array([1.02, 1.04, 1.06, 1.08, 1.10])
    det = detect(make_run(loss), CFG)
    assert "divergence" not in kinds(det)


# --- insufficient data ------------------------------------------------------------------
def test_a_one_point_log_is_insufficient_data() -> None:
    det = detect(make_run(np.array([2.5]), np.array([100])), CFG)
    assert (det.events, det.verdict) == ((), "insufficient_data")
    assert "only 1 finite loss point(s): too few to judge" in det.notes[-1]


def test_a_short_log_with_a_jump_is_still_an_incident() -> None:
    det = detect(make_run(np.array([3.06, 3.11, 7.71]), np.array([11446, 11447, 11448])), CFG)
    assert det.verdict == "spiky"


def test_fail_on_insufficient_data(tmp_path: Path) -> None:
    log = tmp_path / "eval_only.csv"
    log.write_text("step,eval_loss\n100,2.0\n200,1.9\n")
    runner = CliRunner()
    assert runner.invoke(app, ["analyze", str(log), "--fail-on",
                               "insufficient_data"]).exit_code == 1
    assert runner.invoke(app, ["analyze", str(log), "--fail-on", "any"]).exit_code == 0
    clean = tmp_path / "clean.csv"
    clean.write_text("step,loss\n" + "".join(f"{i + 1},{v}\n"
                                             for i, v in enumerate(descending(300, 1))))
    assert runner.invoke(app, ["analyze", str(clean), "--fail-on",
                               "insufficient_data"]).exit_code == 0


# --- stall -------------------------------------------------------------------------------
def test_a_loss_that_never_leaves_its_start_is_a_stall_not_an_oscillation() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    # smoothed noise (a running mean, as progress bars log it) around 7.6
    noise = np.convolve(rng.standard_normal(n + 49), np.ones(50) / 50, mode="valid")
    loss = 7.6 * np.exp(0.05 * noise)
    det = detect(make_run(loss), CFG)
    assert kinds(det) == ["stall"]
    assert det.verdict == "healthy"
    [ev] = det.events
    assert ev.detail is not None and "never learned" in ev.detail


def test_a_learning_run_has_no_stall() -> None:
    det = detect(make_run(descending(3000, seed=5)), CFG)
    assert det.events == ()


def test_vanishing_gradients_make_a_stall_and_a_healthy_grad_norm_does_not() -> None:
    n = 3000
    loss = descending(n, seed=6)
    loss[1000:] = loss[1000] * np.exp(0.03 * np.random.default_rng(7).standard_normal(n - 1000))
    gn = np.full(n, 1.0)
    gn[1000:] = 0.01
    det = detect(make_run(loss, grad_norm=gn), CFG)
    assert "stall" in kinds(det)
    [ev] = [e for e in det.events if e.kind == "stall"]
    assert ev.detail is not None and "vanishing gradients" in ev.detail
    assert abs(ev.start_step - 1000) <= 300
    det = detect(make_run(loss, grad_norm=np.full(n, 1.0)), CFG)
    assert "stall" not in kinds(det)


# --- overfitting ---------------------------------------------------------------------------
def _with_eval(loss: np.ndarray, eval_steps: np.ndarray, eval_loss: np.ndarray) -> Run:
    run = make_run(loss)
    ef = pd.DataFrame({"eval_loss": eval_loss}, index=pd.Index(eval_steps, name="step"))
    return Run(source=run.source, format=run.format, frame=run.frame,
               roles={**run.roles, "eval_loss": "eval_loss"}, eval_frame=ef)


def test_eval_loss_rising_while_train_falls_is_overfitting_and_leaves_the_verdict() -> None:
    loss = descending(2000, seed=8)
    steps = np.arange(200, 2001, 200)
    ev = np.array([3.0, 2.7, 2.5, 2.45, 2.47, 2.52, 2.6, 2.66, 2.75, 2.8])
    det = detect(_with_eval(loss, steps, ev), CFG)
    [of] = [e for e in det.events if e.kind == "overfitting"]
    assert (of.metric, of.start_step, of.end_step) == ("eval_loss", 800, 2000)
    assert of.size.ratio == pytest.approx(2.75 / 2.45, rel=1e-3)
    assert det.verdict == "healthy"


def test_overfitting_on_a_short_fine_tune_with_a_dozen_train_points() -> None:
    # 13 train logs and 9 evals (a small LM fine-tuned for 1,200 steps, logged every 100):
    # the eval loss climbs 5.8 -> 9.6 while the train loss falls 4.8 -> 0.06
    steps = np.arange(0, 1201, 100)
    loss = np.array([4.78, 3.9, 3.1, 2.4, 1.8, 1.3, 0.9, 0.6, 0.4, 0.25, 0.15, 0.09, 0.061])
    run = make_run(loss, steps=steps, interval=100)
    esteps = np.arange(400, 1201, 100)
    ev = np.array([5.77, 5.9, 6.3, 6.9, 7.5, 8.1, 8.7, 9.2, 9.61])
    ef = pd.DataFrame({"eval_loss": ev}, index=pd.Index(esteps, name="step"))
    run = Run(source=run.source, format=run.format, frame=run.frame, interval=100,
              roles={**run.roles, "eval_loss": "eval_loss"}, eval_frame=ef)
    [of] = [e for e in detect(run, CFG).events if e.kind == "overfitting"]
    assert (of.start_step, of.end_step) == (400, 1200)


def test_eval_loss_that_keeps_falling_is_not_overfitting() -> None:
    loss = descending(2000, seed=8)
    steps = np.arange(200, 2001, 200)
    ev = np.array([3.0, 2.7, 2.5, 2.45, 2.44, 2.45, 2.43, 2.44, 2.42, 2.43])
    det = detect(_with_eval(loss, steps, ev), CFG)
    assert "overfitting" not in kinds(det)


# --- spike vs oscillation: the peaks of a cyclic LR ------------------------------------------
def _cyclic(n: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n)
    cyc = 0.5 * (1 + np.cos(2 * np.pi * (t % per) / per))  # a scheduler stepped per sample
    lr = 1e-3 * (0.1 + 0.9 * cyc)
    loss = descending(n, seed) * (1 + 0.25 * np.roll(cyc, 5) ** 4)
    return loss, lr


def test_rises_at_the_peaks_of_a_cyclic_lr_belong_to_the_oscillation() -> None:
    loss, lr = _cyclic(2500, 250, seed=9)
    det = detect(make_run(loss, lr=lr), CFG)
    assert incidents(det) == []
    [osc] = det.events
    assert (osc.kind, osc.source) == ("oscillation", "lr")
    assert osc.period == pytest.approx(250, abs=2)
    assert osc.lr_corr is not None and osc.lr_corr > 0.3
    assert det.verdict == "oscillating"


def test_a_bad_batch_at_a_trough_of_the_cyclic_lr_is_still_a_spike() -> None:
    loss, lr = _cyclic(2500, 250, seed=9)
    loss[1624] *= 3.0  # step 1625: half a period after the LR peak at step 1501
    det = detect(make_run(loss, lr=lr), CFG)
    assert incidents(det) == [("spike", 1625, 1625)]


# --- batch noise the log explains ---------------------------------------------------------
def _batch_run(batch: int, seed: int, n: int = 2000) -> Run:
    rng = np.random.default_rng(seed)
    trend = 1.7 + 0.6 * (1 + np.arange(n) / 100) ** -1.0
    loss = trend * rng.gamma(1.2 * batch, 1 / (1.2 * batch), n)
    return make_run(loss, samples=(batch * np.arange(1, n + 1)).astype(np.float64))


def test_a_tiny_batch_from_the_log_is_oscillating_batch_noise() -> None:
    det = detect(_batch_run(2, seed=10), CFG)
    assert incidents(det) == []
    assert det.verdict == "oscillating"
    [osc] = [e for e in det.events if e.kind == "oscillation"]
    assert (osc.source, osc.batch_size) == ("erratic", 2.0)


def test_the_same_swing_with_a_large_batch_in_the_log_is_not_an_oscillation() -> None:
    # the same ragged noise, but the log says 64 samples a step: not a tiny batch
    run = _batch_run(2, seed=10)
    frame = run.frame.assign(samples=64.0 * np.arange(1, len(run.frame) + 1))
    det = detect(Run(source=run.source, format=run.format, frame=frame, roles=run.roles), CFG)
    assert "oscillation" not in kinds(det)


# --- rolled-back segments -------------------------------------------------------------------
def _rollback_csv(path: Path, spike: bool) -> Path:
    rng = np.random.default_rng(11)
    trend = 2 + 3 * np.exp(-np.arange(1, 2001) / 200)
    rows = []
    first = trend[:1300] * np.exp(0.03 * rng.standard_normal(1300))
    if spike:
        first[1199:1202] *= 2.5  # steps 1200-1202, then the job is killed at 1300
    rows += [(i + 1, v) for i, v in enumerate(first)]
    replay = trend[1100:] * np.exp(0.03 * rng.standard_normal(900))
    rows += [(1101 + i, v) for i, v in enumerate(replay)]
    path.write_text("step,loss\n" + "".join(f"{s},{v}\n" for s, v in rows))
    return path


def test_an_incident_in_a_rolled_back_segment_is_reported_with_its_segment(
        tmp_path: Path) -> None:
    run = read_log(_rollback_csv(tmp_path / "rolled.csv", spike=True))
    [sup] = run.superseded
    assert (sup.segment, sup.resumed_at, sup.last_step) == (0, 1101, 1300)
    det = detect(run, CFG)
    [ev] = [e for e in det.events if e.kind in INCIDENT_KINDS]
    assert (ev.kind, ev.start_step, ev.segment, ev.rolled_back_at) == ("spike", 1200, 0, 1300)
    assert det.verdict == "spiky"


def test_a_clean_rollback_stays_quiet(tmp_path: Path) -> None:
    det = detect(read_log(_rollback_csv(tmp_path / "clean.csv", spike=False)), CFG)
    assert incidents(det) == []
    assert det.verdict == "healthy"


# --- the isolated one-step outlier ------------------------------------------------------------
def _heavy(n: int, seed: int) -> np.ndarray:
    # one rank's micro-batch loss: 2.5 % log-normal noise with an exponential upper tail
    # (hard batches), slow descent, like the modded-nanogpt records
    rng = np.random.default_rng(seed)
    trend = 3.3 + 1.0 * (1 + np.arange(n) / 300) ** -1.0
    return trend * np.exp(0.025 * rng.standard_normal(n)) * (1 + 0.02 * rng.exponential(1.0, n))


def test_a_one_step_outlier_of_1_4x_in_heavy_tailed_noise_is_found() -> None:
    loss = _heavy(3000, seed=12)
    loss[1999] = 1.4 * np.median(loss[1989:2010])  # step 2000
    det = detect(make_run(loss), CFG)
    assert [(k, p) for k, _, p in incidents(det)] == [("spike", 2000)]


def test_the_same_heavy_tailed_noise_without_it_is_quiet() -> None:
    assert incidents(detect(make_run(_heavy(3000, seed=12)), CFG)) == []


def test_short_baselines_need_a_larger_rise() -> None:
    # the same bump, measured against 13 points and against a full window of the same
    # noise: the short baseline's level and scale are uncertain, so its z is smaller by at
    # least the t-quantile ratio (1.24 at 13 points)
    from spikelens.detect import rise_statistics

    ratios = []
    for seed in range(5):
        noise = np.exp(0.06 * np.random.default_rng(seed).standard_normal(400))
        early, late = 3.0 * noise, 3.0 * noise
        early[13] = 1.9 * np.median(early[:13])
        late[300] = 1.9 * np.median(late[200:300])
        ze = rise_statistics(make_run(early), CFG).z["point"][13]
        zl = rise_statistics(make_run(late), CFG).z["point"][300]
        ratios.append(zl / ze)
    assert float(np.median(ratios)) >= 1.2


# --- the first points, judged by ratio, against what follows -----------------------------
def test_a_ragged_start_is_not_a_spike_when_the_rest_of_the_log_is_as_ragged() -> None:
    # a batch of 3 with no samples counter: the loss doubles and halves from the first step
    rng = np.random.default_rng(14)
    n = 1500
    trend = 1.7 + 0.6 * (1 + np.arange(n) / 100) ** -1.0
    loss = trend * rng.gamma(3.0, 1 / 3.0, n)
    loss[2] = 2.6 * np.median(loss[:2])  # a 2.6x "jump" at step 3, as its noise makes them
    assert incidents(detect(make_run(loss), CFG)) == []


def test_a_real_jump_at_the_start_of_a_calm_log_is_still_found() -> None:
    loss = descending(1500, seed=15, noise=0.02)
    loss[2] = 2.6 * np.median(loss[:2])
    assert incidents(detect(make_run(loss), CFG)) == [("spike", 3, 3)]
