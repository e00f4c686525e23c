"""Cause `lr_too_high` (oscillations): the LR is too high for the curvature the model sits in,
so each step overshoots and the loss swings around its trend. A step is stable while the LR
stays below about 2 / sharpness; above it the iterates bounce, and the swing shrinks as soon as
the LR decays (Cohen et al. 2021, *Gradient descent on neural networks typically occurs at the
edge of stability*). The signature in a log: over the oscillation the LR falls and the swing
falls with it. An LR that does not fall cannot show it (the rule says so); a swing that stays
as large while the LR falls is evidence against."""

from __future__ import annotations

from spikelens.causes import CAUSES
from spikelens.causes._window import Context, evidence, fmt_ratio, mag, sentence
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "lr_too_high"
#: The LR must fall by this factor over the oscillation for the test to mean anything.
LR_FALL = 1.5
#: ... and the swing must shrink by this factor with it.
SWING_FALL = 1.3


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    p = ctx.osc
    if p is None:
        return None
    if not p.lr_logged:
        return Skipped(CAUSE, "needs lr, not in this log")
    if p.lr_period is not None:
        return None  # a cyclic LR: lr_schedule judges it
    if p.lr_decay < LR_FALL:
        return Skipped(CAUSE, f"the LR fell only {fmt_ratio(p.lr_decay)} over the oscillation, "
                              f"too little to see whether the swing follows it")
    if p.swing_decay < SWING_FALL:
        return None
    score = 0.4 + 0.45 * mag(p.swing_decay, SWING_FALL, 4.0)
    summary = sentence([
        f"over the oscillation the LR fell {fmt_ratio(p.lr_decay)} and the swing of the loss "
        f"shrank {fmt_ratio(p.swing_decay)} with it: the steps overshoot while the LR is high "
        f"(above about 2/sharpness) and settle as it decays"])
    factor = min(4.0, max(2.0, p.swing_decay))
    remedy = sentence([
        f"lower the LR by about {factor:.0f}x where the swing is large (the swing shrank "
        f"{fmt_ratio(p.swing_decay)} when the LR fell {fmt_ratio(p.lr_decay)}), or decay it "
        f"sooner; a longer warmup helps if the swing starts at the peak LR"])
    facts = {"period_steps": p.period, "amplitude": p.amplitude, "lr_decay_ratio": p.lr_decay,
             "swing_decay_ratio": p.swing_decay}
    return evidence(CAUSE, score, summary, facts, remedy)


CAUSES.add(CAUSE, rule)
