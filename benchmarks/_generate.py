"""Input generators for the speed benchmark (`benchmarks/speed.py`). One seeded synthetic run
of N steps x 8 metrics (a power-law loss curve with log-normal noise, a few spikes that decay
back, a few fp16 overflows that leave NaN/inf and halve the loss scale, a warmup + cosine LR,
grad norm, loss scale, consumed tokens and samples, step time and throughput) is written
three ways: a CSV like a pandas/csv-module logger writes it, a JSONL file like `json.dumps`
writes it (with a few torn and garbage lines), and a TensorBoard event file laid out exactly as
PyTorch's `SummaryWriter.add_scalar` writes it (one Event per scalar), with spikelens's
vectorised `write_scalar_events`. Everything is vectorised with numpy, so 1M steps take
seconds rather than the minutes that 8M protobuf calls would. Files are cached under a
directory named by the generator version and the parameters, and are written to a temporary
name first so that an interrupted run never leaves a half file in the cache."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Bump when the content of any generated file changes, so stale caches are not reused.
GEN_VERSION = 3

#: Metric names per format: each format gets the names its usual writers use. The JSONL keys
#: are the long Megatron/W&B-style ones, which also brings the file to the issue's ~360 MB.
CSV_COLUMNS = (
    "train/loss", "train/learning_rate", "train/grad_norm", "train/loss_scale",
    "train/consumed_tokens", "train/consumed_samples", "train/step_time",
    "throughput/tokens_per_second",
)
JSONL_KEYS = (
    "train/loss", "train/learning_rate", "train/grad_norm", "train/loss_scale",
    "train/consumed_tokens", "train/consumed_samples",
    "train/elapsed_time_per_iteration_ms", "throughput/tokens_per_second",
)
TB_TAGS = (
    "train/loss", "train/lr", "train/grad_norm", "train/loss_scale", "train/tokens",
    "train/samples", "train/step_time", "train/tokens_per_sec",
)

TOKENS_PER_STEP = 4 * 1024 * 1024  # 1024 sequences of 4096 tokens
SAMPLES_PER_STEP = 1024
N_MALFORMED = 5


@dataclass(frozen=True)
class Curves:
    """One synthetic run; every array has one entry per step. The incident lists are the
    ground truth, kept so that a reader of the benchmark can check what a detector found."""

    steps: np.ndarray  # int64, 1..N
    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    loss_scale: np.ndarray
    tokens: np.ndarray  # float64 holding integers
    samples: np.ndarray
    step_time: np.ndarray  # seconds
    tokens_per_sec: np.ndarray
    wall_time: np.ndarray  # Unix seconds at the end of each step
    spike_steps: tuple[int, ...]
    overflow_steps: tuple[int, ...]

    def columns(self) -> tuple[np.ndarray, ...]:
        """The 8 metrics in the order of `CSV_COLUMNS` / `JSONL_KEYS` / `TB_TAGS`."""
        return (self.loss, self.lr, self.grad_norm, self.loss_scale, self.tokens,
                self.samples, self.step_time, self.tokens_per_sec)


def make_curves(n_steps: int, seed: int = 0) -> Curves:
    """A plausible pre-training run of `n_steps` steps."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n_steps + 1, dtype=np.int64)
    t = steps.astype(np.float64)
    # power-law descent to an irreducible loss, with multiplicative (log-space) noise
    loss = 1.8 + 9.0 * (1.0 + t / 200.0) ** -0.45
    loss *= np.exp(rng.normal(0.0, 0.015, n_steps))
    # spikes: a sudden jump that decays back to the baseline over a few hundred steps
    n_spikes = max(1, min(6, n_steps // 20_000))
    spike_steps = np.sort(rng.choice(np.arange(n_steps // 10, n_steps - 1000),
                                     size=n_spikes, replace=False)) if n_steps > 2000 else \
        np.array([n_steps // 2])
    grad_norm = 0.25 + 2.0 * (1.0 + t / 500.0) ** -0.6
    grad_norm *= np.exp(rng.normal(0.0, 0.12, n_steps))
    for s in spike_steps:
        height = rng.uniform(0.6, 2.5)
        decay = rng.uniform(30.0, 400.0)
        span = np.arange(s, min(n_steps, s + int(decay * 8)))
        loss[span] *= 1.0 + height * np.exp(-(span - s) / decay)
        # the grad norm surges a few steps before the loss does
        gspan = np.arange(max(0, s - 5), min(n_steps, s + 50))
        grad_norm[gspan] *= 1.0 + 6.0 * np.exp(-np.abs(gspan - s) / 10.0)
    # LR: linear warmup, then cosine down to 10% of the peak
    warmup = max(1, min(2000, n_steps // 50))
    peak = 3e-4
    lr = np.where(
        t <= warmup,
        peak * t / warmup,
        0.1 * peak + 0.45 * peak * (1.0 + np.cos(np.pi * np.clip((t - warmup) /
                                                                  max(1, n_steps - warmup),
                                                                  0.0, 1.0))),
    )
    # fp16 dynamic loss scaling: overflows (inf grad norm, NaN loss) halve the scale, every
    # 2000 clean steps double it, capped at 2**24
    n_over = max(1, min(8, n_steps // 100_000 + 2))
    overflow_steps = np.sort(rng.choice(np.arange(10, n_steps), size=n_over, replace=False))
    scale = np.empty(n_steps)
    cur, clean = 65536.0, 0
    over_set = set(int(x) for x in overflow_steps)
    # the scale only changes at overflows and every 2000 clean steps: walk those events, not
    # every step, so this stays cheap at 1M steps
    i = 0
    while i < n_steps:
        nxt_over = min((o for o in over_set if o >= i), default=n_steps)
        nxt_grow = i + (2000 - clean)
        j = min(nxt_over, nxt_grow, n_steps)
        scale[i:j] = cur
        clean += j - i
        if j == n_steps:
            break
        if j == nxt_over:
            scale[j] = cur
            cur = max(1.0, cur / 2.0)
            clean = 0
            i = j + 1
        else:
            cur = min(2.0 ** 24, cur * 2.0)
            clean = 0
            i = j
    loss[overflow_steps] = np.nan
    grad_norm[overflow_steps] = np.inf
    tokens = t * TOKENS_PER_STEP
    samples = t * SAMPLES_PER_STEP
    step_time = 0.45 * np.exp(rng.normal(0.0, 0.04, n_steps))
    slow = rng.random(n_steps) < 0.001  # checkpoint saves, data-loader stalls
    step_time[slow] *= rng.uniform(3.0, 20.0, int(slow.sum()))
    tokens_per_sec = TOKENS_PER_STEP / step_time
    wall_time = 1_700_000_000.0 + np.cumsum(step_time)
    return Curves(
        steps=steps, loss=loss, lr=lr, grad_norm=grad_norm, loss_scale=scale, tokens=tokens,
        samples=samples, step_time=step_time, tokens_per_sec=tokens_per_sec,
        wall_time=wall_time, spike_steps=tuple(int(s) + 1 for s in spike_steps),
        overflow_steps=tuple(int(s) + 1 for s in overflow_steps),
    )


# -- text formats -------------------------------------------------------------------------

_CHUNK = 100_000


def _reprs(values: np.ndarray, integral: bool, nonfinite: dict[str, str]) -> list[str]:
    """Shortest round-trip text of each value (Python's `repr`), as a float logger writes it;
    integral columns (tokens, samples) as integers, as loggers keep Python ints."""
    if integral:
        return [str(v) for v in values.astype(np.int64).tolist()]
    out = [repr(v) for v in values.tolist()]
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        out[i] = nonfinite[repr(float(values[i]))]
    return out


_INTEGRAL = (False, False, False, False, True, True, False, False)


def write_csv(path: Path, curves: Curves) -> None:
    """Header plus one row per step, as `numpy.savetxt(path, table, delimiter=",",
    fmt=["%d"] + ["%.18e"] * 8, header=..., comments="")` writes it: the step as an integer,
    every metric in numpy's default full-precision exponent form (`nan`/`inf` for non-finite
    values). Of the common ways to dump a float table this is the one that lands on the
    issue's ~200 MB for 1M x 8 (shortest-repr floats, as pandas writes them, give ~140 MB)."""
    template = "%d" + ",%.18e" * len(CSV_COLUMNS)
    table = np.stack(curves.columns(), axis=1)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("step," + ",".join(CSV_COLUMNS) + "\n")
        for lo in range(0, len(curves.steps), _CHUNK):
            hi = min(lo + _CHUNK, len(curves.steps))
            rows = zip(curves.steps[lo:hi].tolist(), *table[lo:hi].T.tolist(), strict=True)
            fh.write("\n".join(template % row for row in rows))
            fh.write("\n")


def _jsonl_lines(curves: Curves, lo: int, hi: int) -> list[str]:
    # `json.dumps` spells non-finite floats NaN / Infinity / -Infinity
    nonfinite = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
    # the step time goes out in milliseconds under the Megatron name
    cols = list(curves.columns())
    cols[6] = cols[6] * 1000.0
    template = "{" + ", ".join(['"step": %s'] + [f'"{k}": %s' for k in JSONL_KEYS]) + "}"
    parts = [[str(s) for s in curves.steps[lo:hi].tolist()]]
    parts += [_reprs(c[lo:hi], integral, nonfinite)
              for c, integral in zip(cols, _INTEGRAL, strict=True)]
    return [template % row for row in zip(*parts, strict=True)]


#: What lands in a JSONL log besides records: a record torn by a crash (the job was resumed
#: and appending went on), and a traceback printed to the same stream.
_GARBAGE = (
    "Traceback (most recent call last):",
    '  File "/workspace/train.py", line 412, in <module>',
    "RuntimeError: NCCL communicator was aborted on rank 3.",
)


def malformed_positions(n_steps: int, seed: int, count: int = N_MALFORMED) -> list[int]:
    """0-based record indices before which the malformed lines go (past the first 1000
    records, so that format sniffing sees a clean head as it would in a real log)."""
    rng = np.random.default_rng(seed + 1)
    lo = min(1000, n_steps // 2)
    picks = rng.choice(np.arange(lo, n_steps), size=min(count, n_steps - lo), replace=False)
    return sorted(int(p) for p in picks)


def write_jsonl(path: Path, curves: Curves, seed: int = 0) -> list[int]:
    """One `json.dumps` record per step plus `N_MALFORMED` malformed lines; returns their
    1-based line numbers. Malformed lines are added (no record is lost), alternating a torn
    copy of the next record with a line of a traceback."""
    rng = np.random.default_rng(seed + 2)
    positions = malformed_positions(len(curves.steps), seed)
    bad_lines: list[int] = []
    line_no = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for lo in range(0, len(curves.steps), _CHUNK):
            hi = min(lo + _CHUNK, len(curves.steps))
            lines = _jsonl_lines(curves, lo, hi)
            out: list[str] = []
            here = [p for p in positions if lo <= p < hi]
            prev = lo
            for p in here:
                out.extend(lines[prev - lo:p - lo])
                line_no += p - prev
                rec = lines[p - lo]
                g = positions.index(p)
                if g % 2 == 0:
                    bad = rec[: int(rng.integers(10, len(rec) - 10))]
                else:
                    bad = _GARBAGE[(g // 2) % len(_GARBAGE)]
                out.append(bad)
                line_no += 1
                bad_lines.append(line_no)
                prev = p
            out.extend(lines[prev - lo:])
            line_no += hi - prev
            fh.write("\n".join(out))
            fh.write("\n")
    return bad_lines


# -- TensorBoard --------------------------------------------------------------------------

_TB_CHUNK = 125_000  # steps per write_scalar_events call: 1M events, ~0.3 GB of working set


def write_tensorboard(path: Path, curves: Curves, tags: Sequence[str] = TB_TAGS) -> None:
    """8 scalar Events per step in PyTorch `SummaryWriter.add_scalar` layout (`simple_value`),
    after one `file_version` event, written by spikelens's own vectorised
    `write_scalar_events` (its bytes are identical to tensorboard's protobuf classes plus
    `RecordWriter` for the same events). The 8 events of a step share one wall time.

    It builds its whole output in memory, so the steps go through it in chunks whose bytes
    are appended: records are self-delimiting, and only the first chunk writes the
    file-version event."""
    from spikelens.readers._tfrecord import write_scalar_events

    cols = curves.columns()
    with open(path, "wb") as fh:
        for lo in range(0, len(curves.steps), _TB_CHUNK):
            hi = min(lo + _TB_CHUNK, len(curves.steps))
            chunk = {"step": curves.steps[lo:hi], "wall_time": curves.wall_time[lo:hi]}
            chunk.update({t: c[lo:hi] for t, c in zip(tags, cols, strict=False)})
            part = path.with_name(path.name + ".part")
            try:
                write_scalar_events(part, pd.DataFrame(chunk), layout="simple_value",
                                    file_version=lo == 0,
                                    start_time=float(curves.wall_time[0]) - 1.0)
                fh.write(part.read_bytes())
            finally:
                part.unlink(missing_ok=True)


# -- the cache ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """Paths of one cached input set, plus what the files should read back as."""

    directory: Path
    n_steps: int
    csv: Path
    jsonl: Path
    tensorboard: Path
    jsonl_bad_lines: tuple[int, ...]


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    if path.exists():
        return
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def input_dir(data_dir: Path, n_steps: int, seed: int) -> Path:
    return data_dir / f"v{GEN_VERSION}-steps{n_steps}-seed{seed}"


def ensure_inputs(data_dir: Path, n_steps: int = 1_000_000, seed: int = 0,
                  kinds: Sequence[str] = ("csv", "jsonl", "tensorboard"),
                  log: Callable[[str], None] | None = None) -> Inputs:
    """Generate (once) and return the inputs for `n_steps` steps."""
    d = input_dir(data_dir, n_steps, seed)
    (d / "tb").mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": d / "train.csv",
        "jsonl": d / "train.jsonl",
        # the TensorBoard reader may sniff by name: use the name SummaryWriter gives
        "tensorboard": d / "tb" / "events.out.tfevents.1700000000.benchhost.4242.0",
    }
    missing = [k for k in kinds if not paths[k].exists()]
    if missing:
        t0 = time.perf_counter()
        curves = make_curves(n_steps, seed)
        if "csv" in missing:
            _atomic(paths["csv"], lambda p: write_csv(p, curves))
        if "jsonl" in missing:
            _atomic(paths["jsonl"], lambda p: write_jsonl(p, curves, seed))
        if "tensorboard" in missing:
            _atomic(paths["tensorboard"], lambda p: write_tensorboard(p, curves))
        if log is not None:
            log(f"generated {', '.join(missing)} for {n_steps} steps in {d} "
                f"({time.perf_counter() - t0:.1f} s)")
    bad = _bad_lines(n_steps, seed)
    return Inputs(directory=d, n_steps=n_steps, csv=paths["csv"], jsonl=paths["jsonl"],
                  tensorboard=paths["tensorboard"], jsonl_bad_lines=tuple(bad))


def _bad_lines(n_steps: int, seed: int) -> list[int]:
    # the 1-based line of the k-th malformed line: every earlier record and malformed line,
    # plus one; recomputed from the positions so a cached file needs no side file
    return [p + k + 1 for k, p in enumerate(malformed_positions(n_steps, seed))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate the speed benchmark's inputs.")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "_data")
    args = ap.parse_args(argv)
    inp = ensure_inputs(args.data, args.steps, args.seed, log=print)
    for p in (inp.csv, inp.jsonl, inp.tensorboard):
        print(f"{p}  {p.stat().st_size / 1e6:.1f} MB")
    print(f"malformed JSONL lines: {', '.join(map(str, inp.jsonl_bad_lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
