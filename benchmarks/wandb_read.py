"""Benchmark: read a 1M-step W&B transaction log (`.wandb`) of 8 metrics, the target being at
most 3 s (issue 13). The log is written once, record by record in wandb-core's layout
(`nested_key` history items, one `_step` item, values as JSON text, a summary record after
each history record), into a cache directory,
then read `--repeat` times through `spikelens.read_log`; the median wall time is printed."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from spikelens import read_log
from spikelens.readers.wandb_run import LogWriter, history_record, run_record, summary_record

METRICS = ("train/loss", "train/learning_rate", "train/grad_norm", "train/loss_scale",
           "train/tokens_per_sec", "train/epoch", "train/z_loss", "eval/loss")


def write(path: Path, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.02, steps)
    w = LogWriter(path)
    w.write(run_record(1, "bench01", "bench-1m", {"max_grad_norm": 1.0, "learning_rate": 3e-4,
                                                  "bf16": True}), flush=False)
    for s in range(steps):
        loss = 2.0 + 8.0 * math.exp(-s / 20000) + float(noise[s])
        vals = {"train/loss": loss, "train/learning_rate": 3e-4 * min(1.0, s / 2000 + 1e-3),
                "train/grad_norm": 0.5 + abs(float(noise[s])) * 10,
                "train/loss_scale": 65536.0, "train/tokens_per_sec": 123456.7 + s % 97,
                "train/epoch": s / 10000, "train/z_loss": 1e-4 * loss,
                "eval/loss": loss + 0.05}
        w.write(history_record(2 * s + 2, s, vals), flush=False)
        # wandb-core follows each history row with a summary update of the same values
        w.write(summary_record(2 * s + 3, {**vals, "_step": s}), flush=False)
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/spikelens-bench"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    path = args.cache / f"run-{args.steps}.wandb"
    if not path.exists():
        t = time.perf_counter()
        write(path, args.steps)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t:.0f} s")
    times, cpus = [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        run = read_log(path)
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        assert len(run.steps) == args.steps and len(run.frame.columns) == len(METRICS)
    load = os.getloadavg()[0]
    print(f"read {args.steps} steps x {len(METRICS)} metrics ({path.stat().st_size / 1e6:.0f} "
          f"MB): median {statistics.median(times):.2f} s wall (runs: "
          f"{', '.join(f'{x:.2f}' for x in times)}), median {statistics.median(cpus):.2f} s "
          f"CPU; load average {load:.1f} on {os.cpu_count()} cores; target <= 3 s")


if __name__ == "__main__":
    main()
