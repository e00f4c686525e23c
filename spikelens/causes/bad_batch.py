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
    usable,
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
    lr, g, sc, nf = ctx.lr, ctx.grad, ctx.scale, ctx.nonfinite
    lr_ok = usable(run, "lr")[0] is not None
    g_ok = usable(run, "grad_norm")[0] is not None
    clean: list[str] = []
    against: list[str] = []
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
    if rec is not None:
        others = len({src for src, _ in rec.members if src != run_key(run)})
        if others:
            score = min(0.97, score + 0.3 + 0.02 * min(others - 1, 5))
    start, peak = event.start_step, event.peak_step
    last = peak
    if shape.quick and shape.half_recovery_points and ctx.loss is not None:
        after = ctx.loss.after(peak, shape.half_recovery_points)
        if len(after) >= 2:
            last = int(after.steps[-2])  # the points still elevated after the peak
    rise = (f"in {shape.onset_points + 1} logged step{'s' if shape.onset_points else ''}"
            if abrupt else f"over {shape.onset_points + 1} logged steps")
    if math.isfinite(shape.peak_value):
        head = (f"loss jumped {fmt_ratio(shape.peak_ratio)} ({fmt(shape.base)} -> "
                f"{fmt(shape.peak_value)}) {rise} at step {peak}")
    else:
        word = "NaN" if math.isnan(shape.peak_value) else fmt(shape.peak_value)
        head = f"loss went {word} at step {peak} (from {fmt(shape.base)})"
    parts = [head]
    if shape.quick and shape.half_recovery_step is not None:
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
    if not clean and not against and not (rec and others):
        parts.append("nothing else in this log moved (only the loss is logged)")
    restart, _, end_skip = restart_advice(ctx)
    what = f"steps {start}-{last}" if last != start else f"step {start}"
    if pos is not None:
        what += f" (consumed {pos.role} {fmt_int(pos.first)}-{fmt_int(pos.last)})"
    remedy = [f"inspect the batch{'es' if last != start else ''} of {what}"]
    if rec is not None and others:
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
        "restart_step": restart,
    }
    return evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
