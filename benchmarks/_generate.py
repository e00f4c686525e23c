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


# -- real-shaped inputs (issue 10) ---------------------------------------------------------
#
# The logs issue 10 measures: what a hand-rolled logger writes with `csv.DictWriter` or
# `json.dumps` per step. 14 columns (step, epoch, 8 metrics, wall time, accuracy, a val_loss
# every 1000 steps and two text columns `phase` and `run`), single-step loss spikes x3-10,
# 200 NaN losses, +-inf grad norms, 10 traceback lines, a short row (CSV) or a torn object
# and a blank line (JSONL) mid-file, and a torn last line. The shape follows
# `shared/perf/gen_text.py`, vectorised and seeded here so that anyone can regenerate it.

WIDE_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_sec",
               "samples_per_sec", "loss_scale", "mem_gb", "time", "accuracy", "val_loss",
               "phase", "run")
#: The 8 tags of the TensorBoard version (one event per tag per step).
WIDE_TB_TAGS = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                "train/samples_per_sec", "train/loss_scale", "train/mem_gb",
                "train/accuracy")
WIDE_GARBAGE = "Traceback (most recent call last): RuntimeError: CUDA error: out of memory"
N_WIDE_GARBAGE = 10
N_WIDE_NAN = 200


@dataclass(frozen=True)
class WideRun:
    """One real-shaped run: numeric columns (val_loss NaN where not logged), ground truth."""

    n_steps: int
    cols: dict[str, np.ndarray]
    spike_steps: tuple[int, ...]
    nan_steps: tuple[int, ...]
    garbage_after: tuple[int, ...]  # 0-based rows after which a traceback line is written
    dirty: bool = True  # also a short row / torn object at 30% and a torn last line


def make_wide(n_steps: int, n_spikes: int = 50, seed: int = 42,
              n_nan: int = N_WIDE_NAN, dirty: bool = True) -> WideRun:
    rng = np.random.default_rng(seed)
    s = np.arange(n_steps, dtype=np.int64)
    t = s.astype(np.float64)
    loss = (2.5 * np.exp(-t / (0.2 * n_steps)) + 0.5) * (1 + 0.05 * rng.standard_normal(n_steps))
    # spikes away from the first 1% (the warm-up descent) and from each other
    lo = max(1, n_steps // 100)
    pool = np.arange(lo, n_steps - 10)
    k = min(n_spikes, len(pool) // 20)
    sp = np.sort(rng.choice(pool[::10], size=k, replace=False)) if k else np.empty(0, np.int64)
    loss[sp] *= rng.uniform(3, 10, len(sp))
    nan_at = np.sort(rng.choice(np.setdiff1d(s, sp), size=min(n_nan, n_steps // 20),
                                replace=False))
    loss[nan_at] = np.nan
    lr = 3e-4 * 0.5 * (1 + np.cos(np.pi * t / n_steps))
    gn = np.exp(rng.normal(0, 0.5, n_steps))
    gn[rng.choice(n_steps, min(100, n_steps // 100), replace=False)] = np.inf
    gn[rng.choice(n_steps, min(20, n_steps // 500), replace=False)] = -np.inf
    tps = rng.normal(150000, 5000, n_steps)
    val = np.full(n_steps, np.nan)
    val[::1000] = loss[::1000] * 1.05
    cols = {
        "epoch": t / 50000.0, "loss": loss, "lr": lr, "grad_norm": gn, "tokens_per_sec": tps,
        "samples_per_sec": tps / 2048, "loss_scale": np.full(n_steps, 65536.0),
        "mem_gb": rng.normal(61.2, 0.3, n_steps),
        "time": 1.7e9 + t * 0.35 + rng.random(n_steps) * 0.01,
        "accuracy": np.clip(1 - loss / 4, 0, 1), "val_loss": val,
    }
    every = max(1, n_steps // N_WIDE_GARBAGE)
    garbage = tuple(range(every // 2, n_steps - 1, every))[:N_WIDE_GARBAGE] if dirty else ()
    return WideRun(n_steps, cols, tuple(int(x) for x in sp), tuple(int(x) for x in nan_at),
                   garbage, dirty)


def _py_texts(values: np.ndarray, spell: dict[str, str], missing: str | None) -> list[str]:
    """`str(float)` of each value, as `csv` and `json` write them; NaN/inf spelled by `spell`;
    NaN written as `missing` when that is given (a cell that was not logged)."""
    out = [repr(v) for v in values.tolist()]
    bad = np.flatnonzero(~np.isfinite(values)).tolist()
    for i in bad:
        v = values[i]
        out[i] = (missing if missing is not None and v != v
                  else spell["nan" if v != v else ("inf" if v > 0 else "-inf")])
    return out


def write_wide_csv(path: Path, run: WideRun) -> None:
    """`csv.DictWriter` layout: `nan`, `inf`, `-inf` as Python spells them, an empty cell for
    a val_loss that was not logged, the traceback lines, a short row at 30% and a torn last
    row (the job was killed while writing it)."""
    spell = {"nan": "nan", "inf": "inf", "-inf": "-inf"}
    n = run.n_steps
    short_at = int(0.3 * n) if run.dirty else -1
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(WIDE_FIELDS) + "\r\n")
        for lo in range(0, n, _CHUNK):
            hi = min(lo + _CHUNK, n)
            parts = [[str(x) for x in range(lo, hi)]]
            for name in WIDE_FIELDS[1:12]:
                parts.append(_py_texts(run.cols[name][lo:hi], spell,
                                       "" if name == "val_loss" else None))
            parts.append(["train"] * (hi - lo))
            parts.append(["exp-042-llama-1b"] * (hi - lo))
            rows = [",".join(r) for r in zip(*parts, strict=True)]
            for i in range(hi - 1, lo - 1, -1):  # backwards: insert without shifting
                if i in run.garbage_after:
                    rows.insert(i - lo + 1, WIDE_GARBAGE)
                if i == short_at:
                    rows.insert(i - lo + 1, ",".join(rows[i - lo].split(",")[:5]))
            if hi == n and run.dirty:  # torn last row: the first six cells
                rows[-1] = ",".join(rows[-1].split(",")[:6])
                fh.write("\r\n".join(rows))
            else:
                fh.write("\r\n".join(rows) + "\r\n")


def write_wide_jsonl(path: Path, run: WideRun) -> None:
    """`json.dumps` per step (`NaN`, `Infinity`, `-Infinity`), val_loss only every 1000
    steps, the traceback lines, a blank line and a torn object at 30%, a torn last line."""
    spell = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
    n = run.n_steps
    torn_at = int(0.3 * n) if run.dirty else -1
    names = WIDE_FIELDS[1:11]
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for lo in range(0, n, _CHUNK):
            hi = min(lo + _CHUNK, n)
            texts = [_py_texts(run.cols[k][lo:hi], spell, None) for k in names]
            val = run.cols["val_loss"][lo:hi]
            vtexts = _py_texts(val, spell, "")
            rows = []
            for j, cells in enumerate(zip(*texts, strict=True)):
                body = ", ".join(f'"{k}": {v}' for k, v in zip(names, cells, strict=True))
                v = vtexts[j]
                extra = f', "val_loss": {v}' if v else ""
                rows.append(f'{{"step": {lo + j}, {body}{extra}, "phase": "train", '
                            f'"run": "exp-042-llama-1b"}}')
            for i in range(hi - 1, lo - 1, -1):
                if i in run.garbage_after:
                    rows.insert(i - lo + 1, WIDE_GARBAGE)
                if i == torn_at:
                    rec = rows[i - lo]
                    rows[i - lo + 1:i - lo + 1] = ["", rec[: len(rec) // 2]]
            if hi == n and run.dirty:
                rows[-1] = rows[-1][: len(rows[-1]) // 2]
                fh.write("\n".join(rows))
            else:
                fh.write("\n".join(rows) + "\n")


def write_wide_tensorboard(path: Path, run: WideRun) -> None:
    """The 8 metric tags of the run, one `simple_value` event per tag per step."""
    from spikelens.readers._tfrecord import write_scalar_events

    names = ("loss", "lr", "grad_norm", "tokens_per_sec", "samples_per_sec", "loss_scale",
             "mem_gb", "accuracy")
    n = run.n_steps
    with open(path, "wb") as fh:
        for lo in range(0, n, _TB_CHUNK):
            hi = min(lo + _TB_CHUNK, n)
            chunk: dict[str, np.ndarray] = {"step": np.arange(lo, hi),
                                            "wall_time": run.cols["time"][lo:hi]}
            chunk.update({t: run.cols[c][lo:hi] for t, c in zip(WIDE_TB_TAGS, names,
                                                                 strict=True)})
            part = path.with_name(path.name + ".part")
            try:
                write_scalar_events(part, pd.DataFrame(chunk), layout="simple_value",
                                    file_version=lo == 0, start_time=1.7e9 - 1.0)
                fh.write(part.read_bytes())
            finally:
                part.unlink(missing_ok=True)


#: Columns of each run of the many-runs directory (a nanoGPT/HF-style small log).
FLEET_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens_per_sec")


def write_fleet(directory: Path, n_runs: int, n_steps: int, seed: int = 7) -> None:
    """`n_runs` CSV logs of `n_steps` steps each (pandas `to_csv` layout), each with its own
    seed, 3 loss spikes and 2 NaN losses: a sweep's output directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for r in range(n_runs):
        path = directory / f"run-{r:03d}.csv"
        if path.exists():
            continue
        w = make_wide(n_steps, n_spikes=3, seed=seed * 1000 + r, n_nan=2)
        frame = pd.DataFrame({"step": np.arange(n_steps), "loss": w.cols["loss"],
                              "lr": w.cols["lr"], "grad_norm": w.cols["grad_norm"],
                              "tokens_per_sec": w.cols["tokens_per_sec"]})
        _atomic(path, lambda p, f=frame: f.to_csv(p, index=False, na_rep="nan"))


@dataclass(frozen=True)
class WideInputs:
    directory: Path
    n_steps: int
    n_spikes: int
    csv: Path
    jsonl: Path
    tensorboard: Path


def ensure_wide(data_dir: Path, n_steps: int = 1_000_000, n_spikes: int = 50, seed: int = 42,
                kinds: Sequence[str] = ("csv", "jsonl", "tensorboard"),
                log: Callable[[str], None] | None = None, clean: bool = False) -> WideInputs:
    """Generate (once) and return the real-shaped inputs. `clean`: no NaN losses and no
    damaged lines, so that the spikes are the only incidents (the sweep against E)."""
    d = data_dir / (f"wide-v{GEN_VERSION}-steps{n_steps}-spikes{n_spikes}-seed{seed}"
                    + ("-clean" if clean else ""))
    (d / "tb").mkdir(parents=True, exist_ok=True)
    paths = {"csv": d / "log.csv", "jsonl": d / "log.jsonl",
             "tensorboard": d / "tb" / "events.out.tfevents.1700000000.benchhost.4242.0"}
    missing = [k for k in kinds if not paths[k].exists()]
    if missing:
        t0 = time.perf_counter()
        run = make_wide(n_steps, n_spikes, seed, n_nan=0 if clean else N_WIDE_NAN,
                        dirty=not clean)
        writers: dict[str, Callable[[Path], None]] = {
            "csv": lambda p: write_wide_csv(p, run),
            "jsonl": lambda p: write_wide_jsonl(p, run),
            "tensorboard": lambda p: write_wide_tensorboard(p, run),
        }
        for k in missing:
            _atomic(paths[k], writers[k])
        if log is not None:
            log(f"generated {', '.join(missing)} for {n_steps} steps, {n_spikes} spikes in "
                f"{d} ({time.perf_counter() - t0:.1f} s)")
    return WideInputs(d, n_steps, n_spikes, paths["csv"], paths["jsonl"], paths["tensorboard"])


def ensure_fleet(data_dir: Path, n_runs: int = 100, n_steps: int = 100_000, seed: int = 7,
                 log: Callable[[str], None] | None = None) -> Path:
    d = data_dir / f"fleet-v{GEN_VERSION}-runs{n_runs}-steps{n_steps}-seed{seed}-nan2"
    if len(list(d.glob("run-*.csv"))) < n_runs:
        t0 = time.perf_counter()
        write_fleet(d, n_runs, n_steps, seed)
        if log is not None:
            log(f"generated {n_runs} runs x {n_steps} steps in {d} "
                f"({time.perf_counter() - t0:.1f} s)")
    return d


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
