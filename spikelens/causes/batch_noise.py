"""Cause `batch_noise` (oscillations): the loss of a small batch is a noisy estimate of the
training loss, and the gradient noise of a small batch keeps the weights moving, so the logged
loss swings step to step without a period. The noise of a mean over B samples falls like
1/sqrt(B) (McCandlish et al. 2018, *An Empirical Model of Large-Batch Training*: the gradient
noise scale sets how large a batch must be before it stops dominating). Evidence: a small batch
per step from the log's samples/tokens counters or Run.params (global_batch_size), and a swing
with no period and no LR cycle. A fixed period is not noise. A per-device batch alone
(micro_batch_size, e.g. HF trainer_state's train_batch_size) is a lower bound: a large one rules
batch noise out, a small one is said to be only a bound."""

from __future__ import annotations

import math

from spikelens.causes import CAUSES
from spikelens.causes._window import Context, evidence, fmt, fmt_int, mag, sentence
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "batch_noise"
#: Samples per step at or below which the batch is small (a mean over 32 samples has a noise
#: of 1/sqrt(32) = 18% of the per-sample spread).
SMALL_BATCH = 32
#: Samples per step at or above which batch noise is not the explanation.
LARGE_BATCH = 512
#: |lag-1 autocorrelation| of the detrended loss at or below which it is white: 3 standard
#: errors of a lag-1 estimate from white noise over 400 points (1 / sqrt(400) = 0.05).
WHITE_LAG1 = 0.15


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    p = ctx.osc
    if p is None:
        return None
    if p.lr_period is not None:
        return None  # the LR cycles: lr_schedule
    b = p.samples_per_step
    parts: list[str] = []
    if b is not None:
        if b >= LARGE_BATCH:
            return None
        score = 0.35 + 0.4 * (1.0 - mag(max(b, 1.0), 1.0 * SMALL_BATCH, LARGE_BATCH))
        parts.append(f"the batch is {fmt_int(b)} sample{'s' if round(b) != 1 else ''} per step "
                     f"(from the log), so each logged loss is a mean over few samples and "
                     f"its noise is large (about 1/sqrt({fmt_int(b)}) of the per-sample spread)")
    elif p.period is not None:
        return None  # a fixed period, and nothing says the batch is small
    elif p.micro_batch is not None:
        # only one process's batch is known (HF trainer_state's train_batch_size): the batch
        # per step is at least that, so a large one rules batch noise out, a small one
        # confirms nothing (gradient accumulation and ranks may multiply it many times)
        if p.micro_batch >= LARGE_BATCH:
            return None
        score = 0.3
        parts.append(f"the swing has no period and no LR cycle, the mark of batch noise; the "
                     f"log gives only the batch of one process ({fmt_int(p.micro_batch)} "
                     f"sample{'s' if round(p.micro_batch) != 1 else ''}), not the gradient "
                     f"accumulation or the data-parallel ranks, so the batch per step is at "
                     f"least that and may be many times larger")
    else:
        score = 0.3
        parts.append("the swing has no period and no LR cycle, the mark of batch noise; the log "
                     "does not say the batch size (no samples/tokens counter or "
                     "global_batch_size) to confirm it")
    if b is not None and p.period is None and p.lag1 is not None \
            and abs(p.lag1) <= WHITE_LAG1 and p.log_spread is not None:
        # independent batches give independent losses: a white residual is the sampling
        # noise of the batch, and its spread times sqrt(B) is the spread of one sample's loss,
        # which the log does not give on its own. So the log cannot say whether the training
        # swings beyond that noise; it says the measurement is noisy
        parts.append(f"the loss around its trend is white (lag-1 autocorrelation "
                     f"{p.lag1:.2f}), as the sampling noise of independent batches of "
                     f"{fmt_int(b)} is, and a swing the weights carry from step to step is "
                     f"not; it implies one sample's loss spreads sqrt({fmt_int(b)}) x "
                     f"{p.log_spread:.2f} = {p.log_spread * math.sqrt(b):.2f} (log q90-q10), "
                     f"which the log cannot check, so it cannot tell whether training is "
                     f"unstable beneath the noise: judge that on the smoothed loss")
    if p.period is not None:
        score *= 0.4  # noise has no period
        parts.append(f"but the loss has a fixed period of {fmt(p.period)} steps, which noise "
                     f"does not produce")
    if p.tokens_per_step is not None:
        parts.append(f"{fmt_int(p.tokens_per_step)} tokens per step")
    if score <= 0.05:
        return Skipped(CAUSE, "needs the batch size (samples/tokens counters or "
                              "global_batch_size) to judge")
    k = 4
    remedy = sentence([
        f"raise the batch size or accumulate gradients over several steps: {k}x the batch "
        f"halves the noise (it falls like 1/sqrt(batch)); scale the LR with the batch if "
        f"training gets slower",
        "or judge the run by a smoothed loss (an EMA over ~50 steps) rather than each step's"])
    facts = {"period_steps": p.period, "amplitude": p.amplitude, "samples_per_step": b,
             "micro_batch_size": p.micro_batch if b is None else None,
             "residual_lag1": p.lag1 if p.period is None else None,
             "tokens_per_step": p.tokens_per_step}
    return evidence(CAUSE, score, sentence(parts), facts, remedy)


CAUSES.add(CAUSE, rule)
