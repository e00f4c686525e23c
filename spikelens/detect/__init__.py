"""Find what happened to the train loss: `detect(run, config) -> Detection`.

The detectors are small pure modules, each about one kind of event: `baseline` (robust
trailing median/IQR, the log transform, the rounding step), `spikes` (point and sustained
rises above that baseline), `divergence` (is an unrecovered rise a new level?), `nonfinite`
(NaN/Inf and which series went first), `oscillation` (sustained periodic or erratic swings),
`gradnorm` (grad-norm surges the loss never felt) and `verdict`. This module turns a `Run`
into their inputs (finite points, log space, the logging interval, restarts) and their
outputs into `Event`s, sorted by start step, with human notes on what was assumed or left
out. See docs/detection.md for the statistics, the thresholds and how they were chosen."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from spikelens.detect.baseline import infer_quantum, to_log
from spikelens.detect.divergence import kind_of
from spikelens.detect.gradnorm import find_surges, usable
from spikelens.detect.joint import PointZ
from spikelens.detect.nonfinite import NonFinite, find_nonfinite, nonfinite_mask
from spikelens.detect.oscillation import Oscillation, OscParams, find_oscillations
from spikelens.detect.spikes import (
    Rise,
    RiseParams,
    find_rises,
    test_statistics,
    trailing_stats,
    window_stats,
)
from spikelens.detect.verdict import verdict_of
from spikelens.model import Config, Event, Run, Size

__all__ = ["Detection", "RiseStatistics", "detect", "point_z", "rise_statistics"]

#: float32 resolution: a loss computed in float32 from O(L0) quantities cannot resolve
#: changes much below eps^2 * L0 (a squared-error loss near 1e-14 of its start is rounding
#: noise), so that is the absolute floor of the scale.
_PRECISION = float(np.finfo(np.float32).eps) ** 2
#: A value rounded to a step q carries a uniform error of standard deviation q / sqrt(12).
_SQRT12 = math.sqrt(12.0)
#: Steps (in logging intervals) by which a grad-norm surge may precede the loss incident it
#: belongs to.
_GRAD_LEAD = 20
_KIND_ORDER = {"nonfinite": 0, "divergence": 1, "spike": 2, "oscillation": 3}


@dataclass(frozen=True)
class Detection:
    """What the detector found in one run."""

    events: tuple[Event, ...]
    verdict: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Loss:
    """The loss prepared for the detectors."""

    steps: NDArray[np.int64]  # every logged position (finite or not)
    values: NDArray[np.float64]
    bad: NDArray[np.bool_]  # non-finite (or NaN iterations counted) positions
    fin: NDArray[np.int64]  # positions of the finite points
    x: NDArray[np.float64]  # finite points in test units (log where positive)
    is_log: bool
    quantum: float
    abs_floor: float


def detect(run: Run, config: Config, recurrent_steps: Collection[int] = ()) -> Detection:
    """Events on the train loss (and informational grad-norm surges), and the verdict.

    `recurrent_steps`: steps where other runs analysed together have a one-point outlier
    too (`joint.find_coincidences`); the point test there needs only `config.joint_min_z`.
    """
    notes: list[str] = []
    series = run.series("loss")
    if series is None or len(series) == 0:
        return Detection(events=(), verdict="healthy",
                         notes=("no train loss: nothing to detect on",))
    loss = _prepare(run, series, config, notes)
    notes += _restart_notes(run)
    params = _rise_params(run, loss, config)
    if recurrent_steps:
        tested = loss.steps[loss.fin]
        bar = np.full(len(tested), params.z_point)
        bar[np.isin(tested, np.fromiter(recurrent_steps, dtype=np.int64))] = config.joint_min_z
        params = dataclasses.replace(params, point_bar=bar)

    events: list[Event] = []
    rises = find_rises(loss.x, params, loss.abs_floor, loss.is_log) if len(loss.x) >= 2 else []
    nonfinite = _nonfinite(run, loss, params, config)
    oscs = _oscillations(run, loss, rises, nonfinite, config)
    rises = _absorb_in_oscillation(rises, oscs, loss, notes)
    for r in rises:
        events.append(_rise_event(run, loss, r, config))
    for nf in nonfinite:
        events.append(_nonfinite_event(run, loss, nf, params))
    for o in oscs:
        events.append(_osc_event(run, loss, o))
    events += _grad_surges(run, events, params, config, notes)
    _grad_nonfinite_note(run, loss, nonfinite, notes)
    events.sort(key=lambda e: (e.start_step, _KIND_ORDER.get(e.kind, 9), e.metric))
    return Detection(events=tuple(events), verdict=verdict_of(events), notes=tuple(notes))


@dataclass(frozen=True)
class RiseStatistics:
    """The z of every rise test at every finite loss point, for calibration and diagnosis
    (`benchmarks/accuracy.py --calibrate`). NaN where a test does not apply."""

    steps: NDArray[np.int64]
    z: dict[str, NDArray[np.float64]]  # "point", "shift<k>"


def rise_statistics(run: Run, config: Config) -> RiseStatistics:
    """The statistics the thresholds are applied to, before any threshold (one pass)."""
    series = run.series("loss")
    if series is None or len(series) == 0:
        return RiseStatistics(steps=np.empty(0, np.int64), z={})
    loss = _prepare(run, series, config, [])
    params = _rise_params(run, loss, config)
    st = trailing_stats(loss.x, params.window, loss.abs_floor, loss.is_log)
    return RiseStatistics(steps=loss.steps[loss.fin], z=test_statistics(loss.x, st, params))


def point_z(run: Run, config: Config) -> PointZ:
    """The point-test z of every logged loss step, for cross-run coincidences."""
    rs = rise_statistics(run, config)
    return PointZ(steps=rs.steps, z=rs.z.get("point", np.full(len(rs.steps), np.nan)),
                  interval=run.interval)


def _prepare(run: Run, series: pd.Series, config: Config, notes: list[str]) -> _Loss:
    nan_steps = _nan_iteration_steps(run)
    lost = _lost_loss_steps(run, series, nan_steps, notes)
    if len(lost):
        # steps whose loss the log could not print (it was NaN, or the step overflowed in a
        # storm) are non-finite loss positions, not gaps
        series = pd.concat([series, pd.Series(np.nan, index=lost)]).sort_index()
    steps = series.index.to_numpy().astype(np.int64)
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = nonfinite_mask(values, steps, nan_steps)
    fin = np.flatnonzero(~bad)
    quantum = config.quantum if config.quantum is not None else infer_quantum(values[fin])
    x_all, is_log = to_log(values, quantum)
    x = x_all[fin]
    if is_log:
        head = values[fin][: config.min_window]
        head = head[head > 0]
        l0 = float(np.median(head)) if len(head) else 0.0
        abs_floor = max(quantum / _SQRT12, _PRECISION * l0)
    else:
        notes.append("the loss goes negative: rises are judged in its own units, without "
                     "ratios")
        spread = float(np.median(np.abs(x))) if len(x) else 0.0
        abs_floor = max(quantum / _SQRT12, 1e-6 * spread)
    if quantum > 0 and len(x) and quantum / 2 > 1e-4 * float(np.median(np.abs(values[fin]))):
        notes.append(f"the loss is rounded to {quantum:g}: the scale is never taken below the "
                     f"rounding error ({quantum / _SQRT12:.2g}) and a rise must span two "
                     "rounding steps")
    if run.averaged and run.interval > 1:
        notes.append(f"the loss is an average over {run.interval} steps: a one-step spike of "
                     f"ratio r shows as 1 + (r - 1) / {run.interval}, and the ratio bar is "
                     "lowered to match")
    return _Loss(steps=steps, values=values, bad=bad, fin=fin, x=x, is_log=is_log,
                 quantum=quantum, abs_floor=abs_floor)


#: A run of consecutive skipped steps is an overflow storm, not routine loss scaling, when it
#: drives the loss scale this far below the lowest scale the run had needed after its first
#: logged loss: 2^4. Routine dynamic scaling halves once or twice at its ceiling and grows
#: back; a scaler reset (back to 2^32, say) halves down to the old level, not below it.
_STORM_FACTOR = 16.0


def _lost_loss_steps(run: Run, series: pd.Series, nan_steps: NDArray[np.int64] | None,
                     notes: list[str]) -> NDArray[np.int64]:
    """Steps with no printed loss that were non-finite all the same: Megatron prints no
    `lm loss` on an iteration whose loss was NaN (its NaN counter says so) or that was
    skipped on overflow; a storm of such skips collapsing the scale is an incident."""
    have = series.index.to_numpy().astype(np.int64)
    out: list[NDArray[np.int64]] = []
    if nan_steps is not None and len(nan_steps):
        out.append(np.setdiff1d(nan_steps, have))
    skipped, scale = run.series("skipped"), run.series("loss_scale")
    if skipped is not None and scale is not None and len(have):
        sk_idx = skipped[skipped.to_numpy(dtype=np.float64, na_value=np.nan) > 0].index
        sk = np.setdiff1d(sk_idx.to_numpy().astype(np.int64), have)
        sc = scale.dropna()
        sc = sc[np.isfinite(sc.to_numpy(dtype=np.float64)) & (sc.to_numpy(dtype=np.float64) > 0)]
        if len(sk) and len(sc):
            sc_steps = sc.index.to_numpy().astype(np.int64)
            sc_vals = sc.to_numpy(dtype=np.float64)
            first = int(have[0])  # before the first loss: fp16 start-up calibration
            grid = run.steps
            pos = np.searchsorted(grid, sk)
            # consecutive logged steps form one storm
            breaks = np.flatnonzero(np.diff(pos) != 1) + 1
            for group in np.split(sk, breaks):
                g0, g1 = int(group[0]), int(group[-1])
                before = sc_vals[(sc_steps >= first) & (sc_steps < g0)]
                during = sc_vals[(sc_steps >= g0) & (sc_steps <= g1)]
                if g0 <= first or not len(before) or not len(during):
                    continue
                if float(during.min()) * _STORM_FACTOR <= float(before.min()):
                    out.append(group)
                    notes.append(
                        f"steps {g0}-{g1}: {len(group)} overflow-skipped step(s) with no loss "
                        f"printed while the loss scale fell to {float(during.min()):.3g} "
                        f"({float(before.min()) / float(during.min()):.3g}x below its earlier "
                        "minimum): counted as non-finite loss")
    if not out:
        return np.empty(0, np.int64)
    return np.unique(np.concatenate(out)).astype(np.int64)


def _nan_iteration_steps(run: Run) -> NDArray[np.int64] | None:
    """Steps whose logging interval counted NaN iterations (Megatron's counter)."""
    s = run.series("nan_count")
    if s is None or len(s) == 0:
        return None
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    st = s.index.to_numpy().astype(np.int64)
    ok = np.isfinite(v)
    v, st = v[ok], st[ok]
    if len(v) > 1 and np.all(np.diff(v) >= 0) and len(np.unique(v)) > 1:
        # a cumulative counter: the steps where it moved
        return np.asarray(st[1:][np.diff(v) > 0], dtype=np.int64)
    return np.asarray(st[v > 0], dtype=np.int64)


def _rise_params(run: Run, loss: _Loss, config: Config) -> RiseParams:
    ratio = config.min_ratio
    # a one-step spike of ratio r is diluted to 1 + (r - 1) / n in an n-step average
    point_ratio = 1 + (ratio - 1) / run.interval if run.averaged and run.interval > 1 else ratio
    first = int(loss.steps[loss.fin[0]]) if len(loss.fin) else 0
    from_start = first <= config.min_window * max(1, run.interval)
    if loss.is_log:
        lp, ls = math.log(point_ratio), math.log(ratio)
        lshort, lstart = math.log(config.short_ratio), math.log(config.start_ratio)
    else:
        # no ratios in linear units: the z tests alone, and no judgement on a short baseline
        lp = ls = 0.0
        lshort = lstart = math.inf
    return RiseParams(
        window=config.window,
        min_window=config.min_window,
        z_point=config.z_threshold,
        z_shift=config.shift_z_threshold,
        shift_windows=tuple(config.shift_windows),
        log_min_ratio_point=lp,
        log_min_ratio_shift=ls,
        log_short_ratio=lshort,
        start_points=config.min_window if from_start else 0,
        log_start_ratio=lstart,
        recover_run=config.recover_run,
        band_z=config.band_z,
        quantum=loss.quantum,
        is_log=loss.is_log,
    )


def _nonfinite(run: Run, loss: _Loss, params: RiseParams, config: Config) -> list[NonFinite]:
    if not loss.bad.any():
        return []
    # finite points before each position: the baseline of an event starting there
    before: NDArray[np.int64] = np.cumsum(~loss.bad) - (~loss.bad).astype(np.int64)
    x_all = np.full(len(loss.values), np.nan)
    x_all[loss.fin] = loss.x
    band_at = np.full(len(loss.values), np.nan)
    for b in np.flatnonzero(loss.bad):
        c = int(before[b])
        if c > 0:
            level, _, up = window_stats(loss.x[max(0, c - params.window):c], loss.abs_floor,
                                        loss.is_log)
            band_at[b] = level + params.band_z * up
    gn = run.series("grad_norm")
    gn_steps = gn.index.to_numpy().astype(np.int64) if gn is not None else None
    gn_vals = gn.to_numpy(dtype=np.float64, na_value=np.nan) if gn is not None else None
    return find_nonfinite(loss.bad, x_all, band_at, loss.steps, config.recover_run,
                          gn_steps, gn_vals)


def _segment_of(run: Run, step: int) -> int:
    seg = run.segment_of_step
    if seg is None or len(seg) == 0:
        return 0
    i = int(np.searchsorted(run.steps, step, side="right")) - 1
    return int(seg[min(max(i, 0), len(seg) - 1)])


def _unit(loss: _Loss, v: float) -> float:
    """A test-unit value back in the loss's own units."""
    return float(math.exp(v)) if loss.is_log else float(v)


def _ratio(loss: _Loss, peak: float, level: float) -> float:
    if loss.is_log:
        return float(math.exp(peak - level))
    return float(1 + (peak - level) / abs(level)) if level != 0 else math.inf


def _rise_event(run: Run, loss: _Loss, r: Rise, config: Config) -> Event:
    st = loss.steps[loss.fin]
    kind = kind_of(r.recovered, loss.x, st, r.start, r.peak, r.level, config.recover_run,
                   config.divergence_steps)
    start, peak, end = int(st[r.start]), int(st[r.peak]), int(st[r.end])
    return Event(
        kind=kind, metric="loss", start_step=start, peak_step=peak, end_step=end,
        recovered=r.recovered,
        size=Size(z=float((loss.x[r.peak] - r.level) / r.scale),
                  ratio=_ratio(loss, float(loss.x[r.peak]), r.level)),
        recovery_steps=end - peak if r.recovered else None,
        segment=_segment_of(run, start),
        baseline=_unit(loss, r.level),
    )


def _nonfinite_event(run: Run, loss: _Loss, nf: NonFinite, params: RiseParams) -> Event:
    start = int(loss.steps[nf.start])
    end = int(loss.steps[nf.end])
    before = loss.x[: int(np.searchsorted(loss.fin, nf.start))]
    level = _unit(loss, float(np.median(before[-params.window:]))) if len(before) else None
    return Event(
        kind="nonfinite", metric="loss", start_step=start, peak_step=start, end_step=end,
        recovered=nf.recovered, size=Size(z=math.inf, ratio=math.inf),
        recovery_steps=end - int(loss.steps[nf.last_bad]) if nf.recovered else None,
        segment=_segment_of(run, start), first_nonfinite=nf.first, baseline=level,
    )


def _incident_mask(loss: _Loss, rises: Sequence[Rise],
                   nonfinite: Sequence[NonFinite]) -> NDArray[np.bool_]:
    """Finite points that lie inside an incident."""
    skip = np.zeros(len(loss.x), dtype=bool)
    for r in rises:
        skip[r.start:r.end + 1] = True
    for nf in nonfinite:
        lo = int(np.searchsorted(loss.fin, nf.start))
        hi = int(np.searchsorted(loss.fin, nf.end, side="right"))
        skip[lo:hi] = True
    return skip


def _aligned_lr(run: Run, steps: NDArray[np.int64]) -> NDArray[np.float64] | None:
    s = run.series("lr")
    if s is None or len(s) < 2:
        return None
    lr_steps = s.index.to_numpy().astype(np.int64)
    vals = s.to_numpy(dtype=np.float64, na_value=np.nan)
    idx = np.clip(np.searchsorted(lr_steps, steps, side="right") - 1, 0, len(vals) - 1)
    return np.asarray(vals[idx], dtype=np.float64)


def _oscillations(run: Run, loss: _Loss, rises: Sequence[Rise],
                  nonfinite: Sequence[NonFinite], config: Config) -> list[Oscillation]:
    if len(loss.x) < 16:
        return []
    p = OscParams(block=config.osc_block, max_period=config.osc_max_period,
                  min_acf=config.osc_min_acf, spread=config.osc_spread, lr_z=config.osc_lr_z,
                  min_cycles=3)
    # the first descent from initialisation is a trend, not a swing
    skip = _incident_mask(loss, rises, nonfinite)
    head = min(len(loss.x) // 10, config.window)
    skip[:head] = True
    if loss.is_log and loss.abs_floor > 0:
        # within a decade of the resolution floor the wiggles are rounding, not training
        skip |= loss.x < math.log(10 * loss.abs_floor)
    lr = _aligned_lr(run, loss.steps[loss.fin])
    found = find_oscillations(loss.x, lr, p, skip)
    # a region that is mostly incident is the incident's shape, not a condition of the run
    return [o for o in found if skip[o.start:o.end + 1].mean() < 0.5]


def _absorb_in_oscillation(rises: list[Rise], oscs: Sequence[Oscillation], loss: _Loss,
                           notes: list[str]) -> list[Rise]:
    """Drop spikes that are one swing of a periodic oscillation (no larger than it)."""
    keep: list[Rise] = []
    dropped: list[int] = []
    st = loss.steps[loss.fin]
    for r in rises:
        inside = [o for o in oscs if o.period is not None and o.start <= r.peak <= o.end]
        if r.recovered and inside and \
                loss.x[r.peak] - r.level <= max(o.log_swing for o in inside):
            dropped.append(int(st[r.peak]))
            continue
        keep.append(r)
    if dropped:
        shown = ", ".join(str(s) for s in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        notes.append(f"{len(dropped)} rise(s) no larger than the periodic oscillation they sit "
                     f"in were counted as part of it (peaks at {shown})")
    return keep


def _osc_event(run: Run, loss: _Loss, o: Oscillation) -> Event:
    st = loss.steps[loss.fin]
    seg = loss.x[o.start:o.end + 1]
    peak = o.start + int(np.argmax(seg))
    spacing = float(np.median(np.diff(st[o.start:o.end + 1]))) if o.end > o.start else 1.0
    q25, q75 = np.percentile(seg - np.median(seg), [25, 75])
    sigma = max(float(q75 - q25) / 1.349, 1e-12)
    return Event(
        kind="oscillation", metric="loss", start_step=int(st[o.start]),
        peak_step=int(st[peak]), end_step=int(st[o.end]),
        recovered=o.end < len(st) - 1,
        size=Size(z=float(o.log_swing / sigma), ratio=float(1 + o.amplitude)),
        segment=_segment_of(run, int(st[o.start])),
        period=o.period * spacing if o.period is not None else None,
        amplitude=o.amplitude, baseline=_unit(loss, float(np.median(seg))),
    )


def _grad_surges(run: Run, events: Sequence[Event], params: RiseParams, config: Config,
                 notes: list[str]) -> list[Event]:
    gn = run.series("grad_norm")
    if gn is None or len(gn) == 0:
        return []
    vals = gn.to_numpy(dtype=np.float64, na_value=np.nan)
    why = usable(vals)
    if why is not None:
        notes.append(f"grad norm not analysed: {why}")
        return []
    spans = [(e.start_step, e.end_step) for e in events
             if e.metric == "loss" and e.kind != "oscillation"]
    steps = gn.index.to_numpy().astype(np.int64)
    out = []
    # the grad norm often climbs out of initialisation and drifts for good: only transient
    # surges against a full window count (no ratio-only judgement on a short baseline)
    lr = math.log(config.grad_min_ratio)
    # a surge is short by nature: the shortest shift window is enough (and a third cheaper)
    gp = RiseParams(**{**params.__dict__, "start_points": 0, "min_window": params.window,
                       "log_short_ratio": math.inf, "log_min_ratio_point": lr,
                       "log_min_ratio_shift": lr,
                       "shift_windows": (min(params.shift_windows),), "quantum": 0.0,
                       # the loss's per-point bar (lowered at cross-run outliers) is indexed by
                       # the loss's finite points, not the grad norm's
                       "point_bar": None})
    for s in find_surges(vals, steps, gp, spans, _GRAD_LEAD * max(1, run.interval)):
        r = s.rise
        start, peak, end = int(s.steps[r.start]), int(s.steps[r.peak]), int(s.steps[r.end])
        out.append(Event(
            kind="spike", metric="grad_norm", start_step=start, peak_step=peak, end_step=end,
            recovered=r.recovered,
            size=Size(z=float((s.x[r.peak] - r.level) / r.scale),
                      ratio=float(math.exp(s.x[r.peak] - r.level))),
            recovery_steps=end - peak if r.recovered else None,
            segment=_segment_of(run, start), baseline=float(math.exp(r.level)),
        ))
    return out


def _grad_nonfinite_note(run: Run, loss: _Loss, nonfinite: Sequence[NonFinite],
                         notes: list[str]) -> None:
    gn = run.series("grad_norm")
    if gn is None:
        return
    vals = gn.to_numpy(dtype=np.float64, na_value=np.nan)
    steps = gn.index.to_numpy().astype(np.int64)
    bad = steps[~np.isfinite(vals)]
    if not len(bad):
        return
    # a grad norm that broke just before the loss belongs to that incident
    spans = [(nf.first_step, int(loss.steps[nf.end])) for nf in nonfinite]
    lone = [int(s) for s in bad if not any(a <= s <= b for a, b in spans)]
    if lone:
        shown = ", ".join(str(s) for s in lone[:5]) + (", ..." if len(lone) > 5 else "")
        notes.append(f"{len(lone)} non-finite grad norm(s) under a finite loss (steps {shown}):"
                     " overflow steps the optimizer skipped, not incidents")


def _restart_notes(run: Run) -> list[str]:
    out = []
    for r in run.restarts:
        if r.replayed is not None:
            a, b = r.replayed
            out.append(f"steps {a}-{b} were logged again by segment {r.segment} (a resume from "
                       f"an earlier checkpoint): the later values are analysed and anything "
                       f"only in the rolled-back segment {r.segment - 1} there is dropped")
    return out
