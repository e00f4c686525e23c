"""Overfitting (informational): the eval loss rises for a sustained stretch while the train
loss keeps falling.

The mechanism is the gap between the two curves opening: the model fits its training data
better and generalises worse. The eval loss reaches its minimum at some evaluation; it is an
overfitting event when, from there to the end of the log, at least `overfit_points`
evaluations follow, every one of them above that minimum (sustained, it never comes back),
the median of the last `overfit_points` is at least `OVERFIT_RATIO` (2 %) above it (an eval
loss is an average over a whole eval set: its noise is far below that), and over the same
stretch the train loss fell (the median of its last third below its median over the
baseline window before the eval minimum). The event is on `eval_loss` and never changes the
verdict."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Smallest rise of the eval loss over its minimum that counts.
OVERFIT_RATIO = 1.02


@dataclass(frozen=True)
class Overfit:
    start: int  # step of the eval minimum
    peak: int  # step of the highest eval loss after it
    end: int  # last eval step
    eval_min: float
    eval_last: float  # median of the last evaluations
    train_before: float
    train_after: float


def find_overfit(eval_steps: NDArray[np.int64], eval_vals: NDArray[np.float64],
                 train_steps: NDArray[np.int64], train_vals: NDArray[np.float64],
                 min_points: int, window: int) -> Overfit | None:
    ok = np.isfinite(eval_vals)
    es, ev = eval_steps[ok], eval_vals[ok]
    tok = np.isfinite(train_vals)
    ts, tv = train_steps[tok], train_vals[tok]
    # no floor on the train points beyond the three either side of the eval minimum that
    # the fall is judged on (below): a short fine-tune logged every few steps has a dozen
    if len(ev) < min_points + 2 or len(tv) < 6:
        return None
    i = int(np.argmin(ev))
    after = ev[i + 1:]
    if len(after) < min_points or not np.all(after > ev[i]):
        return None
    last = float(np.median(after[-min_points:]))
    if not last >= OVERFIT_RATIO * ev[i]:
        return None
    before = tv[(ts <= es[i])][-window:]
    stretch = tv[(ts > es[i])]
    if len(before) < 3 or len(stretch) < 3:
        return None
    tail = stretch[-max(3, len(stretch) // 3):]
    tb, ta = float(np.median(before)), float(np.median(tail))
    if not ta < tb:
        return None
    peak = i + 1 + int(np.argmax(after))
    return Overfit(start=int(es[i]), peak=int(es[peak]), end=int(es[-1]),
                   eval_min=float(ev[i]), eval_last=last, train_before=tb, train_after=ta)
