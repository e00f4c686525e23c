"""Ranks and the lines around the metrics, shared by the text readers. A distributed launcher
prefixes what each process prints (`[rank3]:`, torchrun's `[default7]:`, srun -l's `3: `) or
writes one file per rank (torchrun `--log-dir`: `<run>/attempt_<n>/<rank>/stdout.log`). When
two or more ranks print metric rows, the rank that prints the most of them (Megatron's last
pipeline stage; ties go to the highest rank) keeps the canonical columns and every rank's
values are also kept as `rank<N>/<metric>` columns at the same step, so a replica that left
the others can be found. Non-metric lines that can explain an incident are kept as
`LogMessage`s with their step (the last step logged before them) and rank: NCCL errors and
watchdog timeouts, CUDA/ECC errors, tracebacks and exceptions, OOM, failed ranks and exit
codes, SLURM node and time-limit messages (errors); warnings; checkpoint saves, evaluations
and end-of-training lines (info). NCCL's INFO chatter is not kept; beyond `MAX_MESSAGES` a
count is given in a warning instead."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from spikelens.model import LogMessage

#: Rank prefixes: torchrun `--tee` (`[default7]:`, `[rank3]:`) anywhere before the text (a
#: host or time may come first), srun `--label` (`3: `) at the start of the line.
_RANK = re.compile(r"\[(?:rank|default)(\d{1,6})\]:|^\s*(\d{1,5}):\s")
_RANK_COLUMN = re.compile(r"^rank(\d{1,6})/(.+)$")
#: Messages kept per log (errors first are never crowded out: each level has its own cap).
MAX_MESSAGES = 5000
#: Longest message text kept (a traceback line can be a whole tensor printout).
MAX_TEXT = 400

# (kind, level, keywords, pattern): the first that matches names the line. The pattern runs
# only when one of the keywords is in the lower-cased line: a substring test is ~50x cheaper
# than a regex search, and a log can hold millions of NCCL INFO lines that match none.
_KINDS: tuple[tuple[str, str, tuple[str, ...], re.Pattern[str]], ...] = (
    ("oom", "error", ("memory",),
     re.compile(r"CUDA out of memory|OutOfMemoryError|\bout of memory\b", re.I)),
    ("nccl", "error", ("nccl error", "ncclinternal", "ncclsystem", "ncclunhandled",
                       "ncclremote", "collective operation", "processgroupnccl",
                       "communicator was aborted"), re.compile(
        r"NCCL error|ncclInternalError|ncclSystemError|ncclUnhandledCudaError|ncclRemoteError|"
        r"Watchdog caught collective operation timeout|collective operation timeout|"
        r"ProcessGroupNCCL.*(?:[Tt]imeout|[Aa]bort)|NCCL communicator was aborted")),
    ("nccl", "warning", ("nccl warn",), re.compile(r"\bNCCL WARN\b")),
    ("cuda", "error", ("cuda", "illegal", "ecc", "uncorrectable", "xid", "device-side"),
     re.compile(r"CUDA error|illegal memory access|\bECC\b|uncorrectable|\bXid\b|cudaError\w*|"
                r"device-side assert")),
    ("traceback", "error", ("traceback",), re.compile(r"Traceback \(most recent call last\)")),
    ("rank_failed", "error", ("fail", "exitcode", "segmentation", "sig", "bus error"),
     re.compile(
         r"\brank\s*:?\s*\d+\b.{0,40}\bfail|\bfail\w*.{0,20}\branks?\s*:?\s*\d+|"
         r"ChildFailedError|\bexitcode\s*:\s*-?[1-9]|Segmentation fault|"
         r"\bSIG(?:KILL|ABRT|SEGV|BUS|TERM)\b|\bBus error\b", re.I)),
    ("exception", "error", ("error", "exception"),
     re.compile(r"^\s*(?:[\w.]+\.)?\w*(?:Error|Exception)(?::|\s*$)")),
    ("slurm", "error", ("srun", "slurmstepd", "node_fail", "node fail", "time limit",
                        "cancelled at", " down", "node failure", "not responding"), re.compile(
        r"(?:srun|slurmstepd)(?:\[\d+\])?: (?:error|Exited)|NODE_FAIL|DUE TO NODE FAIL|"
        r"DUE TO TIME LIMIT|CANCELLED AT|\bnode\S* (?:down|failure|not responding)", re.I)),
    ("slurm", "warning", ("srun", "slurmstepd"),
     re.compile(r"\b(?:srun|slurmstepd)(?:\[\d+\])?:")),
    ("final", "info", ("exits successfully", "after training", "training", "final model",
                       "exiting program"), re.compile(
        r"exits successfully|after training is done|training (?:is )?"
        r"(?:complete|completed|finished|done)\b|saving the final model|finished training|"
        r"exiting program", re.I)),
    ("checkpoint", "info", ("checkpoint",), re.compile(
        r"(?:saving|saved|loading|loaded|writing)\s+(?:\w+\s+)?checkpoint|"
        r"checkpoint (?:saved|written)|save_checkpoint", re.I)),
    ("eval", "info", ("validation", "evaluation", "eval"),
     re.compile(r"(?:validation|evaluation|eval) (?:loss|results?)\b", re.I)),
    ("warning", "warning", ("warn", "[w"),
     re.compile(r"\bWARNING\b|\bWARN\b|\[W\d{0,4}\s|\w+Warning:")),
)
_WORDS = tuple(sorted({w for _, _, words, _ in _KINDS for w in words}))
#: Kinds that end a log normally (no hang after them).
FINAL_KINDS = frozenset({"final"})
#: Kinds after which a log that stops is a hang (nothing failed, the job went quiet).
QUIET_KINDS = frozenset({"eval", "checkpoint"})


def rank_of(line: str) -> int | None:
    """The rank a launcher prefix names, or None."""
    if "[" not in line and ":" not in line[:8]:
        return None
    m = _RANK.search(line)
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


def strip_rank(line: str) -> str:
    m = _RANK.search(line)
    if m is None:
        return line.strip()
    return (line[: m.start()] + line[m.end():]).strip()


def classify(text: str) -> tuple[str, str] | None:
    """(kind, level) of a non-metric line worth keeping, or None for noise."""
    low = text.lower()
    if not any(w in low for w in _WORDS):
        return None  # most lines of a long log: one pass of substring tests
    for kind, level, words, pat in _KINDS:
        if any(w in low for w in words):
            # the exception pattern is anchored at the start of the text, behind any prefix
            if pat.search(strip_rank(text) if kind == "exception" else text):
                return kind, level
    return None


def message_kind(msg: LogMessage) -> str:
    """The kind of a kept message (`nccl`, `cuda`, `oom`, `checkpoint`, `eval`, ...)."""
    hit = classify(msg.text)
    return hit[0] if hit is not None else msg.level


def is_rank_column(name: str) -> bool:
    """A per-rank copy of a metric (`rank3/lm loss`), not a part of the model."""
    return _RANK_COLUMN.match(name) is not None


def rank_column(name: str) -> tuple[int, str] | None:
    """(rank, metric) of a per-rank column, or None."""
    m = _RANK_COLUMN.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


@dataclass
class MessageSink:
    """Collects the kept messages of one log, with per-level caps."""

    messages: list[LogMessage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: int = 0

    def feed(self, line: str, line_no: int | None, step: int | None,
             rank: int | None = None) -> bool:
        """Keep `line` if it is a message worth keeping; True when it was."""
        if len(line) < 4:
            return False
        hit = classify(line)
        if hit is None:
            return False
        self.add(hit[1], line, line_no, step, rank)
        return True

    def add(self, level: str, line: str, line_no: int | None, step: int | None,
            rank: int | None = None) -> None:
        n = self.counts.get(level, 0)
        if n >= MAX_MESSAGES:
            self.dropped += 1
            return
        self.counts[level] = n + 1
        if rank is None:
            rank = rank_of(line)
        text = strip_rank(line)
        if len(text) > MAX_TEXT:
            text = text[: MAX_TEXT - 3] + "..."
        self.messages.append(LogMessage(step=step, text=text, level=level, rank=rank,
                                        line=line_no))

    def warnings(self, path: Path | str) -> list[str]:
        if not self.dropped:
            return []
        return [f"{path}: kept the first {MAX_MESSAGES} messages of each level; "
                f"{self.dropped} more not kept"]


def scan_messages(lines: Iterable[str], steps: Sequence[int] | None = None,
                  rows: Sequence[int] | None = None) -> MessageSink:
    """Messages of a whole file. `rows` are the 1-based lines that were metric rows and
    `steps` their steps: a message gets the step of the last row before it."""
    sink = MessageSink()
    row_lines = np.asarray(rows if rows is not None else [], dtype=np.int64)
    row_steps = np.asarray(steps if steps is not None else [], dtype=np.int64)
    is_row = set(row_lines.tolist())
    for no, line in enumerate(lines, start=1):
        if no in is_row:
            continue
        step: int | None = None
        if len(row_lines):
            i = int(np.searchsorted(row_lines, no)) - 1
            step = int(row_steps[i]) if i >= 0 else None
        sink.feed(line, no, step)
    return sink


# ------------------------------------------------------------------ ranks in one file


@dataclass(frozen=True)
class RankFold:
    """What folding the ranks of one file did."""

    reporting: int  # the rank whose values are the canonical columns
    ranks: tuple[int, ...]  # every rank that printed metric rows
    removed: frozenset[int]  # row indices folded into the reporting rank's rows
    unmatched: int  # rows of other ranks at a step the reporting rank never logged


def fold_ranks(rows: list[dict[str, float]], steps: Sequence[int], row_ranks: Sequence[int | None],
               candidates: Sequence[int], columns: dict[str, None]) -> RankFold | None:
    """Fold the metric rows of several ranks into the reporting rank's rows.

    `candidates` are the indices of rows that are metric rows a rank may have printed; their
    ranks are `row_ranks[i]`. With fewer than two ranks nothing changes and None is returned.
    Otherwise every candidate row's values are copied to `rank<N>/<key>` keys of the
    reporting rank's row at the same step (the one logged last before it, else the next one),
    and the other ranks' rows are returned as `removed` (the caller drops them)."""
    by_rank: dict[int, list[int]] = {}
    for i in candidates:
        r = row_ranks[i]
        if r is not None:
            by_rank.setdefault(r, []).append(i)
    if len(by_rank) < 2:
        return None
    # ranks print many rows each; "numbers" that are new on almost every row are something
    # else (a script that starts its lines with `<step>: `)
    if len(by_rank) * 2 > sum(len(v) for v in by_rank.values()):
        return None
    reporting = max(by_rank, key=lambda r: (len(by_rank[r]), r))
    rep_at: dict[int, list[int]] = {}
    for i in by_rank[reporting]:
        rep_at.setdefault(int(steps[i]), []).append(i)
    removed: set[int] = set()
    unmatched = 0
    for r, idx in sorted(by_rank.items()):
        for i in idx:
            if r == reporting:
                target = i
            else:
                cands = rep_at.get(int(steps[i]))
                if not cands:
                    unmatched += 1
                    removed.add(i)
                    continue
                before = [c for c in cands if c < i]
                target = before[-1] if before else cands[0]
                removed.add(i)
            src = rows[i]
            dst = rows[target]
            for k, v in list(src.items()):
                if is_rank_column(k):
                    continue
                key = f"rank{r}/{k}"
                dst[key] = v
                columns.setdefault(key, None)
    return RankFold(reporting=reporting, ranks=tuple(sorted(by_rank)),
                    removed=frozenset(removed), unmatched=unmatched)


class _Table(Protocol):
    rows: list[dict[str, float]]
    steps: list[int]
    lines: list[int]
    columns: dict[str, None]


def fold_table(table: _Table, lines: Sequence[str], path: Path | str) -> str | None:
    """`fold_ranks` over a whole row table whose rows came from `lines` (1-based line
    numbers in `table.lines`); the folded rows are removed. Returns the note, or None."""
    row_ranks = [rank_of(lines[n - 1]) for n in table.lines]
    fold = fold_ranks(table.rows, table.steps, row_ranks, range(len(table.rows)),
                      table.columns)
    if fold is None:
        return None
    keep = [i for i in range(len(table.rows)) if i not in fold.removed]
    table.rows = [table.rows[i] for i in keep]
    table.steps = [table.steps[i] for i in keep]
    table.lines = [table.lines[i] for i in keep]
    return fold_note(path, fold)


def fold_note(path: Path | str, fold: RankFold) -> str:
    shown = ", ".join(str(r) for r in fold.ranks[:8]) + (", ..." if len(fold.ranks) > 8 else "")
    note = (f"{path}: {len(fold.ranks)} ranks print metrics ({shown}); rank {fold.reporting} "
            f"gives the main series, every rank's values are kept as rank<N>/<metric>")
    if fold.unmatched:
        note += (f"; {fold.unmatched} row(s) of other ranks at steps rank {fold.reporting} "
                 "never logged were dropped")
    return note


# ------------------------------------------------------------------ one file per rank

_ATTEMPT = re.compile(r"^attempt_(\d+)$")
_RANK_FILE = re.compile(r"(?:^|[_\-.])rank[_\-]?(\d{1,6})(?=[_\-.]|$)", re.I)


@dataclass(frozen=True)
class RankFiles:
    """The files of a per-rank layout, by rank: stdout (metrics) and stderr (messages)."""

    stdout: dict[int, list[Path]]
    stderr: dict[int, list[Path]]


def rank_layout(path: Path) -> RankFiles | None:
    """The per-rank files under `path`, or None if it is not such a directory: torchrun's
    `--log-dir` layout (`[<run id>/]attempt_<n>/<rank>/stdout.log`, attempts in order) or a
    directory of files named by rank (`rank0.log`, `log_rank_3.txt`). Two ranks at least."""
    if not path.is_dir():
        return None
    out: dict[int, list[Path]] = {}
    err: dict[int, list[Path]] = {}
    attempts: list[tuple[int, Path]] = []
    for d in [path, *[c for c in _children(path) if c.is_dir()]]:
        for c in _children(d):
            m = _ATTEMPT.match(c.name)
            if m and c.is_dir():
                attempts.append((int(m.group(1)), c))
    for _, att in sorted(attempts, key=lambda t: (str(t[1].parent), t[0])):
        for rd in _children(att):
            if rd.is_dir() and rd.name.isdigit():
                r = int(rd.name)
                for name, into in (("stdout.log", out), ("stderr.log", err)):
                    f = rd / name
                    if f.is_file() and f.stat().st_size:
                        into.setdefault(r, []).append(f)
    if not out:
        for c in _children(path):
            m = _RANK_FILE.search(c.stem)
            if m and c.is_file() and c.stat().st_size:
                out.setdefault(int(m.group(1)), []).append(c)
    if len(out) < 2:
        return None
    return RankFiles(stdout=out, stderr=err)


def _children(d: Path) -> list[Path]:
    try:
        return sorted(c for c in d.iterdir() if not c.name.startswith("."))
    except OSError:
        return []


def merge_rank_frames(frames: dict[int, pd.DataFrame], step_column: dict[int, str],
                      reporting: int) -> tuple[pd.DataFrame, int]:
    """The reporting rank's frame with every rank's columns added as `rank<N>/<col>` at the
    reporting rank's rows of the same step (the last value a rank logged at that step).
    Returns the frame and the number of other-rank values at steps it never logged."""
    main = frames[reporting].copy()
    scol = step_column[reporting]
    main_steps = main[scol].to_numpy()
    extra: dict[str, np.ndarray] = {}
    unmatched = 0
    for r in sorted(frames):
        f = frames[r]
        sc = step_column[r]
        steps = pd.to_numeric(f[sc], errors="coerce")
        for col in f.columns:
            if col == sc:
                continue
            vals = f[col]
            present = vals.notna().to_numpy()
            if not present.any():
                continue
            last = pd.Series(vals.to_numpy()[present], index=steps.to_numpy()[present])
            last = last[~last.index.duplicated(keep="last")]
            mapped = last.reindex(main_steps).to_numpy()
            extra[f"rank{r}/{col}"] = mapped
            unmatched += int((~np.isin(last.index.to_numpy(), main_steps)).sum()) \
                if r != reporting else 0
    if extra:
        main = pd.concat([main.reset_index(drop=True),
                          pd.DataFrame(extra, index=pd.RangeIndex(len(main)))], axis=1)
    return main, unmatched
