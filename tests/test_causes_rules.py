"""Each cause rule on seeded synthetic runs whose cause is known by construction: the right
cause comes first, with the numbers a user would read in its evidence, and a rule whose metric
is missing says so. Runs go through the shared `build_run`, as a reader's output would."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.causes import CAUSES, FLOOR, OSCILLATION_CAUSES, OSCILLATION_ONLY, explain
from spikelens.model import Config, Event, Finding, Recurrence, Run, Size
from spikelens.readers._base import RawLog, build_run

N = 1600


def base_frame(seed: int, n: int = N, lr_peak: float = 1e-3) -> pd.DataFrame:
    """A healthy run: decaying noisy loss, warmup + cosine LR, noisy grad norm, counters."""
    rng = np.random.default_rng(seed)
    step = np.arange(1, n + 1)
    loss = (1.0 + 2.0 * np.exp(-step / 300)) * np.exp(rng.normal(0, 0.02, n))
    warm = 100
    lr = np.where(step <= warm, lr_peak * step / warm,
                  lr_peak * 0.5 * (1 + np.cos(np.pi * (step - warm) / (n - warm))))
    grad = 0.5 * np.exp(rng.normal(0, 0.1, n))
    return pd.DataFrame({"step": step, "loss": loss, "lr": lr, "grad_norm": grad,
                         "samples": step * 64, "tokens": step * 64 * 128})


def make_run(df: pd.DataFrame, name: str = "synthetic.csv") -> Run:
    return build_run(RawLog(frame=df.reset_index(drop=True)), Path(name), "csv")


def event(start: int, peak: int, end: int, *, kind: str = "spike", recovered: bool = True,
          ratio: float = 3.0) -> Event:
    return Event(kind=kind, metric="loss", start_step=start, peak_step=peak, end_step=end,
                 recovered=recovered, size=Size(z=12.0, ratio=ratio))


def run_explain(run: Run, ev: Event, rec: Recurrence | None = None) -> Finding:
    return explain(run, ev, [ev], Config(), rec)


def top(f: Finding) -> str:
    return f.causes[0].cause


def bump(df: pd.DataFrame, first: int, values: list[float]) -> None:
    """Multiply the loss from step `first` on by the given factors."""
    for k, factor in enumerate(values):
        df.loc[df.step == first + k, "loss"] *= factor


# ----------------------------------------------------------------------------- lr_schedule


def lr_jump_run(seed: int = 1) -> Run:
    df = base_frame(seed)
    at = df.step >= 1000
    df.loc[at, "lr"] *= 10  # the scheduler restored with a 10x base LR
    # the loss answers one step later and comes back over ~40 steps
    rise = np.concatenate([np.linspace(1.2, 1.9, 6), np.linspace(1.9, 1.0, 40)])
    bump(df, 1001, list(rise))
    return make_run(df)


def test_lr_jump_ranks_lr_schedule_first_with_ratio_and_lag() -> None:
    f = run_explain(lr_jump_run(), event(1001, 1006, 1046, ratio=1.9))
    best = f.causes[0]
    assert best.cause == "lr_schedule"
    assert best.score >= 0.9
    assert best.evidence["jump_ratio"] == pytest.approx(10.0, rel=0.01)
    assert best.evidence["jump_step"] == 1000
    assert best.evidence["jump_lag_steps"] == 1
    assert "LR jumped 10.0x" in best.summary
    assert "at step 1000, 1 step before the loss rose at 1001" in best.summary
    assert "restart from a checkpoint before step 1000" in best.remedy


def test_lr_change_after_the_rise_is_not_evidence() -> None:
    df = base_frame(2)
    df.loc[df.step >= 1100, "lr"] *= 10  # long after the one-step spike at 1000
    bump(df, 1000, [4.0])
    f = run_explain(make_run(df), event(1000, 1000, 1001, ratio=4.0))
    assert top(f) == "bad_batch"
    assert "lr_schedule" not in [c.cause for c in f.causes]


def test_resume_that_lost_the_scheduler_state() -> None:
    # steps 1..1100 logged, then a resume from the step-1000 checkpoint whose scheduler
    # started over: a 100-step warmup back to the peak, and the loss rises at its end
    first = base_frame(3).iloc[:1100]
    second = base_frame(4).iloc[1000:].copy()
    k = second.step.to_numpy() - 1000
    second["lr"] = np.where(k <= 100, 1e-3 * k / 100, 1e-3)
    second["loss"] = second["loss"].to_numpy()
    df = pd.concat([first, second])
    run = make_run(df)
    assert run.restarts and run.restarts[0].resumed_at == 1001
    frame = run.frame
    col = run.roles["loss"]
    frame.loc[1101:1110, col] *= np.linspace(1.6, 1.1, 10)
    f = run_explain(run, event(1101, 1101, 1112, ratio=1.6))
    best = f.causes[0]
    assert best.cause == "lr_schedule"
    assert best.evidence["resumed_at"] == 1001
    assert best.summary == (
        "After the resume at step 1001 the LR climbed back to 1.0e-3 by step 1100, 2.8x the "
        "3.5e-4 it had before the resume, 1 step before the loss rose at 1101.")
    assert best.remedy.startswith("Restore the LR scheduler state when resuming: at step 1001 the "
                                  "LR should have continued near 3.5e-4, not returned to 1.0e-3")


def test_end_of_warmup() -> None:
    df = base_frame(5)
    rise = np.concatenate([np.linspace(1.1, 1.6, 5), np.linspace(1.6, 1.0, 30)])
    bump(df, 103, list(rise))
    f = run_explain(make_run(df), event(103, 107, 138, ratio=1.6))
    best = f.causes[0]
    assert best.cause == "lr_schedule"
    assert best.evidence["warmup_end"] is True
    assert best.summary == (
        "The warmup ended: LR reached its peak 1.0e-3 at step 100 (a 100-step ramp from 1.0e-5), "
        "3 steps before the loss rose at 103.")
    assert best.remedy == (
        "Lengthen the warmup from 100 to about 200 steps, or lower the peak LR from 1.0e-3 to "
        "about 5.0e-4.")


# ----------------------------------------------------------------------------- grad_explosion


def grad_ramp_run(seed: int = 6) -> Run:
    df = base_frame(seed)
    df.loc[df.step > 100, "lr"] = 1e-3  # constant LR after warmup
    for k, factor in enumerate([3, 9, 27, 81, 243]):  # five steps of growth before the loss
        df.loc[df.step == 995 + k, "grad_norm"] *= factor
    df.loc[df.step == 1000, "grad_norm"] *= 600
    bump(df, 1000, list(np.concatenate([[2.5], np.linspace(2.0, 1.0, 20)])))
    return make_run(df)


def test_grad_norm_ramp_before_the_loss_is_grad_explosion() -> None:
    f = run_explain(grad_ramp_run(), event(1000, 1000, 1020, ratio=2.5))
    best = f.causes[0]
    assert best.cause == "grad_explosion"
    assert best.score >= 0.9
    assert best.evidence["grad_precursor_step"] == 999
    assert best.evidence["grad_precursor_ratio"] == pytest.approx(243, rel=0.35)
    assert best.evidence["precursor_points"] == 4  # 995 (3x) is below the noise threshold
    assert "before the loss rose at step 1000" in best.summary
    assert "LR constant" in best.summary
    assert "clip the global grad norm at about" in best.remedy.lower()
    # a bad batch is still considered, but far behind
    bb = next(c for c in f.causes if c.cause == "bad_batch")
    assert bb.score < 0.4


def test_grad_norm_logged_as_zero_is_skipped_not_evidence() -> None:
    df = base_frame(7)
    df["grad_norm"] = 0.0
    bump(df, 1000, [3.0])
    f = run_explain(make_run(df), event(1000, 1000, 1001))
    reasons = {s.cause: s.reason for s in f.skipped}
    assert reasons["grad_explosion"] == (
        "grad_norm is 0 at every logged step (not computed), so it carries no signal")
    assert top(f) == "bad_batch"


def test_per_layer_norm_that_went_first_is_named() -> None:
    df = base_frame(8)
    df.loc[df.step > 100, "lr"] = 1e-3
    rng = np.random.default_rng(0)
    df["grad_norm/attn.3"] = 0.2 * np.exp(rng.normal(0, 0.05, len(df)))
    df["grad_norm/mlp.3"] = 0.2 * np.exp(rng.normal(0, 0.05, len(df)))
    for k, factor in enumerate([4, 16, 64, 256]):
        df.loc[df.step == 996 + k, "grad_norm/attn.3"] *= factor
        df.loc[df.step == 997 + k, "grad_norm/mlp.3"] *= factor
        df.loc[df.step == 996 + k, "grad_norm"] *= factor
    bump(df, 1000, [2.5, 1.5, 1.2])
    f = run_explain(make_run(df), event(1000, 1000, 1003, ratio=2.5))
    best = f.causes[0]
    assert best.cause == "grad_explosion"
    assert best.evidence["first_layer"] == "grad_norm/attn.3"
    assert best.evidence["first_layer_step"] == 996


# ----------------------------------------------------------------------------- amp_overflow


def amp_frame(seed: int = 9) -> pd.DataFrame:
    df = base_frame(seed)
    # a healthy fp16 sawtooth: the scale doubles every 200 clean steps and is halved by the
    # overflow that follows; the first 4 steps are the start-up calibration
    scale = np.full(len(df), 65536.0)
    scale[:4] = [2.0**24, 2.0**23, 2.0**22, 2.0**21]
    skipped = np.zeros(len(df))
    skipped[:4] = 1
    grown = np.arange(150, len(df) - 1, 200)  # 0-based rows: steps 151, 351, ...
    scale[grown] = 131072.0
    skipped[grown + 1] = 1  # the overflow at the new ceiling, scale back to 65536
    df["loss_scale"] = scale
    df["skipped"] = skipped
    df.loc[df.index[:4], "loss"] = np.nan
    return df


def test_loss_scale_storm_is_amp_overflow() -> None:
    df = amp_frame()
    storm = (df.step >= 1000) & (df.step < 1008)
    base = df.loc[df.step == 999, "loss_scale"].iloc[0]
    df.loc[storm, "loss_scale"] = base / 2.0 ** np.arange(1, 9)
    df.loc[df.step >= 1008, "loss_scale"] = base / 2.0**8
    df.loc[storm, "skipped"] = 1
    df.loc[storm, "loss"] = np.inf
    bump(df, 1008, list(np.linspace(2.0, 1.0, 30)))
    run = make_run(df)
    f = run_explain(run, event(1000, 1000, 1040, kind="nonfinite", ratio=math.inf))
    best = f.causes[0]
    assert best.cause == "amp_overflow"
    assert best.score >= 0.9
    assert best.evidence["scale_cuts"] == 8
    assert best.evidence["skipped_steps"] == 8
    assert best.evidence["nonfinite_skipped"] == 8
    assert best.evidence["halvings_below_earlier_min"] == 8
    assert best.summary.startswith(
        "Loss scale fell from 65,536 to 256 (256x, 8 logged cuts from step 1000)")
    assert "bf16" in best.remedy
    numerical = next(c for c in f.causes if c.cause == "numerical")
    assert numerical.score < 0.3
    assert numerical.evidence["loss_scale_involved"] is True


def test_routine_overflow_at_the_ceiling_is_not_evidence() -> None:
    df = amp_frame()
    bump(df, 953, [4.0])  # a bad batch right after the routine overflow at step 952
    f = run_explain(make_run(df), event(953, 953, 954, ratio=4.0))
    assert top(f) == "bad_batch"
    amp = next(c for c in f.causes if c.cause == "amp_overflow")
    assert amp.score <= 0.15
    assert amp.evidence["calibration_end"] == 5  # the scale last fell at step 5
    assert "within the run's routine overflow rate" in amp.summary


# ----------------------------------------------------------------------------- bad_batch


def test_one_step_spike_with_nothing_else_is_bad_batch() -> None:
    df = base_frame(10)
    bump(df, 1000, [5.0])
    df.loc[df.step == 1000, "grad_norm"] *= 4  # the grad norm may jump on the same step
    f = run_explain(make_run(df), event(1000, 1000, 1001, ratio=5.0))
    best = f.causes[0]
    assert best.cause == "bad_batch"
    assert best.score >= 0.7
    assert best.evidence["suspect_first_step"] == 1000
    assert best.evidence["position_axis"] == "tokens"
    assert best.evidence["position_first"] == 999 * 64 * 128
    assert best.evidence["position_last"] == 1000 * 64 * 128
    assert "no LR change, no grad-norm rise before it" in best.summary
    assert "consumed tokens 8,183,808-8,192,000" in best.remedy
    assert all(c.score < 0.3 for c in f.causes[1:])


def test_recurrence_raises_bad_batch() -> None:
    df = base_frame(11)
    df = df[["step", "loss"]].copy()
    bump(df, 918, [1.4])
    run = make_run(df, "a.log")
    ev = event(918, 918, 919, ratio=1.4)
    alone = run_explain(run, ev)
    rec = Recurrence(axis="step", position=918.0, members=(("a.log", 918), ("b.log", 919)))
    together = run_explain(run, ev, rec)
    a = next(c for c in alone.causes if c.cause == "bad_batch")
    t = next(c for c in together.causes if c.cause == "bad_batch")
    assert t.score >= a.score + 0.3 - 1e-9
    assert t.evidence["recurs_in_runs"] == 1
    assert "the same step also spiked in 1 other run (b.log@919)" in t.summary
    assert "remove or fix those samples" in t.remedy
    # a recurrence that does not hold this event changes nothing
    other = Recurrence(axis="step", position=500.0, members=(("a.log", 500), ("b.log", 500)))
    assert run_explain(run, ev, other).causes[0].score == a.score


# ----------------------------------------------------------------------------- optimizer_state


def eps_run(seed: int = 12) -> Run:
    """Full-batch regression with a tiny Adam epsilon: loss and gradients decay by orders of
    magnitude for a long stretch, then the fit goes unstable."""
    rng = np.random.default_rng(seed)
    step = np.arange(1, 2001)
    loss = 3.0 * np.exp(-step / 45.0) + 1e-14
    loss = np.maximum(loss, 5e-14) * np.exp(rng.normal(0, 0.2, len(step)))
    grad = np.sqrt(loss) * 1.5
    blow = (step >= 1500) & (step < 1516)
    loss[blow] = loss[blow] * 4.0 ** np.arange(1, 17)
    grad[blow] = grad[blow] * 2.0 ** np.arange(1, 17)
    df = pd.DataFrame({"step": step, "loss": loss, "lr": 3e-3, "grad_norm": grad})
    return make_run(df)


def test_long_stretch_of_tiny_grads_then_spike_is_optimizer_state() -> None:
    f = run_explain(eps_run(), event(1500, 1515, 1600, ratio=1e9))
    best = f.causes[0]
    assert best.cause == "optimizer_state"
    assert best.score >= 0.9
    assert best.evidence["collapse_ratio"] > 1e5
    assert best.evidence["suggested_eps"] == 1e-6
    assert best.remedy.startswith("Raise Adam's epsilon to about 1e-06 (the pre-spike grad norm")
    assert all(c.score < 0.5 for c in f.causes[1:])


def test_resume_without_optimizer_state() -> None:
    first = base_frame(13).iloc[:1000]
    second = base_frame(14).iloc[900:].copy()  # resumed from the step-900 checkpoint
    df = pd.concat([first, second])
    run = make_run(df)
    col = run.roles["loss"]
    run.frame.loc[903:920, col] *= np.linspace(2.0, 1.0, 18)
    f = run_explain(run, event(903, 903, 921, ratio=2.0))
    opt = next(c for c in f.causes if c.cause == "optimizer_state")
    assert opt.evidence["resumed_at"] == 901
    assert opt.remedy.startswith("Restore the optimizer state (Adam moments and step count) when "
                                 "resuming at step 901")


# ----------------------------------------------------------------------------- numerical


def test_nan_without_precursor_is_numerical() -> None:
    df = base_frame(15)
    df.loc[df.step >= 1000, "loss"] = np.nan
    df.loc[df.step >= 1000, "grad_norm"] = np.nan
    run = make_run(df.astype({"loss": object, "grad_norm": object}).fillna("nan"))
    f = run_explain(run, event(1000, 1000, N, kind="nonfinite", recovered=False,
                               ratio=math.inf))
    best = f.causes[0]
    assert best.cause == "numerical"
    assert best.score >= 0.8
    assert best.evidence["first_nonfinite_step"] == 1000
    assert best.evidence["first_series"] == "grad_norm,loss"
    assert "went non-finite first, at step 1000 (loss NaN)" in best.summary
    assert "the loss never became finite again" in best.summary
    assert "log(x.clamp_min(1e-12))" in best.remedy


def test_nan_after_a_blow_up_is_not_numerical() -> None:
    df = base_frame(16)
    df.loc[df.step > 100, "lr"] = 1e-3
    for k, factor in enumerate([4, 20, 100, 500, 2500]):
        df.loc[df.step == 995 + k, "grad_norm"] *= factor
    df.loc[df.step >= 1000, ["loss", "grad_norm"]] = np.inf
    f = run_explain(make_run(df), event(1000, 1000, N, kind="nonfinite", recovered=False,
                                        ratio=math.inf))
    assert top(f) == "grad_explosion"
    num = next(c for c in f.causes if c.cause == "numerical")
    assert num.score < 0.3
    assert "preceded by growth" in num.summary


# ----------------------------------------------------------------------------- skipped / unknown


def test_missing_metrics_are_skipped_with_reasons() -> None:
    df = base_frame(17)[["step", "loss"]].copy()
    bump(df, 1000, [3.0])
    f = run_explain(make_run(df), event(1000, 1000, 1001))
    reasons = {s.cause: s.reason for s in f.skipped}
    assert reasons == {
        "lr_schedule": "needs lr, not in this log",
        "grad_explosion": "needs grad_norm, not in this log",
        "amp_overflow": "needs loss_scale or skipped, not in this log",
        "optimizer_state": "needs grad_norm or update_norm, not in this log",
        "distributed": "needs per-rank series, a global batch size or world size, error "
                       "lines or a step time; none in this log",
        "model_stats": "needs param_norm, an update/param ratio or per-layer weight, "
                       "activation or attention-logit statistics; none in this log",
    }
    assert top(f) == "bad_batch"
    assert "no grad norm, LR or loss scale in this log to check it against" \
        in f.causes[0].summary


def test_nothing_above_the_floor_is_unknown() -> None:
    df = base_frame(18)[["step", "loss"]].copy()
    # a slow rise that never comes back: no mechanism in this log explains it
    df.loc[df.step >= 1000, "loss"] *= np.linspace(1.0, 2.0, N - 999)
    f = run_explain(make_run(df), event(1050, N, N, kind="divergence", recovered=False,
                                        ratio=2.0))
    assert top(f) == "unknown"
    assert f.causes[0].score == FLOOR
    assert "no cause reached 0.25" in f.causes[0].summary.lower()
    assert "log lr, grad_norm and loss_scale (for fp16 runs)" in f.causes[0].remedy


def test_oscillation_gets_only_oscillation_causes() -> None:
    df = base_frame(19)
    ev = Event(kind="oscillation", metric="loss", start_step=200, peak_step=300, end_step=900,
               recovered=True, size=Size(3.0, 1.2), period=2.0, amplitude=0.2)
    f = explain(make_run(df), ev, [ev], Config())
    assert f.causes
    judged = {c.cause for c in f.causes} | {s.cause for s in f.skipped}
    assert judged <= set(OSCILLATION_CAUSES) | {"unknown"}


def test_scores_sorted_and_json_safe() -> None:
    for run, ev in [(lr_jump_run(), event(1001, 1006, 1046)),
                    (grad_ramp_run(), event(1000, 1000, 1020)),
                    (eps_run(), event(1500, 1515, 1600))]:
        f = run_explain(run, ev)
        scores = [c.score for c in f.causes]
        assert scores == sorted(scores, reverse=True)
        for c in f.causes:
            assert 0.0 <= c.score <= 1.0
            assert c.summary.endswith(".") and c.remedy.endswith(".")
            for v in c.evidence.values():
                assert v is None or isinstance(v, (bool, int, float, str))
                if isinstance(v, float):
                    assert math.isfinite(v)


def test_every_registered_cause_is_top_in_some_sample() -> None:
    samples = [
        (lr_jump_run(), event(1001, 1006, 1046)),
        (grad_ramp_run(), event(1000, 1000, 1020)),
        (eps_run(), event(1500, 1515, 1600)),
    ]
    df = base_frame(20)
    bump(df, 1000, [5.0])
    samples.append((make_run(df), event(1000, 1000, 1001)))
    df = base_frame(21)
    df.loc[df.step == 1000, "loss"] = np.inf
    samples.append((make_run(df), event(1000, 1000, 1001, kind="nonfinite")))
    df = amp_frame(22)
    storm = (df.step >= 1000) & (df.step < 1006)
    df.loc[storm, "loss_scale"] = 65536 / 2.0 ** np.arange(1, 7)
    df.loc[df.step >= 1006, "loss_scale"] = 1024.0
    df.loc[storm, "skipped"] = 1
    bump(df, 1006, list(np.linspace(2.0, 1.0, 20)))
    samples.append((make_run(df), event(1006, 1006, 1030)))
    # issue 14: one layer's attention logits climb 8x before the rise (model_stats) ...
    df = base_frame(23)
    logits = 40.0 * np.exp(np.random.default_rng(23).normal(0, 0.01, N))
    logits[989:999] *= np.geomspace(1.0, 8.0, 10)
    logits[999:] *= 8.0
    df["layer3/attn_logits_max"] = logits
    bump(df, 1000, [5.0])
    samples.append((make_run(df), event(1000, 1000, 1001)))
    # ... and one of four ranks leaves the others for good (distributed)
    df = base_frame(24)
    for r in range(4):
        df[f"rank{r}/loss"] = df.loss * (1 + 0.003 * r)
    for col in ("loss", "rank3/loss"):
        df.loc[df.step >= 1000, col] *= 1.8
    samples.append((make_run(df), event(1000, 1000, N, kind="divergence", recovered=False,
                                        ratio=1.8)))
    tops = {run_explain(r, e).causes[0].cause for r, e in samples}
    # the oscillation-only causes are shown in tests/test_causes_oscillation.py
    assert set(CAUSES.names()) - set(OSCILLATION_ONLY) <= tops


# ----------------------------------------------------------------------------- log dialects


def test_megatron_nan_counter_counts_as_non_finite() -> None:
    # Megatron prints no loss for a NaN iteration; it counts it in "number of nan iterations"
    df = base_frame(23)
    df["number of nan iterations"] = 0.0
    df.loc[df.step == 1000, "number of nan iterations"] = 1.0
    df.loc[df.step == 1000, ["loss", "grad_norm"]] = np.nan
    bump(df, 1001, [1.6, 1.3, 1.1])
    run = make_run(df)
    assert run.roles["nan_count"] == "number of nan iterations"
    f = run_explain(run, event(1000, 1001, 1004, ratio=1.6))
    best = f.causes[0]
    assert best.cause == "numerical"
    assert best.evidence["first_nonfinite_step"] == 1000
    assert best.evidence["first_series"] == "nan_count"


def test_cumulative_skip_counter_is_read_as_increments() -> None:
    # DeepSpeed logs `skipped=K` as a running total: 3 routine skips, then 6 in a burst
    df = amp_frame(24).drop(columns=["skipped"])
    total = np.zeros(len(df))
    for s in (300, 700, 1100):
        total[df.step >= s] += 1
    burst = (df.step >= 1000) & (df.step < 1006)
    total += np.cumsum(burst.to_numpy())
    df["skipped"] = total
    bump(df, 1006, list(np.linspace(2.0, 1.0, 20)))
    f = run_explain(make_run(df), event(1006, 1006, 1026, ratio=2.0))
    amp = next(c for c in f.causes if c.cause == "amp_overflow")
    assert amp.evidence["skipped_steps"] == 6


def test_grad_norm_surge_event_gets_no_causes() -> None:
    df = base_frame(25)
    ev = Event(kind="spike", metric="grad_norm", start_step=800, peak_step=800, end_step=801,
               recovered=True, size=Size(9.0, 5.0))
    assert explain(make_run(df), ev, [ev], Config()).causes == ()


def test_overflow_storm_before_the_first_logged_loss_is_one_storm() -> None:
    # Megatron prints no loss on a skipped iteration: a 30-step storm is invisible in the loss
    # and the event starts at the first loss logged after it
    df = amp_frame(26)
    storm = (df.step >= 970) & (df.step < 1000)
    df.loc[storm, "loss_scale"] = 65536 / 2.0 ** np.arange(1, 31)
    df.loc[df.step >= 1000, "loss_scale"] = 65536 / 2.0**30
    df.loc[storm, "skipped"] = 1
    df.loc[storm, "loss"] = np.nan  # not logged
    bump(df, 1000, list(np.linspace(1.8, 1.0, 30)))
    f = run_explain(make_run(df), event(1000, 1000, 1030, ratio=1.8))
    best = f.causes[0]
    assert best.cause == "amp_overflow"
    assert best.evidence["scale_cuts"] == 30
    assert best.evidence["skipped_steps"] == 30
    assert best.evidence["first_cut_step"] == 970
    assert "the first cut came 30 steps before the loss rose at step 1000" in best.summary
    assert "the scale collapsed to 6.1e-5 (below 1: gradients underflow)" in best.summary
