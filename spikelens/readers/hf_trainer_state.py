"""HuggingFace Trainer `trainer_state.json` reader. The Trainer appends one record per log
call to `log_history`: train records carry `loss` (a mean over the logging interval, rounded
to 4 decimals), eval records carry `eval_*` keys (`test_*` after `predict`), and each
`train()` call ends with a summary record (`train_runtime`, `train_loss`, `total_flos`...)
whose `train_loss` is a whole-run average: it is neither train nor eval, and is dropped so it
can never enter the loss. Train records form the frame, eval records the eval frame, both
on the `step` column; `logging_steps` is the interval. The document is walked key by key and
`log_history` record by record with `json.JSONDecoder.raw_decode`, so each row knows its
source line, and a file torn mid-write (the Trainer rewrites it at every checkpoint) still
yields every complete record before the damage, with a warning saying where it stopped."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, looks_binary, mode_spacing, skip_warning
from spikelens.readers.jsonl import (
    EVAL,
    SUMMARY,
    TRAIN,
    ColumnBuilder,
    dropped_warning,
    flatten_record,
    split_frames,
)

_WS = re.compile(r"\s*")
_SUMMARY_KEYS = ("train_runtime", "total_flos", "train_samples_per_second",
                 "train_steps_per_second")
_EVAL_PREFIXES = ("eval_", "test_")


class _Damage(Exception):
    """The document stops being valid JSON at `pos`."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


@dataclass
class _State:
    meta: dict[str, Any] = field(default_factory=dict)
    records: list[tuple[int, Any]] = field(default_factory=list)  # (line, record)
    history_seen: bool = False  # the log_history key was reached
    history_closed: bool = False  # its closing bracket was read
    damage: int | None = None  # offset where the JSON stops being valid


def _walk(text: str) -> _State:
    """Top-level keys and log_history records, as far as the text is valid JSON."""
    dec = json.JSONDecoder()
    st = _State()
    line, line_pos = 1, 0

    def ws(pos: int) -> int:
        m = _WS.match(text, pos)
        return m.end() if m else pos

    def expect(pos: int, ch: str) -> int:
        if not text.startswith(ch, pos):
            raise _Damage(pos)
        return ws(pos + 1)

    def value(pos: int) -> tuple[Any, int]:
        try:
            return dec.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _Damage(exc.pos) from None
        except (ValueError, RecursionError):  # an integer too long to convert, deep nesting
            raise _Damage(pos) from None

    pos = ws(0)
    try:
        pos = expect(pos, "{")
        if text.startswith("}", pos):
            return st
        while True:
            key, pos = value(pos)
            if not isinstance(key, str):
                raise _Damage(pos)
            pos = expect(ws(pos), ":")
            if key == "log_history" and text.startswith("[", pos):
                st.history_seen = True
                pos = ws(pos + 1)
                if text.startswith("]", pos):
                    pos += 1
                else:
                    while True:
                        line += text.count("\n", line_pos, pos)
                        line_pos = pos
                        rec, pos = value(pos)
                        st.records.append((line, rec))
                        pos = ws(pos)
                        if text.startswith("]", pos):
                            pos += 1
                            break
                        pos = expect(pos, ",")
                st.history_closed = True
                st.meta[key] = []
            else:
                st.meta[key], pos = value(pos)
            pos = ws(pos)
            if text.startswith("}", pos):
                return st
            pos = expect(pos, ",")
    except _Damage as d:
        st.damage = d.pos
    return st


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _interval(meta: dict[str, Any]) -> int | None:
    steps = meta.get("logging_steps")
    if isinstance(steps, bool) or not isinstance(steps, int | float) or not steps > 0:
        return None
    if steps < 1:  # a fraction of the run, as TrainingArguments allows
        total = meta.get("max_steps")
        if isinstance(total, int | float) and not isinstance(total, bool) and total > 0:
            return max(1, math.ceil(total * steps))
        return None
    return int(steps) if math.isfinite(steps) else None


def _step_gap(frame: Any) -> int:
    """Most common gap between logged train steps (the interval, when not stated)."""
    if "step" not in frame.columns:
        return 1
    return mode_spacing(frame["step"].to_numpy(dtype=np.float64, na_value=np.nan)) or 1


def _kind(rec: dict[str, Any]) -> int:
    if any(k in rec for k in _SUMMARY_KEYS):
        return SUMMARY
    if "loss" not in rec and any(k.startswith(_EVAL_PREFIXES) for k in rec):
        return EVAL
    return TRAIN


class HfTrainerStateReader:
    name = "hf_trainer_state"
    description = "HuggingFace Trainer trainer_state.json (log_history)"

    def sniff(self, path: Path, head: bytes) -> float:
        if not head or looks_binary(head):
            return 0.0
        body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
        if not body.lstrip().startswith(b"{"):
            return 0.0
        signed = b'"log_history"' in head
        if path.name == "trainer_state.json":
            return 1.0 if signed else 0.6
        return 0.95 if signed else 0.0

    def read(self, path: Path) -> list[RawLog]:
        raw = path.read_bytes()
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            raise LogFormatError(f"{path}: empty file")
        text = raw.decode("utf-8", "replace")
        if not text.lstrip().startswith("{"):
            raise LogFormatError(f"{path}: not a trainer_state.json (not a JSON object)")
        st = _walk(text)
        warnings: list[str] = []
        if st.damage is not None:
            line, col = _line_col(text, st.damage)
            if not st.history_seen:
                raise LogFormatError(
                    f"{path}: not a trainer_state.json (invalid JSON at line {line}, "
                    f"column {col})"
                )
            if not st.records:
                raise LogFormatError(
                    f"{path}: truncated or damaged at line {line}, column {col}, before the "
                    f"first complete log_history record"
                )
            n = len(st.records)
            if st.history_closed:
                warnings.append(
                    f"{path}: truncated or damaged at line {line}, after log_history; "
                    f"all {n} record(s) read"
                )
            else:
                warnings.append(
                    f"{path}: truncated or damaged at line {line} (log_history record "
                    f"{n + 1}); read the {n} complete record(s) before it"
                )
        elif not st.history_seen:
            raise LogFormatError(f"{path}: not a trainer_state.json (no log_history list)")
        if not st.records:
            raise LogFormatError(f"{path}: log_history is empty (no training records)")

        columns = ColumnBuilder()
        lines: list[int] = []
        kinds: list[int] = []
        not_objects: list[int] = []
        dropped: set[str] = set()
        for line, rec in st.records:
            if not isinstance(rec, dict):
                not_objects.append(line)
                continue
            kind = _kind(rec)
            if kind == SUMMARY:
                continue
            columns.add(flatten_record(rec, dropped))
            lines.append(line)
            kinds.append(kind)
        if not_objects:
            warnings.append(skip_warning(path, len(not_objects),
                                         "log_history record(s) that are not objects",
                                         not_objects))
        if dropped:
            warnings.append(dropped_warning(path, dropped))
        if not kinds:
            raise LogFormatError(f"{path}: log_history holds no train or eval records")
        cols, nan = columns.finish()
        frame, fmask, eval_frame, train = split_frames(
            cols, nan, np.asarray(kinds, dtype=np.int8)
        )
        if "step" not in frame.columns and eval_frame is not None and "step" in eval_frame:
            # an evaluate()-only state: the eval steps are the run's steps
            frame = eval_frame[["step"]].copy()
        interval = _interval(st.meta)
        # the state's train_batch_size is the dataloader's batch on one process (per-device
        # batch x GPUs of DataParallel); gradient accumulation and data-parallel ranks, which
        # multiply it into the batch per optimizer step, are not in trainer_state.json
        tbs = st.meta.get("train_batch_size")
        params: dict[str, Any] = {}
        if isinstance(tbs, int) and not isinstance(tbs, bool) and tbs > 0:
            params["micro_batch_size"] = tbs
        return [RawLog(
            frame=frame,
            step_column="step",
            eval_frame=eval_frame,
            nan_mask=fmask,
            row_lines=np.asarray(lines, dtype=np.int64)[train],
            warnings=warnings,
            interval=interval,
            # the Trainer logs the mean loss since the previous log call
            averaged=(interval or _step_gap(frame)) > 1,
            eval_step_column="step",
            params=params,
        )]


READERS.add("hf_trainer_state", HfTrainerStateReader())

