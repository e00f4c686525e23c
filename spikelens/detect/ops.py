"""Operations events: what the cluster did, reported beside the loss and never changing the
verdict. A `slowdown` is a sustained rise of the step time (or fall of the TFLOPs): a slow
GPU, a throttled node or a congested link makes every step wait for it. It is tested like the
loss, in log space against a trailing robust baseline (median and IQR/1.349 of the `window`
points before), but only a run of at least `SLOW_POINTS` consecutive logged points that are all at
least `SLOW_RATIO` times the baseline and `SLOW_Z` robust scales above it counts: the one slow
iteration after an evaluation or a checkpoint save is routine. A `hang` is a log that stops
mid-run (its last step before the run's stated `train_iters`, or an error after its last
step) after an evaluation, a checkpoint or an error, with no end-of-training line: it is
reported as "log ends mid-run at step N after <last message>". Both are `Event`s on the
`step_time` metric; docs/causes.md says how the thresholds were measured."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from spikelens.model import Config, Event, LogMessage, Run, Size
from spikelens.readers._ranks import FINAL_KINDS, QUIET_KINDS, message_kind

#: A slowdown lasts at least this many logged points (one slow step is an eval or a save).
SLOW_POINTS = 3
#: ...with every one of them at least this many times the trailing median step time...
SLOW_RATIO = 1.25
#: ...and this many robust scales above it.
SLOW_Z = 6.0
#: Timing jitter floor of the scale (log units): 1% (timers round, clocks drift).
SLOW_FLOOR = math.log(1.01)
#: Logged points skipped at the start of the log and of each segment (compilation, warmup).
WARMUP_POINTS = 10
#: Fewest baseline points for a judgement.
MIN_BASE = 8


def ops_events(run: Run, events: Sequence[Event], config: Config,
               notes: list[str]) -> list[Event]:
    """The slowdowns and the hang of one run (informational events)."""
    out = slowdowns(run, config)
    h = hang(run)
    if h is not None:
        ev, note = h
        out.append(ev)
        notes.append(note)
    return out


def _timing(run: Run) -> tuple[str, NDArray[np.int64], NDArray[np.float64]] | None:
    """(metric, steps, log step time) from the step time, else from 1/TFLOPs."""
    for role, sign in (("step_time", 1.0), ("tflops", -1.0)):
        s = run.series(role)
        if s is None or len(s) == 0:
            continue
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(v) & (v > 0)
        if ok.sum() < MIN_BASE + SLOW_POINTS:
            continue
        steps = s.index.to_numpy().astype(np.int64)[ok]
        return role, steps, sign * np.log(v[ok])
    return None


def slowdowns(run: Run, config: Config) -> list[Event]:
    t = _timing(run)
    if t is None:
        return []
    metric, steps, x = t
    seg = _segments(run, steps)
    cuts = [0, *(np.flatnonzero(np.diff(seg) != 0) + 1).tolist(), len(x)]
    out: list[Event] = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        out += _segment_slowdowns(metric, steps, x, a, b, int(seg[a]), config.window)
    return out


def _segment_slowdowns(metric: str, steps: NDArray[np.int64], x: NDArray[np.float64],
                       a: int, b: int, segment: int, window: int) -> list[Event]:
    """Slowdowns in x[a:b], one segment of the log (a resume may change the pace)."""
    import pandas as pd

    head = a + WARMUP_POINTS // 2  # the baseline leaves the first compiled steps out
    if b - head < MIN_BASE + SLOW_POINTS:
        return []
    xs = pd.Series(x[head:b])
    roll = xs.rolling(window, min_periods=MIN_BASE)
    # the baseline of point i is the window before it (shift 1)
    med = np.full(b - a, np.nan)
    q = np.full(b - a, np.nan)
    off = head - a
    med[off:] = roll.median().shift(1).to_numpy()
    q[off:] = (roll.quantile(0.75) - roll.quantile(0.25)).shift(1).to_numpy() / 1.349
    scale = np.fmax(np.nan_to_num(q, nan=SLOW_FLOOR), SLOW_FLOOR)
    bar = np.maximum(math.log(SLOW_RATIO), SLOW_Z * scale)
    exc = x[a:b] - med
    above = np.zeros(b - a, dtype=bool)
    ok = np.isfinite(exc)
    above[ok] = exc[ok] >= bar[ok]
    above[:WARMUP_POINTS] = False
    out: list[Event] = []
    i = 0
    n = b - a
    while i < n:
        if not above[i] or not above[i:i + SLOW_POINTS].all() or i + SLOW_POINTS > n:
            i += 1
            continue
        m0, s0, bar0 = float(med[i]), float(scale[i]), float(bar[i])
        # the slowdown ends where the time is back inside the band for SLOW_POINTS points
        end = i
        back = 0
        k = i
        while k < n:
            if x[a + k] - m0 < bar0:
                back += 1
                if back >= SLOW_POINTS:
                    break
            else:
                back = 0
                end = k
            k += 1
        recovered = back >= SLOW_POINTS
        span = x[a + i:a + end + 1]
        peak = i + int(np.argmax(span))
        level = float(np.median(span))
        stop = a + (k if recovered else end)
        out.append(Event(
            kind="slowdown", metric=metric, start_step=int(steps[a + i]),
            peak_step=int(steps[a + peak]), end_step=int(steps[stop]),
            recovered=bool(recovered),
            size=Size(z=float((level - m0) / s0), ratio=float(math.exp(level - m0))),
            recovery_steps=int(steps[stop] - steps[a + peak]) if recovered else None,
            segment=segment,
            baseline=float(math.exp(m0)) if metric == "step_time" else float(math.exp(-m0)),
        ))
        i = k + 1
    return out


def _segments(run: Run, steps: NDArray[np.int64]) -> NDArray[np.int64]:
    seg = run.segment_of_step
    if seg is None or len(seg) == 0:
        return np.zeros(len(steps), dtype=np.int64)
    pos = np.clip(np.searchsorted(run.steps, steps), 0, len(seg) - 1)
    return np.asarray(seg[pos], dtype=np.int64)


def hang(run: Run) -> tuple[Event, str] | None:
    """A log that ends mid-run after an eval, a checkpoint or an error: (event, note)."""
    if not run.messages or len(run.steps) == 0:
        return None
    last = int(run.steps[-1])
    tail = [m for m in run.messages if m.step is not None and m.step >= last]
    if not tail or any(message_kind(m) in FINAL_KINDS for m in tail):
        return None
    errors = [m for m in tail if m.level == "error"]
    total = run.params.get("train_iters")
    mid_run = isinstance(total, (int, float)) and last < total
    if errors:
        what: LogMessage = errors[0]
    elif mid_run and message_kind(tail[-1]) in QUIET_KINDS:
        what = tail[-1]
    else:
        return None
    text = what.text if len(what.text) <= 160 else what.text[:157] + "..."
    where = f" of {int(total):,}" if mid_run and isinstance(total, (int, float)) else ""
    rank = f" (rank {what.rank})" if what.rank is not None else ""
    line = f", line {what.line}" if what.line is not None else ""
    note = f"log ends mid-run at step {last}{where} after `{text}`{rank}{line}"
    ev = Event(kind="hang", metric="step_time", start_step=last, peak_step=last, end_step=last,
               recovered=False, size=Size(z=math.inf, ratio=math.inf),
               segment=int(run.segment_of_step[-1]) if run.segment_of_step is not None
               and len(run.segment_of_step) else 0)
    return ev, note
