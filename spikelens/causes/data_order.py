"""Cause `data_order` (oscillations): the data is served in a fixed order that repeats, so the
loss repeats with it. Two marks: a period equal to one epoch (the same easy and hard samples at
the same point of every epoch, unshuffled, or a loss that jumps at each epoch boundary as a
fine-tune re-sees its data), and a short fixed period of a few steps (round-robin over data
sources, or length-grouped batches served in a fixed order, so that every k-th batch is the
same kind). The epoch length comes from the log's epoch column."""

from __future__ import annotations

import math

from spikelens.causes import CAUSES
from spikelens.causes._oscillation import same_period
from spikelens.causes._window import Context, evidence, fmt, fmt_ratio, sentence
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "data_order"
#: A fixed period of at most this many steps, with no LR cycle, is a data cycle.
SHORT_PERIOD = 8
#: The epoch-folded swing (max - min of 10 phase-bin means) must be this many standard errors
#: of a bin mean: the studentized range of 10 means exceeds 6 by chance with p ~ 0.001.
EPOCH_JUMP_Z = 6.0


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    p = ctx.osc
    if p is None:
        return None
    if p.lr_period is not None and same_period(p.lr_period, p.period):
        return None  # locked to the LR's cycle: lr_schedule
    parts: list[str] = []
    remedy: list[str] = []
    score = 0.0
    shuffle = ("shuffle the data every epoch (a fresh permutation per epoch, e.g. "
               "DistributedSampler.set_epoch), so no sample sits at the same point; a jump at "
               "each epoch boundary of a fine-tune is the model re-seeing its data "
               "(memorisation): fewer epochs or more data")
    if p.epoch_boundaries >= 3 and p.epoch_jump_z >= EPOCH_JUMP_Z:
        score = 0.85
        parts.append(f"folded by the phase of the epoch ({fmt(p.epoch_steps)} steps), the loss "
                     f"swings {fmt_ratio(math.exp(p.epoch_jump))} the same way in each of the "
                     f"{p.epoch_boundaries} epochs ({p.epoch_jump_z:.0f} standard errors): the "
                     f"swing follows the data's epoch cycle")
        remedy.append(shuffle)
    elif p.period is None:
        return None  # an erratic swing has no period to match
    elif p.epoch_steps is not None and (same_period(p.epoch_steps, p.period, 0.1)
                                        or same_period(p.epoch_steps / 2, p.period, 0.1)):
        score = 0.85
        parts.append(f"the loss repeats every {fmt(p.period)} steps, one epoch "
                     f"({fmt(p.epoch_steps)} steps by the epoch column): the same data at the "
                     f"same point of each epoch")
        remedy.append(shuffle)
    elif p.period <= SHORT_PERIOD * max(1.0, p.spacing):
        score = 0.55
        parts.append(f"the loss repeats every {fmt(p.period)} steps with no LR cycle: batches "
                     f"of a few kinds served in a fixed cycle (round-robin over data sources, "
                     f"or length-grouped batches in a fixed order)")
        remedy.append("mix the sources (or lengths) within each batch, or sample them at random "
                      "instead of in turn")
    else:
        if p.epoch_steps is None:
            return Skipped(CAUSE, "needs an epoch column to compare the period with an epoch")
        return None
    facts = {"period_steps": p.period, "amplitude": p.amplitude, "epoch_steps": p.epoch_steps,
             "epoch_boundaries": p.epoch_boundaries or None,
             "epoch_swing_ratio": math.exp(p.epoch_jump) if p.epoch_boundaries else None}
    return evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
