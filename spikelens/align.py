"""Cross-run alignment: incidents that recur at the same point of the data stream in several
runs. Runs that read their data in the same order see the same batch at the same step (or, when
batch sizes differ, at the same consumed tokens/samples); a spike that recurs there in runs with
different seeds, LRs or architectures is the data's doing, and `explain` raises `bad_batch`
for it; runs that share seed, data order and LR schedule spike together whatever the cause,
so there only a one-step outlier counts (`Recurrence.differ` says what the runs differ
in). Events are aligned on consumed tokens when every run logs them, else on
consumed samples, else on the step, within one batch (one logging interval for step alignment,
so versions of a script that count steps one apart still match). A coincidence of two runs
only is reported when chance cannot explain it: with n1 and n2 events spread over a span L,
about n1*n2*(2*tol+1)/L of them pair up by accident."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spikelens.model import INCIDENT_KINDS, Event, Recurrence, Run

#: Highest expected number of chance coincidences at which a two-run match is still reported.
MAX_CHANCE = 0.2
#: Params that name the model's shape: runs that differ in one of them differ in architecture.
ARCH_KEYS = ("num_layers", "n_layer", "n_layers", "hidden_size", "n_embd", "d_model",
             "num_attention_heads", "n_head", "ffn_hidden_size", "model", "model_name",
             "model_type", "architecture")
#: Two runs' LRs at the same point differ when their ratio exceeds this.
LR_DIFFERS = 1.05


def _lr_at(run: Run, step: int) -> float | None:
    s = run.series("lr")
    if s is None:
        return None
    s = s[np.isfinite(s.to_numpy(dtype=np.float64))]
    if len(s) == 0:
        return None
    i = int(np.searchsorted(s.index.to_numpy(), step, side="right")) - 1
    return float(s.iloc[max(i, 0)])


def differences(runs: Sequence[Run], peaks: Sequence[int]) -> tuple[str, ...]:
    """What the runs differ in that a schedule-driven event would follow: their seed, their
    LR (from params, else the LR logged at the incident) or their architecture. Runs that
    share all three cannot tell a bad batch from the schedule by spiking together."""
    out: list[str] = []

    def distinct(key: str) -> bool | None:
        vals = [r.params.get(key) for r in runs]
        if any(v is None for v in vals):
            return None
        return len({repr(v) for v in vals}) > 1

    if distinct("seed"):
        out.append("seed")
    lr_differs = distinct("lr")
    if lr_differs is None:
        lrs = [_lr_at(r, p) for r, p in zip(runs, peaks, strict=True)]
        known = [x for x in lrs if x is not None and x > 0]
        lr_differs = len(known) == len(lrs) and max(known) > LR_DIFFERS * min(known)
    if lr_differs:
        out.append("lr")
    if any(distinct(k) for k in ARCH_KEYS):
        out.append("architecture")
    return tuple(out)


def run_key(run: Run) -> str:
    """How a run is named in `Recurrence.members`: its source, plus the run name for files
    that hold several runs (W&B panel exports)."""
    return run.source if run.name is None else f"{run.source}#{run.name}"


@dataclass(frozen=True)
class _Point:
    run: int  # index of the run
    peak: int  # peak step
    center: float  # position on the axis
    tol: float  # one batch (or one logging interval) on the axis


def _axis(runs: Sequence[Run]) -> str:
    for role in ("tokens", "samples"):
        if runs and all(_counter(r, role) is not None for r in runs):
            return role
    return "step"


def _counter(run: Run, role: str) -> tuple[np.ndarray, np.ndarray] | None:
    s = run.series(role)
    if s is None:
        return None
    s = s[np.isfinite(s.to_numpy(dtype=np.float64))]
    if len(s) < 2:
        return None
    steps = s.index.to_numpy(dtype=np.int64)
    vals = s.to_numpy(dtype=np.float64)
    if np.any(np.diff(vals) < 0):
        return None  # a counter that goes backwards (restart without replay) cannot align
    return steps, vals


def _points(run: Run, i: int, events: Sequence[Event], axis: str) -> list[_Point]:
    out: list[_Point] = []
    interval = max(1, run.interval)
    cnt = _counter(run, axis) if axis != "step" else None
    for ev in events:
        if ev.kind not in INCIDENT_KINDS or ev.metric != "loss":
            continue
        if cnt is None:
            out.append(_Point(i, ev.peak_step, float(ev.peak_step), float(interval)))
            continue
        steps, vals = cnt
        # the peak's batch spans the counter from the previous logged point to the peak
        k = int(np.searchsorted(steps, ev.peak_step, side="right")) - 1
        if k < 0:
            continue
        hi = float(vals[k])
        lo = float(vals[k - 1]) if k > 0 else hi
        per_step = (vals[-1] - vals[0]) / max(1, steps[-1] - steps[0])
        width = max(hi - lo, per_step * interval)
        out.append(_Point(i, ev.peak_step, hi - width / 2, float(width)))
    return out


def _span(points: Sequence[_Point], runs: Sequence[Run], axis: str) -> list[tuple[float, float]]:
    spans: list[tuple[float, float]] = []
    for r in runs:
        if axis == "step":
            st = r.steps
            spans.append((float(st[0]), float(st[-1])) if len(st) else (0.0, 0.0))
        else:
            c = _counter(r, axis)
            spans.append((float(c[1][0]), float(c[1][-1])) if c else (0.0, 0.0))
    return spans


def _chance(a: int, b: int, pts: Sequence[_Point], spans: Sequence[tuple[float, float]],
            tol: float, unit: float) -> float:
    """Expected number of events of runs a and b that fall within `tol` of each other by
    chance, if each run's events were spread uniformly over the span both runs cover."""
    lo = max(spans[a][0], spans[b][0])
    hi = min(spans[a][1], spans[b][1])
    if hi <= lo:
        return float("inf")
    na = sum(1 for p in pts if p.run == a and lo <= p.center <= hi)
    nb = sum(1 for p in pts if p.run == b and lo <= p.center <= hi)
    return na * nb * (2 * tol + unit) / (hi - lo)


def find_recurrences(
    runs: Sequence[Run], events: Sequence[Sequence[Event]]
) -> tuple[Recurrence, ...]:
    """Incidents that happen at the same point of the data stream in two or more runs.

    `events[i]` are the events of `runs[i]`. Members are `(run_key(run), peak step)`, one per
    run, in the order the runs were given; `position` is the first member's position on the
    axis (the step, or the consumed tokens/samples at its peak)."""
    if len(runs) != len(events):
        raise ValueError(f"{len(runs)} runs but {len(events)} event lists")
    if len(runs) < 2:
        return ()
    axis = _axis(runs)
    pts: list[_Point] = []
    for i, (run, evs) in enumerate(zip(runs, events, strict=True)):
        pts.extend(_points(run, i, evs, axis))
    if not pts:
        return ()
    order = sorted(range(len(pts)), key=lambda k: pts[k].center)
    parent = list(range(len(pts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    # link each point to the later points of other runs within one batch of it
    for a_pos, a in enumerate(order):
        pa = pts[a]
        for b in order[a_pos + 1:]:
            pb = pts[b]
            tol = max(pa.tol, pb.tol)
            if pb.center - pa.center > tol:
                break
            if pb.run != pa.run:
                parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for k in range(len(pts)):
        groups.setdefault(find(k), []).append(k)
    spans = _span(pts, runs, axis)
    out: list[Recurrence] = []
    for members in groups.values():
        by_run: dict[int, _Point] = {}
        centre = float(np.median([pts[m].center for m in members]))
        for m in members:
            p = pts[m]
            cur = by_run.get(p.run)
            if cur is None or abs(p.center - centre) < abs(cur.center - centre):
                by_run[p.run] = p
        if len(by_run) < 2:
            continue
        if len(by_run) == 2:
            a, b = sorted(by_run)
            tol = max(by_run[a].tol, by_run[b].tol)
            unit = 1.0 if axis == "step" else 0.0
            if _chance(a, b, pts, spans, tol, unit) > MAX_CHANCE:
                continue
        first = by_run[min(by_run)]
        position = float(first.peak) if axis == "step" else first.center + first.tol / 2
        idx = sorted(by_run)
        out.append(Recurrence(
            axis=axis,
            position=position,
            members=tuple((run_key(runs[i]), by_run[i].peak) for i in idx),
            differ=differences([runs[i] for i in idx], [by_run[i].peak for i in idx]),
        ))
    out.sort(key=lambda r: r.position)
    return tuple(out)


def recurrence_for(
    recurrences: Sequence[Recurrence], run: Run, event: Event
) -> Recurrence | None:
    """The recurrence that holds this event of this run, if any (what `explain` takes)."""
    key = run_key(run)
    for rec in recurrences:
        for src, step in rec.members:
            if src == key and step == event.peak_step:
                return rec
    return None
