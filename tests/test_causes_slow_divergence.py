"""Slow divergences, each on a seeded signal whose answer is known, beside the case that must
keep its cause: a gradient explosion whose grad norm outgrows the loss only a hundred points
into the rise is still `grad_explosion` (the surge scan covers the whole rise; past
`SURGE_HEAD` points a lead must hold over `SURGE_HOLD` points, so one grad-norm outlier is not
a surge, and the vectorised scan gives the loop's answer on the head); a loss that climbs a
clear step in every quarter of its rise and never comes back is weight damage, not a bad
batch, while a shard of bad data (a plateau, also behind a low first point in an averaged
log) stays a bad batch; damage is put on the gradient only when the grad norm outgrew the
loss with no LR rise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.causes import explain
from spikelens.causes._window import Context, Series
from spikelens.causes.grad_explosion import SURGE_HEAD, Surge, _surge, _surge_long
from spikelens.model import Config, Event, Finding, Run, Size
from spikelens.readers._base import RawLog, build_run


def explosion(seed: int, tau: float, n: int = 1800, at: int = 1000) -> pd.DataFrame:
    """A loss growing e-fold every `tau` steps from `at` to the end of the log, with a grad
    norm that grows as the loss to the power 2.5 (a curvature-driven blow-up), in 3 % noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    grow = np.exp(np.clip((t - at) / tau, 0, 8))
    loss = 2.5 * grow * np.exp(rng.normal(0, 0.03, n))
    grad = 0.8 * grow ** 2.5 * np.exp(rng.normal(0, 0.15, n))
    return pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": np.full(n, 3e-4),
                         "grad_norm": grad})


def make(df: pd.DataFrame, name: str = "m.csv") -> Run:
    return build_run(RawLog(frame=df.reset_index(drop=True)), Path(name), "csv")


def ev(start: int, peak: int, end: int, recovered: bool) -> Event:
    return Event(kind="divergence" if not recovered else "spike", metric="loss",
                 start_step=start, peak_step=peak, end_step=end, recovered=recovered,
                 size=Size(z=30.0, ratio=20.0))


def one(run: Run, e: Event) -> Finding:
    return explain(run, e, [e], Config())


def _ctx(run: Run, e: Event) -> Context:
    return Context(run=run, event=e, events=(e,), config=Config(), recurrence=None)


@pytest.mark.parametrize("seed", range(4))
def test_slow_explosion_is_a_grad_explosion(seed: int) -> None:
    # e-fold every 110 steps: 50 points into the rise the grad norm is only e^(50 * 1.5 / 110)
    # = 2x ahead of the loss; it outgrows it 4x after ~100 points
    df = explosion(seed, tau=110.0)
    f = one(make(df), ev(1005, 1800, 1800, recovered=False))
    top = f.causes[0]
    assert top.cause == "grad_explosion", [(c.cause, c.score) for c in f.causes]
    onset = top.evidence["surge_onset_step"]
    assert onset is not None and 1005 + SURGE_HEAD < onset < top.evidence["surge_step"]
    # the onset is named: where the grad norm first ran 4x ahead of the loss, then its top
    assert f"grad norm outgrew the loss from step {onset}" in top.summary
    bb = next(c for c in f.causes if c.cause == "bad_batch")
    assert bb.score < 0.25
    assert "a clear step higher in each quarter of the rise" in bb.summary


def test_fast_explosion_has_its_onset_near_the_start() -> None:
    # e-fold every 25 steps: the grad norm is 4x ahead of the loss within ~25 points
    df = explosion(7, tau=25.0)
    f = one(make(df), ev(1003, 1200, 1800, recovered=False))
    top = f.causes[0]
    assert top.cause == "grad_explosion"
    assert top.evidence["surge_onset_step"] < 1003 + 40
    assert top.score > 0.6


def drift_with_outliers(seed: int, outlier_at: int | None, held: int = 1) -> pd.DataFrame:
    """A loss that drifts x2.2 over 600 steps from step 1000, the grad norm moving with it,
    and one grad-norm outlier of x10 for `held` consecutive steps at `outlier_at`."""
    rng = np.random.default_rng(seed)
    n = 1700
    t = np.arange(n, dtype=np.float64)
    grow = np.exp(np.clip((t - 999) / 600, 0, 1) * np.log(2.2))
    loss = 2.5 * grow * np.exp(rng.normal(0, 0.02, n))
    grad = 0.8 * grow * np.exp(rng.normal(0, 0.05, n))
    if outlier_at is not None:
        grad[outlier_at - 1:outlier_at - 1 + held] *= 10.0
    return pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": np.full(n, 3e-4),
                         "grad_norm": grad})


def test_one_grad_outlier_deep_in_a_long_rise_is_not_a_surge() -> None:
    # 300 points into the rise: a single x10 grad norm, the loss 1.4x. Judged on its own it
    # would be a surge (over ~7); a long rise gives one heavy-tailed outlier many chances
    run = make(drift_with_outliers(3, outlier_at=1300))
    f = one(run, ev(1001, 1600, 1700, recovered=False))
    assert all(c.cause != "grad_explosion" for c in f.causes), f.causes
    # ... while a lead that holds for ten points is one
    run = make(drift_with_outliers(3, outlier_at=1300, held=10))
    f = one(run, ev(1001, 1600, 1700, recovered=False))
    ge = next(c for c in f.causes if c.cause == "grad_explosion")
    assert 1298 <= ge.evidence["surge_step"] <= 1311
    # in the first SURGE_HEAD points one point still counts, as it did (a spike's rise)
    run = make(drift_with_outliers(3, outlier_at=1030))
    f = one(run, ev(1001, 1600, 1700, recovered=False))
    ge = next(c for c in f.causes if c.cause == "grad_explosion")
    assert ge.evidence["surge_step"] == 1030


def _loop_surge(ctx: Context, gw: Series, prev: Series, base: float) -> Surge | None:
    """The point-by-point loop of `_surge` on `gw`, whatever its length."""
    from spikelens.causes import grad_explosion as ge

    saved = ge.SURGE_HEAD
    try:
        ge.SURGE_HEAD = 10 ** 9
        e = ctx.event
        assert len(gw) == len(ctx.arrays.usable("grad_norm")[0].between(  # type: ignore[union-attr]
            e.start_step, e.peak_step))
        return _surge(ctx, base)
    finally:
        ge.SURGE_HEAD = saved


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_scan_gives_the_loops_answer_on_the_head(seed: int) -> None:
    """On a rise of at most `SURGE_HEAD` points `_surge_long` is the loop: the same `Surge`,
    onset included, with stale copies (a grad norm repeated on skipped steps), a NaN grad
    norm, a missing loss, and the largest lead in the middle of the rise."""
    rng = np.random.default_rng(200 + seed)
    n = 1600
    loss = 2.5 * np.exp(rng.normal(0, 0.02, n))
    grad = 0.8 * np.exp(rng.normal(0, 0.1, n))
    loss[1000:1040] *= np.exp(np.linspace(0.1, 0.9, 40))
    grad[1000:1040] *= np.exp(np.linspace(0.5, 3.0, 40)) * np.exp(rng.normal(0, 0.4, 40))
    grad[1015] *= 20.0  # the largest lead, mid-rise, at step 1016
    grad[1016:1019] = grad[1015]  # steps 1017-1019 copy it: stale, printed on skipped steps
    loss[1017] *= 0.8  # a dip under the copy at 1018: its lead would be the largest
    grad[1026] = np.nan
    loss[1030] = np.nan
    df = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": np.full(n, 3e-4),
                       "grad_norm": grad})
    run = make(df)
    e = ev(1001, 1040, 1060, recovered=False)
    ctx = _ctx(run, e)
    assert ctx.grad is not None and ctx.shape is not None and ctx.loss is not None
    gs = ctx.arrays.usable("grad_norm")[0]
    assert gs is not None
    gw, prev = gs.between(1001, 1040), gs.before(1001, 2)
    assert len(gw) <= SURGE_HEAD
    fast = _surge_long(gw, prev, ctx.loss, ctx.shape.base, ctx.grad.base)
    slow = _loop_surge(ctx, gw, prev, ctx.grad.base)
    assert fast is not None and fast == slow
    assert fast.onset is not None and fast.onset.step <= fast.step
    assert 1005 < fast.step < 1036  # mid-rise: points after it were scanned and lost
    assert fast.step == 1016  # not a stale copy, not the NaN


def climbing_excerpt(per_line: list[float], grads: list[float],
                     lrs: list[float] | None = None) -> pd.DataFrame:
    steps = 1810 + np.arange(len(per_line))
    return pd.DataFrame({"step": steps, "loss": per_line,
                         "lr": lrs if lrs is not None else np.full(len(steps), 3e-5),
                         "grad_norm": grads})


CLIMB = [3.00, 3.22, 3.52, 3.88, 4.37, 4.93]


def test_climbing_excerpt_is_weight_damage_put_on_the_gradient() -> None:
    # six lines, the loss higher at every one (x1.65 in all), the grad norm outgrowing it (x3)
    grad = [1.42, 1.67, 2.03, 2.52, 3.27, 4.25]
    f = one(make(climbing_excerpt(CLIMB, grad)), ev(1811, 1815, 1815, recovered=False))
    bb = next(c for c in f.causes if c.cause == "bad_batch")
    assert bb.score < 0.25
    assert "climbed over 5 logged points" in bb.summary and "the log ends on it" in bb.summary
    top = f.causes[0]
    assert top.cause == "grad_explosion" and top.score == pytest.approx(0.4)
    # the medians of the last three points: the grad norm 3.27 (2.3x), the loss 4.37 (1.46x)
    assert ("the grad norm outgrew it, to 3.27 by the peak (2.3x its 1.42 baseline against "
            "the loss's 1.5x over the same last points)") in top.summary


@pytest.mark.parametrize("case", ["flat", "with_the_loss", "lr_rose"])
def test_climbing_excerpt_not_put_on_the_gradient(case: str) -> None:
    # a grad norm that stays put, one that moves with the loss (x1.7 against x1.65: a power
    # near 1, decided by noise), and one that outgrows it while the LR rose 1.2x during the
    # climb (the LR sized the update): the log cannot say which update went wrong
    grads = {"flat": [1.42, 1.40, 1.45, 1.41, 1.43, 1.44],
             "with_the_loss": [1.42, 1.52, 1.68, 1.85, 2.10, 2.40],
             "lr_rose": [1.42, 1.67, 2.03, 2.52, 3.27, 4.25]}[case]
    lrs = [3e-5, 3e-5, 3.2e-5, 3.4e-5, 3.6e-5, 3.6e-5] if case == "lr_rose" else None
    f = one(make(climbing_excerpt(CLIMB, grads, lrs)), ev(1811, 1815, 1815, recovered=False))
    assert all(c.cause != "grad_explosion" for c in f.causes), f.causes
    top = f.causes[0]
    if top.cause == "unknown":
        assert "a clear step higher in each quarter" in top.summary
        assert "data that keeps getting worse" in top.summary
        assert "check the data of the climb" in top.remedy


def test_bad_shard_plateau_stays_a_bad_batch() -> None:
    # a shard of bad data: the loss jumps x1.8 at once, holds for 30 steps, and is back
    rng = np.random.default_rng(3)
    n = 1600
    loss = 2.5 * np.exp(rng.normal(0, 0.01, n))
    loss[999:1029] *= 1.8
    grad = 0.8 * np.sqrt(loss / 2.5) * np.exp(rng.normal(0, 0.1, n))
    df = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": np.full(n, 3e-4),
                       "grad_norm": grad})
    f = one(make(df), ev(1000, 1015, 1030, recovered=True))
    assert f.causes[0].cause == "bad_batch"
    assert "quarter" not in f.causes[0].summary


@pytest.mark.parametrize("seed", range(8))
def test_averaged_shard_behind_a_low_first_point_is_not_compounding(seed: int) -> None:
    # Megatron-style means over 10 iterations; a x1.6 shard starts late in an interval (its
    # first logged point is low) and the log ends inside it: a plateau, not a climb
    rng = np.random.default_rng(11 + seed)
    n_it = 21000
    per = 2.5 * np.exp(rng.normal(0, 0.05, n_it))
    per[20008:] *= 1.6
    mean = per.reshape(-1, 10).mean(1)
    steps = np.arange(10, n_it + 1, 10)
    df = pd.DataFrame({"step": steps, "loss": mean, "lr": np.full(len(steps), 3e-4)})
    run = make(df)
    e = ev(20010, int(steps[-1]), int(steps[-1]), recovered=False)
    ctx = _ctx(run, e)
    assert ctx.shape is not None
    assert ctx.shape.onset_fraction < 0.5  # the low first point the test must see past
    assert ctx.shape.compounding_points == 0


def test_compounding_needs_a_rise_that_does_not_come_back() -> None:
    rng = np.random.default_rng(5)
    n = 1600
    loss = 2.5 * np.exp(rng.normal(0, 0.01, n))
    loss[999:1040] *= np.exp(np.linspace(0.05, 0.8, 41))
    df = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": np.full(n, 3e-4)})
    # the detector did not call it recovered, but the loss is half way back at once: not damage
    ctx = _ctx(make(df), ev(1000, 1040, 1045, recovered=False))
    assert ctx.shape is not None and ctx.shape.half_recovery_points is not None
    assert ctx.shape.compounding_points == 0
    # the same climb that stays up compounds, and says over how many points it was watched
    df2 = df.copy()
    df2.loc[df2.step > 1040, "loss"] *= 2.2
    ctx2 = _ctx(make(df2), ev(1000, 1040, 1600, recovered=False))
    assert ctx2.shape is not None and ctx2.shape.compounding_points == 41
    assert ctx2.shape.climb is not None
    assert f"did not come back in the {ctx2.shape.points_after} logged points after it" \
        in ctx2.shape.climb
