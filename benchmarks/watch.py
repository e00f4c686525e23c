"""Benchmark: the CPU cost of `spikelens watch` on a 1M-step log that keeps growing by 10 lines
a second (target: under 5 % of one core, issue 13). A 1M-step JSONL log is written once into
a cache directory; `spikelens watch` is started on it (default `--interval`, 2 s) in its own
process, a writer appends 10 lines a second, and the watcher's CPU time (user + system, from
/proc/PID/stat) is sampled. The start-up (reading and analysing the million lines already
there, once) is reported apart; the steady state is measured over `--seconds` after it."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_log(path: Path, steps: int) -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.02, steps)
    with path.open("w") as fh:
        for s in range(steps):
            loss = 2.0 + 8.0 * math.exp(-s / 20000) + noise[s]
            fh.write(json.dumps({"step": s, "loss": round(loss, 5), "lr": 3e-4,
                                 "grad_norm": round(0.5 + abs(noise[s]) * 10, 4)}) + "\n")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=10.0, help="lines appended per second")
    ap.add_argument("--seconds", type=float, default=60.0, help="steady-state window")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/spikelens-bench"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    base = args.cache / f"watch-{args.steps}.jsonl"
    if not base.exists():
        write_log(base, args.steps)
    log = args.cache / "watch-live.jsonl"
    log.write_bytes(base.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "spikelens", "watch", str(log),
                             "--interval", str(args.interval)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "rows already written" in line:
                ready.set()

    threading.Thread(target=read_err, daemon=True).start()
    stop = threading.Event()

    def writer() -> None:
        s = args.steps
        with log.open("a") as fh:
            while not stop.is_set():
                fh.write(json.dumps({"step": s, "loss": 2.0, "lr": 3e-4, "grad_norm": 0.5})
                         + "\n")
                fh.flush()
                s += 1
                time.sleep(1 / args.rate)

    threading.Thread(target=writer, daemon=True).start()
    # start-up is over when the watcher says it has read and analysed the existing log
    if not ready.wait(timeout=600):
        raise SystemExit("the watcher did not finish reading the existing log in 600 s")
    startup_wall, startup_cpu = time.monotonic() - t0, cpu_seconds(proc.pid)
    time.sleep(args.interval)  # the writer's first lines are in
    c0, w0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(args.seconds)
    c1, w1 = cpu_seconds(proc.pid), time.monotonic()
    stop.set()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    share = 100 * (c1 - c0) / (w1 - w0)
    print(f"start-up (read and analyse {args.steps} existing steps): {startup_cpu:.1f} s CPU, "
          f"{startup_wall:.1f} s wall")
    print(f"steady state, {args.rate:g} lines/s, --interval {args.interval:g}: "
          f"{share:.2f} % of one core over {w1 - w0:.0f} s (target < 5 %)")


if __name__ == "__main__":
    main()
