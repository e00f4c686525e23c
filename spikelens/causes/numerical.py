"""Cause `numerical`: a numerically unsafe operation (log of 0, exp overflow, division by
about 0) produced inf or NaN. Its mark is suddenness: the value goes non-finite from a healthy
state, without the growth in grad norm or loss that comes first when a run blows up, and
without loss-scale involvement (fp16 overflows are caught by the scaler and belong to
`amp_overflow`). The rule names the series that went non-finite first and how the run carried
on (a single guarded step, or NaN to the end)."""

from __future__ import annotations

import math

import numpy as np

from spikelens.causes import CAUSES
from spikelens.causes._window import (
    GRAD_PRECURSOR,
    PRECURSOR_POINTS,
    Context,
    evidence,
    excursion,
    fmt,
    fmt_ratio,
    mag,
    median_of,
    restart_advice,
    sentence,
)
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "numerical"
#: How a role reads in a sentence.
NAMES = {"grad_norm": "grad norm", "nan_count": "the NaN-iteration counter",
         "loss_scale": "loss scale", "update_norm": "update norm"}


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    nf = ctx.nonfinite
    if nf is None:
        return None
    shape = ctx.shape
    base = shape.base if shape is not None else float("nan")
    # loss precursor: how far above its baseline the loss already was just before
    loss_prec = 1.0
    if nf.last_finite_loss is not None and nf.step > event.start_step and math.isfinite(base):
        e = excursion(nf.last_finite_loss, base)
        loss_prec = math.exp(e) if math.isfinite(e) else 1.0
    g, _ = ctx.arrays.usable("grad_norm")
    grad_prec = 1.0
    grad_base = float("nan")
    if g is not None:
        fg = ctx.arrays.finite("grad_norm")
        assert fg is not None
        before = fg.before(nf.step)
        older = before.values[:-PRECURSOR_POINTS][-ctx.config.window:]
        grad_base = median_of(older) if len(older) >= 3 else (
            float(before.values.min()) if len(before) else float("nan"))
        near = before.values[-PRECURSOR_POINTS:]
        if len(near) and grad_base > 0:
            grad_prec = float(near.max() / grad_base)
    sc = ctx.scale
    amp = bool(sc is not None and sc.has_scale and sc.dynamic
               and (sc.cuts >= 1 or sc.nonfinite_skipped >= 1))
    score = 0.85 if g is not None else 0.75
    prec = max(mag(loss_prec, 1.5, 10.0), mag(grad_prec, GRAD_PRECURSOR, 30.0))
    score *= 1.0 - 0.8 * prec
    if amp:
        score *= 0.3
    loss_v = ctx.loss.between(nf.step, nf.step).values if ctx.loss is not None else np.array([])
    word = "non-finite"
    if len(loss_v) and not math.isfinite(float(loss_v[0])):
        word = "NaN" if math.isnan(float(loss_v[0])) else "inf"
    names = [NAMES.get(x, x) for x in nf.series]
    parts = [f"{' and '.join(names)} went non-finite first, at step {nf.step}"
             + (f" (loss {word})" if "loss" in nf.series else "")]
    if prec < 0.05:
        clauses = []
        if g is not None:
            clauses.append(f"grad norm at most {fmt_ratio(grad_prec)} its {fmt(grad_base)} "
                           f"baseline just before")
        else:
            clauses.append("grad norm not logged, so a precursor cannot be ruled out")
        if nf.last_finite_loss is not None:
            clauses.append(f"last finite loss {fmt(nf.last_finite_loss)} (baseline "
                           f"{fmt(base)})")
        parts.append("without a precursor: " + ", ".join(clauses))
    else:
        parts.append(f"but it was preceded by growth (loss {fmt_ratio(loss_prec)}, grad norm "
                     f"{fmt_ratio(grad_prec)} their baselines), which points at a blow-up")
    if amp:
        parts.append("and the loss scale was cut around it (fp16 overflow)")
    elif sc is not None and sc.has_scale and sc.dynamic:
        parts.append("with no loss-scale cut")
    loss = ctx.loss
    if loss is not None and nf.loss_steps:
        fl = ctx.arrays.finite("loss")
        if fl is None or len(fl) == 0 or int(fl.steps[-1]) <= nf.step:
            parts.append("the loss never became finite again")
        else:
            parts.append(f"{nf.loss_steps} non-finite loss step{'s' if nf.loss_steps != 1 else ''}"
                         f", then training continued")
    restart, _, _ = restart_advice(ctx)
    remedy = [
        f"find the op that produced the first {word} at step {nf.step} (run that batch under "
        f"torch.autograd.detect_anomaly): the usual culprits are log of 0, exp overflow and "
        f"division by about 0; clamp their inputs (e.g. log(x.clamp_min(1e-12))) and compute "
        f"softmax/log-sum-exp in fp32",
        f"if the weights went NaN, restart from a checkpoint at or before step {restart} and "
        f"skip the batch of step {nf.step}",
    ]
    facts = {
        "first_nonfinite_step": nf.step,
        "first_series": ",".join(nf.series),
        "nonfinite_loss_steps": nf.loss_steps,
        "loss_precursor_ratio": loss_prec,
        "grad_precursor_ratio": grad_prec if g is not None else None,
        "grad_base": grad_base if g is not None else None,
        "loss_scale_involved": amp,
        "restart_step": restart,
    }
    return evidence(CAUSE, score, sentence(parts, sep=", "), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
