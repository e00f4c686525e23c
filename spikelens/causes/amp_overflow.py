"""Cause `amp_overflow`: fp16 dynamic loss scaling is involved in the incident. The scaler
halves the scale and skips the step whenever a gradient overflows, and doubles it after a run
of clean steps; so a healthy fp16 run shows a sawtooth (a cut now and then at its ceiling) and
a calibration at the start (the scale falls from its initial value until it fits). Neither is
evidence. Evidence is what the routine cannot produce: cuts that take the scale below anything
it had needed since calibration (tr1-13B at ~29050: 65536 -> 4096), a burst of cuts or skipped
steps far above the run's own routine rate, the scale collapsing towards or below 1
(gradients underflow) and non-finite losses on skipped steps. Cuts that only bring a reset
scale back down to its usual ceiling are re-calibration, not evidence either."""

from __future__ import annotations

import math

from spikelens.causes import CAUSES
from spikelens.causes._window import (
    Context,
    evidence,
    fmt,
    fmt_ratio,
    lag_words,
    mag,
    restart_advice,
    sentence,
    span_words,
)
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "amp_overflow"


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    p = ctx.scale
    if p is None:
        return Skipped(CAUSE, "needs loss_scale or skipped, not in this log")
    if p.has_scale and not p.dynamic and p.skips == 0:
        return None  # a constant scale (bf16/fp32, or a static scale): no scaling events
    n = max(p.cuts, p.skips)
    if n == 0 and not p.calibration_skips:
        return None
    excess = n / max(p.expected, 0.5)
    scaled = p.has_scale and p.dynamic
    comps: list[float] = []
    if scaled and p.depth >= 1.5:
        comps.append(0.45 + 0.5 * mag(2.0**p.depth, 4.0, 32.0))
    elif scaled and p.depth >= 1:
        comps.append(0.3)  # one halving below the earlier floor: a hint, not a storm
    if n >= 2 and excess >= 4:
        comps.append((0.45 if scaled else 0.3) + 0.35 * mag(excess, 4.0, 50.0))
    if p.nonfinite_skipped or p.missing_loss_cuts:
        # a skipped step with a non-finite loss is an overflow the scaler caught; without a
        # loss-scale series it may just as well be a NaN guard in the training loop
        comps.append(0.6 if scaled else 0.3)
    if not comps:
        # one cut or skip at the routine rate (or only the calibration's): noted, not evidence
        comps.append(0.15 if n else 0.1)
    score = max(comps)
    if scaled and math.isfinite(p.scale_min) and p.scale_min < 1:
        score += 0.05
    g = ctx.grad
    lead = g.first_lead_step if g is not None and g.precursor else None
    if lead is not None and p.first_cut_step is not None and lead < p.first_cut_step:
        score *= 0.6  # the grad norm was already exploding: the overflows are its consequence
    # the loss rose before the first cut: the scaler reacted to a rise already under way, so
    # the overflows are a symptom (an averaged log cannot order them within one interval)
    symptom = bool(p.first_cut_step is not None
                   and p.first_cut_step - event.start_step >= max(1, run.interval))
    if symptom:
        score *= 0.5
    score = min(score, 0.98)
    lo, hi = p.window
    parts: list[str] = []
    if p.cuts:
        cut = (f"loss scale fell from {fmt(p.cut_from)} to {fmt(p.scale_min)} "
               f"({fmt_ratio(p.cut_from / p.scale_min if p.scale_min > 0 else math.inf)}, "
               f"{p.cuts} logged cut"
               f"{'s' if p.cuts != 1 else ''} from step {p.first_cut_step}) between steps {lo} "
               f"and {hi}")
        if p.depth >= 1 and math.isfinite(p.pre_min):
            cut += (f", {p.depth:.0f} halving{'s' if round(p.depth) != 1 else ''} below the "
                    f"lowest scale it had needed before ({fmt(p.pre_min)})")
        if p.first_cut_step is not None:
            lag = event.start_step - p.first_cut_step
            cut += "; the first cut came " + lag_words(
                lag, f"the loss {'rose' if lag >= 0 else 'began to rise'} at step "
                     f"{event.start_step}")
            if symptom:
                cut += (": the scaler reacted to a rise already under way, so the overflows are "
                        "a symptom, not the cause")
        parts.append(cut)
    if p.skips:
        parts.append(
            f"{p.skips} skipped step{'s' if p.skips != 1 else ''} in that window against "
            f"{p.expected:.1f} expected at the run's routine rate (the weights do not change on "
            f"a skipped step: the damage came from the updates that were applied)"
        )
    if p.nonfinite_skipped:
        parts.append(f"the loss is non-finite on {p.nonfinite_skipped} of the skipped steps")
    if p.missing_loss_cuts:
        parts.append(f"at {p.missing_loss_cuts} of the cuts the iteration printed no loss (a "
                     f"non-finite loss in Megatron)")
    if scaled and math.isfinite(p.scale_min) and p.scale_min < 1:
        parts.append(f"the scale collapsed to {fmt(p.scale_min)} (below 1: gradients underflow)")
    if p.calibration_end is not None:
        parts.append(f"start-up calibration up to step {p.calibration_end} ignored"
                     + (f" ({p.calibration_skips} skipped step"
                        f"{'s' if p.calibration_skips != 1 else ''} there, e.g. DeepSpeed "
                        f"OVERFLOW lines, are routine)" if p.calibration_skips else ""))
    if score <= 0.15:
        parts.append("this is within the run's routine overflow rate")
    restart, first, last = restart_advice(ctx)
    remedy: list[str] = ["train in bf16 instead of fp16 if the hardware allows (no loss scaling)"]
    if symptom:
        remedy.insert(0, "treat the rise itself first (see the other causes): the loss-scale "
                         "cuts followed it")
    if scaled and math.isfinite(p.scale_min) and p.scale_min < 1:
        remedy.append(
            f"a scale of {fmt(p.scale_min)} means the gradients overflow at any scale: find the "
            f"op that produces inf at step {p.first_cut_step or event.start_step} (a scale cut "
            f"cannot fix it); a minimum loss scale would not help either: DeepSpeed ends the run "
            f"when the scale has to go below it"
        )
    elif scaled and math.isfinite(p.pre_min):
        # never advise a floor above where the scale had to go: DeepSpeed stops the run when
        # the scale must fall below min_loss_scale
        floor = min(max(1.0, p.pre_min / 4), p.scale_min) if math.isfinite(p.scale_min) \
            else max(1.0, p.pre_min / 4)
        remedy.append(
            f"if fp16 stays: hysteresis 2 and a longer growth interval keep the scale from "
            f"collapsing on isolated overflows; a min_loss_scale, if any, no higher than "
            f"{fmt(floor)} (the scale had to reach {fmt(p.scale_min)}; DeepSpeed ends the run when "
            f"the scale must go below its minimum); look at the overflowing layer at step "
            f"{p.first_cut_step or event.start_step}"
        )
    remedy.append(
        f"restart from a checkpoint at or before step {restart} and skip the batches of "
        f"{span_words(first, last)} if the spike comes back"
    )
    facts = {
        "scale_cuts": p.cuts,
        "cut_factor": p.cut_factor if p.cuts else None,
        "first_cut_lag_steps": (event.start_step - p.first_cut_step
                                if p.first_cut_step is not None else None),
        "cuts_follow_rise": symptom,
        "scale_before": p.scale_before,
        "scale_before_cuts": p.cut_from,
        "scale_min": p.scale_min,
        "earlier_min_scale": p.pre_min,
        "halvings_below_earlier_min": p.depth,
        "skipped_steps": p.skips,
        "calibration_skipped_steps": p.calibration_skips if p.calibration_end is not None
        else None,
        "expected_skips": p.expected,
        "routine_rate_per_1k_steps": p.routine_rate * 1000,
        "missing_loss_at_cuts": p.missing_loss_cuts,
        "nonfinite_skipped": p.nonfinite_skipped,
        "first_cut_step": p.first_cut_step,
        "window_start": lo,
        "window_end": hi,
        "calibration_end": p.calibration_end,
    }
    return evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
