"""Cause `bad_batch`: the data of one or a few batches, not the optimiser, made the loss jump.
The loss is measured on the batch before the update, so a bad batch shows at once: the first
logged point of the rise is (nearly) the peak, and the loss is back down as soon as the batches
are normal again. Nothing upstream moves first: no LR change, no grad-norm climb before the rise
(the grad norm may jump *on* the same step, by about as much as the loss) and no loss-scale
event. The evidence is much stronger when other runs given on the same command line spike at
the same step or at the same consumed samples/tokens (the modded-nanogpt records spike at steps
918/946 across dozens of runs that read the data in the same order). The remedy names the
steps and, where logged, the consumed samples/tokens of the suspect batches."""

from __future__ import annotations

import math

from spikelens.align import run_key
from spikelens.causes import CAUSES
from spikelens.causes._window import (
    Context,
    evidence,
    fmt,
    fmt_int,
    fmt_ratio,
    mag,
    position,
    restart_advice,
    sentence,
)
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "bad_batch"


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    shape = ctx.shape
    if shape is None:
        return Skipped(CAUSE, "needs loss, not in this log")
    abrupt = shape.onset_points <= 1 and shape.onset_fraction >= 0.5
    score = 0.3 + (0.2 if abrupt else 0.0) + (0.15 if shape.quick else 0.0)
    if not event.recovered:
        score *= 0.5
    # a bad batch costs one step: a rise that decays over many steps, reaches the loss of a
    # uniform guess, or needs an impossible batch to lift an averaged loss is weight damage
    jump, climb = shape.jump_damage, shape.climb
    damage = jump or climb  # `shape.damage`, read once
    if damage is not None:
        score *= 0.35
    lr, g, sc, nf = ctx.lr, ctx.grad, ctx.scale, ctx.nonfinite
    lr_ok = ctx.arrays.usable("lr")[0] is not None
    g_ok = ctx.arrays.usable("grad_norm")[0] is not None
    clean: list[str] = []
    against: list[str] = []
    if jump is not None:
        against.append(f"{jump}: that is weight damage from an oversized update, not one "
                       f"batch (the next batches are normal data)")
    elif climb is not None:
        # a compounding climb: the model got worse, but the log alone does not say that one
        # update was oversized (an LR too high all along, or data that keeps getting worse)
        against.append(f"{climb}, which one batch cannot do (the next batches are normal data)")
    if lr_ok:
        ls = lr.strength if lr is not None else 0.0
        if ls < 0.1:
            score += 0.05
            clean.append("no LR change")
        else:
            score *= 1.0 - 0.9 * ls
            against.append(f"the LR rose {fmt_ratio(lr.ratio if lr else 1.0)} before it")
    if g_ok and g is not None:
        if g.precursor:
            score *= 1.0 - 0.6 * (0.5 + 0.5 * mag(g.pre_ratio, 3.0, 30.0))
            against.append(f"the grad norm was already {fmt_ratio(g.pre_ratio)} its baseline "
                           f"before the loss rose")
        else:
            score += 0.05
            same = (f" (it rose {fmt_ratio(g.onset_ratio)} on the same step)"
                    if g.onset_ratio >= 2 else "")
            clean.append(f"no grad-norm rise before it{same}")
        if g.collapse >= 100 and g.stretch_steps > 0:
            score *= 0.5
            against.append("the gradients had collapsed before it")
    n_amp = max(sc.cuts, sc.skips) if sc is not None else 0
    if sc is not None and (sc.depth >= 1.5 or (n_amp >= 2 and n_amp >= 4 * max(sc.expected, 0.5))):
        score *= 0.5
        against.append("the loss scale was cut around it")
    elif sc is not None and sc.has_scale and sc.dynamic:
        clean.append("no loss-scale event")
    if nf is not None:
        score *= 0.6
        against.append(f"{' and '.join(x.replace('_', ' ') for x in nf.series)} went "
                       f"non-finite at step {nf.step}")
    rec = ctx.recurrence
    others = 0
    # runs that share seed, data order and LR schedule spike together whether the data or the
    # schedule did it: a recurrence is evidence for the batch only when the runs differ in
    # something a schedule-driven event would follow, or the rise is a one-step outlier
    one_step = shape.onset_points == 0 and shape.quick
    informative = rec is not None and (bool(rec.differ) or one_step)
    if rec is not None:
        others = len({src for src, _ in rec.members if src != run_key(run)})
        if others and informative:
            score = min(0.97, score + 0.3 + 0.02 * min(others - 1, 5))
    start, peak = event.start_step, event.peak_step
    last = peak
    if shape.quick and shape.half_recovery_points and ctx.loss is not None:
        after = ctx.loss.after(peak, shape.half_recovery_points)
        if len(after) >= 2:
            last = int(after.steps[-2])  # the points still elevated after the peak
    rise = (f"in {shape.onset_points + 1} logged step{'s' if shape.onset_points else ''}"
            if abrupt else f"over {shape.onset_points + 1} logged steps")
    before = shape.before_value if math.isfinite(shape.before_value) else shape.base
    short = shape.baseline_points < ctx.config.min_window
    level = (f"{fmt_ratio(shape.peak_ratio)} its {fmt(shape.base)} baseline" if not short else
             f"{fmt_ratio(shape.peak_ratio)} the level of the {shape.baseline_points} logged point"
             f"{'s' if shape.baseline_points != 1 else ''} before it, too few for a z-score")
    if math.isfinite(shape.peak_value):
        head = (f"loss jumped {fmt(before)} -> {fmt(shape.peak_value)} {rise} at step {peak} "
                f"({level})")
    else:
        word = "NaN" if math.isnan(shape.peak_value) else fmt(shape.peak_value)
        # a climb into NaN (one event from the climb's start): `before` is where it began
        head = (f"loss climbed from {fmt(before)} at step {start} and went {word} at step "
                f"{peak}" if event.diverged else
                f"loss went {word} at step {peak} (from {fmt(before)})")
    parts = [head]
    if shape.gap is not None:
        parts[0] += (f"; the log has a gap from step {shape.gap[0]} to {shape.gap[1]}, so "
                     f"the way back is not logged")
    elif shape.quick and shape.half_recovery_step is not None:
        parts[0] += (f" and was halfway back "
                     f"{ctx.steps_word(shape.half_recovery_step - peak)} later")
    elif event.recovered:
        parts[0] += f" and recovered by step {event.end_step}"
    else:
        parts[0] += " and did not recover"
    if clean:
        parts.append("with " + ", ".join(clean))
    if against:
        parts.append("but " + "; ".join(against))
    pos = position(run, start, last)
    if pos is not None:
        parts.append(f"the suspect data: consumed {pos.role} {fmt_int(pos.first)}-"
                     f"{fmt_int(pos.last)}")
    if rec is not None and others:
        names = [f"{src.rsplit('/', 1)[-1]}@{st}" for src, st in rec.members
                 if src != run_key(run)]
        where = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"the same {rec.axis} also spiked in {others} other run"
                     f"{'s' if others != 1 else ''} ({where})")
        if rec.differ:
            parts[-1] += f", runs that differ in {', '.join(rec.differ)}"
        elif not informative:
            parts[-1] += (", but those runs share seed, data order and LR schedule as far as "
                          "the logs say, so coinciding cannot tell the data from the schedule")
    if not clean and not against and not (rec and others):
        # no grad norm, LR, loss scale or other run to compare with: say what is missing,
        # not that nothing moved (the log's other columns may well have: a PPO run's value
        # loss and entropy jump with its loss, but no rule reads them)
        parts.append("no grad norm, LR or loss scale in this log to check it against")
    restart, _, end_skip = restart_advice(ctx)
    what = f"steps {start}-{last}" if last != start else f"step {start}"
    if pos is not None:
        what += f" (consumed {pos.role} {fmt_int(pos.first)}-{fmt_int(pos.last)})"
    remedy = [f"inspect the batch{'es' if last != start else ''} of {what}"]
    if damage is not None:
        remedy.insert(0, f"the weights were damaged: restart from a checkpoint at or before step "
                         f"{restart} with a lower LR; skipping batches alone is unlikely to "
                         f"prevent it")
    if rec is not None and others and informative:
        remedy.append("every run that reads the data in this order hits it: remove or fix those "
                      "samples in the dataset")
    if event.recovered:
        remedy.append("the run recovered by itself; if it recurs or hurts, restart from a "
                      f"checkpoint at or before step {restart} and skip the batches of {what} "
                      "(PaLM restarted ~100 steps before a spike and skipped 200-500 batches)")
    else:
        remedy.append(f"restart from a checkpoint at or before step {restart} and skip the "
                      f"batches from step {start} to {max(end_skip, start + 200)} (PaLM "
                      f"restarted ~100 steps before a spike and skipped 200-500 batches)")
    facts = {
        "loss_before": shape.before_value,
        "loss_peak": shape.peak_value,
        "baseline_points": shape.baseline_points,
        "peak_ratio": shape.peak_ratio,
        "onset_points": shape.onset_points,
        "onset_fraction": shape.onset_fraction,
        "half_recovery_points": shape.half_recovery_points,
        "suspect_first_step": start,
        "suspect_last_step": last,
        "position_axis": pos.role if pos else None,
        "position_first": pos.first if pos else None,
        "position_last": pos.last if pos else None,
        "recurs_in_runs": others,
        "recurrence_counts": informative if rec is not None else None,
        "elevated_points_after_peak": shape.elevated_points,
        "uniform_guess_loss": shape.uniform_loss,
        "one_batch_loss_needed": shape.batch_loss_needed,
        "restart_step": restart,
    }
    return evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
