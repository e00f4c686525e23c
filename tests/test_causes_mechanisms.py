"""The mechanisms of issue 9, each on a constructed signal whose answer is known, next to the
opposite case that must keep its cause: a bad batch costs one step; an averaged log bounds
what one batch can do; stale grad norms and loss-scale cuts that follow the rise are
symptoms; clipping already in force is never advised looser; cross-run coincidence counts
only when the runs differ; evidence numbers are the log's own, at full precision."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd

from spikelens.align import find_recurrences
from spikelens.causes import explain
from spikelens.causes._window import fmt, lag_words, num, stale_mask
from spikelens.causes.labels import EVIDENCE_LABELS
from spikelens.model import Config, Event, Finding, Recurrence, Run, Size
from spikelens.readers._base import RawLog, build_run


def frame(n: int = 1600, seed: int = 0, level: float = 4.8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    step = np.arange(1, n + 1)
    loss = level * np.exp(rng.normal(0, 0.01, n))
    return pd.DataFrame({"step": step, "loss": loss})


def make(df: pd.DataFrame, **changes: object) -> Run:
    run = build_run(RawLog(frame=df.reset_index(drop=True)), Path("m.csv"), "csv")
    return dataclasses.replace(run, **changes) if changes else run  # type: ignore[arg-type]


def ev(start: int, peak: int, end: int, recovered: bool = True, baseline: float | None = None,
       kind: str = "spike") -> Event:
    return Event(kind=kind, metric="loss", start_step=start, peak_step=peak, end_step=end,
                 recovered=recovered, size=Size(z=12.0, ratio=3.0), baseline=baseline)


def one(run: Run, e: Event, rec: Recurrence | None = None) -> Finding:
    return explain(run, e, [e], Config(), rec)


def cause(f: Finding, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in f.causes if c.cause == name)


# ------------------------------------------------------------ 1. a bad batch costs one step


def damaged(df: pd.DataFrame, at: int = 1000) -> None:
    """4.8 -> 270 at `at`, then a slow decay: still ~6x its level 70 steps later."""
    k = np.arange(0, 120)
    factor = 1 + (270 / 4.8 - 1) * np.exp(-k / 9.0) + 5.0 * np.exp(-k / 200.0)
    rows = df.step.between(at, at + 119)
    df.loc[rows, "loss"] = df.loc[rows, "loss"].to_numpy() * factor


def test_slow_decay_after_a_jump_is_damage_not_a_bad_batch() -> None:
    df = frame()
    damaged(df)
    df.loc[df.step == 999, "loss"] = 4.82
    df.loc[df.step == 1000, "loss"] = 270.0
    f = one(make(df), ev(1000, 1000, 1119))
    assert f.causes[0].cause != "bad_batch"
    bb = cause(f, "bad_batch")
    assert bb.score < 0.25
    assert "weight damage from an oversized update" in bb.summary
    assert "4.82 -> 270" in bb.summary  # the point before the rise, not an earlier level
    # in a loss-only log the oversized update is the lead, with the missing grad norm named
    top = f.causes[0]
    assert top.cause == "grad_explosion"
    assert "grad norm is not logged" in top.summary


def test_one_step_jump_of_the_same_size_stays_a_bad_batch() -> None:
    df = frame()
    df.loc[df.step == 1000, "loss"] *= 270 / 4.8
    f = one(make(df), ev(1000, 1000, 1001))
    assert f.causes[0].cause == "bad_batch"
    assert f.causes[0].score >= 0.6
    assert "weight damage" not in f.causes[0].summary
    skipped = {s.cause for s in f.skipped}
    assert "grad_explosion" in skipped  # nothing to say without a grad norm or damage


def test_next_batches_at_the_uniform_guess_loss_is_damage() -> None:
    vocab = 50257  # ln = 10.82
    df = frame(level=3.0)
    df.loc[df.step == 1000, "loss"] = 30.0
    df.loc[df.step.between(1001, 1003), "loss"] = 10.5  # the next, normal batches
    f = one(make(df, params={"vocab_size": vocab}), ev(1000, 1000, 1004))
    bb = cause(f, "bad_batch")
    assert "uniform-guess loss ln(vocab) = 10.8" in bb.summary
    assert f.causes[0].cause != "bad_batch"
    assert bb.evidence["uniform_guess_loss"] == math.log(vocab)


def test_a_bad_batch_above_the_uniform_loss_with_normal_next_batches_keeps_its_cause() -> None:
    df = frame(level=3.0)
    df.loc[df.step == 1000, "loss"] = 30.0  # random tokens: a trained model is confident
    f = one(make(df, params={"vocab_size": 50257}), ev(1000, 1000, 1001))
    assert f.causes[0].cause == "bad_batch"


# ------------------------------------------------------------ 2. averaged logs


def averaged_run(peak: float) -> Run:
    df = frame(n=300, level=6.4)
    df["step"] = df.step * 10
    df.loc[df.step == 2000, "loss"] = peak
    return make(df, averaged=True, interval=10, format="megatron")


def test_averaged_mean_that_one_batch_cannot_lift_is_damage() -> None:
    run = averaged_run(11.4)
    f = one(run, ev(2000, 2000, 2010))
    bb = cause(f, "bad_batch")
    assert bb.evidence["one_batch_loss_needed"] > 50  # 6.4 + 10 x 5.0
    assert "one batch would have needed a loss of about 56" in bb.summary
    assert f.causes[0].cause != "bad_batch"


def test_averaged_mean_that_one_batch_can_lift_stays_a_bad_batch() -> None:
    run = averaged_run(7.6)  # one batch at ~18.4 nats among 10: plausible bad data
    f = one(run, ev(2000, 2000, 2010))
    assert f.causes[0].cause == "bad_batch"
    assert "weight damage" not in f.causes[0].summary


# ------------------------------------------------------------ 3. skipped steps, AMP, stale


def grad_frame(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 1600
    step = np.arange(1, n + 1)
    return pd.DataFrame({
        "step": step,
        "loss": 2.0 * np.exp(rng.normal(0, 0.02, n)),
        "lr": 1e-3,
        "grad_norm": 0.5 * np.exp(rng.normal(0, 0.1, n)),
    })


def test_grad_norm_repeated_verbatim_on_skipped_steps_is_one_measurement() -> None:
    # one real measurement at 994, then the same value printed on 5 skipped steps: the
    # log shows one high grad norm, not a six-step climb
    df = grad_frame()
    df.loc[df.step.between(994, 999), "grad_norm"] = 7.531
    df.loc[df.step == 1000, "loss"] *= 4
    ge = cause(one(make(df), ev(1000, 1000, 1001)), "grad_explosion")
    assert ge.evidence["precursor_points"] == 1
    assert ge.evidence["grad_precursor_step"] == 994
    assert "over steps 993-994, before the loss rose" in ge.summary  # not up to 999


def test_a_real_grad_climb_counts_every_point() -> None:
    df = grad_frame()
    for k, v in enumerate([7.5, 8.1, 9.6, 12.4, 25.3]):
        df.loc[df.step == 995 + k, "grad_norm"] = v
    df.loc[df.step == 1000, "loss"] *= 4
    f = one(make(df), ev(1000, 1000, 1001))
    assert f.causes[0].cause == "grad_explosion"
    assert f.causes[0].evidence["precursor_points"] == 5


def test_stale_mask_keeps_the_first_value() -> None:
    v = np.array([1.0, 2.0, 2.0, 2.0, 3.0, 3.0])
    assert stale_mask(v).tolist() == [False, False, True, True, False, False]


def amp_df(cut_at: int) -> pd.DataFrame:
    df = grad_frame(5)
    scale = np.full(len(df), 65536.0)
    rows = df.step >= cut_at
    scale[rows.to_numpy()] = 65536.0 / 2 ** np.minimum(np.arange(int(rows.sum())) + 1, 6)
    df["loss_scale"] = scale
    k = np.arange(30)
    df.loc[df.step.between(1000, 1029), "loss"] *= 1 + 2.0 * np.exp(-k / 4)
    return df


def test_scale_cuts_after_the_rise_are_a_symptom() -> None:
    f = one(make(amp_df(cut_at=1006)), ev(1000, 1000, 1030))
    amp = cause(f, "amp_overflow")
    assert amp.evidence["cuts_follow_rise"] is True
    assert "6 steps after the loss began to rise at step 1000" in amp.summary
    assert "a symptom, not the cause" in amp.summary
    before = one(make(amp_df(cut_at=995)), ev(1000, 1000, 1030))
    amp_before = cause(before, "amp_overflow")
    assert amp_before.evidence["cuts_follow_rise"] is False
    assert before.causes[0].cause == "amp_overflow"
    assert amp.score <= 0.5 * amp_before.score + 1e-9
    assert "5 steps before the loss rose at step 1000" in amp_before.summary


def test_amp_remedy_never_sets_a_floor_above_where_the_scale_went() -> None:
    f = one(make(amp_df(cut_at=995)), ev(1000, 1000, 1030))
    amp = cause(f, "amp_overflow")
    assert amp.evidence["scale_min"] == 1024.0
    assert "no higher than 1,024" in amp.remedy
    assert "ends the run" in amp.remedy


def test_megatron_iteration_without_a_loss_at_a_scale_cut_is_non_finite() -> None:
    df = amp_df(cut_at=995)
    df.loc[df.step.between(995, 999), "loss"] = np.nan  # the line printed no lm loss
    run = make(df, format="megatron")
    f = one(run, ev(1000, 1000, 1030))
    amp = cause(f, "amp_overflow")
    assert amp.evidence["missing_loss_at_cuts"] == 5
    assert "printed no loss" in amp.summary
    csv = one(make(df), ev(1000, 1000, 1030))
    assert cause(csv, "amp_overflow").evidence["missing_loss_at_cuts"] == 0


# ------------------------------------------------------------ 4. clipping already in force


def climb_df(base: float) -> pd.DataFrame:
    df = grad_frame(7)
    df["grad_norm"] *= base / 0.5
    for k, factor in enumerate([3, 9, 27, 81, 243]):
        df.loc[df.step == 995 + k, "grad_norm"] *= factor
    df.loc[df.step.between(1000, 1019), "loss"] *= np.linspace(2.5, 1.0, 20)
    return df


def test_clip_in_force_is_never_advised_looser() -> None:
    # the log's normal grad norm (5) sits above the configured clip (1.0): already clipping
    run = make(climb_df(5.0), params={"clip_grad": 1.0})
    best = one(run, ev(1000, 1000, 1020)).causes[0]
    assert best.cause == "grad_explosion"
    assert "clip the global grad norm at" not in best.remedy.lower()
    assert "clipping at 1.0 was already in force" in best.remedy
    assert "lower the LR" in best.remedy and "beta2" in best.remedy
    assert best.evidence["clip_threshold"] is None
    assert "already active on most steps" in best.summary


def test_clip_below_the_one_in_force_is_still_advised() -> None:
    run = make(climb_df(0.5), params={"clip_grad": 10.0})
    best = one(run, ev(1000, 1000, 1020)).causes[0]
    assert best.cause == "grad_explosion"
    assert "clip the global grad norm at about" in best.remedy.lower()
    assert best.evidence["clip_threshold"] < 10.0
    assert best.evidence["clip_in_force"] == 10.0


def test_megatron_default_clip_counts_when_params_are_silent() -> None:
    best = one(make(climb_df(5.0), format="megatron"), ev(1000, 1000, 1020)).causes[0]
    assert "the framework's default clip" in best.summary
    assert best.evidence["clip_in_force"] == 1.0


# ------------------------------------------------------------ 5. recurrence across runs


def twin(name: str, params: dict[str, object]) -> Run:
    df = grad_frame(11)[["step", "loss"]].copy()
    df.loc[df.step.between(918, 940), "loss"] *= np.linspace(1.8, 1.05, 23)  # a slow rise
    run = build_run(RawLog(frame=df), Path(name), "csv")
    return dataclasses.replace(run, params=params)


def test_runs_sharing_seed_and_schedule_do_not_make_a_slow_rise_a_bad_batch() -> None:
    runs = [twin("a.log", {"seed": 1, "lr": 1e-3}), twin("b.log", {"seed": 1, "lr": 1e-3})]
    e = ev(918, 918, 941)
    recs = find_recurrences(runs, [[e], [e]])
    assert len(recs) == 1 and recs[0].differ == ()
    alone = cause(one(runs[0], e), "bad_batch")
    shared = cause(one(runs[0], e, recs[0]), "bad_batch")
    assert shared.score == alone.score
    assert "share seed, data order and LR schedule" in shared.summary


def test_runs_that_differ_in_seed_make_the_recurrence_count() -> None:
    runs = [twin("a.log", {"seed": 1, "lr": 1e-3}), twin("b.log", {"seed": 2, "lr": 1e-3})]
    e = ev(918, 918, 941)
    recs = find_recurrences(runs, [[e], [e]])
    assert recs[0].differ == ("seed",)
    alone = cause(one(runs[0], e), "bad_batch")
    rec = cause(one(runs[0], e, recs[0]), "bad_batch")
    assert rec.score >= alone.score + 0.3 - 1e-9
    assert "runs that differ in seed" in rec.summary


# ------------------------------------------------------------ evidence true to the log


def test_numbers_are_kept_at_full_precision() -> None:
    assert num(1048576.0) == 1048576.0
    assert num(0.123456789123) == 0.123456789123
    assert num(float("inf")) is None and num(float("nan")) is None
    assert fmt(1048576.0) == "1,048,576"


def test_lags_read_as_people_say_them() -> None:
    assert lag_words(2, "the rise") == "2 steps before the rise"
    assert lag_words(1, "the rise") == "1 step before the rise"
    assert lag_words(0, "the rise") == "at the same step as the rise"
    assert lag_words(-3, "the rise") == "3 steps after the rise"


def test_short_baseline_reports_the_ratio_and_says_so() -> None:
    df = pd.DataFrame({"step": [10, 20, 30, 40, 50], "loss": [6.4, 6.3, 13.0, 6.5, 6.4]})
    f = one(make(df), ev(30, 30, 40, baseline=6.35))
    bb = cause(f, "bad_batch")
    assert "too few for a z-score" in bb.summary
    assert bb.evidence["baseline_points"] == 2
    assert "6.3 -> 13" in bb.summary


def test_recovery_is_never_claimed_across_a_gap() -> None:
    df = frame(n=1000)
    df.loc[df.step == 999, "loss"] *= 5
    df = df[(df.step < 1000) | (df.step > 1000)]
    df = pd.concat([df, pd.DataFrame({"step": [1749, 1750], "loss": [4.8, 4.81]})])
    f = one(make(df), ev(999, 999, 1750))
    bb = cause(f, "bad_batch")
    assert "gap from step 999 to 1749" in bb.summary
    assert "recovered by" not in bb.summary and "halfway back" not in bb.summary


def test_every_evidence_key_has_a_plain_label() -> None:
    runs = [
        (make(climb_df(5.0), params={"clip_grad": 1.0}), ev(1000, 1000, 1020)),
        (make(amp_df(cut_at=995), format="megatron"), ev(1000, 1000, 1030)),
        (averaged_run(11.4), ev(2000, 2000, 2010)),
    ]
    df = frame()
    damaged(df)
    runs.append((make(df), ev(1000, 1000, 1119)))
    keys = set()
    for run, e in runs:
        for c in one(run, e).causes:
            keys |= set(c.evidence)
    missing = keys - set(EVIDENCE_LABELS)
    assert not missing, sorted(missing)
    for label in EVIDENCE_LABELS.values():
        assert "_" not in label


def test_skipped_steps_of_the_calibration_are_counted_and_shown() -> None:
    # DeepSpeed prints an OVERFLOW line for each of the first skipped steps while the scale
    # falls from its initial value; an incident right after them shows them, as routine
    df = grad_frame(13)
    scale = np.full(len(df), 4096.0)
    scale[:6] = 2.0 ** np.arange(18, 12, -1)
    skipped = np.zeros(len(df))
    skipped[:6] = 1
    df["loss_scale"], df["skipped"] = scale, skipped
    df.loc[df.step == 12, "loss"] *= 4
    f = one(make(df), ev(12, 12, 13))
    amp = cause(f, "amp_overflow")
    assert amp.evidence["calibration_skipped_steps"] == 6
    assert "6 skipped steps there" in amp.summary
    assert f.causes[0].cause == "bad_batch"


def test_prepared_arrays_are_kept_for_the_last_runs_only() -> None:
    from spikelens.causes import _window

    runs = [make(frame(n=300, seed=i)) for i in range(5)]
    for r in runs:
        one(r, ev(200, 200, 201))
    assert len(_window._ARRAYS) <= _window.KEEP_RUNS
    assert runs[-1] in _window._ARRAYS


def test_every_skipped_step_the_log_shows_counts() -> None:
    # a running `skipped=K` printed every 10 steps (the role) and an OVERFLOW flag per skipped
    # step in another column: six overflows inside the window are six skipped steps, even
    # though the running total is printed only after the window
    df = amp_df(cut_at=995)
    total = np.zeros(len(df))
    total[df.step.to_numpy() >= 1040] = 6
    df["skipped"] = np.where(df.step % 10 == 0, total, np.nan)
    flags = np.zeros(len(df))
    flags[df.step.between(995, 1000).to_numpy()] = 1
    df["overflow_flag"] = flags
    run = make(df)
    assert run.roles.get("skipped") == "skipped"
    amp = cause(one(run, ev(1000, 1000, 1030)), "amp_overflow")
    assert amp.evidence["skipped_steps"] == 6
