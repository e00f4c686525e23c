"""What the log says about an oscillation, for the oscillation cause rules: whether the LR
cycles with the loss (and at what period), whether the swing shrank when the LR fell, the
batch per step (from the samples/tokens counters or Run.params; a per-device batch alone is a
lower bound), the length of an epoch (from
the epoch column) and the optimizer's momentum (from Run.params). Computed once per event on
the event's window only, from the run's prepared arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spikelens.detect.oscillation import lr_period, residual

if TYPE_CHECKING:
    from spikelens.causes._window import Context


@dataclass(frozen=True)
class OscProfile:
    period: float | None  # the loss's period in steps (None: an erratic swing)
    amplitude: float | None  # relative peak-to-trough
    points: int  # logged loss points in the oscillation
    spacing: float  # steps between logged points (median)
    lr_logged: bool
    lr_period: float | None  # the LR's own period in steps, when it cycles
    lr_corr: float  # correlation of the loss and LR residuals (0 when not computable)
    lr_z: float  # |r| sqrt(n)
    lr_decay: float  # LR in the first quarter / LR in the last quarter (1 = flat)
    swing_decay: float  # swing in the first quarter / swing in the last quarter
    samples_per_step: float | None
    tokens_per_step: float | None
    epoch_steps: float | None  # steps per epoch, from the epoch column
    momentum: float | None  # momentum or Adam beta1, from the params
    beta2: float | None
    #: the batch of one process (Run.params micro_batch_size): a lower bound on the batch per
    #: step when gradient accumulation and data-parallel ranks are not in the log
    micro_batch: float | None = None
    #: lag-1 autocorrelation of the loss around its trend: ~0 for the sampling noise of a
    #: batch (independent batches), positive when the weights themselves swing
    lag1: float | None = None
    log_spread: float | None = None  # q90 - q10 of the log loss around its trend
    epoch_boundaries: int = 0  # whole epochs inside the oscillation
    epoch_jump: float = 0.0  # swing (log) of the loss folded by the phase of the epoch
    epoch_jump_z: float = 0.0  # that swing over its standard error


def _param(params: Any, *keys: str) -> float | None:
    for k in keys:
        v = params.get(k) if params else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def _swing(r: np.ndarray) -> float:
    """Robust swing of a residual: its 90th minus 10th percentile."""
    return float(np.percentile(r, 90) - np.percentile(r, 10)) if len(r) >= 4 else float("nan")


def osc_profile(ctx: Context) -> OscProfile | None:
    ev = ctx.event
    a = ctx.arrays
    loss = a.finite("loss")
    if loss is None:
        return None
    w = loss.between(ev.start_step, ev.end_step)
    w_pos = w.values > 0
    if len(w) < 8 or not np.all(w_pos):
        return None
    x = np.log(w.values)
    spacing = float(np.median(np.diff(w.steps))) if len(w) > 1 else 1.0
    per_pts = (ev.period / spacing) if ev.period else None
    # the trend: a running median over about two periods (as the detector takes it)
    trend_half = int(max(3, min(500, round(per_pts) if per_pts else 10)))
    r = residual(x, trend_half)
    # the LR over the same window, on the loss's steps
    lr_s, _ = a.usable("lr")
    lr_logged = lr_s is not None
    lr_per = None
    corr = z = 0.0
    lr_decay = 1.0
    if lr_s is not None:
        lf = a.finite("lr")
        assert lf is not None
        lw = lf.between(ev.start_step, ev.end_step)
        if len(lw) >= 12:
            p = lr_period(lw.values, 3)
            if p is not None:
                lr_per = p * (float(np.median(np.diff(lw.steps))) if len(lw) > 1 else 1.0)
            idx = np.clip(np.searchsorted(lw.steps, w.steps, side="right") - 1, 0, len(lw) - 1)
            lr_on = lw.values[idx]
            rl = residual(lr_on, trend_half)
            if float(np.std(r)) > 0 and float(np.std(rl)) > 0:
                corr = float(np.corrcoef(r, rl)[0, 1])
                z = abs(corr) * math.sqrt(len(r))
            q = max(1, len(lr_on) // 4)
            first, last = float(np.median(lr_on[:q])), float(np.median(lr_on[-q:]))
            lr_decay = first / last if last > 0 else float("inf") if first > 0 else 1.0
    lag1 = float(np.corrcoef(r[:-1], r[1:])[0, 1]) \
        if len(r) >= 20 and float(np.std(r)) > 0 else None
    q = max(4, len(r) // 4)
    s0, s1 = _swing(r[:q]), _swing(r[-q:])
    swing_decay = s0 / s1 if s1 > 0 else 1.0
    # the batch per step from the data counters, else the params
    per_step: dict[str, float | None] = {"samples": None, "tokens": None}
    for role in per_step:
        c = a.finite(role)
        if c is None:
            continue
        cw = c.between(ev.start_step, ev.end_step)
        if len(cw) >= 2 and cw.steps[-1] > cw.steps[0]:
            rate = float((cw.values[-1] - cw.values[0]) / (cw.steps[-1] - cw.steps[0]))
            if rate > 0:
                per_step[role] = rate
    if per_step["samples"] is None:
        per_step["samples"] = _param(ctx.run.params, "global_batch_size", "batch_size")
    epoch_steps = None
    n_bound, jump, jump_z = 0, 0.0, 0.0
    ep = a.finite("epoch")
    if ep is not None and len(ep) >= 2 and ep.values[-1] > ep.values[0]:
        epoch_steps = float((ep.steps[-1] - ep.steps[0]) / (ep.values[-1] - ep.values[0]))
        # fold the loss by the phase of the epoch: a loss that repeats with the data swings
        # the same way in every epoch (a fine-tune re-seeing its data jumps at each boundary)
        ew = ep.between(ev.start_step, ev.end_step)
        n_ep = float(ew.values[-1] - ew.values[0]) if len(ew) >= 2 else 0.0
        if n_ep >= 3 and len(x) >= 40:
            k = np.clip(np.searchsorted(ew.steps, w.steps, side="right") - 1, 0, len(ew) - 1)
            phase = np.mod(ew.values[k], 1.0)
            ep_pts = max(3, int(round(epoch_steps / max(spacing, 1e-9))))
            rr = residual(x, min(ep_pts, len(x) // 2))
            bins = np.minimum((phase * 10).astype(int), 9)
            cnt = np.bincount(bins, minlength=10)
            if np.all(cnt >= 3):
                means = np.bincount(bins, weights=rr, minlength=10) / cnt
                # the standard error of a bin mean from the spread *within* the bins (the
                # epoch swing itself is not noise)
                within = float(np.sum(rr**2) - np.sum(cnt * means**2)) / max(1, len(rr) - 10)
                se = math.sqrt(max(within, 0.0) / float(np.mean(cnt)))
                n_bound = int(n_ep)
                jump = float(np.max(means) - np.min(means))
                jump_z = jump / se if se > 0 else 0.0
    return OscProfile(
        period=ev.period,
        amplitude=ev.amplitude,
        points=len(w),
        spacing=spacing,
        lr_logged=lr_logged,
        lr_period=lr_per,
        lr_corr=corr,
        lr_z=z,
        lr_decay=lr_decay,
        swing_decay=swing_decay,
        samples_per_step=per_step["samples"],
        tokens_per_step=per_step["tokens"],
        epoch_steps=epoch_steps,
        momentum=_param(ctx.run.params, "momentum", "adam_beta1", "beta1"),
        beta2=_param(ctx.run.params, "adam_beta2", "beta2"),
        micro_batch=_param(ctx.run.params, "micro_batch_size"),
        lag1=lag1 if lag1 is None or math.isfinite(lag1) else None,
        log_spread=_swing(r),
        epoch_boundaries=n_bound,
        epoch_jump=jump,
        epoch_jump_z=jump_z,
    )


def same_period(a: float | None, b: float | None, tol: float = 0.2) -> bool:
    return a is not None and b is not None and a > 0 and abs(a - b) <= tol * max(a, b)
