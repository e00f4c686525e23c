"""Short logs: false incidents and one-point spikes found, on logs of 22-100 points.

    python benchmarks/short_logs.py [--cache DIR] [--n 1500] [--seed 20261204]

A labelled set of its own: half the logs are clean (the bench generator's power-law descent
and mini-batch noise, `labelled._base`, with a batch of 2-256, logged every 1, 5 or 10
steps as the mean since the last print, printed to 2-6 decimals), half carry one bad batch
at a random step past the 10th point: a one-step rise of x1.5, x2 or x3, which a print every
k steps shows as 1 + (r - 1) / k. Written once, seeded, under the cache folder; then read and
analysed with the spikelens on the path. Prints false incidents on the clean logs, extra
incidents on the spiked ones, and the spikes found by ratio and print interval
(docs/detection.md, "Short logs")."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import labelled  # noqa: E402


def generate(out: Path, n_logs: int, seed: int) -> list[dict[str, object]]:
    meta_path = out / "meta.json"
    if meta_path.exists():
        meta: list[dict[str, object]] = json.loads(meta_path.read_text())
        if len(meta) == n_logs:
            return meta
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = []
    for i in range(n_logs):
        n = int(rng.integers(22, 101))
        every = int(rng.choice([1, 1, 5, 10]))
        batch = int(rng.choice([2, 4, 8, 16, 32, 64, 256]))
        full, _, _ = labelled._base(rng, n * every, batch=batch)
        loss = full.reshape(n, every).mean(axis=1)  # the mean since the last print
        dec = int(rng.choice([2, 3, 4, 6]))
        ratio: float | None = None
        pos: int | None = None
        if i % 2 == 1:
            ratio = float(rng.choice([1.5, 2.0, 3.0]))
            pos = int(rng.integers(10, n))
            loss[pos] *= 1 + (ratio - 1) / every
        steps = np.arange(1, n + 1) * every
        path = out / f"r{i:04d}.csv"
        path.write_text("step,loss\n" + "".join(
            f"{s},{v:.{dec}f}\n" for s, v in zip(steps, loss, strict=True)))
        meta.append({"path": str(path), "ratio": ratio, "n": n, "every": every,
                     "batch": batch, "step": int(steps[pos]) if pos is not None else None})
    meta_path.write_text(json.dumps(meta))
    return meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path,
                    default=Path(__file__).resolve().parent / "_data" / "short_logs")
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=20261204)
    args = ap.parse_args()
    meta = generate(args.cache, args.n, args.seed)

    from spikelens import read_log
    from spikelens.detect import detect
    from spikelens.model import INCIDENT_KINDS, Config

    cfg = Config()
    clean = false = extra = 0
    found: dict[tuple[float, int], list[int]] = {}
    for m in meta:
        run = read_log(str(m["path"]))
        inc = [e for e in detect(run, cfg).events
               if e.metric == "loss" and e.kind in INCIDENT_KINDS]
        if m["ratio"] is None:
            clean += 1
            false += bool(inc)
            continue
        step = int(m["step"])  # type: ignore[arg-type]
        hit = [e for e in inc if e.start_step <= step <= e.end_step]
        extra += len(inc) - len(hit)
        cell = found.setdefault((float(m["ratio"]), int(m["every"])), [0, 0])  # type: ignore[arg-type]
        cell[0] += bool(hit)
        cell[1] += 1
    print(f"clean logs with a false incident: {false}/{clean}; "
          f"incidents elsewhere on the spiked logs: {extra}")
    print("\n| one-step rise | printed every 1 | every 5 | every 10 |\n|---|---|---|---|")
    for r in sorted({k[0] for k in found}):
        cells = [found.get((r, k), [0, 0]) for k in (1, 5, 10)]
        print(f"| x{r:g} | " + " | ".join(f"{a}/{b}" for a, b in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
