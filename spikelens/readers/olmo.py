"""OLMo and OLMo-core trainer stdout: one log record per logged step, a header line that ends
in a progress marker and one indented `    name=value` line per metric under it. The formats
followed are allenai/OLMo `olmo/train.py` (`Trainer.log_metrics_to_console`: header
`[step=N/M]`, keys such as `train/CrossEntropyLoss`, `optim/total_grad_norm`, values through
its `format_float`: `76,631` above 1000, `.1f`/`.2f`/`.3f`/`.4f` below, `str()` under 1e-4;
eval blocks headed by the evaluator's label with `eval/<label>/CrossEntropyLoss` keys, from
`olmo/eval/evaluator.py`) and allenai/OLMo-core (`train/callbacks/console_logger.py`,
`ConsoleLoggerCallback.log_metrics`: header `[step=N/M,epoch=E,eta=...]`, `M` may be `???`,
keys such as `train/CE loss`, `optim/LR (group 0)`, values through `olmo_core.utils.
format_float`, which writes small ones as `4.00E-04`; `train/callbacks/evaluator_callback.py`
prints eval blocks under `Finished <name> evals in X seconds. Metrics:` with keys that lack
the `eval/<name>/` prefix its W&B keys have, so it is added here). The header comes after
either logging layout the two share (rich's `[date] INFO     [olmo.train:816, rank=0]` on a
terminal, tab-separated `date host:rank name:line INFO` otherwise), or behind a torchrun
`[default0]:` prefix. The one-line form a ConsoleLoggerCallback with `use_tqdm` prints when
stdout is not a terminal (`[step=...] epoch=1 loss=.. ppl=.. lr=.. mem=12.3GiB ... mfu=40%
grad=..`) is read too, its short keys renamed to the long ones the block form prints. Keys
whose name starts with `eval/` go to the eval table, at the step of the last train block
before them. A block torn at the end of the file (no final newline) loses its last line, with
a warning; warnings, errors and tracebacks between blocks are kept as messages."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, looks_binary
from spikelens.readers._ranks import MessageSink

STEP = "step"

#: OLMo `[step=12/739328]`, OLMo-core `[step=10/100,epoch=1,eta=1h2m]` (or `, epoch=1`, or
#: `/???` without max_steps); `[eval_step=..]` and `[eval=lm,step=..]` are not headers
_HEADER = re.compile(r"\[step=(\d{1,15})/(?:\d{1,15}|\?+)(?:\s*,[^\]\n]*)?\]")
#: one metric line of a block: indented `name=value`; names hold spaces and parentheses
#: (`System/Peak GPU Memory (MB)`, `optim/LR (group 0)`), values never hold `=`
_METRIC = re.compile(r"^[ \t]+(\S[^=\n]*?)[ \t]*=[ \t]*(\S[^=\n]*?)[ \t]*$")
#: a torchrun `--tee` prefix, removed before the indentation is looked at
_PREFIX = re.compile(r"^\s*\[(?:default|rank)\d{1,6}\]:")
#: a number as either format_float writes it: thousands separators, `4.00E-04`, `nan`; a unit
#: may follow in the one-line form (`12.3GiB`, `40.1%`)
_NUMBER = re.compile(
    r"^([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
    r"|[-+]?(?:nan|inf(?:inity)?))(?:%|[KMGT]i?B|ms|s)?$", re.IGNORECASE)
#: OLMo-core's evaluator callback: `Finished lm evals in 12.3 seconds. Metrics:`
_OLMO_CORE_EVAL = re.compile(r"\bFinished (\S+) evals in [\d.]+ seconds\. Metrics:\s*$")
#: the one-line form: what follows the header always starts with `epoch=E`
_COMPACT_START = re.compile(r"^\s+epoch=\d+\s+\w+=")
#: the one-line form's `key=value` items after the header
_ITEM = re.compile(r"(?<![\w/])([A-Za-z]\w*)=(\S+)")
#: its short keys -> the names the block form prints for the same values (so that roles,
#: and a run logged both ways, agree)
_COMPACT = {"loss": "train/CE loss", "ppl": "train/PPL", "lr": "optim/LR (group 0)",
            "mem": "gpu_memory/GPU active mem (GiB)", "bps": "throughput/device/BPS (actual avg)",
            "tps": "throughput/device/TPS (actual avg)",
            "mfu": "throughput/device/MFU (actual avg)", "grad": "optim/total grad norm"}


def parse_value(text: str) -> float | None:
    """The number format_float wrote, or None for a text value (`1h 2m 3s`)."""
    m = _NUMBER.match(text.strip())
    if m is None:
        return None
    return float(m.group(1).replace(",", ""))


def _metric(line: str) -> tuple[str, str] | None:
    m = _METRIC.match(line)
    return (m.group(1), m.group(2)) if m is not None else None


@dataclass
class _Block:
    """The block being read: a train block (`step`), an eval block or another record."""

    line: int  # its header line
    step: int | None  # the header's step (train blocks only)
    prefix: str = ""  # put before its keys (OLMo-core eval blocks)
    is_eval: bool = False  # every key is an eval metric
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class _Parse:
    train: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)  # line, step
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # step, values
    last_step: int | None = None

    def close(self, block: _Block | None) -> None:
        if block is None or not block.values:
            return
        train: dict[str, float] = {}
        evals: dict[str, float] = {}
        for key, value in block.values.items():
            if block.is_eval or key.lower().startswith("eval/"):
                evals[block.prefix + key] = value
            elif block.step is not None:
                train[key] = value
            # other records' numbers (OLMo's "Pre-train system metrics") are not per step
        if block.step is not None and train:
            self.train.append((block.line, block.step, train))
        if evals:
            step = block.step if block.step is not None else self.last_step
            self.evals.append((step if step is not None else 0, evals))


def _parse(lines: list[str], ends_nl: bool, path: Path) -> tuple[_Parse, MessageSink, list[str]]:
    p = _Parse()
    sink = MessageSink()
    warnings: list[str] = []
    block: _Block | None = None
    last = len(lines)
    for no, raw in enumerate(lines, start=1):
        line = raw
        if "]:" in raw[:24]:
            m = _PREFIX.match(raw)
            if m is not None:
                line = raw[m.end():]
        if block is not None and line[:1] in (" ", "\t"):
            if no == last and not ends_nl and (block.values or "=" in line):
                # the record was cut mid-write: this line may have lost digits
                warnings.append(
                    f"{path}: the last block (line {block.line}) is torn at the end of the file:"
                    f" read up to line {no - 1}, line {no} dropped (no final newline)")
                break
            kv = _metric(line)
            if kv is not None:
                value = parse_value(kv[1])
                if value is not None:  # a text value (`1h 2m 3s`) is not a metric
                    block.values[kv[0]] = value
                continue
        p.close(block)
        block = None
        head = _HEADER.search(line) if "[step=" in line else None
        if head is not None:
            step = int(head.group(1))
            p.last_step = step
            block = _Block(line=no, step=step)
            rest = line[head.end():]
            if _COMPACT_START.match(rest):  # the one-line form
                for m in _ITEM.finditer(rest):
                    key = m.group(1)
                    value = parse_value(m.group(2))
                    if value is not None and key != "epoch":
                        block.values[_COMPACT.get(key, key)] = value
            continue
        if "evals in" in line:
            ev = _OLMO_CORE_EVAL.search(line)
            if ev is not None:
                block = _Block(line=no, step=p.last_step, prefix=f"eval/{ev.group(1)}/",
                               is_eval=True)
                continue
        sink.feed(line, no, p.last_step)
        if line.strip():
            # any other record may head a block: OLMo's eval blocks are headed by the label
            block = _Block(line=no, step=None)
    p.close(block)
    return p, sink, warnings


class OlmoReader:
    name = "olmo"
    description = "OLMo / OLMo-core trainer stdout ([step=N/M] then indented name=value lines)"

    def sniff(self, path: Path, head: bytes) -> float:
        if path.is_dir() or not head or looks_binary(head) or b"[step=" not in head:
            return 0.0
        lines = head.decode("utf-8", errors="replace").split("\n")
        for i, line in enumerate(lines[:-1]):
            m = _HEADER.search(line) if "[step=" in line else None
            if m is None:
                continue
            nxt = lines[i + 1]
            pm = _PREFIX.match(nxt)
            if pm is not None:
                nxt = nxt[pm.end():]
            kv = _metric(nxt)
            if kv is not None and parse_value(kv[1]) is not None:
                return 0.9
            rest = line[m.end():]
            if _COMPACT_START.match(rest) and " loss=" in rest:  # the one-line form
                return 0.9
        return 0.0

    def read(self, path: Path) -> list[RawLog]:
        # imported here: a module-level import would register the text reader before the
        # formats after it alphabetically, which moves sniffing's tie order
        from spikelens.readers.text import read_lines, records_log

        lines, ends_nl = read_lines(path)
        p, sink, warnings = _parse(lines, ends_nl, path)
        if not p.train and not p.evals:
            raise LogFormatError(f"{path}: no OLMo metric blocks found ([step=N/M] followed "
                                 "by indented name=value lines)")
        return [records_log(path, p.train, p.evals, warnings, sink)]


READERS.add("olmo", OlmoReader())
