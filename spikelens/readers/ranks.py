"""One log file per rank: torchrun's `--log-dir` layout (`<run>/attempt_<n>/<rank>/stdout.log`
and `stderr.log`) or a directory of files named by rank (`rank0.log`, `log_rank_3.txt`). Each
rank's file is read by the reader that claims it (attempts of one rank in order, so a restart
is seen as one), the rank that logs the most loss values gives the canonical series, and every
rank's metrics are kept as `rank<N>/<metric>` columns at its steps. Messages come from every
rank's stdout and stderr, with their rank. The layout logic lives in `_ranks`."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from spikelens.errors import LogFormatError, SpikelensError
from spikelens.metrics import assign_roles
from spikelens.model import LogMessage
from spikelens.readers import HEAD_BYTES, READERS
from spikelens.readers._base import RawLog
from spikelens.readers._ranks import merge_rank_frames, rank_layout, scan_messages
from spikelens.readers.text import read_lines


def _reader_for(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    scores = [(r.sniff(path, head), -i, name) for i, (name, r) in enumerate(READERS.items())
              if name != "ranks"]
    best = max(scores)
    if best[0] <= 0:
        raise LogFormatError(f"{path}: no reader recognises this rank's log")
    return best[2]


class RankDirReader:
    name = "ranks"
    description = "one log per rank (torchrun --log-dir attempt_<n>/<rank>/stdout.log, rank<N>.log)"

    def sniff(self, path: Path, head: bytes) -> float:
        return 0.9 if path.is_dir() and rank_layout(path) is not None else 0.0

    def read(self, path: Path) -> list[RawLog]:
        layout = rank_layout(path)
        if layout is None:
            raise LogFormatError(f"{path}: no per-rank log files (attempt_<n>/<rank>/stdout.log "
                                 "or rank<N>.log) in this directory")
        raws: dict[int, RawLog] = {}
        warnings: list[str] = []
        file_lines: dict[int, list[int]] = {}  # lines of each attempt's file, per rank
        with tempfile.TemporaryDirectory(prefix="spikelens-ranks-") as tmp:
            for r, files in sorted(layout.stdout.items()):
                src = files[0]
                if len(files) > 1:  # several attempts: one log with restarts in it
                    src = Path(tmp) / f"rank{r}.log"
                    with open(src, "wb") as out:
                        for f in files:
                            data = f.read_bytes()
                            data = data if data.endswith(b"\n") else data + b"\n"
                            file_lines.setdefault(r, []).append(data.count(b"\n"))
                            out.write(data)
                try:
                    fmt = _reader_for(src)
                    got = READERS.get(fmt).read(src)
                except SpikelensError as exc:
                    # name the rank's own files, not the temporary concatenation
                    warnings.append(f"{path}: rank {r} not read: "
                                    f"{str(exc).replace(str(src), _names(files))}")
                    continue
                if got:
                    raw = got[0]
                    if src != files[0]:
                        raw.warnings = [w.replace(str(src), _names(files))
                                        for w in raw.warnings]
                    raws[r] = raw
        if not raws:
            raise LogFormatError(f"{path}: none of the {len(layout.stdout)} rank logs could be "
                                 "read")
        # ties go to the highest rank, as in one file (Megatron: the last pipeline stage)
        reporting = max(raws, key=lambda r: (_loss_points(raws[r]), r))
        frames = {r: raw.frame for r, raw in raws.items()}
        cols = {r: raw.step_column or "step" for r, raw in raws.items()}
        missing = [r for r, c in cols.items() if c not in frames[r].columns]
        for r in missing:  # a reader that leaves the step column to be found by name
            del frames[r], cols[r]
        if reporting not in frames:
            raise LogFormatError(f"{path}: rank {reporting}'s log has no step column")
        merged, unmatched = merge_rank_frames(frames, cols, reporting)
        main = raws[reporting]
        sizes = _attempt_sizes(layout.stdout, reporting, file_lines.get(reporting), main)
        if sizes is not None:
            merged[WORLD] = sizes
        messages: list[LogMessage] = []
        for r, raw in sorted(raws.items()):
            bounds = np.cumsum([0, *file_lines.get(r, [])])
            for m in raw.messages:
                if m.line is not None and len(bounds) > 2:
                    # a line of the concatenated attempts: its line in its own attempt's file
                    i = int(np.searchsorted(bounds, m.line, side="left")) - 1
                    m = dataclasses.replace(m, line=m.line - int(bounds[max(i, 0)]))
                messages.append(m if m.rank is not None else _with_rank(m, r))
            warnings += raw.warnings
        for r, files in sorted(layout.stderr.items()):
            for f in files:
                lines, _ = read_lines(f)
                sink = scan_messages(lines)
                messages += [_with_rank(m, r) for m in sink.messages]
        warnings.append(
            f"{path}: {len(raws)} rank logs ({', '.join(str(r) for r in sorted(raws))}); "
            f"rank {reporting} gives the main series, every rank's values are kept as "
            f"rank<N>/<metric>")
        if unmatched:
            warnings.append(f"{path}: {unmatched} value(s) of other ranks at steps rank "
                            f"{reporting} never logged were dropped")
        return [RawLog(
            frame=merged, step_column=main.step_column, eval_frame=main.eval_frame,
            nan_mask=main.nan_mask, row_lines=main.row_lines, row_unit=main.row_unit,
            warnings=warnings, interval=main.interval, averaged=main.averaged,
            eval_step_column=main.eval_step_column, messages=messages,
            params={**main.params, "ranks": len(raws), "reporting_rank": reporting},
        )]


#: The column that says how many rank logs the attempt of each row has (an elastic
#: re-launch on fewer GPUs shows as a change at the resume); role `world_size`.
WORLD = "world size (rank logs)"


def _attempt_key(f: Path) -> str:
    return str(f.parent.parent)


def _attempt_sizes(stdout: dict[int, list[Path]], reporting: int, lines: list[int] | None,
                   main: RawLog) -> np.ndarray | None:
    """Per row of the reporting rank: how many ranks logged in that row's attempt, when the
    attempts differ in that (else None: a constant says nothing)."""
    files = stdout[reporting]
    if lines is None or len(files) < 2 or main.row_lines is None:
        return None
    counts: dict[str, int] = {}
    for fs in stdout.values():
        for f in fs:
            counts[_attempt_key(f)] = counts.get(_attempt_key(f), 0) + 1
    per_file = np.asarray([counts[_attempt_key(f)] for f in files], dtype=np.float64)
    if len(set(per_file.tolist())) < 2:
        return None
    bounds = np.cumsum(lines)
    which = np.clip(np.searchsorted(bounds, main.row_lines, side="left"), 0, len(files) - 1)
    return per_file[which]


def _names(files: list[Path]) -> str:
    return files[0].as_posix() if len(files) == 1 else \
        f"{files[0].as_posix()} (+{len(files) - 1} later attempt(s))"


def _loss_points(raw: RawLog) -> int:
    roles = assign_roles([str(c) for c in raw.frame.columns])
    col = roles.get("loss")
    if col is None:
        return 0
    return int(np.count_nonzero(raw.frame[col].notna().to_numpy()))


def _with_rank(m: LogMessage, r: int) -> LogMessage:
    return dataclasses.replace(m, rank=r)


READERS.add("ranks", RankDirReader())
