"""One-point outliers that coincide across runs. Runs that read the same data in the same
order (a sweep, a re-run with another optimizer) see the same bad batch at the same step. In
one run such a batch can look like noise: on modded-nanogpt's per-microbatch loss the
replicated outliers sit at robust z 8-9, below the single-run bar of 10 that the noise of
other logs demands. Across runs the coincidence itself is the evidence, and it can be
measured.

For each run, each step's point z (`rise_statistics`) is ranked within that run: the chance
that the run puts an outlier at least that large within `tolerance` logged steps of a given
step is q = (2 * tolerance + 1) * rank / n. For a step where k of the N runs that cover it
have such outliers, the expected number of coincidences at least this strong that chance
alone would produce anywhere in the log is

    E = n_steps * C(N, k) * prod(q_i)

(a Bonferroni bound over the steps and over the choice of runs). Where E < `alpha`, the step
is a recurrent outlier: each run that took part gets its point bar lowered to `min_z` there,
and the detector then builds the event as it would any other."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class PointZ:
    """One run's point-test z at each of its logged steps (NaN where the test does not apply:
    a fall, a rise under the ratio bar, or too short a baseline)."""

    steps: NDArray[np.int64]
    z: NDArray[np.float64]
    interval: int


@dataclass(frozen=True)
class Candidates:
    """What `find_coincidences` needs of one run, without its whole series (so a fleet's
    runs can be analysed apart and aligned where the results come back): the steps and z of
    its outliers at or above `min_z`, the sorted z of the same (the rank of an outlier only
    counts points at least as large), how many points were tested, the logged step range
    and how many steps were logged."""

    steps: NDArray[np.int64]
    z: NDArray[np.float64]
    n_points: int
    first: int | None
    last: int | None
    n_steps: int
    interval: int


def candidates(run: PointZ | Candidates, min_z: float) -> Candidates:
    """A run's compact candidates (`run` itself if it is compact already)."""
    if isinstance(run, Candidates):
        return run
    keep = np.nan_to_num(run.z, nan=-np.inf) >= min_z
    n = len(run.steps)
    return Candidates(steps=run.steps[keep].astype(np.int64), z=run.z[keep].astype(np.float64),
                      n_points=len(run.z), first=int(run.steps[0]) if n else None,
                      last=int(run.steps[-1]) if n else None, n_steps=n,
                      interval=run.interval)


@dataclass(frozen=True)
class Coincidence:
    step: int  # the step of the first run that took part
    members: tuple[tuple[int, int], ...]  # (run index, that run's step)
    expected: float  # E, the chance expectation of a coincidence this strong


def _tails(c: Candidates) -> tuple[NDArray[np.float64], int]:
    """Sorted z values of a run's outliers, for ranking, and how many points there are."""
    ok = c.z[np.isfinite(c.z)]
    return np.sort(ok), c.n_points


def find_coincidences(
    points: Sequence[PointZ | Candidates], min_z: float, alpha: float, tolerance: int
) -> list[Coincidence]:
    """Steps where one-point outliers of several runs coincide beyond chance. Each run is
    given whole (`PointZ`) or compact (`Candidates` at the same `min_z`)."""
    if len(points) < 2:
        return []
    runs = [candidates(r, min_z) for r in points]
    tails = [_tails(r) for r in runs]
    # candidates: every outlier of every run at or above min_z, keyed by step
    cand: dict[int, list[tuple[int, int, float]]] = {}
    for i, r in enumerate(runs):
        for pos in np.flatnonzero(np.nan_to_num(r.z, nan=-np.inf) >= min_z):
            cand.setdefault(int(r.steps[pos]), []).append((i, int(r.steps[pos]), float(r.z[pos])))
    if not cand:
        return []
    keys = np.array(sorted(cand), dtype=np.int64)
    firsts = np.sort(np.array([r.first for r in runs if r.first is not None and r.last is not None],
                              dtype=np.int64))
    lasts = np.sort(np.array([r.last for r in runs if r.first is not None and r.last is not None],
                             dtype=np.int64))
    out: list[Coincidence] = []
    used: set[tuple[int, int]] = set()
    for step in keys.tolist():
        # each run's strongest outlier within the tolerance window of this step
        best: dict[int, tuple[int, float]] = {}
        for s in range(step - tolerance * _tol_unit(runs), step + tolerance * _tol_unit(runs) + 1):
            for i, st, z in cand.get(s, ()):
                if (i, st) not in used and (i not in best or z > best[i][1]):
                    best[i] = (st, z)
        if len(best) < 2:
            continue
        # runs whose logged range covers the step: first <= step minus last < step (a
        # subset of the former), by bisection, so a fleet of 100,000 runs stays cheap
        covering = int(np.searchsorted(firsts, step, side="right")
                       - np.searchsorted(lasts, step, side="left"))
        n_runs = max(covering, len(best))
        n_steps = max(runs[i].n_steps for i in best)
        log_e = math.log(n_steps) + math.log(math.comb(n_runs, len(best)))
        for i, (_, z) in best.items():
            sorted_z, n = tails[i]
            rank = len(sorted_z) - int(np.searchsorted(sorted_z, z, side="left"))
            q = min(1.0, (2 * tolerance + 1) * max(rank, 1) / max(n, 1))
            log_e += math.log(q)
        expected = math.exp(log_e)
        if expected < alpha:
            members = tuple(sorted((i, st) for i, (st, _) in best.items()))
            used.update(members)
            out.append(Coincidence(step=members[0][1], members=members, expected=expected))
    return out


def _tol_unit(runs: Sequence[Candidates]) -> int:
    # the tolerance is counted in logged steps; runs analysed together share an interval
    return max(1, min(r.interval for r in runs))
