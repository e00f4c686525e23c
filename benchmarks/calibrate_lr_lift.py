"""Where `Config.lr_lift_z` comes from: the lift statistic of `spikelens.detect.lr_lift` on
runs where nothing was done to the LR.

    .venv/bin/python benchmarks/calibrate_lr_lift.py [LABELLED_DIR ...]

Every labelled directory (default: `../shared/bench` and `benchmarks/real_runs/v*`; add the
generated sets of `benchmarks/labelled.py`) holds `labels.json`. On each negative run (no
labelled event: clean, oscillating, benign fp16, clean resume, stalled) the statistic is
taken as if the LR had jumped at every 25th point: the largest 20-point median of the
`window` points after it against the median of the `window` points before, in standard
errors. Its quantiles over all those places, and per scenario, are printed; the bar is the
99.5th percentile over all of them (a run that does not answer its LR jump is reported at
most once in 200 jumps). Negative runs of every kind are kept, cyclic-LR oscillations too:
they only raise the bar. With `--jumps`, the same statistic at every real upward LR jump of
the positive runs, beside their labels."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikelens import read_log  # noqa: E402
from spikelens.detect import _prepare  # noqa: E402
from spikelens.detect.lr_lift import find_lift  # noqa: E402
from spikelens.model import Config  # noqa: E402

EVERY = 25
QUANTILES = (0.95, 0.99, 0.995, 0.999)


def _default_dirs() -> list[Path]:
    shared = REPO.parent / "shared" / "bench"
    return ([shared] if shared.is_dir() else []) + sorted(
        p for p in (REPO / "benchmarks" / "real_runs").glob("v*") if p.is_dir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", type=Path, help="labelled directories (labels.json)")
    ap.add_argument("--jumps", action="store_true", help="also the real jumps of positives")
    args = ap.parse_args(argv)
    config = Config()
    window = config.window
    null: dict[str, list[float]] = defaultdict(list)
    at_jumps: list[tuple[str, int, float, float]] = []
    dirs = args.dirs or _default_dirs()
    for d in dirs:
        labels = json.loads((d / "labels.json").read_text())
        for rid, lab in labels.items():
            run = read_log(d / lab["file"])
            series = run.series("loss")
            if series is None or len(series) == 0:
                continue
            loss = _prepare(run, series, config, [])
            if not loss.is_log:
                continue
            x, n = loss.x, len(loss.x)
            if not lab["events"]:
                for p in range(window, n - window, EVERY):
                    lift = find_lift(x, p, p + window, window)
                    if lift is not None:
                        null[lab["scenario"]].append(lift.z)
            elif args.jumps:
                for j in loss.lr_jumps.tolist():
                    lift = find_lift(x, j, min(n, j + window), window)
                    if lift is not None:
                        at_jumps.append((f"{d.name}/{rid}", int(loss.fin_steps[j]),
                                         float(np.exp(lift.lift)), lift.z))
    every = np.array([z for zs in null.values() for z in zs])
    if not len(every):
        print("no negative runs found", file=sys.stderr)
        return 1
    print(f"{len(every)} places on the negative runs of {len(dirs)} labelled set(s)")
    print("quantiles of z: " + ", ".join(f"{q:g}: {np.quantile(every, q):.2f}"
                                           for q in QUANTILES))
    print(f"bar (99.5th percentile): {np.quantile(every, 0.995):.2f}")
    print()
    print(f"{'scenario':28s} {'places':>7s} " + " ".join(f"{'q' + format(q, 'g'):>8s}"
                                                          for q in QUANTILES))
    for name, zs in sorted(null.items()):
        a = np.array(zs)
        print(f"{name:28s} {len(a):7d} " + " ".join(f"{np.quantile(a, q):8.2f}"
                                                    for q in QUANTILES))
    if at_jumps:
        print()
        print("real upward LR jumps of the positive runs: run, step, lift ratio, z")
        for name, step, ratio, z in sorted(at_jumps, key=lambda t: t[3]):
            print(f"  {name:36s} {step:6d}  x{ratio:.3f}  z {z:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
