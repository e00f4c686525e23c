"""MosaicML Composer (and llm-foundry, which trains with it) console output: one record per
logged batch, a header `[batch=N/M]:` (`[epoch=E][batch=b/B]:` for a run whose duration is in
epochs, `[token=N/M]:` or `[sample=N/M]:` for one in tokens or samples) and one indented
`\t Train name: value` line per metric under it, as `composer/loggers/console_logger.py`
(`ConsoleLogger.log_to_console`) prints them, values through `format_log_data_value` (floats
to 4 decimals, non-numbers such as `<wandb... Image object at 0x..>` skipped). The step is
`time/batch` + 1, the header's own count for a run measured in batches, whatever the
header's unit. Eval records (`[Eval batch=10/10] Eval on eval data:` with `\t Eval
metrics/eval/...` lines) are eval rows at the last train step. Composer's global gradient
norm (`l2_norm/grad/global`) and its sample and token counters (`time/sample`,
`time/token`) are read as `grad_norm`, `samples` and `tokens`. A `0: ` (srun --label) or
`[default0]:` prefix is removed first. A record torn at the end of the file (no final
newline) loses its last line, with a warning; other lines are kept as messages."""

from __future__ import annotations

import re
from pathlib import Path

from spikelens.errors import LogFormatError
from spikelens.readers import READERS
from spikelens.readers._base import RawLog, looks_binary
from spikelens.readers._ranks import MessageSink

STEP = "step"

#: `[batch=10/100]:`, `[epoch=2][batch=5/50]:`, `[token=8192/1000000]:` (the `/M` is absent
#: for a run with no set duration in that unit)
_HEADER = re.compile(
    r"^\[(?:epoch=(\d{1,9})\]\[)?(batch|token|sample|iteration|epoch)=(\d{1,18})(?:/(\d{1,18}))?\]:?"
    r"\s*$")
_EVAL_HEADER = re.compile(r"^\[Eval batch=\d{1,12}/\d{1,12}\] Eval on (\S+) data:?\s*$")
_METRIC = re.compile(r"^[ \t]+(Train|Eval) (\S[^\n]*?): (\S[^\n]*?)\s*$")
_PREFIX = re.compile(r"^\s*(?:\d{1,6}: |\[(?:default|rank)\d{1,6}\]:)")
#: Composer's names for what spikelens's roles call grad_norm, samples and tokens
_RENAME = {"l2_norm/grad/global": "grad_norm", "time/sample": "samples",
           "time/token": "tokens"}


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # a string, an image, a tensor of several values: not a metric


def _strip(raw: str) -> str:
    m = _PREFIX.match(raw) if ": " in raw[:10] or "]:" in raw[:14] else None
    return raw[m.end():] if m is not None else raw


def _consumed_after(train: list[tuple[int, int, dict[str, float]]]) -> None:
    """Composer's `time/sample` and `time/token` count what was consumed before the batch
    (0 at batch 1); spikelens's samples and tokens, like Megatron's consumed samples, count it
    with the batch. Each record gets its count plus one step's worth, the rate to the next
    record (to the one before, for the last)."""
    for key in ("samples", "tokens"):
        idx = [i for i, (_, _, r) in enumerate(train) if key in r]
        before = [train[i][2][key] for i in idx]
        for j, i in enumerate(idx):
            k = j + 1 if j + 1 < len(idx) else j - 1
            if k < 0:
                continue
            steps = train[idx[k]][1] - train[i][1]
            if steps:
                train[i][2][key] = before[j] + (before[k] - before[j]) / steps


class ComposerReader:
    name = "composer"
    description = "Composer / llm-foundry console output ([batch=N/M]: then indented metrics)"

    def sniff(self, path: Path, head: bytes) -> float:
        if path.is_dir() or not head or looks_binary(head) or b"=" not in head:
            return 0.0
        lines = head.decode("utf-8", errors="replace").split("\n")
        for i, raw in enumerate(lines[:-1]):
            line = _strip(raw)
            if line.startswith("[") and _HEADER.match(line):
                m = _METRIC.match(_strip(lines[i + 1]))
                if m is not None and m.group(1) == "Train":
                    return 0.9
        return 0.0

    def read(self, path: Path) -> list[RawLog]:
        # imported here: a module-level import would register the text reader before the
        # formats after it alphabetically, which moves sniffing's tie order
        from spikelens.readers.text import read_lines, records_log

        lines, ends_nl = read_lines(path)
        sink = MessageSink()
        warnings: list[str] = []
        train: list[tuple[int, int, dict[str, float]]] = []  # header line, step, values
        evals: list[tuple[int, dict[str, float]]] = []
        head: tuple[int, str, int, int | None, int | None] | None = None  # a train record
        values: dict[str, float] = {}
        in_eval = False
        last_step: int | None = None

        def close() -> None:
            nonlocal last_step
            if head is not None and values:
                no, unit, count, epoch, per_epoch = head
                batch = values.get("time/batch")
                if batch is not None and batch == batch:
                    step = int(batch) + 1
                elif unit == "batch" and epoch is not None and per_epoch is not None:
                    step = (epoch - 1) * per_epoch + count
                else:
                    step = count
                train.append((no, step, {_RENAME.get(k, k): v for k, v in values.items()}))
                last_step = step
            elif in_eval and values:
                evals.append((last_step if last_step is not None else 0, dict(values)))

        last = len(lines)
        for no, raw in enumerate(lines, start=1):
            line = _strip(raw)
            if (head is not None or in_eval) and line[:1] in (" ", "\t"):
                if no == last and not ends_nl:
                    # the record was cut mid-write: this line may have lost digits
                    warnings.append(
                        f"{path}: the last record is torn at the end of the file: line "
                        f"{no} dropped (no final newline)")
                    break
                m = _METRIC.match(line)
                if m is not None:
                    value = _number(m.group(3))
                    if value is not None:
                        values[m.group(2)] = value
                    continue
            close()
            head, values, in_eval = None, {}, False
            if line.startswith("["):
                h = _HEADER.match(line)
                if h is not None:
                    total = int(h.group(4)) if h.group(4) is not None else None
                    head = (no, h.group(2), int(h.group(3)),
                            int(h.group(1)) if h.group(1) is not None else None, total)
                    continue
                if _EVAL_HEADER.match(line):
                    in_eval = True
                    continue
            sink.feed(line, no, last_step)
        close()
        if not train and not evals:
            raise LogFormatError(f"{path}: no Composer records found ([batch=N/M]: followed "
                                 "by '\\t Train name: value' lines)")
        _consumed_after(train)
        return [records_log(path, train, evals, warnings, sink)]


READERS.add("composer", ComposerReader())
