"""Grad-norm surges that leave the loss untouched: informational `spike` events on
`grad_norm`.

The grad norm is tested exactly like the loss (log space, trailing median and IQR, the point
and shift tests of `spikes`), because a surge is the same statistical object. A surge that
overlaps a loss incident, or ends at most `lead` steps before one starts, is part of that
incident's story (BLOOM-176B's grad norm climbs five iterations before its loss) and is left
to the cause rules; only the surges the loss never felt are reported. They never change the
verdict. A grad norm that is constant (Megatron prints 0.000 when it is not computed) or
mostly zero carries no information and is skipped with a note; non-finite grad norms are
the non-finite detector's business and are left out here. Grad norms are far more heavy-tailed
and drifting than losses, so a surge must also at least double the baseline (`min_ratio`)
and come back: a grad norm that climbs out of initialisation and stays up is a drift."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from spikelens.detect.spikes import Rise, RiseParams, find_rises

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Surge:
    rise: Rise
    steps: NDArray[np.int64]  # steps of the tested (finite, positive) grad norms
    x: FloatArray  # log grad norm at those steps


def usable(values: FloatArray) -> str | None:
    """None when the grad norm can be analysed, else the reason it cannot."""
    fin = values[np.isfinite(values)]
    if len(fin) < 3:
        return "fewer than 3 finite grad norms"
    if float(np.min(fin)) == float(np.max(fin)):
        return f"grad_norm is constant ({float(fin[0]):g}): not computed by this run"
    if (fin > 0).sum() < 0.5 * len(fin):
        return "grad_norm is mostly zero: not computed by this run"
    return None


def find_surges(values: FloatArray, steps: NDArray[np.int64], p: RiseParams,
                loss_spans: Sequence[tuple[int, int]], lead: int) -> list[Surge]:
    """Surges on the grad norm that stay clear of every loss incident span (steps)."""
    keep = np.isfinite(values) & (values > 0)
    st = steps[keep]
    x = np.log(values[keep])
    out = []
    # one pass: these events are informational, the clipped second pass is not worth it
    for r in find_rises(x, p, 0.0, True, second_pass=False):
        if not r.recovered:
            continue
        s0, s1 = int(st[r.start]), int(st[r.end])
        if any(s0 <= b and a - lead <= s1 for a, b in loss_spans):
            continue
        out.append(Surge(rise=r, steps=st, x=x))
    return out
