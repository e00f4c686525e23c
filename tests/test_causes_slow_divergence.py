"""Slow divergences, each on a seeded signal whose answer is known, beside the case that must
keep its cause: a gradient explosion whose grad norm outgrows the loss only a hundred points
into the rise is still `grad_explosion` (the surge scan covers the whole rise, vectorised past
`_SCAN_LOOP_MAX` points with the loop's answer); a loss that climbs stretch after stretch and
never comes back is weight damage, not a bad batch, while a shard of bad data (a plateau that
ends) stays a bad batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spikelens.causes import explain
from spikelens.causes._window import Context, Series
from spikelens.causes.grad_explosion import _SCAN_LOOP_MAX, _surge, _surge_long
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


@pytest.mark.parametrize("seed", range(4))
def test_slow_explosion_is_a_grad_explosion(seed: int) -> None:
    # e-fold every 110 steps: 50 points into the rise the grad norm is only e^(50 * 1.5 / 110)
    # = 2x ahead of the loss; it outgrows it 4x after ~100 points
    df = explosion(seed, tau=110.0)
    f = one(make(df), ev(1005, 1800, 1800, recovered=False))
    top = f.causes[0]
    assert top.cause == "grad_explosion", [(c.cause, c.score) for c in f.causes]
    assert top.evidence["surge_step"] is not None and top.evidence["surge_step"] > 1060
    # the onset is named: where the grad norm first ran 4x ahead of the loss, then its top
    onset = top.evidence["surge_onset_step"]
    assert onset is not None and 1005 < onset < top.evidence["surge_step"]
    assert f"grad norm outgrew the loss from step {onset}" in top.summary
    bb = next(c for c in f.causes if c.cause == "bad_batch")
    assert bb.score < 0.25
    assert "each update made the model worse" in bb.summary


def test_fast_explosion_has_its_onset_near_the_start() -> None:
    # e-fold every 25 steps: the grad norm is 4x ahead of the loss within ~25 points
    df = explosion(7, tau=25.0)
    f = one(make(df), ev(1003, 1200, 1800, recovered=False))
    top = f.causes[0]
    assert top.cause == "grad_explosion"
    assert top.evidence["surge_onset_step"] < 1003 + 40
    assert top.score > 0.6


def _ctx(run: Run, e: Event) -> Context:
    return Context(run=run, event=e, events=(e,), config=Config(), recurrence=None)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_scan_gives_the_loops_answer(seed: int) -> None:
    """`_surge_long` over a long rise equals the point-by-point scan of the same points,
    stale copies (a grad norm repeated on skipped steps) and a NaN included."""
    df = explosion(100 + seed, tau=90.0)
    g = df["grad_norm"].to_numpy().copy()
    g[1200:1204] = g[1199]  # a stale run: the first value is real, the copies are not
    g[1300] = np.nan
    df["grad_norm"] = g
    run = make(df)
    e = ev(1005, 1700, 1800, recovered=False)
    ctx = _ctx(run, e)
    assert ctx.grad is not None and ctx.shape is not None and ctx.loss is not None
    base = ctx.grad.base
    gs = ctx.arrays.usable("grad_norm")[0]
    assert gs is not None
    gw = gs.between(e.start_step, e.peak_step)
    assert len(gw) > _SCAN_LOOP_MAX
    fast = _surge_long(gw, gs.before(e.start_step, 2), ctx.loss, ctx.shape.base, base)
    # the loop, written out: every point that is not stale, finite and >= 5x the baseline
    best = None
    stale = set(range(1201, 1204))
    for st, gv in zip(gw.steps.tolist(), gw.values.tolist(), strict=True):
        if st - 1 in stale or not math.isfinite(gv) or gv / base < 5.0:
            continue
        lv = ctx.loss.value_at(st)
        assert lv is not None
        over = gv / base / math.exp(max(math.log(lv / ctx.shape.base), 0.0))
        if best is None or over > best[1]:
            best = (st, over)
    assert fast is not None and best is not None
    assert fast.step == best[0]
    assert fast.over == pytest.approx(best[1], rel=1e-12)
    assert _surge(ctx, base) == fast


def climbing_excerpt(per_line: list[float], grads: list[float]) -> pd.DataFrame:
    steps = 1810 + np.arange(len(per_line))
    return pd.DataFrame({"step": steps, "loss": per_line, "lr": np.full(len(steps), 3e-5),
                         "grad_norm": grads})


def test_climbing_excerpt_is_weight_damage_not_a_bad_batch() -> None:
    # six lines, the loss higher at every one (x1.65 in all), the grad norm with it (x3): an
    # oversized update, the gradient consistent with being its source
    loss = [3.00, 3.22, 3.52, 3.88, 4.37, 4.93]
    grad = [1.42, 1.67, 2.03, 2.52, 3.27, 4.25]
    f = one(make(climbing_excerpt(loss, grad)), ev(1811, 1815, 1815, recovered=False))
    bb = next(c for c in f.causes if c.cause == "bad_batch")
    assert bb.score < 0.25
    assert "climbed over 5 logged points" in bb.summary
    top = f.causes[0]
    assert top.cause == "grad_explosion" and top.score == pytest.approx(0.4)
    assert "the grad norm rose with it, to 4.25 at the peak (3.0x" in top.summary
    assert "lower the LR" in top.remedy or "clip" in top.remedy


def test_climbing_excerpt_with_a_flat_grad_norm_is_not_blamed_on_the_gradient() -> None:
    # the same climb with a grad norm that stays put: the update was oversized for another
    # reason (an LR or optimizer-state problem), and the log cannot say which
    loss = [3.00, 3.22, 3.52, 3.88, 4.37, 4.93]
    grad = [1.42, 1.40, 1.45, 1.41, 1.43, 1.44]
    f = one(make(climbing_excerpt(loss, grad)), ev(1811, 1815, 1815, recovered=False))
    assert f.causes[0].cause == "unknown"
    assert "each update made the model worse" in f.causes[0].summary
    assert all(c.cause != "grad_explosion" for c in f.causes)


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
    assert "each update made the model worse" not in f.causes[0].summary


def test_compounding_needs_a_rise_that_does_not_come_back() -> None:
    # the same climb, but the loss is back at its level after the peak: not damage
    rng = np.random.default_rng(5)
    n = 1600
    loss = 2.5 * np.exp(rng.normal(0, 0.01, n))
    loss[999:1040] *= np.exp(np.linspace(0.05, 0.8, 41))
    grad = 0.8 * np.sqrt(loss / 2.5)
    df = pd.DataFrame({"step": np.arange(1, n + 1), "loss": loss, "lr": np.full(n, 3e-4),
                       "grad_norm": grad})
    run = make(df)
    e = ev(1000, 1040, 1045, recovered=True)
    ctx = _ctx(run, e)
    assert ctx.shape is not None and ctx.shape.compounding_points == 0
    e2 = ev(1000, 1040, 1045, recovered=False)
    df2 = df.copy()
    df2.loc[df2.step > 1040, "loss"] *= 2.2  # stays up: now it compounds
    ctx2 = _ctx(make(df2), e2)
    assert ctx2.shape is not None and ctx2.shape.compounding_points == 41
    assert isinstance(ctx.loss, Series)
