"""Cause `data_order` (oscillations): the data is served in a fixed order that repeats, so the
loss repeats with it. Three marks, each tested against the log's epoch column when it has one
(steps per epoch = steps / epochs between its first and last value): a period equal to one
epoch (the same easy and hard samples at the same point of every epoch, unshuffled, or a loss
that jumps at each epoch boundary as a fine-tune re-sees its data); a period equal to one
megabatch of the Hugging Face Trainer's length-grouped sampler (`group_by_length=True` sorts
each run of min(50, steps per epoch / 4) batches by length, longest first, so the per-token
loss saws with the sort every megabatch, whatever the shuffle); and a short fixed period of a
few steps (round-robin over data sources, or length-grouped batches served in a fixed order,
so that every k-th batch is the same kind). A period that matches none of them, in a log that
has an epoch column, is said not to be one epoch, with both numbers."""

from __future__ import annotations

import math

from spikelens.causes import CAUSES
from spikelens.causes._oscillation import OscProfile, same_period
from spikelens.causes._window import Context, evidence, fmt, fmt_ratio, sentence
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "data_order"
#: A fixed period of at most this many steps, with no LR cycle, is a data cycle.
SHORT_PERIOD = 8
#: The epoch-folded swing (max - min of 10 phase-bin means) must be this many standard errors
#: of a bin mean: the studentized range of 10 means exceeds 6 by chance with p ~ 0.001.
EPOCH_JUMP_Z = 6.0
#: transformers.trainer_pt_utils.get_length_grouped_indices: mega_batch_mult = min(len(dataset)
#: // (batch * 4), 50), the Trainer passing batch = per-device batch x gradient accumulation,
#: so one megabatch is that many optimizer steps.
HF_MEGABATCH = 50
#: With a significant epoch fold, a 50-step period is a megabatch only if the epoch fold holds
#: less than this share of the oscillation's own swing (log units).
MEGA_FOLD = 0.75
#: A period within this share of one epoch (or of a megabatch) is that length: the detector
#: measures a period in whole logged points, and an epoch's last batch may be partial.
SAME = 0.1


def megabatch_steps(epoch_steps: float | None) -> float:
    """Optimizer steps in one megabatch of HF's length-grouped sampler: 50, or a quarter of
    the epoch when the epoch holds fewer than 200 steps."""
    if epoch_steps is None:
        return float(HF_MEGABATCH)
    return float(max(1, min(HF_MEGABATCH, math.floor(epoch_steps / 4))))


def _matches(period: float, length: float, spacing: float) -> bool:
    """A period read in whole logged points matches `length` steps to within SAME or half a
    logging interval, whichever is wider."""
    return abs(period - length) <= max(SAME * length, 0.5 * spacing)


def _epoch_clause(p: OscProfile) -> str:
    """How the period compares with an epoch, in numbers, or "" without an epoch column."""
    if p.epoch_steps is None or p.period is None:
        return ""
    cycles = p.epoch_steps / p.period
    return (f"not one epoch: {fmt(p.epoch_steps)} steps per epoch by the epoch column, "
            f"{cycles:.1f} cycles per epoch")


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    p = ctx.osc
    if p is None:
        return None
    if p.lr_period is not None and same_period(p.lr_period, p.period):
        return None  # locked to the LR's cycle: lr_schedule
    parts: list[str] = []
    remedy: list[str] = []
    score = 0.0
    mega: float | None = None
    shuffle = ("shuffle the data every epoch (a fresh permutation per epoch, e.g. "
               "DistributedSampler.set_epoch), so no sample sits at the same point; a jump at "
               "each epoch boundary of a fine-tune is the model re-seeing its data "
               "(memorisation): fewer epochs or more data")
    folded = p.epoch_boundaries >= 3 and p.epoch_jump_z >= EPOCH_JUMP_Z
    fold = (f"folded by the phase of the epoch ({fmt(p.epoch_steps)} steps), the loss swings "
            f"{fmt_ratio(math.exp(p.epoch_jump))} the same way in each of the "
            f"{p.epoch_boundaries} epochs ({p.epoch_jump_z:.0f} standard errors)")
    if p.period is not None and p.epoch_steps is not None and (
            _matches(p.period, p.epoch_steps, p.spacing)
            or _matches(p.period, p.epoch_steps / 2, p.spacing)):
        score = 0.85
        half = not _matches(p.period, p.epoch_steps, p.spacing)
        parts.append(f"period {fmt(p.period)} steps = {'half an' if half else 'one'} epoch "
                     f"per the epoch column ({fmt(p.epoch_steps)} steps per epoch): data "
                     f"served in the same order every epoch")
        if folded:
            parts.append(fold)
        remedy.append(shuffle)
    elif p.period is not None and megabatch_steps(p.epoch_steps) > SHORT_PERIOD \
            and _matches(p.period, megabatch_steps(p.epoch_steps), p.spacing) \
            and (not folded or (run.format.startswith("hf")
                                and p.epoch_jump < MEGA_FOLD * math.log1p(p.amplitude or 0))):
        # (a megabatch of a few steps cannot be told from a round-robin: the branch below.)
        # The megabatch sort restarts each epoch, so folding by the epoch's phase shows some
        # of it too; a whole-epoch sawtooth whose detected period is a harmonic at 50 steps
        # is told apart by the share of the swing the epoch fold holds (about all of it for
        # an epoch sawtooth; half or less for a megabatch saw, whose 8 cycles per epoch are
        # averaged over by 10 phase bins), and only an HF Trainer log is given the benefit
        # the length sort restarts every megabatch: the loss per token saws with the length
        # of the sequences (long ones first), a property of the sampler, not of the training
        mega = megabatch_steps(p.epoch_steps)
        hf = run.format.startswith("hf")
        score = 0.7 if hf else 0.5
        parts.append(f"period {fmt(p.period)} steps = one megabatch of the Hugging Face "
                     f"Trainer's length-grouped sampler ({fmt(mega)} steps"
                     + (f", min(50, {fmt(p.epoch_steps)} steps per epoch / 4)"
                        if p.epoch_steps is not None else "")
                     + "): with group_by_length=True each megabatch is sorted by length, "
                     "longest first, so the loss per token repeats with the sort"
                     + ("" if hf else " (if this run used it)"))
        if p.epoch_steps is not None:
            parts.append(_epoch_clause(p))
        remedy.append("nothing to repair if group_by_length is on: the swing is the length "
                      "sort, not the model, and the data is still shuffled each epoch; judge "
                      "progress on the loss averaged over whole megabatches, or set "
                      "group_by_length=False for a smooth curve (at some padding cost)")
    elif folded:
        score = 0.85
        parts.append(fold + ": the swing follows the data's epoch cycle")
        if p.period is not None and p.epoch_steps is not None:
            parts.append(f"the detected period ({fmt(p.period)} steps) is "
                         f"{p.epoch_steps / p.period:.1f} cycles per epoch")
        remedy.append(shuffle)
    elif p.period is None:
        return None  # an erratic swing has no period to match
    elif p.period <= SHORT_PERIOD * max(1.0, p.spacing):
        score = 0.55
        parts.append(f"the loss repeats every {fmt(p.period)} steps with no LR cycle: batches "
                     f"of a few kinds served in a fixed cycle (round-robin over data sources, "
                     f"or length-grouped batches in a fixed order)")
        if p.epoch_steps is not None:
            parts.append(_epoch_clause(p))
        remedy.append("mix the sources (or lengths) within each batch, or sample them at random "
                      "instead of in turn")
    else:
        if p.epoch_steps is None:
            return Skipped(CAUSE, "needs an epoch column to compare the period with an epoch")
        return Skipped(CAUSE, f"the period ({fmt(p.period)} steps) is "
                              f"{_epoch_clause(p)}, and no megabatch or short data cycle")
    facts = {"period_steps": p.period, "amplitude": p.amplitude, "epoch_steps": p.epoch_steps,
             "cycles_per_epoch": (p.epoch_steps / p.period
                                  if p.epoch_steps is not None and p.period else None),
             "megabatch_steps": mega,
             "epoch_boundaries": p.epoch_boundaries or None,
             "epoch_swing_ratio": math.exp(p.epoch_jump) if p.epoch_boundaries else None}
    return evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
