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
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage

from spikelens.detect._threads import settle, start
from spikelens.detect.baseline import infer_quantum, to_log
from spikelens.detect.climb import tail_climb
from spikelens.detect.divergence import kind_of
from spikelens.detect.gradnorm import Scan, find_surges, scan, usable
from spikelens.detect.gradnorm import confirmed as grad_confirmed
from spikelens.detect.joint import PointZ
from spikelens.detect.lr_drift import PAST, find_drift, past_climb
from spikelens.detect.lr_drift import K as K_LIFT
from spikelens.detect.lr_lift import MAX_JUMPS, back_at, find_lift
from spikelens.detect.nonfinite import NonFinite, find_nonfinite, nonfinite_mask
from spikelens.detect.ops import ops_events
from spikelens.detect.oscillation import (
    Oscillation,
    OscParams,
    cycle_peaks_fence,
    find_oscillations,
    lr_period,
)
from spikelens.detect.overfit import find_overfit
from spikelens.detect.spikes import (
    NEIGHBOURS,
    Rise,
    RiseParams,
    find_rises,
    test_statistics,
    trailing_stats,
    window_stats,
)
from spikelens.detect.stall import Stall, align_to, find_stall
from spikelens.detect.verdict import verdict_of
from spikelens.model import INCIDENT_KINDS, Config, Event, Run, Size

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
_KIND_ORDER = {"nonfinite": 0, "divergence": 1, "spike": 2, "oscillation": 3, "stall": 4,
               "overfitting": 5}


@dataclass(frozen=True)
class Detection:
    """What the detector found in one run."""

    events: tuple[Event, ...]
    verdict: str
    notes: tuple[str, ...]
    #: The point-test z of every logged loss step (`point_z`), kept from the detector's
    #: first pass so a cross-run analysis need not compute it again; None when the loss had
    #: fewer than 2 finite points (then `point_z(run, config)` computes it).
    point_z: PointZ | None = field(default=None, compare=False, repr=False)
    #: The steps where a point test of the detector gave a z in [`joint_min_z`, the bar it
    #: applied there): the only steps where the lowered bar of a cross-run coincidence
    #: (`recurrent_steps`) could fire where this detection did not. Computed only on request
    #: (`detect(near_bar=True)`), from both rise scans when there were two; None when not
    #: asked for, meaning "any step".
    near_bar: tuple[int, ...] | None = field(default=None, compare=False, repr=False)


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
    lr_series: pd.Series | None = field(default=None, compare=False, repr=False)

    @cached_property
    def fin_steps(self) -> NDArray[np.int64]:
        """The steps of the finite points (read-only; taken once, not once per event: a
        copy of a million steps per event was 2.7 ms each)."""
        out = self.steps[self.fin]
        out.flags.writeable = False
        return out

    @cached_property
    def lr(self) -> NDArray[np.float64] | None:
        """The LR at each finite point: the last value logged at or before its step (the
        first one before that), None with fewer than two LRs logged. Read-only, aligned
        once for the LR-jump test, the cyclic-LR test, the LR-drift rule and the lead-in
        rule alike (four alignments of a million points per detection before)."""
        s = self.lr_series
        if s is None or len(s) < 2:
            return None
        lr_steps, vals = _steps(s), _values(s)
        idx = np.clip(np.searchsorted(lr_steps, self.fin_steps, side="right") - 1, 0,
                      len(vals) - 1)
        out = np.asarray(vals[idx], dtype=np.float64)
        out.flags.writeable = False
        return out

    @cached_property
    def lr_jumps(self) -> NDArray[np.intp]:
        """`_lr_jumps` of the aligned LR, taken once for the LR-jump bars and the dating of
        the shifts that follow a jump (a pass over every point)."""
        return _lr_jumps(self.lr)


def detect(run: Run, config: Config, recurrent_steps: Collection[int] = (), *,
           near_bar: bool = False) -> Detection:
    """Events on the train loss (and informational grad-norm surges), and the verdict.

    `recurrent_steps`: steps where other runs analysed together have a one-point outlier
    too (`joint.find_coincidences`); the point test there needs only `config.joint_min_z`.
    `near_bar`: also report `Detection.near_bar` (what a fleet needs to know which runs a
    lowered bar can change, see `fleet._cross_run`); the events are the same either way.
    """
    notes: list[str] = []
    series = run.series("loss")
    if series is None or len(series) == 0:
        have = ", ".join(sorted(r for r in run.roles if r != "loss")) or "nothing"
        return Detection(events=(), verdict="insufficient_data",
                         notes=(f"no train loss: nothing to detect on (the log has {have})",))
    loss = _prepare(run, series, config, notes)
    notes += _restart_notes(run)
    params = _rise_params(run, loss, config)
    if recurrent_steps:
        tested = loss.steps[loss.fin]
        bar = np.full(len(tested), params.z_point) if params.point_bar is None else \
            params.point_bar.copy()
        joint = np.isin(tested, np.fromiter(recurrent_steps, dtype=np.int64))
        bar[joint] = np.minimum(bar[joint], config.joint_min_z)
        params = dataclasses.replace(params, point_bar=bar)

    events: list[Event] = []
    first: dict[str, NDArray[np.float64]] = {}
    near: tuple[int, ...] | None = None
    if near_bar and len(loss.x) >= 2:
        rises, near = _rises_and_near(loss, params, config, first)
    else:
        rises = find_rises(loss.x, params, loss.abs_floor, loss.is_log, statistics=first) \
            if len(loss.x) >= 2 else []
    # only the point z is read after the rise scans (PointZ): the shift z's (24 MB each at
    # a million points) are let go before the passes that follow
    first = {"point": first["point"]} if "point" in first else {}
    rises = _join_back_to_back(rises, loss.x)
    windows = sorted(params.shift_windows)
    rises = _date_from_lr_jump(rises, loss, windows[len(windows) // 2], notes)
    rises = _lifts_after_lr_jumps(rises, loss, params, config, notes)
    # the per-point bars (8 MB each at a million points) served the rise scans only
    params = dataclasses.replace(params, point_bar=None, shift_bar=None, shift_ratio=None)
    # The cyclic-LR test and then the grad-norm scan run on a thread from here
    # (`_start_side_passes`), beside the memory-light non-finite and stall passes and the
    # oscillation pass, which waits for the LR's period; the loss's rise scans, the largest
    # temporaries, are done before it starts, and the thread's two large temporaries (the
    # LR test's FFT, the scan) come one after the other. Peak RSS of `analyze` on the
    # 1M-step CSV: 487-497 MB with no thread, 579 MB with the scan started beside the rise
    # scans, 480-488 MB this way (one malloc arena, `malloc.one_arena`, and no copies
    # of the frame's arrays)
    grad = _grad_input(run)
    lr_pending, pending = _start_side_passes(run, loss, params, config, grad)
    nonfinite = _nonfinite(run, loss, params, config)
    batch = _batch_size(run, config.tiny_batch)
    stall = _stall(run, loss, rises, nonfinite, config)
    oscs = _oscillations(run, loss, rises, nonfinite, config, lr_pending.result(), batch)
    del lr_pending  # the aligned LR (8 MB at a million points) is not held any longer
    if stall is not None:
        # a loss that makes no progress is stuck, not swinging: a periodic region inside
        # the stall whose swing is under the incident ratio (min_ratio) is its wandering
        # noise (a swing locked to a cyclic LR, an erratic one, or a large one is kept)
        small = math.log(config.min_ratio)
        inside = [o for o in oscs if o.source == "periodic" and o.log_swing < small
                  and o.start >= stall.start - config.window
                  and o.end <= stall.end + config.window]
        if inside:
            notes.append(f"{len(inside)} oscillation region(s) inside the stall were counted "
                         "as its noise")
            oscs = [o for o in oscs if o not in inside]
    if any(o.source == "erratic" for o in oscs):
        notes.append(
            "erratic swing: the log says "
            + (f"{batch:g} samples per step, so it is the noise of a tiny batch"
               if batch is not None else
               "nothing of the batch size (no samples or tokens counter, no config), so it "
               "cannot tell batch noise of a tiny batch from a noisy run; judged on the swing "
               f"alone (q90/q10 >= {config.osc_spread:g})"))
    rises = _absorb_in_oscillation(rises, oscs, loss, notes, _osc_max_period(loss, config))
    for r in rises:
        events.append(_rise_event(run, loss, r, config, first.get("point")))
    events = _lead_into_divergence(events, loss, config, notes)
    drift = _lr_drift_event(run, loss, config, events)
    if drift is not None:
        events.append(drift)
        notes.append(drift.detail or "")
    climb = _climb_event(run, loss, config, events)
    if climb is not None:
        events = [e for e in events if not (e.kind in ("spike", "divergence")
                                            and not e.recovered
                                            and e.end_step >= climb.start_step)]
        events.append(climb)
    events = _end_in_nonfinite(events, [_nonfinite_event(run, loss, nf, params)
                                        for nf in nonfinite], loss, config, notes)
    for o in oscs:
        events.append(_osc_event(run, loss, o, batch))
    if stall is not None:
        events.append(_stall_event(run, loss, stall))
    overfit = _overfit_event(run, series, config)
    if overfit is not None:
        events.append(overfit)
    events += _superseded_events(run, config, notes)
    events += _grad_surges(run, events, params, config, notes, grad, pending)
    events += ops_events(run, events, config, notes)  # slowdowns and hangs (issue 14)
    _grad_nonfinite_note(run, loss, nonfinite, notes)
    events.sort(key=lambda e: (e.start_step, _KIND_ORDER.get(e.kind, 9), e.metric))
    verdict = verdict_of(events)
    if verdict == "healthy" and len(loss.fin) < config.min_window:
        verdict = "insufficient_data"
        notes.append(f"only {len(loss.fin)} finite loss point(s): too few to judge (no noise "
                     f"scale below {config.min_window} points; only a rise of "
                     f"{config.short_ratio:g}x or a climb would show)")
    # the point z does not depend on the per-point bar (`recurrent_steps`): it is the one
    # `point_z` gives
    pz = PointZ(steps=loss.steps[loss.fin], z=first["point"], interval=run.interval) \
        if "point" in first else None
    return Detection(events=tuple(events), verdict=verdict, notes=tuple(notes), point_z=pz,
                     near_bar=near)


def _rises_and_near(loss: _Loss, params: RiseParams, config: Config,
                    first: dict[str, NDArray[np.float64]]
                    ) -> tuple[list[Rise], tuple[int, ...]]:
    """`find_rises` as `detect` calls it, and the steps where one of its scans' point test
    gave a z in [`joint_min_z`, bar): (rises, near steps).

    Why these steps are the only ones a cross-run bar can change: `recurrent_steps` only
    lowers the per-point bar of the point test (`RiseParams.point_bar`) to
    min(bar, joint_min_z) at those steps; nothing else in the detection reads that bar
    (the non-finite, grad-norm and ops detectors take the window and band from `params`,
    the grad-norm surges set their own bar). The bar enters `spikes._candidates` only as
    `z["point"] >= bar`, and the z does not depend on it. So where z is NaN, below
    joint_min_z, or at or above the bar, the lowered bar fires exactly where the bar did:
    the first scan opens the same candidates, hence finds the same rises; those decide
    whether there is a second scan (a long rise) and its clipped baseline, so the second
    scan sees the same baseline and, by the same argument on its own z, finds the same
    rises. The near steps are therefore those of the first scan and, when it ran, of the
    second."""
    second: dict[str, NDArray[np.float64]] = {}
    rises = find_rises(loss.x, params, loss.abs_floor, loss.is_log, statistics=first,
                       second_statistics=second)
    bar = np.full(len(loss.x), params.z_point) if params.point_bar is None \
        else params.point_bar
    hit = np.zeros(len(loss.x), dtype=bool)
    for stats in (first, second):
        z = stats.get("point")
        if z is not None:
            with np.errstate(invalid="ignore"):
                hit |= (z >= config.joint_min_z) & (z < bar)
    steps = loss.steps[loss.fin][hit]
    return rises, tuple(int(s) for s in steps)


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


def _values(s: pd.Series) -> NDArray[np.float64]:
    """A series' values as float64, NaN where missing: a view of the frame's array when it is
    float64 already (8 MB not copied at a million points; nothing here writes to it)."""
    if s.dtype == np.float64:
        return s.to_numpy()
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _steps(s: pd.Series) -> NDArray[np.int64]:
    """A series' steps as int64: a view of its index where it is int64 already."""
    return s.index.to_numpy().astype(np.int64, copy=False)


def _prepare(run: Run, series: pd.Series, config: Config, notes: list[str]) -> _Loss:
    nan_steps = _nan_iteration_steps(run)
    lost = _lost_loss_steps(run, series, nan_steps, notes)
    if len(lost):
        # steps whose loss the log could not print (it was NaN, or the step overflowed in a
        # storm) are non-finite loss positions, not gaps
        series = pd.concat([series, pd.Series(np.nan, index=lost)]).sort_index()
    # views of the frame's arrays: 16 MB less held through the whole detection of a million
    # points
    steps, values = _steps(series), _values(series)
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
                 quantum=quantum, abs_floor=abs_floor, lr_series=run.series("lr"))


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
    batch = _batch_size(run, config.tiny_batch)
    tiny = batch is not None and batch <= config.tiny_batch
    # a one-step spike of ratio r is diluted to 1 + (r - 1) / n in an n-step average
    point_ratio = 1 + (ratio - 1) / run.interval if run.averaged and run.interval > 1 else ratio
    first = int(loss.steps[loss.fin[0]]) if len(loss.fin) else 0
    from_start = first <= config.min_window * max(1, run.interval)
    if loss.is_log and tiny:
        # the log says the batch is tiny: its loss routinely doubles and halves, so a ratio
        # with no scale to measure it against says nothing (the z tests still run)
        lp, ls = math.log(point_ratio), math.log(ratio)
        lshort = lstart = math.inf
    elif loss.is_log:
        lp, ls = math.log(point_ratio), math.log(ratio)
        lshort, lstart = math.log(config.short_ratio), math.log(config.start_ratio)
    else:
        # no ratios in linear units: the z tests alone, and no judgement on a short baseline
        lp = ls = 0.0
        lshort = lstart = math.inf
    jump_bar, jump_ratio = _lr_jump_bars(loss, config)
    return RiseParams(
        shift_bar=jump_bar,
        shift_ratio=jump_ratio,
        point_bar=_grad_confirmed_bar(run, loss, config, _big_jump_bar(loss, config)),
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


def _big_jump_bar(loss: _Loss, config: Config) -> NDArray[np.float64] | None:
    """Per-point z bar of the point test: `big_jump_z` (6 sigma, OLMo-core's rule) at a point
    `big_jump_ratio` (x3) or more above the median of its 21-point neighbourhood, the
    ordinary bar elsewhere; None when no point is. In a loss whose per-step noise is 20-30 %
    (a noisy-label classifier) a batch with shuffled labels lifts the loss x6 for one step
    and reaches z 7.6 only; no point outside a labelled event of the 154 labelled runs is
    more than x1.5 its neighbourhood at z >= 5, so x3 is twice that."""
    if not loss.is_log or len(loss.x) < 21 or config.big_jump_z >= config.z_threshold:
        return None
    big = _above_median21(loss.x, math.log(config.big_jump_ratio))
    if not big.any():
        return None
    return np.where(big, config.big_jump_z, config.z_threshold).astype(np.float64)


#: Above one candidate in this many points, `_above_median21` runs the median filter over
#: the whole series instead (the same values; cheaper there), as `gradnorm.confirmed` does.
_MEDIAN21_SHARE = 20


def _median21_at(x: NDArray[np.float64], idx: NDArray[np.int64]) -> NDArray[np.float64]:
    """`ndimage.median_filter(x, size=21, mode="nearest")[idx]`, from the 21 points around
    each index only (clipping an index to the series is the "nearest" extension; the
    median of an odd count is one of the values, as the filter's is), or from the filter
    itself when the indices are many. For finite x."""
    if len(idx) * _MEDIAN21_SHARE > len(x):
        return np.asarray(ndimage.median_filter(x, size=21, mode="nearest")[idx])
    return np.asarray(np.median(x[np.clip(idx[:, None] + np.arange(-10, 11), 0, len(x) - 1)],
                                axis=1), dtype=np.float64)


def _above_median21(x: NDArray[np.float64], log_ratio: float) -> NDArray[np.bool_]:
    """`x - median_filter(x, 21, nearest) >= log_ratio` (x finite, log_ratio > 0), with the
    median taken only where x stands `log_ratio` above its 21-point minimum (a point under
    that cannot stand as far above the median, which is never below the minimum): a
    whole-series median filter (0.05-0.1 CPU-s at a million points) for the few points a
    big jump can be."""
    out = np.zeros(len(x), dtype=np.bool_)
    cand = np.flatnonzero(x - ndimage.minimum_filter1d(x, 21, mode="nearest") >= log_ratio)
    if len(cand):
        out[cand] = x[cand] - _median21_at(x, cand) >= log_ratio
    return out


def _grad_confirmed_bar(run: Run, loss: _Loss, config: Config,
                        bar: NDArray[np.float64] | None) -> NDArray[np.float64] | None:
    """`bar` lowered to `grad_confirmed_point_z` (7.9) at a point the grad norm confirms:
    its robust z (`gradnorm.robust_z`) is at least `grad_confirm_z` (3) at the same step or
    the grad-norm point before, the loss is at least `grad_confirmed_ratio` (x1.3, issue 8's
    smallest outlier worth finding) its 21-point neighbourhood's median, and the point has a
    full trailing window (on a shorter one the loss scale is itself uncertain). On the 154
    labelled runs the largest loss point z at a confirmed point outside labelled events is
    5.27 (bench r12, under the steadied noise): 7.9 is 1.5x that (docs/detection.md, *Fifth
    pass* and *Sixth pass*)."""
    gn = run.series("grad_norm")
    if not loss.is_log or gn is None or len(loss.x) <= config.window \
            or config.grad_confirmed_point_z >= config.z_threshold:
        return bar
    tested = loss.steps[loss.fin]
    ok = grad_confirmed(loss.x, tested, gn.to_numpy(dtype=np.float64, na_value=np.nan),
                        gn.index.to_numpy().astype(np.int64), config.grad_confirm_z,
                        math.log(config.grad_confirmed_ratio), config.window)
    if not ok.any():
        return bar
    out = np.full(len(tested), config.z_threshold) if bar is None else bar.copy()
    out[ok] = np.minimum(out[ok], config.grad_confirmed_point_z)
    return out


#: an LR jump: x this much in one logged step, and this many times the LR's own typical
#: step-to-step change around it (a warmup ramp, a cosine or a cyclic schedule never is)
_LR_JUMP_RATIO = 1.2
_LR_JUMP_LOCAL = 10.0
_LR_JUMP_SPAN = 2  # logged points either side of the jump where the lower bar applies


def _lr_jumps(lr: NDArray[np.float64] | None) -> NDArray[np.intp]:
    """Indices (finite loss points) of the first point logged at a new LR after each upward
    jump of the LR: x`_LR_JUMP_RATIO` in one logged step and `_LR_JUMP_LOCAL` times the
    LR's typical step-to-step change around it (`_Loss.lr_jumps`)."""
    if lr is None or len(lr) < 3:
        return np.zeros(0, dtype=np.intp)
    with np.errstate(invalid="ignore", divide="ignore"):
        dl = np.diff(np.log(np.where(lr > 0, lr, np.nan)))
    dl = np.nan_to_num(dl, nan=0.0, posinf=0.0, neginf=0.0)
    # the typical change (the median of |dl| over 21 points) only where dl passes the ratio
    # bar: an LR that jumps at all does so at a handful of points
    jumps = np.flatnonzero(dl >= math.log(_LR_JUMP_RATIO))
    if len(jumps):
        typical = _median21_at(np.abs(dl), jumps)
        jumps = jumps[dl[jumps] >= _LR_JUMP_LOCAL * typical]
    out: NDArray[np.intp] = jumps + 1
    return out


def _date_from_lr_jump(rises: list[Rise], loss: _Loss, reach: int,
                       notes: list[str]) -> list[Rise]:
    """A level shift that opens less than `reach` points (the middle shift window) after an
    upward jump of the LR starts at the jump. The shift test dates a change by where the
    evidence is strongest; in a noisy loss that can be several points after the step that
    changed it, and within the window that found it the jump is the likelier start: the
    LR is a cause the log states, and its first point is when its effect can begin. A rise
    that comes back sooner than the stretch back to the jump is long (a one-point outlier, a
    short bad shard) is dated by itself, and so is one whose stretch back to the jump holds
    another incident."""
    firsts = loss.lr_jumps
    if not rises or not len(firsts):
        return rises
    st = loss.fin_steps
    out: list[Rise] = []
    moved: list[str] = []
    for r in rises:
        after = firsts[(firsts < r.start) & (r.start - firsts < reach)]
        prev_end = out[-1].end if out else -1
        if len(after) and int(after[-1]) > prev_end:
            j = int(after[-1])
            # a level the LR set (one that does not come back, or a rise that lasts at
            # least as long as the stretch back to the jump), not a short bad shard a few
            # steps after a jump the loss did not answer: the move is never longer than the
            # rise itself
            if not r.recovered or r.end - r.start >= r.start - j:
                moved.append(f"{st[r.start]} -> {st[j]}")
                r = dataclasses.replace(r, start=j)
        out.append(r)
    if moved:
        notes.append(f"{len(moved)} level shift(s) opening just after an upward LR jump dated "
                     f"from the jump ({', '.join(moved[:5])}{', ...' if len(moved) > 5 else ''})")
    return out


def _lifts_after_lr_jumps(rises: list[Rise], loss: _Loss, params: RiseParams,
                          config: Config, notes: list[str]) -> list[Rise]:
    """The loss's answer to each upward LR jump, looked for over the `window` points after
    it (lr_lift.py): a lift whose largest 20-point median stands `lr_lift_z` standard
    errors and the ratio floor of the jump (`RiseParams.shift_ratio` there) above the level
    before the jump is a rise from the jump. It ends where a `window`-point median is back
    under halfway between the old level and the level the points after the jump held,
    looked for from the lift's highest median on (the loss can sit at its old level for a
    few steps after the jump before it answers), or lasts to the end of the log, or to a
    later incident it runs into. A level the scans opened in the window already holds the
    answer; shorter rises there (a noisy point of the raised level) are taken into it. A
    schedule that jumps `MAX_JUMPS` times or more is cyclic and left to the oscillation."""
    jumps = loss.lr_jumps
    if not loss.is_log or not len(jumps) or len(jumps) >= MAX_JUMPS:
        return rises
    x = loss.x
    n = len(x)
    st = loss.fin_steps
    added: list[Rise] = []
    found: list[str] = []
    absorbed = 0
    floor = 0
    for k, j in enumerate(jumps.tolist()):
        nxt = int(jumps[k + 1]) if k + 1 < len(jumps) else n
        stop = min(n, j + params.window, nxt)
        lo, floor = floor, j
        # the rises the scans opened in the window after the jump: a level among them is
        # the answer already; one-point blips are its noisiest points, taken into it
        opened = [r for r in (*rises, *added) if r.start < stop and r.end >= j]
        if any(not r.recovered or r.end - r.start >= K_LIFT for r in opened):
            continue
        lift = find_lift(x, j, stop, params.window, lo)
        if lift is None or not lift.z >= config.lr_lift_z:
            continue
        ratio = float(params.shift_ratio[j]) if params.shift_ratio is not None \
            else params.log_min_ratio_shift
        if lift.lift < ratio:
            continue
        # A level, not a point: the answer lasts until a window's median is back under the
        # halfway mark between the old level and the level the window after the jump held
        # (the reference of Page's CUSUM in `spikes._change_point`; the highest 20-point
        # median would overstate it). A lift this rule alone finds is 2-3 noise scales a
        # point, inside the rise tests' band of `band_z` scales, so their point-wise
        # recovery would end it at the first quiet stretch while the level stays raised.
        held = float(np.median(x[j:stop])) - lift.level
        half = lift.level + max(held, 0.0) / 2
        back = back_at(x, lift.at + 1, half, params.window)
        recovered = back is not None
        end = back if back is not None else n - 1
        # a rise the scans opened at the next jump, within the window, is this episode's
        # answer (two jumps close together answered once); a later incident the raised
        # level runs into is its own: the answer ends where it begins, not yet back
        later = [r.start for r in (*rises, *added) if stop <= r.start <= end]
        if later and min(later) < j + params.window:
            continue
        if later:
            end, recovered = min(later) - 1, False
        taken = {id(r) for r in opened}
        rises = [r for r in rises if id(r) not in taken]
        absorbed += len(taken)
        peak = j + int(np.argmax(x[j:end + 1]))
        added.append(Rise(start=j, peak=peak, end=end, recovered=recovered,
                          level=lift.level, scale=lift.sigma, band_hi=half))
        found.append(f"step {int(st[j])} x{math.exp(lift.lift):.2f} over {stop - j} points "
                     f"(z {lift.z:.1f})")
    if not added:
        return rises
    notes.append(f"{len(added)} lift(s) of the loss answering an upward LR jump, its highest "
                 f"{K_LIFT}-point median in the points after the jump (up to {params.window}, "
                 f"or the next jump) against the level before it: {', '.join(found)}"
                 + (f"; {absorbed} shorter rise(s) inside taken into it" if absorbed else ""))
    return sorted([*rises, *added], key=lambda r: r.start)


def _lr_jump_bars(loss: _Loss, config: Config
                  ) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None]:
    """Per-point shift bar and log ratio floor: `lr_jump_shift_z` and `lr_jump_min_ratio`
    within two logged points of an upward jump of the logged LR, the ordinary shift bar and
    `min_ratio` elsewhere; (None, None) when the LR never jumps. A level shift that opens
    where the LR was just multiplied is the expected response to it, and at one known place
    the shift z of clean runs is under 3.0 at 99.5 % of locations (docs/detection.md),
    against the whole-log bar that covers every point of the log. The ratio floor is lower
    where the jump takes the LR past anything the run had trained at (x1.2 over the highest
    LR logged before): `min_ratio` keeps small but significant drifts anywhere in a long log
    from being incidents, and an LR the run never had is a mistake whose significant
    response is the incident (an LR x20 on a small LM lifts its loss x1.07-1.12 for 100
    steps, docs/detection.md). A warm restart back to the schedule's peak (SGDR) lifts the
    loss a few percent by design and keeps `min_ratio`. Only upward jumps: an LR that drops
    (a step decay) does not lift the loss."""
    if not loss.is_log or (config.lr_jump_shift_z >= config.shift_z_threshold
                           and config.lr_jump_min_ratio >= config.min_ratio):
        return None, None
    lr = loss.lr
    firsts = loss.lr_jumps
    if lr is None or not len(firsts):
        return None, None
    near = np.zeros(len(lr), dtype=bool)
    beyond = np.zeros(len(lr), dtype=bool)
    # the highest LR logged before each point: a warm restart goes back to an LR the run
    # has trained at, a typo goes past it
    before = np.fmax.accumulate(np.where(lr > 0, lr, np.nan))
    for j in firsts:
        span = slice(max(0, j - _LR_JUMP_SPAN), j + _LR_JUMP_SPAN + 1)
        near[span] = True
        if lr[j] > _LR_JUMP_RATIO * before[j - 1]:
            beyond[span] = True
    bar = np.where(near, min(config.lr_jump_shift_z, config.shift_z_threshold),
                   config.shift_z_threshold)
    ratio = np.where(beyond, math.log(min(config.lr_jump_min_ratio, config.min_ratio)),
                     math.log(config.min_ratio))
    return bar, ratio


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
    return find_nonfinite(loss.bad, x_all, band_at, loss.steps, config.recover_run,
                          _steps(gn) if gn is not None else None,
                          _values(gn) if gn is not None else None)


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


def _rise_event(run: Run, loss: _Loss, r: Rise, config: Config,
                point_z: NDArray[np.float64] | None = None) -> Event:
    st = loss.fin_steps
    kind = kind_of(r.recovered, loss.x, st, r.start, r.peak, r.level, config.recover_run,
                   config.divergence_steps)
    start, peak, end = int(st[r.start]), int(st[r.peak]), int(st[r.end])
    level = r.level
    z = float((loss.x[r.peak] - r.level) / r.scale)
    if loss.x[r.peak] <= r.level and point_z is not None and math.isfinite(point_z[r.peak]):
        # a one-step outlier on a steep descent, found by the isolated test against its
        # neighbours: the trailing baseline is still above it ("x0.8 its baseline, z -1.3"
        # says nothing), so its size is given against what the test measured it from, the
        # median of its neighbours, with the test's own z
        lo, hi = max(0, r.peak - NEIGHBOURS), r.peak + NEIGHBOURS + 1
        level = float(np.median(np.concatenate([loss.x[lo:r.peak], loss.x[r.peak + 1:hi]])))
        z = float(point_z[r.peak])
    return Event(
        kind=kind, metric="loss", start_step=start, peak_step=peak, end_step=end,
        recovered=r.recovered,
        size=Size(z=z, ratio=_ratio(loss, float(loss.x[r.peak]), level)),
        recovery_steps=end - peak if r.recovered else None,
        segment=_segment_of(run, start),
        baseline=_unit(loss, level),
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


def _lead_into_divergence(events: list[Event], loss: _Loss, config: Config,
                          notes: list[str]) -> list[Event]:
    """The spikes that lead into a divergence taken into it. A loss that climbs slowly in
    heavy noise crosses its band and falls back into it a few times before it leaves for
    good; each crossing ends, as a spike, once the loss is back in a band that has itself
    moved up. The spikes before a divergence, each starting within one baseline window
    (`window` points) of the next one's end, from a baseline no higher than the next one's,
    are the climb's first crossings when the divergence's baseline stands at least
    `min_ratio` above theirs: the loss never came back to where they began. The divergence
    then starts at the earliest such spike. A bad batch before an unrelated divergence came
    back to its level and stays an incident of its own.

    A crossing that came back is taken in too when the log says what drove the climb: it
    started where the LR stood past `PAST` x the highest LR logged before its climb, in the
    same climb as the divergence's start (`lr_drift.past_climb`), and it is a crossing, not
    an outlier (its z under the point bar `z_threshold`). The LR setting the run had never
    had is then the common cause, and the crossing the climb's first sign (real runs v4gx03
    and v6gx00: under SGD an LR growing e-fold every 142 and 80 steps crossed the band at
    1193 and 767 at z 2-3, came back, and left for good at 1235 and 789). A bad batch inside
    such a climb (x4 or more: z far above the bar) stays an incident of its own."""
    if not loss.is_log:
        return events
    st = loss.fin_steps
    out = list(events)
    climbs: list[NDArray[np.int64]] = []  # past_climb of the LR, taken when first needed

    def same_climb(e: Event, d: Event) -> bool:
        if loss.lr is None:
            return False
        if not climbs:
            climbs.append(past_climb(loss.lr, config.window))
        i, j = np.minimum(np.searchsorted(st, [e.start_step, d.start_step]), len(st) - 1)
        return bool(climbs[0][i] >= 0 and climbs[0][i] == climbs[0][j])

    for d in [e for e in events if e.kind == "divergence" and e.metric == "loss"
              and not e.recovered and e.baseline is not None and e.baseline > 0]:
        assert d.baseline is not None
        chain: list[Event] = []  # nearest first
        head = d
        while True:
            before = [e for e in out if e.metric == "loss" and e.kind == "spike"
                      and e.end_step < head.start_step]
            if not before:
                break
            prev = max(before, key=lambda e: e.end_step)
            gap = int(np.searchsorted(st, head.start_step)) - \
                int(np.searchsorted(st, prev.end_step))
            if gap > config.window or prev.baseline is None or not \
                    0 < prev.baseline <= (head.baseline or 0.0):
                break
            chain.append(prev)
            head = prev
        # the earliest spike the loss never came back to, and every one after it
        far = [i for i, e in enumerate(chain)
               if e.baseline is not None and d.baseline >= config.min_ratio * e.baseline]
        # a crossing, not an outlier: one that stands out at the point bar on its own (a bad
        # batch of x4 or more) is an incident of its own, whatever the LR was doing
        by_lr = [i for i, e in enumerate(chain)
                 if e.size.z < config.z_threshold and same_climb(e, d)]
        if not far and not by_lr:
            continue
        chain = chain[:max(far + by_lr) + 1]
        first = chain[-1]
        assert first.baseline is not None
        why = (f"its level x{d.baseline / first.baseline:.3g} by then"
               if far and max(far) >= max(by_lr, default=-1) else
               f"the LR past {PAST:g}x the highest LR logged before its climb throughout")
        notes.append(f"the loss crossed its band {len(chain)} time(s) from step "
                     f"{first.start_step} before it left for good at step {d.start_step} "
                     f"({why}): one divergence")
        merged = dataclasses.replace(
            d, start_step=first.start_step, baseline=first.baseline, segment=first.segment,
            size=Size(z=d.size.z, ratio=d.size.ratio * d.baseline / first.baseline))
        out = [merged if e is d else e for e in out if not any(e is c for c in chain)]
    return out


def _end_in_nonfinite(events: list[Event], stretches: Sequence[Event], loss: _Loss,
                      config: Config, notes: list[str]) -> list[Event]:
    """`events` with the non-finite stretches added, each taking in the divergence that
    leads into it. A loss that climbs without recovering and goes NaN or Inf at the top of
    its climb (the divergence's peak within `recover_run` finite points of its last one, and
    no finite point between that and the first non-finite) blew up once: one incident, the
    non-finite one (so the verdict and a `--fail-on nonfinite` gate still say NaN), starting
    where the climb started, so that its causes are read from before the climb. As two
    incidents the second one's causes were read from inside the climb (an LR ramp's
    "earlier maximum" taken from the ramp itself). A non-finite stretch after a divergence
    that had levelled off, or after finite points, is added as it is. One look-up per
    stretch: a log can hold thousands of them."""
    st = loss.fin_steps
    # the unrecovered divergences by their last step, the only ones a stretch can continue
    by_end = {e.end_step: i for i, e in enumerate(events)
              if e.kind == "divergence" and e.metric == "loss" and not e.recovered}
    taken: set[int] = set()
    added: list[Event] = []
    for nf in stretches:
        k = int(np.searchsorted(st, nf.start_step))  # finite points before the stretch
        i = by_end.get(int(st[k - 1])) if k else None
        if i is None or i in taken or \
                k - 1 - int(np.searchsorted(st, events[i].peak_step)) >= config.recover_run:
            added.append(nf)
            continue
        e = events[i]
        detail = (f"the loss climbed from step {e.start_step} (x{e.size.ratio:.3g} its "
                  f"baseline by step {e.peak_step}) and went non-finite at step "
                  f"{nf.start_step}, at the top of its climb: one incident")
        notes.append(detail)
        taken.add(i)
        added.append(dataclasses.replace(nf, start_step=e.start_step, baseline=e.baseline,
                                         segment=e.segment, diverged=True, detail=detail))
    return [e for i, e in enumerate(events) if i not in taken] + added


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


def _batch_size(run: Run, tiny_batch: float) -> float | None:
    """Samples per optimizer step, from the log when it says: the step-to-step increase of
    a samples counter (or of a token counter divided by the sequence length), else the
    global batch size of the run's config. None when the log cannot tell."""
    for role in ("samples", "tokens"):
        s = run.series(role)
        if s is None or len(s) < 3:
            continue
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        st = s.index.to_numpy().astype(np.float64)
        ok = np.isfinite(v)
        if ok.sum() < 3:
            continue
        dv, ds = np.diff(v[ok]), np.diff(st[ok])
        good = (ds > 0) & (dv > 0)
        if good.sum() < 2:
            continue
        per_step = float(np.median(dv[good] / ds[good]))
        if role == "tokens":
            seq = run.params.get("seq_length")
            if not isinstance(seq, (int, float)) or seq <= 0:
                continue
            per_step /= float(seq)
        return per_step
    for key in ("global_batch_size", "micro_batch_size"):
        val = run.params.get(key)
        if isinstance(val, (int, float)) and val > 0:
            # one process's batch is a lower bound (gradient accumulation and data-parallel
            # ranks multiply it): it can say a batch is not tiny, never that it is
            if key == "micro_batch_size" and val <= tiny_batch:
                return None
            return float(val)
    return None


#: The LR at the finite loss points (None without an LR) and its period when cyclic.
_LrCycle = tuple[NDArray[np.float64] | None, int | None]
#: Cycles a periodic swing (and a cyclic LR) must repeat to count.
_MIN_CYCLES = 3
#: Finite loss points below which no oscillation is looked for.
_OSC_MIN_POINTS = 16


def _lr_cycle(loss: _Loss) -> _LrCycle:
    """The LR at the finite loss points (None without an LR) and its period when it is
    cyclic (`oscillation.lr_period`), for `_oscillations`."""
    if len(loss.x) < _OSC_MIN_POINTS:
        return None, None
    lr = loss.lr
    return lr, lr_period(lr, _MIN_CYCLES) if lr is not None else None


def _oscillations(run: Run, loss: _Loss, rises: Sequence[Rise],
                  nonfinite: Sequence[NonFinite], config: Config,
                  lr_cycle: _LrCycle, batch: float | None = None) -> list[Oscillation]:
    if len(loss.x) < _OSC_MIN_POINTS:
        return []
    min_cycles = _MIN_CYCLES
    # the period limit follows the log: the longest period an analysis block (or the whole
    # log, when shorter) repeats min_cycles times; a fixed 50 missed 56- and 71-step epochs
    max_period = _osc_max_period(loss, config)
    p = OscParams(block=config.osc_block, max_period=max_period,
                  min_acf=config.osc_min_acf, spread=config.osc_spread, lr_z=config.osc_lr_z,
                  min_cycles=min_cycles, batch=batch, tiny_batch=config.tiny_batch)
    # the first descent from initialisation is a trend, not a swing
    base = np.zeros(len(loss.x), dtype=bool)
    base[:min(len(loss.x) // 10, config.window)] = True
    if loss.is_log and loss.abs_floor > 0:
        # within a decade of the resolution floor the wiggles are rounding, not training
        base |= loss.x < math.log(10 * loss.abs_floor)
    skip = base | _incident_mask(loss, rises, nonfinite)
    lr, lr_per = lr_cycle
    found = find_oscillations(loss.x, lr, lr_per, p, skip)
    swings = _swings_beside(loss, rises, found, p.block)
    if swings:
        # A rise that is one of the swings (an epoch boundary's jump in a sawtooth), left out
        # of the evidence, can take its block's periodicity with it: realruns-v9 `v9osc03`
        # (65-step epochs of class-sorted data) lost its first 400 points to the x1.18
        # boundary jump at step 170 that a point bar of 8.2 finds, and the jump stood
        # outside the oscillation as an incident. Looked at again with such rises in the
        # evidence, the regions are taken if each of them then lies inside one that swings
        # at least as far.
        taken = {id(w) for w in swings}
        rest = [r for r in rises if id(r) not in taken]
        trial_skip = base | _incident_mask(loss, rest, nonfinite)
        trial = find_oscillations(loss.x, lr, lr_per, p, trial_skip)
        if all(any(o.start <= w.peak <= o.end and _rise_size(loss, w) <= o.log_swing
                   for o in trial) for w in swings):
            found, skip, rises = trial, trial_skip, rest
    # a region that is mostly incident is the incident's shape, not a condition of the run;
    # but the rises of an LR-locked region that are timed with the cyclic LR's peaks are
    # its own swings (`_absorb_in_oscillation` takes them into it): a loss that climbs for
    # a third of every cycle, with the LR, is the oscillation at its plainest, and counted
    # as incident it would lose the region that explains it
    kept = []
    for o in found:
        others = [r for r in rises if not (o.start <= r.peak <= o.end and _timed_with_lr(r, o))]
        counted = skip if len(others) == len(rises) else \
            base | _incident_mask(loss, others, nonfinite)
        if counted[o.start:o.end + 1].mean() < 0.5:
            kept.append(o)
    return kept


def _osc_max_period(loss: _Loss, config: Config) -> int:
    """The longest period the oscillation tests look for: the longest an analysis block (or
    the whole log, when shorter) repeats `_MIN_CYCLES` times; a fixed 50 missed 56- and
    71-step epochs."""
    if config.osc_max_period is not None:
        return config.osc_max_period
    return max(2, min(len(loss.x), config.osc_block) // _MIN_CYCLES)


def _rise_size(loss: _Loss, r: Rise) -> float:
    """How far a rise's peak stands above its level, in the units of the test (log)."""
    return float(loss.x[r.peak] - r.level)


def _swings_beside(loss: _Loss, rises: Sequence[Rise], found: Sequence[Oscillation],
                   block: int) -> list[Rise]:
    """The recovered rises outside every oscillation region that lie within a block of a
    periodic one and are no larger than its swing: the swings the region may have lost to
    the incident mask (`_oscillations`). An LR-locked region spans the whole log, so no
    rise is beside one. Empty without a periodic region, so a log with no oscillation is
    searched once."""
    near = [o for o in found if o.source == "periodic"]
    if not near:
        return []
    out = []
    for r in rises:
        if not r.recovered or any(o.start <= r.peak <= o.end for o in found):
            continue
        size = _rise_size(loss, r)
        if any(o.start - block <= r.peak <= o.end + block and size <= o.log_swing
               for o in near):
            out.append(r)
    return out


def _join_back_to_back(rises: list[Rise], x: NDArray[np.float64]) -> list[Rise]:
    """One incident, not two: a rise that opens on the very point where the previous one was
    declared over. An LR jump whose 80-point shift test fires a few steps early puts the
    change point just before the jump; the first stretch "recovers" against its own band
    and the rise the jump causes opens at once from a later baseline. The joined event
    keeps the first baseline and the highest point of both."""
    out: list[Rise] = []
    for r in rises:
        if out and out[-1].recovered and r.start <= out[-1].end:
            a = out[-1]
            peak = a.peak if x[a.peak] >= x[r.peak] else r.peak
            out[-1] = dataclasses.replace(a, peak=peak, end=r.end, recovered=r.recovered)
            continue
        out.append(r)
    return out


def _absorb_in_oscillation(rises: list[Rise], oscs: Sequence[Oscillation], loss: _Loss,
                           notes: list[str], max_period: int) -> list[Rise]:
    """Drop spikes that are one swing of a periodic oscillation (no larger than it, or no
    higher above the trend than the highest points of its other cycles)."""
    keep: list[Rise] = []
    dropped: list[int] = []
    timed: list[int] = []
    fences: dict[int, tuple[NDArray[np.float64], float] | None] = {}
    st = loss.fin_steps
    # the largest swing each LR-locked region has been seen to make: its folded swing, and
    # every rise its LR's peaks timed so far
    swing = {id(o): o.log_swing for o in oscs}
    for r in rises:
        inside = [o for o in oscs if o.start <= r.peak <= o.end]
        size = _rise_size(loss, r)
        if r.recovered and inside and size <= max(o.log_swing for o in inside):
            # inside the swing's own envelope (periodic, LR-locked or erratic)
            dropped.append(int(st[r.peak]))
            continue
        if r.recovered and any(_under_cycle_peaks(loss, r, o, rises, max_period, fences)
                               for o in inside):
            dropped.append(int(st[r.peak]))
            continue
        # a rise the log cuts off may be as large as the LR's swings so far, give or take
        # the noise band it is measured against (its peak is the largest of noisy points)
        band = r.band_hi - r.level
        tied = [o for o in inside if _timed_with_lr(r, o) or
                (_cut_before_trough(r, o, len(loss.x)) and size <= swing[id(o)] + band)]
        if tied:
            # timed with a peak of the cyclic LR the loss follows: the LR made it
            timed.append(int(st[r.peak]))
            for o in tied:
                # only a rise the size of the swings widens them: a bad shard that the timing
                # took in must not let a blow-up at the last peak pass for a swing
                if size <= swing[id(o)] + band:
                    swing[id(o)] = max(swing[id(o)], size)
            continue
        keep.append(r)
    if dropped:
        shown = ", ".join(str(s) for s in dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        notes.append(f"{len(dropped)} rise(s) no larger than the oscillation they sit "
                     f"in were counted as part of it (peaks at {shown})")
    if timed:
        shown = ", ".join(str(s) for s in timed[:5]) + (", ..." if len(timed) > 5 else "")
        notes.append(f"{len(timed)} rise(s) at a peak of the cyclic LR the loss follows were "
                     f"counted as part of the oscillation (peaks at {shown})")
    return keep


def _under_cycle_peaks(loss: _Loss, r: Rise, o: Oscillation, rises: Sequence[Rise],
                       max_period: int,
                       fences: dict[int, tuple[NDArray[np.float64], float] | None]) -> bool:
    """Whether a rise is one swing of the periodic region `o` by its height: it comes back
    within a period (a swing rises and falls inside its cycle; a shard held longer is not
    one, and it would lift the trend its height is measured from) and its peak stands no
    higher above the trend than the fence of the cycles' own peaks
    (`oscillation.cycle_peaks_fence`, taken once per region, the cycles holding any of the
    rises left out). The folded swing is an average cycle's peak-to-trough, and a rise is
    measured from the trailing median to its highest, noisy point: an epoch sawtooth's
    boundary jump is larger than the first and no larger than the other boundaries (a
    65-step sawtooth of x1.5 jumps in 5 % noise was reported as spikes at its boundaries in
    4 of 4 seeds)."""
    if o.source != "periodic" or o.period is None or r.end - r.start >= o.period:
        return False
    if id(o) not in fences:
        held = _incident_mask(loss, rises, ())[o.start:o.end + 1]
        fences[id(o)] = cycle_peaks_fence(loss.x, o.start, o.end, o.period, max_period, held)
    got = fences[id(o)]
    if got is None:
        return False
    res, fence = got
    return bool(res[r.peak - o.start] <= fence)


def _timed_with_lr(r: Rise, o: Oscillation) -> bool:
    """A rise that is one swing of the LR-locked oscillation `o`: brief, and with its start
    or its peak near a peak of the cyclic LR."""
    if o.source != "lr" or o.period is None:
        return False
    # a rise the log cuts off is judged too, if it has lasted under half a cycle (the LR
    # has not had the time to bring it down)
    brief = r.recovered or r.end - r.start < 0.5 * float(o.period)
    # the loss follows the LR up (the rise starts near its peak) and answers it with a
    # lag (the rise peaks near or after it): either end near a peak ties them
    return brief and (_near_peak(r.peak, o) or _near_peak(r.start, o))


def _cut_before_trough(r: Rise, o: Oscillation, n: int) -> bool:
    """A rise of an LR-locked region that the log's end cuts off before the cyclic LR has
    come down from the peak the rise is tied to (the log ends less than half a cycle after
    it): its not coming back says nothing yet. The caller asks, too, that it be no larger
    than the swings the LR has made before, so a blow-up at the last peak stays an
    incident."""
    if o.source != "lr" or o.period is None or r.recovered or r.end < n - 1:
        return False
    half = 0.5 * float(o.period)
    # the peaks it is tied to as `_near_peak` ties them (its start or its peak within a
    # quarter period), and that it climbed to: a rise that began before the trough ahead of
    # that peak has been through a trough without coming down
    return any(n - 1 < p + half and r.start > p - half for p in o.lr_peaks
               if min(abs(r.peak - p), abs(r.start - p)) <= 0.5 * half)


def _near_peak(i: int, o: Oscillation) -> bool:
    """The point i is within a quarter period of a maximum of the cyclic LR: on the high
    half of the cycle, where the LR pushes the loss up (it answers with a short lag)."""
    per = float(o.period or 0.0)
    return any(abs(i - p) <= 0.25 * per for p in o.lr_peaks)


def _osc_event(run: Run, loss: _Loss, o: Oscillation, batch: float | None = None) -> Event:
    st = loss.fin_steps
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
        lr_corr=o.lr_corr, batch_size=batch, source=o.source,
    )


#: A loss or grad norm of at least this many points has its cyclic-LR test and grad-norm
#: scan run on a thread (`_start_side_passes`) beside the non-finite, stall and oscillation
#: passes. numpy's sorts, partitions and FFTs, most of that work, let go of the GIL, so on
#: a second core the passes overlap: `detect` on the 1M-step TensorBoard log 1.64-1.71 ->
#: 1.37-1.44 s with the scan alone there (docs/performance.md has the rest). Below it both
#: take under 0.1 s and run in line.
_GRAD_THREAD_MIN = 200_000


#: The grad norm's values and steps, and why it cannot be analysed (None when it can).
_GradInput = tuple[NDArray[np.float64], NDArray[np.int64], str | None]


def _grad_input(run: Run) -> _GradInput | None:
    """The grad norm as the surges read it; None without a grad norm."""
    gn = run.series("grad_norm")
    if gn is None or len(gn) == 0:
        return None
    # views of the frame's arrays: no 16 MB of copies held through the scan
    vals = _values(gn)
    return vals, _steps(gn), usable(vals)


def _grad_params(params: RiseParams, config: Config) -> RiseParams:
    """The loss's rise parameters as the grad-norm surges take them."""
    # the grad norm often climbs out of initialisation and drifts for good: only transient
    # surges against a full window count (no ratio-only judgement on a short baseline)
    lr = math.log(config.grad_min_ratio)
    # a surge is short by nature: the shortest shift window is enough (and a third cheaper)
    return RiseParams(**{**params.__dict__, "start_points": 0, "min_window": params.window,
                         "log_short_ratio": math.inf, "log_min_ratio_point": lr,
                         "log_min_ratio_shift": lr,
                         "shift_windows": (min(params.shift_windows),), "quantum": 0.0,
                         "isolated": False,
                         # the loss's per-point bars (lowered at cross-run outliers, big
                         # jumps and LR jumps) are indexed by the loss's finite points, not
                         # the grad norm's
                         "point_bar": None, "shift_bar": None, "shift_ratio": None})


def _start_side_passes(run: Run, loss: _Loss, params: RiseParams, config: Config,
                       got: _GradInput | None
                       ) -> tuple[Future[_LrCycle], Future[Scan] | None]:
    """The cyclic-LR test (`_lr_cycle`) and the grad norm's scan (`gradnorm.scan`), one
    after the other on a thread when the loss or a usable grad norm has at least
    `_GRAD_THREAD_MIN` points; else the LR test in line and no scan (`_grad_surges` then
    scans in line). Both read only the log and the parameters, so their results are the
    in-line ones. `got`: `_grad_input(run)`."""
    long_grad = got is not None and got[2] is None and len(got[0]) >= _GRAD_THREAD_MIN
    lr_fut: Future[_LrCycle] = Future()
    if not long_grad and len(loss.x) < _GRAD_THREAD_MIN:
        settle(lr_fut, lambda: _lr_cycle(loss))
        return lr_fut, None
    grad_fut: Future[Scan] | None = None
    if long_grad:
        assert got is not None
        vals, steps, _ = got
        gp = _grad_params(params, config)
        grad_fut = Future()

    def work() -> None:
        settle(lr_fut, lambda: _lr_cycle(loss))
        if grad_fut is not None:
            settle(grad_fut, lambda: scan(vals, steps, gp))

    start(work, "spikelens-side-passes")
    return lr_fut, grad_fut


def _grad_surges(run: Run, events: Sequence[Event], params: RiseParams, config: Config,
                 notes: list[str], got: _GradInput | None,
                 pending: Future[Scan] | None) -> list[Event]:
    """The grad-norm surges the loss never felt. `got`: `_grad_input(run)`; `pending`: its
    scan, started on a thread (`_start_side_passes`), or None to scan here."""
    if got is None:
        return []
    vals, steps, why = got
    if why is not None:
        notes.append(f"grad norm not analysed: {why}")
        return []
    spans = [(e.start_step, e.end_step) for e in events
             if e.metric == "loss" and e.kind != "oscillation"]
    out = []
    scanned = pending.result() if pending is not None else \
        scan(vals, steps, _grad_params(params, config))
    for s in find_surges(scanned, spans, _GRAD_LEAD * max(1, run.interval)):
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
                       f"an earlier checkpoint): the later values are the run's history, and "
                       f"the rolled-back values of segment {r.segment - 1} are analysed on "
                       "their own (incidents there are reported with their segment)")
    return out


def _climb_event(run: Run, loss: _Loss, config: Config, events: Sequence[Event]
                 ) -> Event | None:
    """A divergence on a short log: consecutive rises to the end (climb.py)."""
    if not loss.is_log or len(loss.fin) < config.climb_rises + 1:
        return None
    st = loss.fin_steps
    gn = run.series("grad_norm")
    gs = gn.index.to_numpy().astype(np.int64) if gn is not None else None
    gv = gn.to_numpy(dtype=np.float64, na_value=np.nan) if gn is not None else None
    c = tail_climb(loss.x, st, config.climb_rises, math.log(config.short_ratio),
                   math.log(config.start_ratio), config.window, gs, gv)
    if c is None:
        return None
    start = int(st[c.start + 1])
    for e in events:
        if e.kind == "divergence" and e.start_step <= start:
            return None  # already a divergence
    level = float(loss.x[c.start])
    return Event(
        kind="divergence", metric="loss", start_step=start, peak_step=int(st[c.end]),
        end_step=int(st[c.end]), recovered=False,
        size=Size(z=math.inf, ratio=float(math.exp(c.log_rise))),
        segment=_segment_of(run, start), baseline=_unit(loss, level),
        detail=(f"the loss rose at each of the last {c.end - c.start} logged steps, "
                f"{math.exp(c.log_rise):.2f}x in all"
                + (f", while the grad norm rose {c.grad_ratio:.2f}x" if c.grad_ratio else "")),
    )


def _lr_drift_event(run: Run, loss: _Loss, config: Config, events: Sequence[Event]
                    ) -> Event | None:
    """A loss that drifts up to the end of the log while the LR climbs past anything the run
    had trained at (lr_drift.py), where no incident that never came back holds it already."""
    if not loss.is_log:
        return None
    st = loss.fin_steps
    lr = loss.lr
    if lr is None:
        return None
    d = find_drift(loss.x, lr, config.window, math.log(config.lr_jump_min_ratio),
                   config.shift_z_threshold)
    if d is None:
        return None
    at, end = int(st[d.lr_at]), int(st[d.end])
    for e in events:
        if e.metric == "loss" and e.kind in INCIDENT_KINDS and not e.recovered \
                and e.end_step >= at:
            return None  # an incident that never came back holds the drift already
    peak = d.start + int(np.argmax(loss.x[d.start:d.end + 1]))
    kind = kind_of(False, loss.x, st, d.start, peak, d.level, config.recover_run,
                   config.divergence_steps)
    start = int(st[d.start])
    level = _unit(loss, d.level)
    held = _unit(loss, float(np.median(loss.x[max(d.start, d.end + 1 - config.recover_run):])))
    return Event(
        kind=kind, metric="loss", start_step=start, peak_step=int(st[peak]), end_step=end,
        recovered=False, size=Size(z=d.z, ratio=_ratio(loss, float(loss.x[peak]), d.level)),
        segment=_segment_of(run, start), baseline=level,
        detail=(f"the LR climbed from step {int(st[d.foot])} and passed {PAST:g}x the highest "
                f"LR logged before it ({d.lr_before:.3g}) at step {at}; the loss drifted up "
                f"from {level:.4g} and was {held / level:.3g}x that level at the end of the "
                f"log (from step {start}, z {d.z:.1f})"),
    )


def _aligned_metric(run: Run, role: str, steps: NDArray[np.int64]) -> NDArray[np.float64] | None:
    """The role's values placed at `steps` (sorted), NaN where it was not logged."""
    s = run.series(role)
    if s is None or len(s) == 0:
        return None
    return align_to(steps, _steps(s), _values(s))


def _stall(run: Run, loss: _Loss, rises: Sequence[Rise], nonfinite: Sequence[NonFinite],
           config: Config) -> Stall | None:
    if not loss.is_log or len(loss.x) < (config.stall_blocks + 2) * config.window:
        return None
    if _incident_mask(loss, rises, nonfinite).mean() > 0.25:
        return None  # a run mostly in incidents is judged by them
    st = loss.fin_steps
    vocab = run.params.get("vocab_size")
    return find_stall(loss.x, config.window, config.stall_blocks, config.stall_grad_drop,
                      lambda: _aligned_metric(run, "grad_norm", st),
                      float(vocab) if isinstance(vocab, (int, float)) else None)


def _stall_event(run: Run, loss: _Loss, s: Stall) -> Event:
    st = loss.fin_steps
    start, end = int(st[s.start]), int(st[s.end])
    level = _unit(loss, s.level)
    why = ("the run never learned: the plateau starts in the first fifth of the log"
           if s.why == "never learned" else
           f"the grad norm fell {s.grad_drop:.3g}x: vanishing gradients"
           if s.why == "grad norm collapsed" else
           f"the run learned only token frequencies: it started at {_unit(loss, s.first):.3g} "
           f"(a uniform guess over {s.vocab:,.0f} tokens) and sits at the entropy of "
           f"Zipf-distributed token frequencies ({s.unigram:.3g}) for "
           f"{100 * (s.end - s.start + 1) / len(st):.0f} % of the log")
    return Event(
        kind="stall", metric="loss", start_step=start, peak_step=start, end_step=end,
        recovered=s.end < len(st) - 1, size=Size(z=0.0, ratio=1.0),
        segment=_segment_of(run, start), baseline=level,
        detail=(f"no decrease beyond noise for {end - start} steps (the median of its "
                f"second half would have had to sit {100 * math.expm1(s.progress_bar):.2g}% "
                f"below the first half's); the loss stays near {level:.4g}; {why}"),
    )


def _overfit_event(run: Run, series: pd.Series, config: Config) -> Event | None:
    ev = run.series("eval_loss")
    if ev is None or len(ev) < config.overfit_points + 2:
        return None
    o = find_overfit(ev.index.to_numpy().astype(np.int64),
                     ev.to_numpy(dtype=np.float64, na_value=np.nan),
                     series.index.to_numpy().astype(np.int64),
                     series.to_numpy(dtype=np.float64, na_value=np.nan),
                     config.overfit_points, config.window)
    if o is None:
        return None
    return Event(
        kind="overfitting", metric="eval_loss", start_step=o.start, peak_step=o.peak,
        end_step=o.end, recovered=False, size=Size(z=0.0, ratio=o.eval_last / o.eval_min),
        segment=_segment_of(run, o.start), baseline=o.eval_min,
        detail=(f"the eval loss rose from its minimum {o.eval_min:.4g} (step {o.start}) to "
                f"{o.eval_last:.4g} and never came back, while the train loss fell from "
                f"{o.train_before:.4g} to {o.train_after:.4g}"),
    )


def _superseded_events(run: Run, config: Config, notes: list[str]) -> list[Event]:
    """Incidents in the values of segments that a rollback replaced. Each superseded
    segment is analysed as the run looked to its operators: the canonical history before
    the replayed range, then the superseded values. Only incidents that start inside the
    superseded range are reported; they carry that segment and the step after which the
    run was rolled back, and they count for the verdict."""
    out: list[Event] = []
    col = run.column("loss")
    if col is None:
        return out
    for sup in run.superseded:
        if col not in sup.frame.columns or not sup.frame[col].notna().any():
            continue
        before = run.frame[run.frame.index < sup.resumed_at]
        frame = pd.concat([before, sup.frame.reindex(columns=run.frame.columns)]).sort_index()
        frame = frame[~frame.index.duplicated(keep="last")]
        # NaNs logged before the replayed range, and those of the superseded rows
        nan_steps = {c: np.union1d(np.asarray(v)[np.asarray(v) < sup.resumed_at],
                                   sup.nan_steps.get(c, np.empty(0, np.int64)))
                     for c, v in run.nan_steps.items()}
        for c, v in sup.nan_steps.items():
            nan_steps.setdefault(c, np.asarray(v))
        sub = dataclasses.replace(run, frame=frame, restarts=(), superseded=(),
                                  segment_of_step=None, eval_frame=pd.DataFrame(),
                                  nan_steps=nan_steps)
        det = detect(sub, config)
        found = []
        for e in det.events:
            if e.metric != "loss" or e.kind not in INCIDENT_KINDS \
                    or e.anchor_step < sup.resumed_at:
                continue
            if e.start_step < sup.resumed_at:
                # a climb into NaN that began in the history the replay kept: reported
                # there, so this segment's incident is the NaN
                e = dataclasses.replace(e, start_step=e.peak_step, diverged=False, detail=None)
            found.append(dataclasses.replace(e, segment=sup.segment,
                                             rolled_back_at=sup.last_step))
        for e in found:
            notes.append(f"{e.kind} at step {e.peak_step} in segment {sup.segment}, whose "
                         f"steps {sup.resumed_at}-{sup.last_step} were rolled back (the run "
                         f"resumed at step {sup.resumed_at} after step {sup.last_step})")
        out += found
    return out
