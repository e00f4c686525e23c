"""Cause `optimizer_state`: the optimiser itself was in a bad state. Adam divides by the root
of its second-moment estimate plus epsilon; after a long stretch of tiny gradients that
estimate shrinks with them, and with a small epsilon the effective step size grows until the
fit goes unstable: the loss spikes by orders of magnitude even though nothing else changed
(Molybog et al. 2023 describe this instability of Adam at scale). The signs in a log: the grad
norm (or, without it, the loss) had collapsed by orders of magnitude below its earlier level
for a long stretch before the rise; update norms spiking more than the gradients do; or the
rise coming right after a resume, with the LR continuous, when the optimizer state or step
counter did not come back."""

from __future__ import annotations

import math

import numpy as np

from spikelens.causes import CAUSES
from spikelens.causes._window import (
    PRECURSOR_POINTS,
    Context,
    evidence,
    fmt,
    fmt_ratio,
    history_level,
    mag,
    median_of,
    restart_advice,
    sentence,
)
from spikelens.model import Event, Evidence, Restart, Run, Skipped

CAUSE = "optimizer_state"
#: Gradients this many times below their earlier level count as collapsed.
COLLAPSE = 100.0


def _update_surge(run: Run, ctx: Context) -> tuple[float, float] | None:
    """(update-norm ratio at the rise, grad-norm ratio at the rise) when update norms exist."""
    u, _ = ctx.arrays.usable("update_norm")
    if u is None:
        return None
    ev = ctx.event
    older = u.before(ev.start_step)
    base_vals = older.values[:-PRECURSOR_POINTS][-ctx.config.window:]
    base_vals = base_vals[np.isfinite(base_vals)]
    if len(base_vals) < 3:
        fu = ctx.arrays.finite("update_norm")
        base_vals = fu.before(ev.start_step).values if fu is not None else base_vals
    if len(base_vals) == 0:
        return None
    base = median_of(base_vals)
    if base <= 0:
        return None
    near = u.between(int(older.steps[-PRECURSOR_POINTS:][0]) if len(older) else ev.start_step,
                     ev.peak_step)
    fin = near.values[np.isfinite(near.values)]
    if len(fin) == 0:
        return None
    g = ctx.grad
    gr = max(g.pre_ratio, g.onset_ratio) if g is not None else 1.0
    return float(np.max(fin) / base), gr


def _loss_collapse(ctx: Context) -> float:
    """How far the loss had fallen below its earlier trailing level (for logs without grads)."""
    loss, shape = ctx.loss, ctx.shape
    if loss is None or shape is None or not (shape.base > 0):
        return 1.0
    fl = ctx.arrays.finite("loss")
    n = fl.pos(ctx.event.start_step) if fl is not None else 0
    if n < 8 or ctx.arrays.running_at("loss", "min", n - 1) <= 0:
        return 1.0
    level = history_level(ctx.arrays, "loss", n, ctx.config.window)
    return level / shape.base


def _resume_before(run: Run, event: Event) -> Restart | None:
    near = 20 * max(1, run.interval)
    best = None
    for r in run.restarts:
        if event.start_step - near <= r.resumed_at <= event.start_step:
            best = r
    return best


#: Momentum (or Adam beta1) at or above which the iterates can circle the minimum.
HIGH_MOMENTUM = 0.95


def _oscillation(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    """Momentum resonance: heavy-ball momentum near 1 makes the iterates overshoot and circle
    a minimum with a period set by the LR and the curvature (Goh 2017, *Why momentum really
    works*); Adam with beta2 not far above beta1 oscillates the same way."""
    p = ctx.osc
    if p is None:
        return None
    if p.momentum is None:
        return Skipped(CAUSE, "needs momentum or adam_beta1 in the run's parameters")
    if p.momentum < HIGH_MOMENTUM:
        return None
    score = 0.4 + (0.1 if p.period is not None and p.lr_period is None else 0.0)
    parts = [f"momentum (beta1) is {fmt(p.momentum)}: with momentum this close to 1 the "
             f"iterates overshoot and circle the minimum, a swing with a period set by the LR "
             f"and the curvature"]
    if p.beta2 is not None and p.beta2 <= p.momentum + 0.01:
        score += 0.1
        parts.append(f"and beta2 {fmt(p.beta2)} is not above it")
    remedy = sentence([f"lower momentum (beta1) from {fmt(p.momentum)} to 0.9, or lower the LR; "
                       f"keep Adam's beta2 well above beta1 (0.95-0.999)"])
    facts = {"period_steps": p.period, "amplitude": p.amplitude, "momentum": p.momentum,
             "beta2": p.beta2}
    return evidence(CAUSE, score, sentence(parts), facts, remedy)


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    if event.kind == "oscillation":
        return _oscillation(run, event, ctx)
    g_ok = ctx.arrays.usable("grad_norm")[0] is not None
    u_ok = ctx.arrays.usable("update_norm")[0] is not None
    resume = _resume_before(run, event)
    g = ctx.grad
    comps: list[tuple[float, str]] = []
    remedy: list[str] = []
    facts: dict[str, object] = {}
    if g is not None and g.collapse >= COLLAPSE and g.stretch_steps > 0:
        s = 0.5 + 0.45 * mag(g.collapse, COLLAPSE, 1e5)
        comps.append((s, (
            f"before the rise the grad norm had sat near {fmt(g.base)} for "
            f"{ctx.steps_word(g.stretch_steps)}, {fmt_ratio(g.collapse)} below its earlier "
            f"{fmt(g.history_level)}: Adam's second moment shrinks with the gradients, so a "
            f"small epsilon lets the effective step grow until the fit goes unstable"
        )))
        eps = 10.0 ** math.ceil(math.log10(g.base)) if g.base > 0 else 1e-6
        remedy.append(
            f"raise Adam's epsilon to about {eps:.0e} (the pre-spike grad norm was "
            f"{fmt(g.base)}; the usual default 1e-8 is far below the scale where it would bound "
            f"the step), or stop or decay the LR once the loss has converged"
        )
        facts.update(grad_base=g.base, grad_earlier_level=g.history_level,
                     collapse_ratio=g.collapse, collapsed_steps=g.stretch_steps,
                     suggested_eps=eps)
    if not g_ok:
        lc = _loss_collapse(ctx)
        if lc >= 1e4:
            s = 0.35 + 0.25 * mag(lc, 1e4, 1e10)
            comps.append((s, (
                f"the loss had fallen {fmt_ratio(lc)} below its earlier level before the rise "
                f"(the gradients vanish with it; grad norm not logged to confirm)"
            )))
            remedy.append("raise Adam's epsilon (e.g. 1e-8 -> 1e-6) or stop once the loss has "
                          "converged; log the grad norm to confirm")
            facts.update(loss_collapse_ratio=lc)
    surge = _update_surge(run, ctx)
    if surge is not None:
        ur, gr = surge
        if ur >= 3 and ur >= 2 * gr:
            s = 0.5 + 0.4 * mag(ur / max(gr, 1.0), 2.0, 50.0)
            comps.append((s, (
                f"the update norm rose {fmt_ratio(ur)} at the rise while the grad norm rose only "
                f"{fmt_ratio(gr)}: the optimizer amplified ordinary gradients"
            )))
            remedy.append("check the optimizer state (second moments, epsilon, step counter)")
            facts.update(update_ratio=ur, grad_ratio=gr)
    lr = ctx.lr
    if resume is not None and (lr is None or lr.strength < 0.3):
        counter = resume.resumed_at <= 10 < resume.previous_last
        s = 0.55 + (0.1 if counter else 0.0)
        what = (f"the step counter restarted at {resume.resumed_at} after step "
                f"{resume.previous_last}" if counter else
                f"the run resumed at step {resume.resumed_at} (after step "
                f"{resume.previous_last}) {event.start_step - resume.resumed_at} steps before "
                f"the rise")
        comps.append((s, f"{what}, with the LR continuous: a resume that did not restore the "
                         f"optimizer state restarts Adam's moments from zero"))
        remedy.append(f"restore the optimizer state (Adam moments and step count) when "
                      f"resuming at step {resume.resumed_at}, or re-warm the LR after a resume "
                      f"without it")
        facts.update(resumed_at=resume.resumed_at, previous_last=resume.previous_last)
    if not comps:
        if not g_ok and not u_ok and resume is None:
            return Skipped(CAUSE, "needs grad_norm or update_norm, not in this log")
        return None
    comps.sort(key=lambda c: -c[0])
    score = comps[0][0] + 0.03 * (len(comps) - 1)
    restart, _, _ = restart_advice(ctx)
    remedy.append(f"restart from a checkpoint at or before step {restart}")
    facts["restart_step"] = restart
    return evidence(CAUSE, score, sentence([c[1] for c in comps]), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
