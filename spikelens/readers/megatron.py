"""Megatron-LM, Megatron-DeepSpeed, GPT-NeoX and DeepSpeed stdout logs. Train rows come from
`iteration N/ M | key: value | ...` lines wherever they sit in a line (behind `[default7]:`,
`0:` or a timestamp), every key a column named as printed (`lm loss`, `grad norm`, `loss
scale`), step column `iteration`; values are averages over `log_interval` (read from the
arguments dump, else the step spacing). An interval whose iterations were all skipped prints no
`lm loss`: its loss stays missing and its `number of skipped iterations` is made at least 1. A
line cut mid-write (Megatron ends every line with `|`) keeps its complete fields only.
`validation loss at iteration N |` lines (and GPT-NeoX `validation results at`) go to the eval
table. DeepSpeed's `step=N, skipped=K, lr=[..]` lines give `skipped (cumulative)`, `lr (group
0)` and `overflow` (skipped steps attributed to that step); its pipeline engine's `steps: N
loss: X iter time (s): T samples/sec: S` lines give the train `loss` of step N; its `OVERFLOW!
... Attempted loss scale: X, reducing to Y` lines carry no step, so each is placed between the
known steps around it (`step=`, `global_step=` and `iteration` lines): by its timestamp at the
step the run had then reached, interpolated at that interval's own pace, or, without timestamps,
on the interval's first steps (off by at most the print interval). Each becomes `overflow` = 1
with `loss scale` = the new scale (the kept one when only the hysteresis dropped).
DeepSpeed-Chat's `ppl: X` eval lines carry no step either: each is put at the last step logged
before it, with a warning."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, lines_note, looks_binary, mode_spacing
from spikelens.readers._ranks import MessageSink, fold_note, fold_ranks, rank_of
from spikelens.readers.text import (
    RowTable,
    eval_frame_from_rows,
    frame_from_rows,
    read_lines,
    row_columns,
)

STEP = "iteration"
SKIPPED = "number of skipped iterations"
DS_SKIPPED = "skipped (cumulative)"
DS_LR = "lr (group 0)"
OVERFLOW = "overflow"
LOSS_SCALE = "loss scale"
PPL = "ppl"

_NUM_RE = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
# steps are bounded to 15 digits so that no line can overflow the int64 step column
_ITER = re.compile(r"iteration\s+(\d{1,15})\s*/\s*(\d+)\s*\|")
_SNIFF_ITER = re.compile(rb"iteration\s+\d+\s*/\s*\d+\s*\|")
_SNIFF_DS = re.compile(rb"step=\d+, skipped=\d+|OVERFLOW!|\bsteps: \d+ loss: \d")
_SNIFF_ARGS = re.compile(rb"-+ arguments -+|\blog_interval \.{3,}")
# Megatron-LM `validation loss at iteration 7000 [on validation set] |`, `... at the end of
# training for test data |`; GPT-NeoX `validation results at iteration 20 |`
_VALID = re.compile(
    r"(?:validation|test) (?:loss|results) at (?:iteration\s+(\d{1,15})(?!\d)"
    r"(?:\s+on\s+(\w+)\s+set)?|the end of training for (\w+) data)"
)
_DS_STEP = re.compile(r"\bstep=(\d{1,15}),\s*skipped=(\d{1,15})(?:,\s*lr=\[([^\]]*)\])?")
# DeepSpeed's pipeline engine: `steps: 1 loss: 12.2911 iter time (s): 16.707 samples/sec:
# 0.239` (deepspeed/runtime/pipe/engine.py, train_batch); newer versions put extra losses
# (`name: 0.1234`) between the loss and the time
_PIPE = re.compile(r"(?<![\w.])steps: (\d{1,15}) loss: (" + _NUM_RE + r")(?=\s|$)")
_PIPE_FIELD = re.compile(
    r"\s*([A-Za-z_][\w/.\-]*(?: [A-Za-z_(][\w/.()\-]*)*):\s*(" + _NUM_RE + r")(?=\s|$)"
)
_DS_TIMER = re.compile(
    r"\bepoch=(\d{1,15})/micro_step=(\d{1,15})/global_step=(\d{1,15})(?!\d)"
)
_DS_PAIR = re.compile(r"\b([A-Za-z]\w*)=([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)([A-Za-z]*)(?=,|\s|$)")
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_ATTEMPTED = re.compile(r"Attempted loss scale:\s*" + _NUMBER)
# DeepSpeed `reducing to Y`, apex `reducing loss scale to Y`; never `Reducing hysteresis to`
_REDUCED = re.compile(r"reducing (?:loss scale )?to\s*" + _NUMBER)
_PPL = re.compile(r"\s*(ppl|perplexity)\s*[:=]\s*(\S+)\s*", re.IGNORECASE)
_LOG_INTERVAL = re.compile(
    r"(?:\blog_interval\s*\.{2,}\s*|--log[-_]interval[\s=]+)(\d{1,9})(?!\d)"
)
_STEPS_PER_PRINT = re.compile(r"steps_per_print\W+(\d{1,9})(?!\d)")
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"
)
# Megatron's start-up line `using world size: 64, data-parallel size: 8, ...`
_WORLD = re.compile(r"using world size:\s*(\d{1,9})")
# a Megatron arguments dump line: `  global_batch_size ............... 2048`
_ARG = re.compile(r"^\s*([A-Za-z_]\w*) \.{2,} (\S.*?)\s*$")
#: Megatron argument names -> the canonical `Run.params` keys (others are kept as written)
_PARAM_KEYS = {"clip_grad": "clip_grad", "lr": "lr", "lr_warmup_iters": "warmup_steps",
               "global_batch_size": "global_batch_size", "micro_batch_size": "micro_batch_size",
               "seq_length": "seq_length", "world_size": "world_size", "seed": "seed",
               "padded_vocab_size": "vocab_size", "adam_beta1": "adam_beta1",
               "adam_beta2": "adam_beta2", "adam_eps": "adam_eps",
               "weight_decay": "weight_decay", "train_iters": "train_iters"}
_FIELD = re.compile(r"([^|:]*):([^|]*)(?:\||$)")
_KEY_TAIL = re.compile(r"([A-Za-z][^:\[\]|]*)$")


def _seconds(line: str) -> float | None:
    """The line's timestamp in seconds (any fixed origin), or None."""
    m = _TIMESTAMP.search(line)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        day = date(int(y), int(mo), int(d)).toordinal()
    except ValueError:
        return None
    sec = day * 86400.0 + int(h) * 3600 + int(mi) * 60 + int(s)
    return sec + (float("0." + frac) if frac else 0.0)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


_SI = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "Z": 1e21}
_FLOPS = re.compile(r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([KMGTPEZ]?)FLOPS")


def _flops(text: str) -> float | None:
    """GPT-NeoX prints `approx flops per GPU: 81.5TFLOPS` with a varying SI prefix."""
    m = _FLOPS.fullmatch(text)
    return float(m.group(1)) * _SI[m.group(2)] if m else None


@dataclass
class _Anchor:
    """A line that states the step: where the run was when it was written."""

    step: int
    line: str
    row: int | None  # the DeepSpeed `step=` row it produced, if any


@dataclass
class _Overflow:
    line_no: int
    line: str
    scale: float | None  # the loss scale after the overflow


class _Parse:
    """State of one pass over the file."""

    def __init__(self) -> None:
        self.train = RowTable()
        self.evals = RowTable()
        # file order of train rows, anchors and overflows: ("row", i) / ("anchor", i) /
        # ("ovf", i); overflow rows get their step only once the next anchor is known
        self.events: list[tuple[str, int]] = []
        self.anchors: list[_Anchor] = []
        self.overflows: list[_Overflow] = []
        self.iter_rows: list[int] = []  # train rows that came from `iteration` lines
        # iteration rows whose line does not end with `|`, with the key of the cut field
        self.torn: list[tuple[int, str | None]] = []
        self.bad_fields: dict[str, list[int]] = {}
        self.ppl_lines: list[int] = []
        self.log_interval: int | None = None
        self.steps_per_print: int | None = None
        self.ds_skipped_prev = 0
        self.ovf_since_ds_step = 0
        self.row_rank: list[int | None] = []  # the launcher rank prefix of each train row
        self.sink = MessageSink()
        self.params: dict[str, object] = {}

    @property
    def last_step(self) -> int:
        return self.anchors[-1].step if self.anchors else 0

    def add_row(self, step: int, values: dict[str, float], line_no: int) -> int:
        self.train.add(step, values, line_no)
        self.row_rank.append(None)
        i = len(self.train.rows) - 1
        self.events.append(("row", i))
        return i

    def add_anchor(self, step: int, line: str, row: int | None) -> None:
        self.anchors.append(_Anchor(step, line, row))
        self.events.append(("anchor", len(self.anchors) - 1))

    def fields(self, text: str, line_no: int) -> dict[str, float]:
        """`key: value |` fields after the iteration (or validation) token."""
        out: dict[str, float] = {}
        for k, v in _FIELD.findall(text):  # one C-level scan per line
            key, val = k.strip(), v.strip()
            if not key or not val:
                continue
            try:
                out[key] = float(val)
            except ValueError:
                num = _flops(val) if val.endswith("FLOPS") else None
                if num is None:
                    self.bad_fields.setdefault(key, []).append(line_no)
                else:
                    out[key] = num
        return out

    @staticmethod
    def prefix_fields(text: str) -> dict[str, float]:
        """Fields before the iteration token (GPT-NeoX: ` samples/sec: 8.1 | iteration`),
        behind whatever rank or time prefix the launcher added; free text is ignored."""
        out: dict[str, float] = {}
        for seg in text.split("|"):
            key, _, val = seg.rpartition(":")
            m = _KEY_TAIL.search(key)
            num = _number(val.strip()) if m is not None else None
            if m is not None and num is not None:
                out[m.group(1).strip()] = num
        return out

    def iteration(self, line: str, m: re.Match[str], line_no: int) -> None:
        step = int(m.group(1))
        prefix = line[: m.start()]
        values = self.prefix_fields(prefix) if "|" in prefix else {}
        values.update(self.fields(line[m.end():], line_no))
        values.pop(STEP, None)
        row = self.add_row(step, values, line_no)
        self.iter_rows.append(row)
        self.row_rank[row] = rank_of(prefix)
        self.params["train_iters"] = int(m.group(2))
        if "global batch size" in values:
            self.params["global_batch_size"] = int(values["global batch size"])
        if not line.rstrip().endswith("|"):
            cut = line[m.end():].rpartition("|")[2]
            self.torn.append((row, cut.partition(":")[0].strip() if ":" in cut else None))
        self.add_anchor(step, line, None)

    def validation(self, line: str, m: re.Match[str], line_no: int) -> None:
        step = int(m.group(1)) if m.group(1) else self.last_step
        split = (m.group(2) or m.group(3) or "validation").lower()
        prefix = "test " if split == "test" else ""
        values = self.fields(line[m.end():], line_no)
        if values:
            self.evals.add(step, {prefix + k: v for k, v in values.items()}, line_no)
            self.sink.add("info", line, line_no, step)

    def ds_step(self, line: str, m: re.Match[str], line_no: int) -> None:
        step, skipped = int(m.group(1)), int(m.group(2))
        values: dict[str, float] = {DS_SKIPPED: float(skipped)}
        if m.group(3):
            lr = _number(m.group(3).split(",")[0].strip())
            if lr is not None:
                values[DS_LR] = lr
        # skips the counter shows beyond the OVERFLOW lines seen (a filtered log, or a
        # message another rank printed) are attributed to this step
        delta = skipped - self.ds_skipped_prev
        extra = max(0, delta - self.ovf_since_ds_step) if delta >= 0 else 0
        self.ds_skipped_prev, self.ovf_since_ds_step = skipped, 0
        values[OVERFLOW] = float(extra)
        row = self.add_row(step, values, line_no)
        self.add_anchor(step, line, row)

    def pipe_step(self, line: str, m: re.Match[str], line_no: int) -> None:
        """DeepSpeed's pipeline engine (`PipelineEngine.train_batch`) prints `steps: N loss:
        X [name: Y ...] iter time (s): T samples/sec: S` every steps_per_print steps: the
        loss of step N (not an interval mean; the time is), next to the `step=N` line of
        the same step, with which it merges (same step, last write per column)."""
        values = {k: float(v) for k, v in _PIPE_FIELD.findall(line, m.end())}
        values["loss"] = float(m.group(2))
        step = int(m.group(1))
        self.add_row(step, values, line_no)
        self.add_anchor(step, line, None)

    def ds_timer(self, line: str, m: re.Match[str], line_no: int) -> None:
        epoch, micro, step = (int(g) for g in m.groups())
        values: dict[str, float] = {"epoch": float(epoch), "micro_step": float(micro)}
        for pm in _DS_PAIR.finditer(line, m.end()):
            key, unit = pm.group(1), pm.group(3)
            values[f"{key} ({unit})" if unit else key] = float(pm.group(2))
        self.add_row(step, values, line_no)
        self.add_anchor(step, line, None)

    def overflow(self, line: str, line_no: int) -> None:
        reduced = _REDUCED.search(line)
        attempted = _ATTEMPTED.search(line)
        scale = _number(reduced.group(1)) if reduced else \
            _number(attempted.group(1)) if attempted else None
        self.overflows.append(_Overflow(line_no, line, scale))
        self.events.append(("ovf", len(self.overflows) - 1))
        self.ovf_since_ds_step += 1

    def trim_torn(self) -> list[int]:
        """Megatron ends every iteration line with `|`. Where the log keeps to that, a line
        without it was cut mid-write (a crash, or ranks writing over each other). Its
        complete fields stand; the cut one goes, and the row is not judged for a missing
        loss (the loss may be what was cut). Its step stays, so a resume that replays it
        is still seen as a restart. Returns the lines trimmed."""
        if not self.torn or 2 * len(self.torn) >= len(self.iter_rows):
            return []
        for row, key in self.torn:
            if key is not None:
                self.train.rows[row].pop(key, None)
        torn = {row for row, _ in self.torn}
        self.iter_rows = [i for i in self.iter_rows if i not in torn]
        return [self.train.lines[row] for row, _ in self.torn]

    def line(self, line: str, line_no: int) -> None:
        if "steps: " in line:
            s = _PIPE.search(line)
            if s is not None:
                self.pipe_step(line, s, line_no)
                return
        if "iteration" in line:
            m = _ITER.search(line)
            if m is not None:
                self.iteration(line, m, line_no)
                return
        if " at " in line and ("validation" in line or "test" in line):
            v = _VALID.search(line)
            if v is not None:
                self.validation(line, v, line_no)
                return
        if "=" in line:
            if "skipped=" in line:
                d = _DS_STEP.search(line)
                if d is not None:
                    self.ds_step(line, d, line_no)
                    return
            if "global_step=" in line:
                t = _DS_TIMER.search(line)
                if t is not None:
                    self.ds_timer(line, t, line_no)
                    return
        low = line.lower()
        if "overflow" in low and "skipping step" in low:
            self.overflow(line, line_no)
            return
        if " .." in line and self.argument(line):
            return
        if "world size" in line and "world_size" not in self.params:
            w = _WORLD.search(line)
            if w is not None:
                self.params["world_size"] = int(w.group(1))
        if "interval" in line and self.log_interval is None:
            li = _LOG_INTERVAL.search(line)
            if li is not None:
                self.log_interval = int(li.group(1))
                return
        if "steps_per_print" in line and self.steps_per_print is None:
            sp = _STEPS_PER_PRINT.search(line)
            if sp is not None:
                self.steps_per_print = int(sp.group(1))
                return
        if "ppl" in low or "perplexity" in low:
            p = _PPL.fullmatch(line)
            if p is not None:
                val = _number(p.group(2))
                if val is not None:
                    self.evals.add(self.last_step, {PPL: val}, line_no)
                    self.ppl_lines.append(line_no)
                    return
        # not a metric line: kept if it can explain an incident (errors, checkpoints, ...)
        self.sink.feed(line, line_no, self.last_step if self.anchors else None)

    def argument(self, line: str) -> bool:
        """One line of Megatron's arguments dump, into the run's params; False if it is
        not one."""
        a = _ARG.match(line)
        if a is None:
            return False
        key, raw = a.group(1), a.group(2)
        val: object = raw
        num = _number(raw)
        if num is not None:
            val = int(num) if num.is_integer() and "." not in raw and "e" not in raw else num
        elif raw in ("True", "False"):
            val = raw == "True"
        elif raw == "None":
            val = None
        self.params[_PARAM_KEYS.get(key, key)] = val
        if key in ("fp16", "bf16") and val is True:
            self.params["precision"] = key
        if key == "log_interval" and isinstance(val, int) and self.log_interval is None:
            self.log_interval = val
        return True

    def fold_ranks(self, path: Path) -> str | None:
        """Several ranks printing iteration lines: fold them into the reporting rank's rows
        (`rank<N>/<key>` columns) and drop their own rows. Returns a note, or None."""
        fold = fold_ranks(self.train.rows, self.train.steps, self.row_rank, self.iter_rows,
                          self.train.columns)
        if fold is None:
            return None
        gone = fold.removed
        self.events = [e for e in self.events if not (e[0] == "row" and e[1] in gone)]
        self.iter_rows = [i for i in self.iter_rows if i not in gone]
        self.torn = [t for t in self.torn if t[0] not in gone]
        self.params["reporting_rank"] = fold.reporting
        self.params["ranks"] = len(fold.ranks)
        return fold_note(path, fold)


def _step_rate(anchors: list[_Anchor], times: list[float | None]) -> float | None:
    """Median seconds per step between consecutive timestamped anchors."""
    rates = []
    prev: tuple[int, float] | None = None
    for a, t in zip(anchors, times, strict=True):
        if t is None:
            continue
        if prev is not None and a.step > prev[0] and t >= prev[1]:
            rates.append((t - prev[1]) / (a.step - prev[0]))
        prev = (a.step, t)
    return float(np.median(rates)) if rates else None


def _place(
    times: list[float | None],
    lo_step: int,
    lo_time: float | None,
    hi_step: int | None,
    hi_time: float | None,
    rate: float | None,
) -> list[int]:
    """Steps for the overflows of one interval (lo_step, hi_step], in file order."""
    m = len(times)
    lo = lo_step + 1
    if hi_step is not None and hi_step < lo:
        lo = max(0, hi_step - m + 1)  # the counter went back (a restart): end at hi_step
    est: list[int] = []
    for j, t in enumerate(times):
        s = lo + j
        if t is not None and rate is not None and rate > 0:
            if hi_step is not None and hi_time is not None:
                s = hi_step - round((hi_time - t) / rate)
            elif lo_time is not None:
                s = lo_step + max(1, round((t - lo_time) / rate))
        est.append(s)
    capacity = (hi_step - lo + 1) if hi_step is not None else m
    out: list[int] = []
    prev = lo - 1
    for j, s in enumerate(est):
        if m <= capacity:  # one skipped step per overflow line, in order
            s = max(s, prev + 1)
            if hi_step is not None:
                s = min(s, hi_step - (m - 1 - j))
        else:  # more overflow lines than steps: several land on one step
            s = max(s, prev, lo)
            if hi_step is not None:
                s = min(s, hi_step)
        out.append(s)
        prev = s
    return out


def _resolve_overflows(p: _Parse) -> dict[int, int]:
    """Step of each overflow (by index into p.overflows)."""
    if not p.overflows:
        return {}
    times = [_seconds(a.line) for a in p.anchors]
    rate = _step_rate(p.anchors, times)
    steps: dict[int, int] = {}
    pending: list[int] = []
    last: int | None = None  # index of the last anchor seen

    def flush(nxt: int | None) -> None:
        if not pending:
            return
        lo_step = p.anchors[last].step if last is not None else 0
        lo_time = times[last] if last is not None else None
        hi_step = p.anchors[nxt].step if nxt is not None else None
        hi_time = times[nxt] if nxt is not None else None
        local = rate
        if lo_time is not None and hi_time is not None and hi_step is not None and \
                hi_step > lo_step and hi_time >= lo_time:
            local = (hi_time - lo_time) / (hi_step - lo_step)
        placed = _place([_seconds(p.overflows[i].line) for i in pending],
                        lo_step, lo_time, hi_step, hi_time, local)
        steps.update(zip(pending, placed, strict=True))
        pending.clear()

    for kind, i in p.events:
        if kind == "ovf":
            pending.append(i)
        elif kind == "anchor":
            flush(i)
            last = i
    flush(None)
    return steps


def _assemble(p: _Parse) -> tuple[list[dict[str, float]], list[int], list[int]]:
    """Train rows in file order with the overflow rows placed; (rows, steps, lines)."""
    ovf_step = _resolve_overflows(p)
    # An overflow placed on the step of the DeepSpeed `step=` line that follows it is folded
    # into that line's row: as a row of its own it would lose to it (last write wins).
    fold: dict[int, list[int]] = {}
    following: _Anchor | None = None
    for kind, i in reversed(p.events):
        if kind == "anchor":
            following = p.anchors[i]
        elif kind == "ovf" and following is not None and following.row is not None and \
                ovf_step[i] == following.step:
            fold.setdefault(following.row, []).append(i)
    folded = {i for group in fold.values() for i in group}
    rows: list[dict[str, float]] = []
    steps: list[int] = []
    lines: list[int] = []
    last_is_ovf = False
    for kind, i in p.events:
        if kind == "row":
            row = p.train.rows[i]
            if i in fold:
                row = dict(row)
                row[OVERFLOW] = row.get(OVERFLOW, 0.0) + len(fold[i])
                scale = p.overflows[max(fold[i])].scale
                if scale is not None:
                    row[LOSS_SCALE] = scale
            rows.append(row)
            steps.append(p.train.steps[i])
            lines.append(p.train.lines[i])
            last_is_ovf = False
        elif kind == "ovf" and i not in folded:
            s, o = ovf_step[i], p.overflows[i]
            if last_is_ovf and steps[-1] == s:
                rows[-1][OVERFLOW] += 1.0  # more overflow lines than steps: count them
            else:
                rows.append({OVERFLOW: 1.0})
                steps.append(s)
                lines.append(o.line_no)
                last_is_ovf = True
            if o.scale is not None:
                rows[-1][LOSS_SCALE] = o.scale
    return rows, steps, lines


class MegatronReader:
    name = "megatron"
    description = "Megatron-LM / Megatron-DeepSpeed / GPT-NeoX / DeepSpeed stdout text logs"

    def sniff(self, path: Path, head: bytes) -> float:
        if path.is_dir() or not head or looks_binary(head):
            return 0.0
        if _SNIFF_ITER.search(head):
            return 0.95
        if _SNIFF_DS.search(head):
            return 0.9
        if _SNIFF_ARGS.search(head):
            return 0.5  # a Megatron arguments dump, the iterations further down
        return 0.0

    def read(self, path: Path) -> list[RawLog]:
        lines, _ = read_lines(path)
        p = _Parse()
        warnings: list[str] = []
        for no, line in enumerate(lines, start=1):
            p.line(line, no)
        folded = p.fold_ranks(path)
        if folded is not None:
            warnings.append(folded)
        torn = p.trim_torn()
        if torn:
            warnings.append(
                f"{path}: {len(torn)} truncated line(s) read up to the cut ({lines_note(torn)})"
            )
        if not p.train.rows and not p.evals.rows:
            raise LogFormatError(
                f"{path}: no Megatron `iteration N/ M |` lines, DeepSpeed `step=N, "
                f"skipped=K` lines or OVERFLOW lines found"
            )
        self._mark_skipped(p)
        rows, steps, row_lines = _assemble(p)
        frame, masks = frame_from_rows(rows, steps, row_columns(rows), STEP)
        eval_frame = eval_frame_from_rows(p.evals.rows, p.evals.steps, p.evals.columns, STEP) \
            if p.evals.rows else None
        if p.bad_fields:
            n = sum(len(v) for v in p.bad_fields.values())
            keys = ", ".join(repr(k) for k in list(p.bad_fields)[:3])
            first = sorted(no for v in p.bad_fields.values() for no in v)
            warnings.append(
                f"{path}: skipped {n} non-numeric value(s) of {keys} ({lines_note(first)})"
            )
        warnings += p.sink.warnings(path)
        if p.ppl_lines:
            warnings.append(
                f"{path}: {len(p.ppl_lines)} perplexity line(s) carry no step; each is placed "
                f"at the last step logged before it ({lines_note(p.ppl_lines)})"
            )
        iter_steps = [p.train.steps[i] for i in p.iter_rows]
        if iter_steps:
            interval = p.log_interval or mode_spacing(iter_steps)
        else:  # DeepSpeed alone: one `step=` line every steps_per_print steps
            interval = p.steps_per_print or mode_spacing(
                [a.step for a in p.anchors if a.row is not None]
            )
        return [RawLog(
            frame=frame,
            step_column=STEP,
            eval_frame=eval_frame,
            eval_step_column=STEP,
            nan_mask=masks,
            row_lines=np.asarray(row_lines, dtype=np.int64),
            warnings=warnings,
            interval=interval,
            averaged=bool(iter_steps),
            messages=p.sink.messages,
            params=p.params,
        )]

    @staticmethod
    def _mark_skipped(p: _Parse) -> None:
        """Flag iteration rows that print no loss at all: every iteration in their interval
        was skipped. Only when the log prints a loss elsewhere (else nothing is missing)."""
        def is_loss(key: str) -> bool:
            low = key.lower()
            return "loss" in low and "scale" not in low

        loss_keys = {k for k in p.train.columns if is_loss(k)}
        if not loss_keys:
            return
        for i in p.iter_rows:
            row = p.train.rows[i]
            if not any(k in row for k in loss_keys):
                count = row.get(SKIPPED, 0.0)
                row[SKIPPED] = count if count >= 1 else 1.0
                p.train.columns.setdefault(SKIPPED, None)


READERS.add("megatron", MegatronReader())
