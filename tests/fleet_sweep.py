"""A synthetic sweep for the fleet tests: N runs (seeds 0..N-1) of a power-law loss with
log-normal noise, consumed tokens logged every step, and "bad batches": steps where every run
that reads them spikes (x2.5, back the next step), as a shard of bad data does to a sweep that
reads its data in one order. One run folder per run, like `sweep/run-07/metrics.jsonl`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOKENS_PER_STEP = 256 * 2048


def curve(seed: int, steps: int, bad: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = np.arange(1, steps + 1)
    loss = (4.0 * s ** -0.15 + 1.5) * np.exp(0.01 * rng.standard_normal(steps))
    for b in bad:
        if 1 <= b <= steps:
            loss[b - 1] *= 2.5
    return s, loss


def jsonl_text(seed: int, steps: int, bad: Sequence[int] = ()) -> str:
    s, loss = curve(seed, steps, bad)
    lines = [json.dumps({"step": int(i), "loss": round(float(v), 5),
                         "lr": 3e-4, "consumed_tokens": int(i) * TOKENS_PER_STEP})
             for i, v in zip(s, loss, strict=True)]
    return "\n".join(lines) + "\n"


def write_sweep(root: Path, n_runs: int, steps: int = 600, bad: Sequence[int] = (),
                bad_runs: Sequence[int] | None = None, compress: str | None = None) -> list[Path]:
    """Write the sweep; `bad` steps spike in the runs listed in `bad_runs` (default all)."""
    paths = []
    for i in range(n_runs):
        hit = bad if bad_runs is None or i in bad_runs else ()
        data = jsonl_text(i, steps, hit).encode()
        d = root / f"run-{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        if compress == "gzip":
            import gzip

            p = d / "metrics.jsonl.gz"
            p.write_bytes(gzip.compress(data, mtime=0))
        else:
            p = d / "metrics.jsonl"
            p.write_bytes(data)
        paths.append(p)
    return paths
