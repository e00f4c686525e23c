"""The period of a data-order oscillation, told against the log's epoch column (issue 8, third
round), end to end from a HuggingFace trainer_state.json: a sawtooth that restarts every epoch
is reported with the epoch's period and called one epoch with both numbers; a swing at another
period is said not to be one epoch; a 50-step saw that restarts every epoch is one megabatch of
the Trainer's length-grouped sampler (the QLoRA log's shape), not an epoch; the same run
without the saw stays quiet. And the reader's train_batch_size reaches Run.params as the
per-device batch, a lower bound the batch-noise rule says is only a bound."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens import analyze, read_log
from spikelens.causes import explain
from spikelens.model import Config, Event, Finding, Size
from spikelens.readers._base import RawLog, build_run


def hf_state(path: Path, *, epoch_steps: float, saw_period: float | None = None,
             saw: float = 0.4, reset_at_epoch: bool = True, n_steps: int = 6000,
             every: int = 10, seed: int = 0, tbs: int | None = None) -> Path:
    """A fine-tune's trainer_state.json: a power-law descent times a log-sawtooth of `saw`
    (high at the start of each cycle, falling through it) under 5 % step noise, logged every
    `every` steps as the mean since the last log (as the Trainer does), with an epoch column.
    The saw's cycle is `saw_period` steps (default: one epoch); with `reset_at_epoch` it
    restarts at each epoch boundary, as a sampler does."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, n_steps + 1, dtype=np.float64)
    per = epoch_steps if saw_period is None else saw_period
    pos = (t - 1) % epoch_steps if reset_at_epoch else t - 1
    phase = (pos % per) / per
    loss = 2.0 * (1 + t / 300) ** -0.3 * np.exp(saw * (0.5 - phase)
                                                + rng.normal(0, 0.05, n_steps))
    recs = [{"epoch": round(k / epoch_steps, 4), "learning_rate": 2e-4,
             "loss": round(float(loss[k - every:k].mean()), 5), "step": k}
            for k in range(every, n_steps + 1, every)]
    doc: dict[str, object] = {"global_step": n_steps, "max_steps": n_steps,
                              "logging_steps": every, "log_history": recs}
    if tbs is not None:
        doc["train_batch_size"] = tbs
    path.write_text(json.dumps(doc))
    return path


def oscillations(path: Path) -> list[Finding]:
    run = analyze(read_log(path)).runs[0]
    return [f for f in run.findings if f.event.kind == "oscillation"]


@pytest.mark.parametrize("epoch_steps", [300, 412])
def test_epoch_sawtooth_has_the_epoch_period_and_is_called_one_epoch(
        tmp_path: Path, epoch_steps: int) -> None:
    (f,) = oscillations(hf_state(tmp_path / "trainer_state.json", epoch_steps=epoch_steps))
    assert f.event.period == pytest.approx(epoch_steps, abs=10)  # one logged point
    best = f.causes[0]
    assert best.cause == "data_order" and best.score >= 0.8
    assert best.summary.startswith(f"Period {f.event.period:.0f} steps = one epoch per the "
                                   f"epoch column ({epoch_steps} steps per epoch)")
    assert best.evidence["cycles_per_epoch"] == pytest.approx(1.0, abs=0.05)
    assert "shuffle" in best.remedy.lower()


def test_swing_at_another_period_is_not_called_one_epoch(tmp_path: Path) -> None:
    # a 130-step swing that runs on across epochs of 1,000 steps
    (f,) = oscillations(hf_state(tmp_path / "trainer_state.json", epoch_steps=1000,
                                 saw_period=130, reset_at_epoch=False))
    assert f.event.period == pytest.approx(130, abs=10)
    assert all("epoch" not in c.summary.lower() or "not one epoch" in c.summary
               for c in f.causes)
    assert "data_order" not in [c.cause for c in f.causes]
    (why,) = [s.reason for s in f.skipped if s.cause == "data_order"]
    assert "is not one epoch: 1,000 steps per epoch by the epoch column, 7.7 cycles" in why


def test_fifty_step_saw_restarting_each_epoch_is_a_length_grouped_megabatch(
        tmp_path: Path) -> None:
    # the QLoRA shape: 412 steps per epoch, the loss saws down every 50 steps
    (f,) = oscillations(hf_state(tmp_path / "trainer_state.json", epoch_steps=412,
                                 saw_period=50))
    assert f.event.period == pytest.approx(50, abs=5)
    best = f.causes[0]
    assert best.cause == "data_order"
    assert best.evidence["megabatch_steps"] == 50
    assert "length-grouped sampler" in best.summary
    assert "not one epoch: 412 steps per epoch by the epoch column, 8.2 cycles" in best.summary
    assert "group_by_length" in best.remedy


def test_same_run_without_the_saw_is_quiet(tmp_path: Path) -> None:
    for saw_period in (None, 50.0):
        path = hf_state(tmp_path / "trainer_state.json", epoch_steps=412, saw=0.0,
                        saw_period=saw_period)
        run = analyze(read_log(path)).runs[0]
        assert run.verdict == "healthy"
        assert run.findings == ()


def test_the_qlora_log_is_one_megabatch_not_one_epoch(shared: Path) -> None:
    path = shared / "real_logs/hf_trainer_state/qlora_25epochs_10000steps_trainer_state.json"
    if not path.exists():
        pytest.skip("shared real logs not present")
    (f,) = oscillations(path)
    assert f.event.period == 50
    best = f.causes[0]
    assert best.cause == "data_order" and best.evidence["megabatch_steps"] == 50
    assert "not one epoch: 412 steps per epoch" in best.summary


def test_trainer_state_batch_reaches_params_as_a_per_device_lower_bound(tmp_path: Path) -> None:
    path = hf_state(tmp_path / "trainer_state.json", epoch_steps=412, saw=0.0, tbs=4)
    assert read_log(path).params["micro_batch_size"] == 4
    (tmp_path / "bare").mkdir()
    bare = hf_state(tmp_path / "bare" / "trainer_state.json", epoch_steps=412, saw=0.0)
    assert "micro_batch_size" not in read_log(bare).params


def _erratic(micro: int) -> Finding:
    n = 2000
    step = np.arange(1, n + 1)
    loss = 1.5 * np.exp(np.random.default_rng(3).normal(0, 0.1, n))
    run = build_run(RawLog(frame=pd.DataFrame({"step": step, "loss": loss})), Path("b.csv"),
                    "csv")
    run = dataclasses.replace(run, params={"micro_batch_size": micro})
    e = Event(kind="oscillation", metric="loss", start_step=1, peak_step=11, end_step=n,
              recovered=False, size=Size(2.0, 1.2), period=None, amplitude=0.2)
    return explain(run, e, [e], Config())


def test_a_small_per_device_batch_is_only_a_bound_and_a_large_one_rules_noise_out() -> None:
    small = next(c for c in _erratic(2).causes if c.cause == "batch_noise")
    assert small.evidence["micro_batch_size"] == 2
    assert small.evidence["samples_per_step"] is None
    assert "at least that and may be many times larger" in small.summary
    assert small.score <= 0.3  # no stronger than a log that says nothing about the batch
    assert "batch_noise" not in [c.cause for c in _erratic(1024).causes]


def test_bench_trainer_state_batch_of_32_is_read() -> None:
    # tests/data/hf/r16_trainer_state.json is the bench's r16 (a CNN, batch 32, not
    # oscillating): with its batch known its noise is a batch of 32's, not an oscillation
    path = Path(__file__).parent / "data/hf/r16_trainer_state.json"
    assert read_log(path).params["micro_batch_size"] == 32
    run = analyze(read_log(path)).runs[0]
    assert [f.event.kind for f in run.findings] == ["spike"]


def _erratic_with_batch(batch: int, rho: float) -> Finding:
    """An erratic swing in a log whose samples counter says `batch` a step: white noise
    (rho = 0) or noise carried from step to step (AR(1), rho)."""
    n = 2000
    rng = np.random.default_rng(7)
    e = rng.normal(0, 0.3, n)
    for i in range(1, n):
        e[i] += rho * e[i - 1]
    step = np.arange(1, n + 1)
    run = build_run(RawLog(frame=pd.DataFrame({"step": step, "loss": 1.5 * np.exp(e),
                                                "samples": step * batch})),
                    Path("b.csv"), "csv")
    ev = Event(kind="oscillation", metric="loss", start_step=1, peak_step=11, end_step=n,
               recovered=False, size=Size(2.0, 1.2), period=None, amplitude=1.0)
    return explain(run, ev, [ev], Config())


def test_white_noise_of_a_known_small_batch_says_what_the_log_cannot_tell() -> None:
    bn = next(c for c in _erratic_with_batch(8, 0.0).causes if c.cause == "batch_noise")
    assert abs(bn.evidence["residual_lag1"]) < 0.1
    assert "is white (lag-1 autocorrelation" in bn.summary
    assert "cannot tell whether training is unstable beneath the noise" in bn.summary
    # a swing the loss carries from step to step is not called white sampling noise
    carried = next(c for c in _erratic_with_batch(8, 0.6).causes if c.cause == "batch_noise")
    assert carried.evidence["residual_lag1"] > 0.3
    assert "white" not in carried.summary


def test_a_small_per_device_batch_does_not_make_the_run_tiny_batch(tmp_path: Path) -> None:
    # a per-device batch of 1 (common in HF fine-tunes with gradient accumulation) says
    # nothing about the batch per step: the run is detected as if the batch were unknown
    from spikelens.detect import detect

    with_tbs = read_log(hf_state(tmp_path / "a.json", epoch_steps=412, saw=0.0, tbs=1))
    (tmp_path / "b").mkdir()
    bare = read_log(hf_state(tmp_path / "b" / "a.json", epoch_steps=412, saw=0.0))
    a, b = detect(with_tbs, Config()), detect(bare, Config())
    assert a.events == b.events and a.notes == b.notes
