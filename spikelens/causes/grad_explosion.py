"""Cause `grad_explosion`: the gradient norm blew up and the loss followed. The signature is
timing: the grad norm climbs over the logged steps *before* the loss rises (BLOOM-176B at
iteration 31219: 0.24 -> 0.95 -> 2.4 -> 16 -> 145 -> 960 with the LR constant), or it surges far
more than the loss does at the rise (a bad batch raises both by a similar factor: its gradient is
large because its loss is large). A grad rise is discounted when something upstream explains
it: an LR increase just before (the rise is the LR's doing) or a long stretch of collapsed
gradients (Adam's second moment shrank with them: optimizer state). Where per-layer grad norms
are logged, the layer that left its baseline first is named."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spikelens.causes import CAUSES
from spikelens.causes._window import (
    GRAD_PRECURSOR,
    PRECURSOR_POINTS,
    Context,
    RunArrays,
    Series,
    evidence,
    excursion,
    excursions,
    fmt,
    fmt_ratio,
    lag_words,
    mag,
    median_of,
    restart_advice,
    sentence,
    span_words,
    stale_flags,
    stale_mask,
)
from spikelens.metrics import normalise
from spikelens.model import Event, Evidence, Run, Skipped

CAUSE = "grad_explosion"
#: The grad norm must outgrow the loss by this factor during the rise to count as a surge...
SURGE_OVER_LOSS = 4.0
#: ...and be at least this many times its baseline (below that it is noise).
SURGE_MIN = 5.0


@dataclass(frozen=True)
class Surge:
    """Where during the rise the grad norm most outgrew the loss."""

    step: int
    grad_ratio: float  # grad norm / its baseline there
    loss_ratio: float  # loss / its baseline there
    over: float  # grad_ratio / loss_ratio (past SURGE_HEAD points: held over SURGE_HOLD)
    #: the first point of the rise where the grad norm had outgrown the loss SURGE_OVER_LOSS
    #: times (the explosion's onset; this point itself when it is the first); None if none
    onset: Surge | None = None


#: The first points of a rise are judged point by point, as a spike's rise is (a few points,
#: its surge one of them); the point-by-point loop covers rises this long.
SURGE_HEAD = 50
#: Past `SURGE_HEAD` points a lead counts only as the median over this many consecutive
#: logged points centred on it: over hundreds of points of a long rise, one heavy-tailed
#: grad-norm outlier would otherwise pass for a surge, while an explosion's lead holds.
SURGE_HOLD = 5


def _rise_grads(g: Series, ev: Event) -> tuple[Series, Series]:
    """The grad norms of the rise (start to peak) and the two logged before it: with those,
    a value copied onto a skipped step is seen as stale from the rise's first point on."""
    return g.between(ev.start_step, max(ev.peak_step, ev.start_step)), g.before(ev.start_step, 2)


def _stale_in(gw: Series, prev: Series) -> np.ndarray:
    """`stale_mask` of the rise's grad norms `gw`, read after the points `prev` before it."""
    return stale_mask(np.concatenate([prev.values, gw.values]))[len(prev):]


def _surge(ctx: Context, base: float) -> Surge | None:
    """Scan the whole rise (start to peak): the point where the grad norm's growth most
    exceeds the loss's, with the first point where it exceeded it `SURGE_OVER_LOSS` times. A
    bad batch raises both by a similar factor on the same step; an explosion shows the grad
    norm far ahead while the loss is still low. In a slow explosion (the loss growing e-fold
    every 80-120 steps) the grad norm outgrows the loss only a hundred or more points into
    the rise: capped at 50 points, the scan found 12 of the 30 slow explosions of seeds
    4000-8000 (`benchmarks/labelled.py`)."""
    shape, loss, g = ctx.shape, ctx.loss, ctx.arrays.usable("grad_norm")[0]
    if shape is None or loss is None or g is None or not base > 0:
        return None
    gw, prev = _rise_grads(g, ctx.event)
    if len(gw) > SURGE_HEAD:
        return _surge_long(gw, prev, loss, shape.base, base)
    # as Python numbers: the same doubles, without numpy's per-scalar cost in the scan
    gv_all: list[float] = gw.values.tolist()
    stale = stale_flags(prev.values.tolist() + gv_all)[len(prev):]
    best: Surge | None = None
    onset: Surge | None = None
    for st, gv, old in zip(gw.steps.tolist(), gv_all, stale, strict=True):
        if old or not math.isfinite(gv) or gv / base < SURGE_MIN:
            continue
        cand = _surge_at(loss, int(st), gv, shape.base, base)
        if cand is None:
            continue
        if onset is None and cand.over >= SURGE_OVER_LOSS:
            onset = cand
        if best is None or cand.over > best.over:
            best = cand
    return _with_onset(best, onset)


def _with_onset(best: Surge | None, onset: Surge | None) -> Surge | None:
    """`best` with the onset attached (None when there is no best point)."""
    if best is None or onset is None:
        return best
    return Surge(best.step, best.grad_ratio, best.loss_ratio, best.over, onset)


def _surge_at(loss: Series, step: int, gv: float, loss_base: float, base: float,
              over: float | None = None) -> Surge | None:
    """The surge figures at one point: the grad norm `gv` against its baseline, the loss
    logged at or before `step` against its own; None where the loss is missing or not
    finite. `over` replaces the point's own lead (a held lead, past `SURGE_HEAD`)."""
    lv = loss.value_at(step)
    if lv is None:
        return None
    e = excursion(lv, loss_base)
    if not math.isfinite(e):
        return None
    lr_ = math.exp(max(e, 0.0))
    own = float(gv / base / lr_)
    return Surge(step, float(gv / base), lr_, own if over is None else over)


def _surge_long(gw: Series, prev: Series, loss: Series, loss_base: float,
                base: float) -> Surge | None:
    """`_surge`'s scan over a rise longer than `SURGE_HEAD` points, as array operations: the
    first `SURGE_HEAD` points give the loop's answer (each point on its own lead, the chosen
    ones recomputed as the loop computes them), the later ones their lead held over
    `SURGE_HOLD` consecutive points (a point that is not a candidate holds no lead)."""
    gv = gw.values
    ratio = gv / base
    keep = ~_stale_in(gw, prev) & np.isfinite(gv) & (ratio >= SURGE_MIN)
    at = loss.steps.searchsorted(gw.steps, side="right") - 1
    keep &= at >= 0
    lv = np.where(keep, loss.values[np.maximum(at, 0)], np.nan)
    keep &= np.isfinite(lv)
    if not keep.any():
        return None
    over = np.zeros(len(gv))
    idx = np.flatnonzero(keep)
    with np.errstate(over="ignore"):
        over[idx] = ratio[idx] / np.exp(np.maximum(excursions(lv[idx], loss_base), 0.0))
    over[~np.isfinite(over)] = 0.0
    # the head on each point's own lead, the rest on the lead held around it (this scan
    # only runs on rises longer than the head)
    from numpy.lib.stride_tricks import sliding_window_view

    half = SURGE_HOLD // 2
    padded = np.concatenate([np.zeros(half), over, np.zeros(half)])
    med = np.median(sliding_window_view(padded, SURGE_HOLD), axis=1)
    held = over.copy()
    held[SURGE_HEAD:] = np.where(keep[SURGE_HEAD:], med[SURGE_HEAD:], 0.0)
    if not (held > 0).any():
        return None

    def at_point(k: int) -> Surge | None:
        return _surge_at(loss, int(gw.steps[k]), float(gv[k]), loss_base, base,
                         None if k < SURGE_HEAD else float(held[k]))

    best = at_point(int(np.argmax(held)))
    past = np.flatnonzero(held >= SURGE_OVER_LOSS)
    return _with_onset(best, at_point(int(past[0])) if len(past) else None)


def _layer_grad_columns(a: RunArrays, total: str | None) -> list[str]:
    """The per-layer grad-norm columns (names matched once per run, not per event)."""
    key = f"layer_grad_columns:{total}"
    if key not in a.misc:
        out = []
        for col in a.frame_extras():
            n = normalise(col)
            if col == total or "grad" not in n or "norm" not in n or col.startswith("rank"):
                continue
            out.append(col)
        a.misc[key] = out
    got: list[str] = a.misc[key]
    return got


def _first_layer(run: Run, ctx: Context) -> tuple[str, int, float] | None:
    """The per-layer grad norm that left its own baseline first (name, step, ratio)."""
    total = run.column("grad_norm")
    ev = ctx.event
    best: tuple[str, int, float] | None = None
    for col in _layer_grad_columns(ctx.arrays, total):
        s = ctx.arrays.column_series(col)
        steps, vals = s.steps, s.values
        if len(steps) == 0:
            continue
        hi = int(np.searchsorted(steps, ev.start_step)) - PRECURSOR_POINTS
        base_vals = vals[max(0, hi - ctx.config.window):max(0, hi)]
        base_vals = base_vals[np.isfinite(base_vals)]
        if len(base_vals) < 3:
            continue
        base = median_of(base_vals)
        if base <= 0:
            continue
        if hi >= len(steps):
            continue
        m0 = max(0, hi)
        m1 = int(np.searchsorted(steps, ev.peak_step, side="right"))
        r = vals[m0:m1] / base
        above = np.flatnonzero(~np.isfinite(r) | (r >= GRAD_PRECURSOR))
        if len(above) == 0:
            continue
        st = int(steps[m0:m1][above[0]])
        cand = (col, st, float(r[above[0]]))
        if best is None or st < best[1] or (st == best[1] and cand[2] > best[2]):
            best = cand
    return best


#: Formats whose frameworks clip the global grad norm at 1.0 unless told otherwise
#: (Megatron `--clip-grad 1.0`, DeepSpeed `gradient_clipping` in Megatron-DeepSpeed configs,
#: HF Trainer `max_grad_norm=1.0`), and log the norm *before* clipping.
DEFAULT_CLIP = {"megatron": 1.0, "hf_trainer_state": 1.0}


def clip_in_force(run: Run) -> tuple[float | None, str]:
    """The clip value the run trained with: from its params, else the framework default for
    formats that clip by default; (None, "") when the log cannot say."""
    v = run.params.get("clip_grad") if run.params else None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v), "the run's configured clip"
    d = DEFAULT_CLIP.get(run.format)
    if d is not None:
        return d, "the framework's default clip"
    return None, ""


def _damage_without_grads(run: Run, event: Event, ctx: Context, why: str) -> Evidence | Skipped:
    """No grad norm, but the loss shows weight damage (a bad batch costs one step): an
    oversized update did it, which a grad blow-up is the usual source of."""
    shape = ctx.shape
    damage = shape.jump_damage if shape is not None else None
    sc = ctx.scale
    if damage is None or (sc is not None and (sc.cuts or sc.skips)):
        # with loss-scale cuts around the rise, the overflow record is the gradient's trace
        # and amp_overflow weighs it; here there is nothing to add
        return Skipped(CAUSE, why)
    lr = ctx.lr
    lr_strength = lr.strength if lr is not None else 0.0
    score = DAMAGE_SCORE * (1.0 - 0.6 * lr_strength)
    restart, first, last = restart_advice(ctx)
    summary = sentence([
        f"{damage}: weight damage from an oversized update, which a grad-norm blow-up is the "
        f"usual source of; the grad norm is not logged to confirm it"])
    remedy = sentence([
        "log the grad norm (before clipping) so the next incident can be told apart from an LR "
        "or optimizer-state problem",
        "lower the LR or lengthen the warmup, and clip the global grad norm (1.0 is the usual "
        "default)",
        f"restart from a checkpoint at or before step {restart} and skip the batches of "
        f"{span_words(first, last)}"])
    facts = {"loss_decay_points": shape.elevated_points if shape else None,
             "loss_later_ratio": shape.later_ratio if shape else None,
             "uniform_guess_loss": shape.uniform_loss if shape else None,
             "one_batch_loss_needed": shape.batch_loss_needed if shape else None,
             "lr_change_strength": lr_strength if lr is not None else None,
             "restart_step": restart}
    return evidence(CAUSE, score, summary, facts, remedy)


#: Weight damage (a rise that is not one batch: `LossShape.damage`) with nothing that points
#: elsewhere: an oversized update, whose usual source is the gradient. Weaker than a precursor
#: or a surge (0.55+, 0.35+), above a bad batch that the damage rules out.
DAMAGE_SCORE = 0.4


#: The grad norm must have grown at least this power of the loss's growth (log ratios) for
#: damage to be put on the gradient: a bad batch or an LR-driven rise moves the grad norm
#: roughly with the loss (a power near 1, decided by noise), a curvature blow-up faster.
DAMAGE_GRAD_POWER = 1.5
#: ...measured on the median of the last this many usable grad-norm points of the rise.
DAMAGE_GRAD_POINTS = 3
#: An LR that rose more than this during the rise sized the update: not the gradient's doing.
DAMAGE_LR_RISE = 1.05


def _damage_with_grads(ctx: Context, g: Series, base: float) -> str | None:
    """The damage clause, when the loss shows weight damage and the grad norm outgrew it
    (its log ratio at least `DAMAGE_GRAD_POWER` times the loss's, each on its median over the
    last `DAMAGE_GRAD_POINTS` fresh finite grad norms of the rise) with no LR rise: the
    gradient is then the likely source of the oversized update, though it never ran 4x ahead
    of the loss (a climbing excerpt: loss x1.65, grad norm x3 over six lines). A grad norm
    that moved with the loss or stayed put, or an LR that rose (during the climb, or just
    before it as `LrProfile.strength` measures), points elsewhere: None."""
    shape, ev = ctx.shape, ctx.event
    damage = shape.damage if shape is not None else None
    if shape is None or damage is None or not math.isfinite(shape.peak_ratio) \
            or not shape.peak_ratio > 1.0:
        return None
    lo, hi = ev.start_step, max(ev.peak_step, ev.start_step)
    gw, prev = _rise_grads(g, ev)
    ok = ~_stale_in(gw, prev) & np.isfinite(gw.values)
    fresh, at = gw.values[ok][-DAMAGE_GRAD_POINTS:], gw.steps[ok][-DAMAGE_GRAD_POINTS:]
    loss = ctx.loss
    if len(fresh) == 0 or loss is None:
        return None
    # the loss at the same points, so that both growths are read off the same stretch
    lvals = [loss.value_at(int(st)) for st in at]
    lv = [v for v in lvals if v is not None and math.isfinite(v)]
    if len(lv) != len(lvals) or not shape.base > 0:
        return None
    gv, lmed = float(np.median(fresh)), float(np.median(lv))
    if not (gv > base and lmed > shape.base) or \
            math.log(gv / base) < DAMAGE_GRAD_POWER * math.log(lmed / shape.base):
        return None
    if ctx.lr is not None and ctx.lr.strength >= 0.1:
        return None  # an LR change just before the rise sized the updates (lr_schedule's)
    lr = ctx.arrays.usable("lr")[0]
    if lr is not None:
        lr_before = lr.value_at(lo - 1)
        during = lr.between(lo, hi).values
        during = during[np.isfinite(during)]
        if lr_before is not None and lr_before > 0 and len(during) \
                and float(during.max()) > DAMAGE_LR_RISE * lr_before:
            return None
    return (f"{damage}; the grad norm outgrew it, to {fmt(gv)} by the peak "
            f"({fmt_ratio(gv / base)} its {fmt(base)} baseline against the loss's "
            f"{fmt_ratio(lmed / shape.base)} over the same last points) with no LR rise: an "
            f"oversized update, which a growing gradient is the usual source of")


def rule(run: Run, event: Event, ctx: Context) -> Evidence | Skipped | None:
    s, why = ctx.arrays.usable("grad_norm")
    if s is None:
        return _damage_without_grads(run, event, ctx, why)
    p = ctx.grad
    if p is None or not (p.base > 0):
        return None
    surge = _surge(ctx, p.base)
    dom = surge.over if surge is not None else 0.0
    s_pre = 0.0
    if p.precursor:
        s_pre = 0.55 + 0.4 * mag(p.pre_ratio, GRAD_PRECURSOR, 30.0)
        if p.ramp_points >= 2:
            s_pre += 0.03
    s_surge = 0.0
    if dom >= SURGE_OVER_LOSS:
        s_surge = 0.35 + 0.45 * mag(dom, SURGE_OVER_LOSS, 100.0)
    score = max(s_pre, s_surge)
    follows = None
    if score <= 0:
        follows = _damage_with_grads(ctx, s, p.base)
        if follows is None:
            return None
        score = DAMAGE_SCORE
    lr = ctx.lr
    lr_strength = lr.strength if lr is not None else 0.0
    score *= 1.0 - 0.6 * lr_strength
    collapsed = p.collapse >= 100 and p.stretch_steps > 0
    if collapsed:
        score *= 0.4
    start = event.start_step
    parts: list[str] = []
    if p.precursor:
        # the climb itself: from the point before the first precursor to the highest one
        vals = list(zip(p.pre_steps, p.pre_values, strict=True))
        lead = p.first_lead_step if p.first_lead_step is not None else p.pre_step
        k = next((i for i, (st, _) in enumerate(vals) if st == lead), 0)
        top = next((i for i, (st, _) in enumerate(vals) if st == p.pre_step), len(vals) - 1)
        shown = vals[max(0, k - 1):top + 1][-6:]
        monotone = all(b[1] >= a[1] for a, b in zip(shown, shown[1:], strict=False))
        if monotone and len(shown) >= 2:
            parts.append(
                f"grad norm climbed {' -> '.join(fmt(v) for _, v in shown)} "
                f"({fmt_ratio(p.pre_ratio)} its {fmt(p.base)} baseline) over steps "
                f"{shown[0][0]}-{shown[-1][0]}, before the loss rose at step {start}"
            )
        else:
            parts.append(
                f"grad norm reached {fmt(p.pre_ratio * p.base)} at step {p.pre_step} "
                f"({fmt_ratio(p.pre_ratio)} its {fmt(p.base)} baseline), "
                + lag_words(start - (p.pre_step or start), f"the loss rose at step {start}")
            )
    if follows is not None:
        parts.append(follows)
    # the surge at the rise adds to a precursor only when it kept growing past it
    if surge is not None and s_surge > 0 and (
            not p.precursor or surge.grad_ratio >= 2 * p.pre_ratio):
        o = surge.onset
        if o is not None and o.step != surge.step:
            # where the grad norm first ran ahead says more than its top
            parts.append(
                f"during the rise the grad norm outgrew the loss from step {o.step} "
                f"({fmt(o.grad_ratio * p.base)}, {fmt_ratio(o.grad_ratio)} its {fmt(p.base)} "
                f"baseline, while the loss was {fmt_ratio(o.loss_ratio)} its own) and reached "
                f"{fmt(surge.grad_ratio * p.base)} at step {surge.step} "
                f"({fmt_ratio(surge.grad_ratio)}, the loss {fmt_ratio(surge.loss_ratio)})"
            )
        else:
            parts.append(
                f"{'at' if surge.step == start else 'during'} the rise the grad norm reached "
                f"{fmt(surge.grad_ratio * p.base)} (step {surge.step}, "
                f"{fmt_ratio(surge.grad_ratio)} its {fmt(p.base)} baseline) while the loss was "
                f"only {fmt_ratio(surge.loss_ratio)} its own"
            )
    if lr is not None and lr_strength < 0.1:
        parts.append("LR constant" if lr.flat else "no LR change")
    elif lr is not None:
        parts.append(
            f"but the LR rose {fmt_ratio(max(lr.ratio, lr.jump))} just before, which can "
            f"explain the grad rise"
        )
    if collapsed:
        parts.append(
            f"the grad norm had first collapsed {fmt_ratio(p.collapse)} below its earlier "
            f"{fmt(p.history_level)}, so this is a re-growth rather than an explosion"
        )
    layer = _first_layer(run, ctx)
    if layer is not None:
        parts.append(f"{layer[0]} left its baseline first (step {layer[1]}, "
                     f"{fmt_ratio(layer[2])})")
    restart, first, last = restart_advice(ctx)
    if p.base_points >= 20 and math.isfinite(p.p99) and p.p99 > 0:
        clip = p.p99
        why = (f"the 99th percentile of the {p.base_points} logged grad norms before the spike; "
               f"their median is {fmt(p.p50)}")
    else:
        # too few points for a percentile: a few times the pre-spike level
        clip = 5 * p.base
        why = f"5x the pre-spike level {fmt(p.base)}; too few points for a percentile"
    # the logged grad norm is measured before clipping: a clip at or above the one in force
    # changes nothing, and a run whose normal norm sits above it was being clipped already
    in_force, source = clip_in_force(run)
    clipping_active = in_force is not None and clip >= in_force
    if clipping_active and in_force is not None:
        normal = p.p50 if math.isfinite(p.p50) else p.base
        clip_s = f"{in_force:.1f}" if float(in_force).is_integer() else fmt(in_force)
        parts.append(
            f"clipping at {clip_s} ({source}) was "
            + ("already active on most steps (the logged grad norm, measured before clipping, "
               f"sits near {fmt(normal)})" if normal > in_force else
               "in force, so the climb shows the gradient before clipping; the update itself was "
               "bounded")
        )
        remedy = [
            f"a clip threshold will not help: clipping at {clip_s} was already in force "
            f"(the log's grad norms are measured before clipping); the direction of the update, "
            f"not its size, went wrong: lower the LR (e.g. by 2x), lengthen the warmup, or lower "
            f"Adam's beta2 to 0.95 so the second moment follows a gradient surge faster",
            f"restart from a checkpoint at or before step {restart} and skip the batches of "
            f"{span_words(first, last)} (PaLM skipped 200-500 batches around a spike)",
        ]
    else:
        remedy = [
            f"clip the global grad norm at about {fmt(clip)} ({why}), or clip adaptively: on a "
            f"z-score of the grad norm (ZClip), or per entry against Adam's second moment with "
            f"periodic momentum resets (SPAM)",
            f"restart from a checkpoint at or before step {restart} and skip the batches of "
            f"{span_words(first, last)} (PaLM skipped 200-500 batches around a spike)",
        ]
    if layer is not None:
        remedy.append(f"look at {layer[0]} first (QK-layernorm or a lower LR for it if it is "
                      f"an attention block)")
    facts = {
        "grad_base": p.base,
        "grad_precursor_ratio": p.pre_ratio,
        "grad_precursor_step": p.pre_step,
        "precursor_points": p.ramp_points,
        "grad_onset_ratio": p.onset_ratio,
        "surge_step": surge.step if surge else None,
        "surge_onset_step": surge.onset.step if surge and surge.onset else None,
        "surge_grad_ratio": surge.grad_ratio if surge else None,
        "surge_loss_ratio": surge.loss_ratio if surge else None,
        "grad_over_loss": dom if surge is not None else None,
        "lr_change_strength": lr_strength if lr is not None else None,
        "grad_collapse_ratio": p.collapse,
        "clip_threshold": None if clipping_active else clip,
        "clip_in_force": in_force,
        "grad_p50": p.p50 if p.base_points >= 20 else None,
        "grad_p99": p.p99 if p.base_points >= 20 else None,
        "first_layer": layer[0] if layer else None,
        "first_layer_step": layer[1] if layer else None,
        "restart_step": restart,
    }
    return evidence(CAUSE, score, sentence(parts), facts, sentence(remedy))


CAUSES.add(CAUSE, rule)
