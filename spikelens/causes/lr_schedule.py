"""Cause `lr_schedule`: the learning rate changed shortly before the loss rose. A step of
optimisation is only stable while the LR stays below roughly 2 / (sharpness), and the
sharpness of a trained model adapts to the LR it has been trained at; so what matters is the
LR *relative to the level the model was trained at just before*, and how soon after the change
the loss rose. The rule reports a discontinuity (ratio and lag), the end of warmup, a cosine
restart or a re-warmup after a resume (the scheduler state was lost), and an LR above anything
the run had seen. A change long before the rise, or an LR that only decays, is not evidence."""

from __future__ import annotations

import math

from spikelens.causes import CAUSES
from spikelens.causes._oscillation import same_period
from spikelens.causes._window import (
    LR_JUMP,
    LR_RISE,
    Context,
    evidence,
    fmt,
    fmt_ratio,
    lag_words,
    sentence,
)
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "lr_schedule"


def _oscillation(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    """An oscillation locked to a cyclic LR: the LR cycles at the loss's period (a cyclic
    schedule, warm restarts, or a scheduler stepped per sample or per micro-batch), or the
    loss's swing follows the LR's."""
    p = ctx.osc
    if p is None:
        return None
    locked = same_period(p.lr_period, p.period) or (p.lr_period is not None and p.lr_z >= 4.0)
    if p.lr_period is None:
        return None
    score = 0.9 if locked else 0.45
    parts = [f"the LR itself cycles every {fmt(p.lr_period)} steps"]
    if p.period is not None:
        parts.append(f"the loss's period is {fmt(p.period)} steps"
                     + (", the same" if same_period(p.lr_period, p.period) else ""))
    if p.lr_z >= 4.0 and abs(p.lr_corr) >= 0.3:
        parts.append(f"the loss swing follows the LR (correlation {p.lr_corr:.2f} over "
                     f"{p.points} points)")
    remedy = sentence([
        f"check the scheduler's step unit and period: a scheduler stepped per sample or per "
        f"micro-batch instead of per optimizer step cycles many times faster than planned (a "
        f"cosine meant for the whole run then repeats every {fmt(p.lr_period)} steps); if the "
        f"cycle is intended (cyclic LR, warm restarts), the swing is by design: lower the "
        f"cycle's peak LR to shrink it"])
    facts = {"period_steps": p.period, "amplitude": p.amplitude, "lr_period_steps": p.lr_period,
             "loss_lr_correlation": p.lr_corr if p.lr_z > 0 else None}
    return evidence(CAUSE, score, sentence(parts), facts, remedy)


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    s, why = ctx.arrays.usable("lr")
    if s is None:
        return Skipped(CAUSE, why)
    if event.kind == "oscillation":
        return _oscillation(run, event, ctx)
    p = ctx.lr
    if p is None or p.constant:
        return None
    score = p.strength
    if score <= 0:
        return None
    shape = ctx.shape
    # a one-point blip that is gone at once while the LR stays where it is cannot be an LR
    # instability: those persist for as long as the LR is too high
    if shape is not None and shape.onset_points == 0 and shape.quick:
        score *= 0.8
    start = event.start_step
    warmup_end = p.warmup_end
    parts: list[str] = []
    remedy: list[str] = []
    jumped = p.jump >= LR_JUMP and p.jump_step is not None and p.jump_lag is not None
    if jumped and p.jump_lag is not None:
        parts.append(
            f"LR jumped {fmt_ratio(p.jump)} ({fmt(p.jump_from)} -> {fmt(p.jump_to)}) at step "
            f"{p.jump_step}, {lag_words(p.jump_lag, f'the loss rose at {start}')}"
        )
    if p.ratio >= LR_RISE and not (jumped and p.jump_step == p.reached_step):
        what = f"LR reached {fmt(p.at_rise)} at step {p.reached_step}"
        trained = "it had been trained at"
        if p.resume is not None and math.isfinite(p.lr_before_resume):
            what = (f"after the resume at step {p.resume.resumed_at} the LR climbed back to "
                    f"{fmt(p.at_rise)} by step {p.reached_step}")
            trained = "it had before the resume"
        elif warmup_end and p.ramp_start_step is not None:
            ramp = p.reached_step - p.ramp_start_step + 1
            lr0 = s.value_at(p.ramp_start_step)
            what = (f"the warmup ended: LR reached its peak {fmt(p.at_rise)} at step "
                    f"{p.reached_step} (a {ramp}-step ramp from {fmt(lr0)})")
        elif p.ramp_start_step is not None and not jumped:
            what = (
                f"the LR rose again from step {p.ramp_start_step} and reached {fmt(p.at_rise)} "
                f"at step {p.reached_step}"
            )
        level = "" if warmup_end else (
            f", {fmt_ratio(p.ratio)} the {fmt(p.ref)} {trained}")
        parts.append(f"{what}{level}, {lag_words(p.lag, f'the loss rose at {start}')}")
    above = p.above_earlier_max
    if above:
        parts.append(f"above the run's earlier maximum {fmt(p.prev_max)}")
    summary = sentence(parts)
    if p.resume is not None and p.ratio >= LR_RISE:
        remedy.append(
            f"restore the LR scheduler state when resuming: at step {p.resume.resumed_at} the LR "
            f"should have continued near {fmt(p.lr_before_resume)}, not returned to "
            f"{fmt(p.at_rise)}; resume again from that checkpoint with the scheduler state"
        )
    elif jumped and p.jump_step is not None:
        remedy.append(
            f"check the scheduler: the LR went {fmt(p.jump_from)} -> {fmt(p.jump_to)} at step "
            f"{p.jump_step}; if that was not intended (a wrong base LR or a lost scheduler "
            f"state), restart from a checkpoint before step {p.jump_step} with the schedule "
            f"fixed; if it was (a schedule restart), ramp the LR up over a few hundred steps "
            f"instead of a step"
        )
    if warmup_end and not jumped and p.ramp_start_step is not None:
        warm = max(1, p.reached_step - p.ramp_start_step + 1)
        remedy.append(
            f"lengthen the warmup from {warm} to about {2 * warm} steps, or lower the peak LR "
            f"from {fmt(p.at_rise)} to about {fmt(p.at_rise / 2)}"
        )
    if above and math.isfinite(p.prev_max) and not jumped:
        remedy.append(f"cap the LR at the run's earlier maximum {fmt(p.prev_max)}")
    if not remedy:
        target = p.ref if math.isfinite(p.ref) else p.at_rise / 2
        remedy.append(
            f"keep the LR near {fmt(target)} here (it reached {fmt(p.at_rise)}), or raise it "
            f"over more steps, and restart from a checkpoint before step {p.reached_step}"
        )
    facts = {
        "lr_before": p.ref,
        "lr_at_rise": p.at_rise,
        "lr_ratio": p.ratio,
        "lag_steps": p.lag,
        "lr_reached_step": p.reached_step,
        "jump_ratio": p.jump if jumped else None,
        "jump_step": p.jump_step if jumped else None,
        "jump_lag_steps": p.jump_lag if jumped else None,
        "earlier_max_lr": p.prev_max,
        "above_earlier_max": above,
        "warmup_end": warmup_end,
        "resumed_at": p.resume.resumed_at if p.resume is not None else None,
    }
    return evidence(CAUSE, score, summary, facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
