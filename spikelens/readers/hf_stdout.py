"""HuggingFace Trainer stdout: the Python dicts the Trainer prints at every log call,
`{'loss': 1.6282, 'learning_rate': 1.85e-05, 'epoch': 0.22}`, `{'eval_loss': ..., 'epoch':
1.0}`, the `{'train_runtime': ...}` summary that ends each `train()` call and the
`TrainOutput(global_step=2260, ...)` a script prints after it; ms-swift's variant quotes its
values and states the step (`'global_step/max_steps': '1224/2353'`). A dict may follow a
tqdm bar on the same line. The printed train dicts hold no step, so the step comes, in this
order, from a `global_step`/`step` key; from the epoch, scaled by the steps and epochs the
`train()` call's summary and TrainOutput line state (`step = epoch x global_step /
final epoch`); else the train dicts are numbered 1, 2, 3 in the order written. A warning
says which, because a step read off a 2-decimal epoch is only as exact as that. Each
`train()` call of the script is its own run. The loss is the mean since the previous log
call, so the run is `averaged` when the dicts are more than a step apart."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, looks_binary

#: where a printed log dict starts: one of the keys the Trainer's log calls carry first
_START = re.compile(r"\{'(?:loss|eval_[\w/]+|test_[\w/]+|train_runtime|grad_norm|"
                    r"learning_rate|train_loss)'\s*:")
#: one `'key': value` item, the value perhaps quoted (ms-swift)
_ITEM = re.compile(r"'([^'\n]{1,100})'\s*:\s*('?)([^,'{}\n]{0,60})\2\s*(?=[,}])")
_RATIO = re.compile(r"^\s*(\d{1,15})\s*/\s*\d{1,15}\s*$")
_TRAIN_OUTPUT = re.compile(r"TrainOutput\(global_step=(\d{1,15})")
_STEP_KEYS = ("global_step/max_steps", "global_step", "step")
_SUMMARY = ("train_runtime", "train_samples_per_second", "train_steps_per_second",
            "total_flos")


def _parse_dict(line: str) -> dict[str, float] | None:
    """The numeric items of the log dict on `line` (the last one, after any tqdm bar)."""
    starts = [m.start() for m in _START.finditer(line)]
    if not starts:
        return None
    out: dict[str, float] = {}
    for m in _ITEM.finditer(line, starts[-1]):
        key, text = m.group(1), m.group(3).strip()
        ratio = _RATIO.match(text)
        if ratio is not None and key in _STEP_KEYS:
            out[key] = float(ratio.group(1))
            continue
        try:
            out[key] = float(text)  # also nan, inf, -inf
        except ValueError:
            continue  # a text value ('38m 24s'): not a metric
    return out


@dataclass
class _Call:
    """The rows of one `train()` call."""

    train: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (line, row)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    final_epoch: float | None = None  # the summary dict's epoch
    global_step: int | None = None  # TrainOutput(global_step=...)
    closed: bool = False  # its summary was printed


def _calls(lines: list[str]) -> list[_Call]:
    calls = [_Call()]
    for no, line in enumerate(lines, start=1):
        if "{'" not in line and "TrainOutput(" not in line:
            continue
        out = _TRAIN_OUTPUT.search(line)
        if out is not None:
            # printed after the summary dict of the call it reports on
            done = [c for c in calls if c.closed]
            if done and done[-1].global_step is None:
                done[-1].global_step = int(out.group(1))
            continue
        row = _parse_dict(line)
        if not row:
            continue
        call = calls[-1]
        if any(k in row for k in _SUMMARY):
            call.final_epoch = row.get("epoch")
            call.closed = True
            calls.append(_Call())
        elif any(k.startswith(("eval_", "test_")) for k in row):
            call.evals.append((no, row))
        elif "loss" in row or "grad_norm" in row or "learning_rate" in row:
            call.train.append((no, row))
    return [c for c in calls if c.train or c.evals]


def _decimals(values: list[float | None]) -> int:
    """The decimals the epochs were printed with (the Trainer rounds them to 2)."""
    most = 0
    for v in values:
        if v is not None and v == v:
            text = repr(float(v))
            if "e" in text:
                return 6
            most = max(most, len(text.split(".")[1].rstrip("0")) if "." in text else 0)
    return min(most, 6)


_MAX = 2.0 ** 53


def _eval_step(scaled: float, line: int, call: _Call, steps: list[int]) -> int:
    """An eval dict's step: its epoch scaled, or the last train step before it when that
    is not a step (a NaN or absurd epoch)."""
    if scaled == scaled and abs(scaled) < _MAX:
        return max(1, round(scaled))
    before = [st for (ln, _), st in zip(call.train, steps, strict=True) if ln < line]
    return before[-1] if before else 0


def _explicit_step(row: dict[str, float]) -> int | None:
    for key in _STEP_KEYS:
        v = row.get(key)
        if v is not None and v == v and v >= 0:
            return int(v)
    return None


def _steps(call: _Call, path: Path) -> tuple[list[int], list[int], str | None]:
    """(train steps, eval steps, the warning that says where they came from)."""
    train = [_explicit_step(r) for _, r in call.train]
    if call.train and all(s is not None for s in train):
        steps = [int(s) for s in train if s is not None]
        evals = []
        for no, r in call.evals:
            s = _explicit_step(r)
            before = [st for (ln, _), st in zip(call.train, steps, strict=True) if ln < no]
            evals.append(s if s is not None else (before[-1] if before else 0))
        return steps, evals, None
    epochs = [r.get("epoch") for _, r in call.train]
    g, e = call.global_step, call.final_epoch
    raw: np.ndarray | None = None
    per_epoch = 0.0
    if g and e and e > 0 and call.train and all(x is not None and x == x for x in epochs):
        per_epoch = g / e
        scaled = np.asarray([float(x) * per_epoch for x in epochs if x is not None])
        # (a step must be an integer a float holds: 2^53)
        if bool(np.all(np.isfinite(scaled))) and float(np.max(np.abs(scaled))) < _MAX:
            raw = scaled
    if raw is not None and g and e:
        steps = [max(1, round(x)) for x in raw]
        # The Trainer logs at every multiple of logging_steps, so n logs over g steps say
        # logging_steps is in (g / (n + 1), g / n]: a round number there (what people set),
        # else g / n rounded. The i-th log is then at i x logging_steps, which the printed
        # epoch must confirm to within its rounding (half a unit of its last decimal) at
        # every log; if it does not (a first-step log, a run cut short), the steps are the
        # epochs scaled and rounded.
        n = len(raw)
        tol = 0.5 * 10.0 ** -_decimals(epochs) * per_epoch + 1
        lo, hi = g / (n + 1), g / n
        nice = [m * 10**k for k in range(7) for m in (1, 2, 5) if lo < m * 10**k <= hi]
        how = (f"the epoch x {per_epoch:.4g} steps per epoch (TrainOutput's global_step {g} "
               f"over {e:g} epochs), as exact as the printed epoch")
        for every in [*nice, max(1, round(hi))]:
            grid = every * np.arange(1, n + 1)
            if np.all(np.abs(grid - raw) <= tol):
                steps = [int(x) for x in grid]
                how = (f"its rank x {every} steps ({n} logs over TrainOutput's global_step "
                       f"{g}), which every printed epoch confirms")
                break
        if all(b > a for a, b in zip(steps, steps[1:], strict=False)):
            evals = [_eval_step(r.get("epoch", e) * per_epoch, no, call, steps)
                     for no, r in call.evals]
            note = f"{path}: the Trainer's printed logs hold no step: each log's step is {how}"
            return steps, evals, note
    steps = list(range(1, len(call.train) + 1))
    evals = []
    for no, _ in call.evals:
        evals.append(sum(1 for ln, _ in call.train if ln < no))
    note = (f"{path}: the Trainer's printed logs hold no step and no TrainOutput(global_step"
            f"=...) line to scale their epochs: the {len(steps)} train logs are numbered 1.."
            f"{len(steps)} in the order written (one per logging_steps)")
    return steps, evals, note


class HfStdoutReader:
    name = "hf_stdout"
    description = ("HuggingFace Trainer stdout ({'loss': ..., 'epoch': ...} dicts; "
                   "ms-swift's quoted ones)")

    def sniff(self, path: Path, head: bytes) -> float:
        if path.is_dir() or not head or looks_binary(head):
            return 0.0
        text = head.decode("utf-8", errors="replace")
        # two printed log dicts: one could be a config dump that happens to hold a `loss`
        return 0.7 if len(_START.findall(text)) >= 2 else 0.0

    def read(self, path: Path) -> list[RawLog]:
        # imported here: a module-level import would register the text reader before this
        # one and the formats after it, which moves sniffing's tie order
        from spikelens.readers.text import (
            eval_frame_from_rows,
            frame_from_rows,
            read_lines,
            row_columns,
        )

        def metric_keys(rows: list[dict[str, float]]) -> list[str]:
            return [k for k in row_columns(rows) if k not in _STEP_KEYS]  # steps are the axis

        lines, _ = read_lines(path)
        calls = _calls(lines)
        if not calls or not any(c.train for c in calls):
            raise LogFormatError(f"{path}: no Trainer log dicts with a loss found "
                                 "({'loss': ..., 'epoch': ...})")
        out = []
        many = sum(1 for c in calls if c.train) > 1
        for k, call in enumerate(calls, start=1):
            if not call.train:
                continue
            steps, esteps, note = _steps(call, path)
            rows = [r for _, r in call.train]
            frame, masks = frame_from_rows(rows, steps, metric_keys(rows), "step")
            eval_frame = None
            if call.evals:
                erows = [r for _, r in call.evals]
                eval_frame = eval_frame_from_rows(erows, esteps, metric_keys(erows), "step")
            gaps = np.diff(np.asarray(steps))
            out.append(RawLog(
                frame=frame,
                step_column="step",
                eval_frame=eval_frame,
                eval_step_column="step",
                nan_mask=masks,
                row_lines=np.asarray([no for no, _ in call.train], dtype=np.int64),
                warnings=[note] if note else [],
                # the Trainer logs the mean loss since the previous log call
                averaged=bool(len(gaps) and np.median(gaps) > 1),
                name=f"train() call {k}" if many else None,
            ))
        return out


READERS.add("hf_stdout", HfStdoutReader())
